"""`plana-job matrix-room`: the tenant's support room, its alias, name, topic and staff.

The alias `#support-{subdomain}-{projectId:03d}:{server}` is the identity of the room: it is
resolved first; only when it is free is a room created *with* it, and the homeserver refuses a
second room for a taken alias (`M_ROOM_IN_USE`, or 409 when two creations race). The loser of
that race resolves the alias and continues with the winner's room, so concurrent or repeated
runs converge on one room. An existing room is then brought to the wanted name, topic, staff
power level and invites, changing only what differs.

Every call goes through `matrix.Matrix`: bounded by the job's deadline, never nio's own retries.
"""

from __future__ import annotations

import re
from typing import Any

import click
from nio import (
    ErrorResponse,
    RoomCreateResponse,
    RoomGetStateResponse,
    RoomPreset,
    RoomResolveAliasResponse,
    RoomVisibility,
    WhoamiResponse,
)

from jobs.adapters import http, matrix
from jobs.core import naming, retry, runner, secrets
from jobs.core import options as params
from jobs.core.errors import ConfigError, ConflictError, TransientError, UsageError
from jobs.core.result import Done

MODERATOR = 50  # the power level Matrix clients call "Moderator"
# A room whose alias we resolved but whose state we may not read is either being created by a
# racing run (the alias is bound before the room's first events) or not ours. Wait this long
# for the former before calling it the latter (65).
NOT_IN_ROOM_GRACE_S = 5.0
_USER_ID = re.compile(r"@[a-z0-9._=/+-]+:[A-Za-z0-9.-]+(?::[0-9]{1,5})?", re.ASCII)


def invitees(value: str | None, field: str = "matrixInvite") -> list[str]:
    """Staff user ids, separated by commas or whitespace; sorted, without duplicates."""
    ids = [v for v in re.split(r"[\s,]+", value or "") if v]
    for user_id in ids:
        if not _USER_ID.fullmatch(user_id) or len(user_id) > 255:
            raise UsageError(field, f"not a Matrix user id (@name:server): {user_id[:60]!r}")
    return sorted(set(ids))


def room_name(owner: str) -> str:
    return f"Support · {owner}"


def room_topic(spec: naming.ClientSpec) -> str:
    return f"{spec.tenant.hostname} · tier {spec.tier} · project {spec.project_id:03d}"


class NotInRoom(retry.RetryLater):
    """The room's state is forbidden to us: being created by a racing run, or not ours."""


class Room:
    """The wanted support room and the steps that make the homeserver agree with it."""

    def __init__(
        self, mx: matrix.Matrix, alias: str, localpart: str, name: str, topic: str, staff: list[str]
    ) -> None:
        self.mx = mx
        self.alias = alias
        self.localpart = localpart
        self.name = name
        self.topic = topic
        self.staff = staff
        self.user_id = ""

    def whoami(self) -> str:
        async def go() -> str:
            resp = await self.mx.client.whoami()
            if isinstance(resp, WhoamiResponse):
                return str(resp.user_id)
            matrix.raise_common(resp, "whoami")
            raise ConfigError(f"PLANA_MATRIX_TOKEN_FILE: token check failed: {resp}")

        self.user_id = self.mx.call("matrix whoami", go)
        return self.user_id

    def resolve(self) -> str | None:
        async def go() -> str | None:
            resp = await self.mx.client.room_resolve_alias(self.alias)
            if isinstance(resp, RoomResolveAliasResponse):
                return str(resp.room_id)
            if matrix.errcode(resp) == "M_NOT_FOUND" or matrix.http_status(resp) == 404:
                return None
            matrix.raise_common(resp, "resolve alias")
            raise ConflictError(f"cannot resolve {self.alias}: {resp}")

        return self.mx.call("matrix resolve alias", go)

    def create(self) -> str | None:
        """Create the room with its alias; None when the alias was taken meanwhile."""

        async def go() -> str | None:
            resp = await self.mx.client.room_create(
                visibility=RoomVisibility.private,
                alias=self.localpart,
                name=self.name,
                topic=self.topic,
                preset=RoomPreset.private_chat,
                invite=[s for s in self.staff if s != self.user_id],
            )
            if isinstance(resp, RoomCreateResponse):
                return str(resp.room_id)
            # M_ROOM_IN_USE when the alias existed before the request; 409 when a concurrent
            # creation bound it first. Either way another run won: use its room.
            if matrix.errcode(resp) == "M_ROOM_IN_USE" or matrix.http_status(resp) == 409:
                return None
            matrix.raise_common(resp, "create room")
            raise ConflictError(f"cannot create {self.alias}: {resp}")

        return self.mx.call("matrix create room", go)

    def state(self, room_id: str) -> list[dict[str, Any]]:
        async def go() -> list[dict[str, Any]]:
            resp = await self.mx.client.room_get_state(room_id)
            if isinstance(resp, RoomGetStateResponse):
                return list(resp.events)
            code = matrix.errcode(resp)
            if code in ("M_FORBIDDEN", "M_NOT_FOUND") or matrix.http_status(resp) in (403, 404):
                raise NotInRoom(f"room state of {room_id}: {code}", retry_after=0.5)
            matrix.raise_common(resp, "room state")
            raise ConflictError(f"cannot read the state of {room_id}: {resp}")

        grace = retry.Deadline(min(NOT_IN_ROOM_GRACE_S, self.mx.job.deadline.remaining()))
        try:
            return self.mx.retrying("matrix room state", go, grace)
        except TransientError:
            if self.mx.job.deadline.expired():
                raise
            raise ConflictError(
                f"{self.alias} points to {room_id}, which {self.user_id} is not in: "
                "the alias is taken by a room that is not ours",
                room_id=room_id,
            ) from None

    def put_state(self, room_id: str, event_type: str, content: dict[str, Any]) -> None:
        async def go() -> None:
            resp = await self.mx.client.room_put_state(room_id, event_type, content)
            if isinstance(resp, ErrorResponse):
                matrix.raise_common(resp, f"set {event_type}")
                raise ConflictError(f"cannot set {event_type} in {room_id}: {resp}")

        self.mx.call(f"matrix set {event_type}", go)

    def invite(self, room_id: str, user_id: str) -> None:
        async def go() -> None:
            resp = await self.mx.client.room_invite(room_id, user_id)
            if isinstance(resp, ErrorResponse):
                matrix.raise_common(resp, "invite")
                raise ConflictError(f"cannot invite {user_id} to {room_id}: {resp}")

        self.mx.call("matrix invite", go)

    def converge(self, room_id: str) -> dict[str, Any]:
        """Bring name, topic, staff power levels and invites to the wanted state."""
        current: dict[tuple[str, str], dict[str, Any]] = {
            (e["type"], e.get("state_key", "")): e.get("content", {})
            for e in self.state(room_id)
            if "type" in e
        }
        changed: list[str] = []
        if current.get(("m.room.name", ""), {}).get("name") != self.name:
            self.put_state(room_id, "m.room.name", {"name": self.name})
            changed.append("name")
        if current.get(("m.room.topic", ""), {}).get("topic") != self.topic:
            self.put_state(room_id, "m.room.topic", {"topic": self.topic})
            changed.append("topic")

        staff = [s for s in self.staff if s != self.user_id]
        levels = dict(current.get(("m.room.power_levels", ""), {}))
        users = dict(levels.get("users", {}))
        default = int(levels.get("users_default", 0))
        raised = [s for s in staff if int(users.get(s, default)) < MODERATOR]
        if raised:
            # Only raise staff to moderator, keep everything else: the content is replaced
            # as a whole, and creators (room v12) must stay out of `users`.
            users.update(dict.fromkeys(raised, MODERATOR))
            self.put_state(room_id, "m.room.power_levels", {**levels, "users": users})
            changed.append("power_levels")

        membership = {
            key: content.get("membership", "")
            for (etype, key), content in current.items()
            if etype == "m.room.member"
        }
        invited: list[str] = []
        banned = [s for s in staff if membership.get(s) == "ban"]
        for user_id in staff:
            if membership.get(user_id) not in ("join", "invite", "ban"):
                self.invite(room_id, user_id)
                invited.append(user_id)
        if invited:
            changed.append("invites")
        return {"changed": changed, "invited": invited, "raised": raised, "banned": banned}


@click.command("matrix-room")
@params.client_spec
@params.option(
    "--homeserver",
    env="PLANA_MATRIX_HOMESERVER",
    default=None,
    help="Client-server API base URL of the homeserver.",
)
@params.option(
    "--server-name",
    env="PLANA_MATRIX_SERVER_NAME",
    default=None,
    help="Matrix server name (the part after ':' in ids and aliases).",
)
@params.option(
    "--token-file",
    env="PLANA_MATRIX_TOKEN_FILE",
    default=None,
    help="File holding the bot's access token.",
)
@params.option(
    "--invite",
    env="PLANA_MATRIX_INVITE",
    default="",
    help="Staff user ids to invite as moderators, comma or space separated.",
)
@params.option(
    "--request-timeout",
    env="PLANA_HTTP_TIMEOUT",
    type=params.Seconds(0, 300, min_open=True),
    default=None,
    help=f"Seconds per request [default: {params.DEFAULT_REQUEST_TIMEOUT_S:g}].",
)
@params.common
def matrix_room(**kw: Any) -> None:
    """Ensure the tenant's support room: alias, name, topic, staff invites."""
    runner.run("matrix-room", lambda job: _run(job, kw), timeout=kw["timeout"])


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    # All input is validated before the token is read or the homeserver contacted.
    spec = params.client(kw, owner=False)
    owner = naming.owner_name(kw.get("owner_name"))
    homeserver = http.url(kw["homeserver"], "matrixHomeserver").rstrip("/")
    server = naming.server_name(kw["server_name"])
    staff = invitees(kw["invite"])
    timeout = http.request_timeout(kw["request_timeout"])
    sub = spec.tenant.subdomain
    alias = naming.room_alias(sub, spec.project_id, server)
    job.bind(tenant=sub)
    token = secrets.read_file(kw["token_file"], "PLANA_MATRIX_TOKEN_FILE")

    mx = matrix.Matrix(job, homeserver, token, timeout)
    room = Room(mx, alias, naming.room_localpart(sub, spec.project_id), room_name(owner),
                room_topic(spec), staff)  # fmt: skip
    details: dict[str, Any] = {"alias": alias}
    try:
        job.step("whoami")
        details["user_id"] = room.whoami()
        job.step("resolve")
        room_id = room.resolve()
        created = False
        if room_id is None:
            job.step("create")
            room_id = room.create()
            created = room_id is not None
            if room_id is None:
                job.log.info("alias taken by a concurrent run; using its room", alias=alias)
                room_id = room.resolve()
                if room_id is None:
                    raise TransientError(f"{alias} was taken and released again; run again")
        details["room_id"] = room_id
        job.step("converge")
        details.update(room.converge(room_id))
    finally:
        mx.close()
    if created:
        job.log.info("room created", **details)
        return Done("created", details)
    if details["changed"]:
        job.log.info("room updated", **details)
        return Done("updated", details)
    job.log.info("room unchanged", **details)
    return Done("unchanged", details)
