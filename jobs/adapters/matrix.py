"""The Matrix homeserver through matrix-nio: a client driven from synchronous code, and what a
Matrix error response means for the exit code.

nio retries rate limits and timeouts without bound by default; here it is told not to retry at
all (`max_limit_exceeded=0`, `max_timeouts=0`) and every call goes through `jobs.core.retry`
with the job's deadline, honouring `retry_after_ms`. `raise_common` names the failures every
call shares: a rate limit or a server error (retried), a refused token (78).

The requests the jobs make are methods of `Matrix`: the read-only ones (`whoami`, `resolve`,
`room_state`) that an observation (and `--dry-run`) may make, and the ones that change the
homeserver (`create_room`, `put_state`, `invite`) that only a step makes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    RoomCreateResponse,
    RoomGetStateResponse,
    RoomPreset,
    RoomResolveAliasResponse,
    RoomVisibility,
    WhoamiResponse,
)

from jobs.core import retry, runner
from jobs.core.errors import ConfigError, ConflictError, TransientError

T = TypeVar("T")

AUTH_ERRCODES = {"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"}
# How every error about the token names it: the option's flag and variable.
TOKEN = "--token-file / PLANA_MATRIX_TOKEN_FILE"


def errcode(resp: ErrorResponse) -> str:
    return str(resp.status_code or "")


def http_status(resp: ErrorResponse) -> int:
    transport = getattr(resp, "transport_response", None)
    return int(getattr(transport, "status", 0) or 0)


def raise_common(resp: ErrorResponse, what: str) -> None:
    """Failures every call shares: rate limits and server errors (retried), a bad token (78)."""
    code, status = errcode(resp), http_status(resp)
    if code == "M_LIMIT_EXCEEDED" or status == 429:
        after = resp.retry_after_ms / 1000 if resp.retry_after_ms else None
        raise retry.RetryLater(f"{what}: M_LIMIT_EXCEEDED", retry_after=after)
    if status >= 500:
        raise retry.RetryLater(f"{what}: HTTP {status}: {resp.message}")
    if code in AUTH_ERRCODES or status == 401:
        raise ConfigError(f"{TOKEN}: the homeserver refused the token ({code})")


class Matrix:
    """nio's AsyncClient driven from synchronous code: one event loop, bounded calls."""

    def __init__(self, job: runner.Job, homeserver: str, token: str, timeout: float) -> None:
        self.job = job
        self.timeout = timeout
        # nio logs through the standard library (to stderr, unformatted, unredacted); every
        # failure it reports is also returned to us and reported by the job, so mute it.
        logging.getLogger("nio").setLevel(logging.CRITICAL + 1)
        self.loop = asyncio.new_event_loop()
        config = AsyncClientConfig(
            max_limit_exceeded=0,
            max_timeouts=0,
            request_timeout=timeout,
            encryption_enabled=False,
            store_sync_tokens=False,
        )
        self.client = AsyncClient(homeserver, config=config)
        self.client.access_token = token

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()

    def call(self, what: str, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """One request, retried on transient failures until the job's deadline."""
        return self.retrying(what, make, self.job.deadline)

    def retrying(
        self, what: str, make: Callable[[], Coroutine[Any, Any, T]], deadline: retry.Deadline
    ) -> T:
        def attempt() -> T:
            return self.loop.run_until_complete(self._bounded(what, make()))

        return retry.call(attempt, what=what, deadline=deadline, transient=retry.http_transient)

    async def _bounded(self, what: str, coro: Awaitable[T]) -> T:
        # nio's own timeout covers one HTTP exchange; this one also caps it at the deadline.
        limit = max(0.1, min(self.timeout, self.job.deadline.remaining()))
        try:
            return await asyncio.wait_for(coro, timeout=limit)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise retry.RetryLater(f"{what}: {type(exc).__name__}: {exc}") from None

    # ----------------------------------------------------------------- read only

    def whoami(self) -> str:
        """The user id the token belongs to (a refused token is 78)."""

        async def go() -> str:
            resp = await self.client.whoami()
            if isinstance(resp, WhoamiResponse):
                return str(resp.user_id)
            raise_common(resp, "whoami")
            raise ConfigError(f"{TOKEN}: token check failed: {resp}")

        return self.call("matrix whoami", go)

    def resolve(self, alias: str) -> str | None:
        """The room id `alias` points to; None when the alias is free."""

        async def go() -> str | None:
            resp = await self.client.room_resolve_alias(alias)
            if isinstance(resp, RoomResolveAliasResponse):
                return str(resp.room_id)
            if errcode(resp) == "M_NOT_FOUND" or http_status(resp) == 404:
                return None
            raise_common(resp, "resolve alias")
            raise ConflictError(f"cannot resolve {alias}: {resp}")

        return self.call("matrix resolve alias", go)

    def room_state(self, room_id: str, grace_s: float) -> list[dict[str, Any]] | None:
        """The room's state events; None when we may not read them for `grace_s` seconds.

        A forbidden state is what a racing run's room looks like for a moment (the alias is
        bound before the room's first events), and what a room that is not ours looks like for
        ever: it is retried for the grace period, then reported as None for the caller to judge.
        """

        async def go() -> list[dict[str, Any]]:
            resp = await self.client.room_get_state(room_id)
            if isinstance(resp, RoomGetStateResponse):
                return list(resp.events)
            code = errcode(resp)
            if code in ("M_FORBIDDEN", "M_NOT_FOUND") or http_status(resp) in (403, 404):
                raise NotInRoom(f"room state of {room_id}: {code}", retry_after=0.5)
            raise_common(resp, "room state")
            raise ConflictError(f"cannot read the state of {room_id}: {resp}")

        grace = retry.Deadline(min(grace_s, self.job.deadline.remaining()))
        try:
            return self.retrying("matrix room state", go, grace)
        except TransientError:
            if self.job.deadline.expired():
                raise
            return None

    # ----------------------------------------------------------------- changes

    def create_room(
        self, alias_localpart: str, name: str, topic: str, invite: list[str]
    ) -> str | None:
        """A private room created with its alias; None when the alias was taken meanwhile."""

        async def go() -> str | None:
            resp = await self.client.room_create(
                visibility=RoomVisibility.private,
                alias=alias_localpart,
                name=name,
                topic=topic,
                preset=RoomPreset.private_chat,
                invite=invite,
            )
            if isinstance(resp, RoomCreateResponse):
                return str(resp.room_id)
            # M_ROOM_IN_USE when the alias existed before the request; 409 when a concurrent
            # creation bound it first. Either way another run won: the caller uses its room.
            if errcode(resp) == "M_ROOM_IN_USE" or http_status(resp) == 409:
                return None
            raise_common(resp, "create room")
            raise ConflictError(f"cannot create #{alias_localpart}: {resp}")

        return self.call("matrix create room", go)

    def put_state(self, room_id: str, event_type: str, content: dict[str, Any]) -> None:
        async def go() -> None:
            resp = await self.client.room_put_state(room_id, event_type, content)
            if isinstance(resp, ErrorResponse):
                raise_common(resp, f"set {event_type}")
                raise ConflictError(f"cannot set {event_type} in {room_id}: {resp}")

        self.call(f"matrix set {event_type}", go)

    def invite(self, room_id: str, user_id: str) -> None:
        async def go() -> None:
            resp = await self.client.room_invite(room_id, user_id)
            if isinstance(resp, ErrorResponse):
                raise_common(resp, "invite")
                raise ConflictError(f"cannot invite {user_id} to {room_id}: {resp}")

        self.call("matrix invite", go)


class NotInRoom(retry.RetryLater):
    """The room's state is forbidden to us: being created by a racing run, or not ours."""
