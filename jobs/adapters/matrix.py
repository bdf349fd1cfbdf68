"""The Matrix homeserver through matrix-nio: a client driven from synchronous code, and what a
Matrix error response means for the exit code.

nio retries rate limits and timeouts without bound by default; here it is told not to retry at
all (`max_limit_exceeded=0`, `max_timeouts=0`) and every call goes through `jobs.core.retry`
with the job's deadline, honouring `retry_after_ms`. `raise_common` names the failures every
call shares: a rate limit or a server error (retried), a refused token (78).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
from nio import AsyncClient, AsyncClientConfig, ErrorResponse

from jobs.core import retry, runner
from jobs.core.errors import ConfigError

T = TypeVar("T")

AUTH_ERRCODES = {"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"}


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
        raise ConfigError(f"PLANA_MATRIX_TOKEN_FILE: the homeserver refused the token ({code})")


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
