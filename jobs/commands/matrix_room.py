"""`plana-job matrix-room`: the tenant's support room, its alias, name, topic and staff.

The alias `#support-{subdomain}-{projectId:03d}:{server}` is the identity of the room: it is
resolved first; only when it is free is a room created *with* it, and the homeserver refuses a
second room for a taken alias (`M_ROOM_IN_USE`, or 409 when two creations race). The loser of
that race resolves the alias and continues with the winner's room, so concurrent or repeated
runs converge on one room. An existing room is then brought to the wanted name, topic, staff
power level and invites, changing only what differs.

observe: whoami, the alias, the room's state (all read-only). plan: `create` when the alias is
free; then `name`, `topic`, `power_levels` and one `invite` per staff member, each only where
the room differs; blocked (65) when the alias points to a room we may not read. After a
`create`, the room is observed again and planned again: the new room (or the winner's, when a
racing run created it first) is what the remaining steps apply to.

Every call goes through `matrix.Matrix`: bounded by the job's deadline, never nio's own retries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from jobs.adapters import http, matrix
from jobs.core import naming, params, plan, runner, secrets
from jobs.core.errors import TransientError, UsageError
from jobs.core.params import DEFAULT_REQUEST_TIMEOUT_S
from jobs.core.result import Done

MODERATOR = 50  # the power level Matrix clients call "Moderator"
# A room whose alias we resolved but whose state we may not read is either being created by a
# racing run (the alias is bound before the room's first events) or not ours. Wait this long
# for the former before calling it the latter (65).
NOT_IN_ROOM_GRACE_S = 5.0
_USER_ID = re.compile(r"@[a-z0-9._=/+-]+:[A-Za-z0-9.-]+(?::[0-9]{1,5})?", re.ASCII)


def invitees(value: str | None, field: str = "invite") -> tuple[str, ...]:
    """Staff user ids, separated by commas or whitespace; sorted, without duplicates."""
    ids = [v for v in re.split(r"[\s,]+", value or "") if v]
    for user_id in ids:
        if not _USER_ID.fullmatch(user_id) or len(user_id) > 255:
            raise UsageError(field, f"not a Matrix user id (@name:server): {user_id[:60]!r}")
    return tuple(sorted(set(ids)))


def _homeserver(value: str) -> str:
    return http.url(value, "homeserver").rstrip("/")


def _given(value: str) -> str:
    # An explicitly empty path is as good as none: bad input (64), not a missing file (78).
    if not value.strip():
        raise UsageError("file", "is required")
    return value


def room_name(owner: str) -> str:
    return f"Support · {owner}"


def room_topic(spec: naming.ClientSpec) -> str:
    return f"{spec.tenant.hostname} · tier {spec.tier} · project {spec.project_id:03d}"


@params.spec
class Params(params.ClientSpec):
    owner_email: str | None = params.owner_email(required=False)
    homeserver: str = params.option(
        "--homeserver",
        "PLANA_MATRIX_HOMESERVER",
        "Client-server API base URL of the homeserver.",
        type=params.Rule("url", _homeserver),
        required=True,
    )
    server_name: str = params.option(
        "--server-name",
        "PLANA_MATRIX_SERVER_NAME",
        "Matrix server name (the part after ':' in ids and aliases).",
        type=params.Rule("name", naming.server_name),
        required=True,
    )
    token_file: str = params.option(
        "--token-file",
        "PLANA_MATRIX_TOKEN_FILE",
        "Secret file: the bot's access token.",
        type=params.Rule("file", _given),
        required=True,
    )
    invite: tuple[str, ...] = params.option(
        "--invite",
        "PLANA_MATRIX_INVITE",
        "Staff user ids to invite as moderators, comma or space separated.",
        type=params.Rule("ids", invitees),
        default="",
    )
    request_timeout: float | None = params.request_timeout()

    @property
    def alias(self) -> str:
        return naming.room_alias(self.subdomain, self.project_id, self.server_name)

    @property
    def localpart(self) -> str:
        return naming.room_localpart(self.subdomain, self.project_id)

    @property
    def room_name(self) -> str:
        return room_name(self.owner_name or "")

    @property
    def room_topic(self) -> str:
        return room_topic(self.client)

    @property
    def http_timeout(self) -> float:
        return DEFAULT_REQUEST_TIMEOUT_S if self.request_timeout is None else self.request_timeout

    def staff_for(self, user_id: str) -> list[str]:
        """The staff to invite and raise: everyone listed but the bot itself."""
        return [s for s in self.invite if s != user_id]


# --------------------------------------------------------------------------- observe


@dataclass(frozen=True)
class RoomState:
    """The room the alias points to, as far as its state events say."""

    room_id: str
    readable: bool  # false: its state is forbidden to us (not our room)
    name: str | None = None
    topic: str | None = None
    power_levels: Mapping[str, Any] = field(default_factory=dict)
    membership: Mapping[str, str] = field(default_factory=dict)  # user id → join/invite/…


@dataclass(frozen=True)
class State:
    user_id: str  # whom the token belongs to (the bot)
    room: RoomState | None  # None: the alias is free


def observe_room(mx: matrix.Matrix, room_id: str) -> RoomState:
    events = mx.room_state(room_id, NOT_IN_ROOM_GRACE_S)
    if events is None:
        return RoomState(room_id, readable=False)
    current: dict[tuple[str, str], dict[str, Any]] = {
        (e["type"], e.get("state_key", "")): e.get("content", {}) for e in events if "type" in e
    }
    return RoomState(
        room_id,
        readable=True,
        name=current.get(("m.room.name", ""), {}).get("name"),
        topic=current.get(("m.room.topic", ""), {}).get("topic"),
        power_levels=dict(current.get(("m.room.power_levels", ""), {})),
        membership={
            key: str(content.get("membership", ""))
            for (etype, key), content in current.items()
            if etype == "m.room.member"
        },
    )


def observe(mx: matrix.Matrix, p: Params) -> State:
    user_id = mx.whoami()
    room_id = mx.resolve(p.alias)
    return State(user_id, None if room_id is None else observe_room(mx, room_id))


# --------------------------------------------------------------------------- plan


def to_raise(room: RoomState, staff: list[str]) -> list[str]:
    """Staff below moderator (nobody is ever lowered)."""
    users = room.power_levels.get("users", {})
    default = int(room.power_levels.get("users_default", 0))
    return [s for s in staff if int(users.get(s, default)) < MODERATOR]


def to_invite(room: RoomState, staff: list[str]) -> list[str]:
    """Staff neither joined nor invited; a banned one stays banned (a moderator's ban wins)."""
    return [s for s in staff if room.membership.get(s) not in ("join", "invite", "ban")]


def banned(room: RoomState, staff: list[str]) -> list[str]:
    return [s for s in staff if room.membership.get(s) == "ban"]


def power_levels(room: RoomState, raised: list[str]) -> dict[str, Any]:
    """The power levels with `raised` made moderators and everything else kept: the content is
    replaced as a whole, and creators (room v12) must stay out of `users`."""
    users = dict(room.power_levels.get("users", {}))
    users.update(dict.fromkeys(raised, MODERATOR))
    return {**room.power_levels, "users": users}


def decide(state: State, p: Params) -> plan.Plan:
    staff = p.staff_for(state.user_id)
    details: dict[str, Any] = {"alias": p.alias, "user_id": state.user_id}
    room = state.room
    if room is None:
        # The new room gets name, topic and invites with its creation; its power levels are
        # the homeserver's defaults, so staff are raised after (re-planned on the real room).
        return plan.of(
            plan.Step(
                "create",
                f"create the private room {p.alias} named {p.room_name!r},"
                f" inviting {len(staff)} staff",
                target=p.alias,
            ),
            plan.Step("power_levels", f"raise {', '.join(staff)} to moderator") if staff else None,
            **details,
        )
    details["room_id"] = room.room_id
    if not room.readable:
        return plan.blocked(
            f"{p.alias} points to {room.room_id}, which {state.user_id} is not in: "
            "the alias is taken by a room that is not ours",
            **details,
        )
    raised = to_raise(room, staff)
    return plan.of(
        plan.Step("name", f"set the name to {p.room_name!r}") if room.name != p.room_name else None,
        plan.Step("topic", f"set the topic to {p.room_topic!r}")
        if room.topic != p.room_topic
        else None,
        plan.Step("power_levels", f"raise {', '.join(raised)} to moderator") if raised else None,
        *(plan.Step("invite", f"invite {u}", target=u) for u in to_invite(room, staff)),
        banned=banned(room, staff),
        **details,
    )


# --------------------------------------------------------------------------- run


@contextmanager
def session(job: runner.Job, p: Params) -> Iterator[matrix.Matrix]:
    # All input was validated by click; the token is read only now, just before the homeserver
    # is contacted.
    token = secrets.read_file(p.token_file, matrix.TOKEN)
    mx = matrix.Matrix(job, p.homeserver, token, p.http_timeout)
    try:
        yield mx
    finally:
        mx.close()


def preview(job: runner.Job, p: Params) -> plan.Plan:
    job.bind(tenant=p.subdomain)
    with session(job, p) as mx:
        return decide(observe(mx, p), p)


def create(job: runner.Job, mx: matrix.Matrix, p: Params, state: State) -> tuple[RoomState, bool]:
    """The `create` step: the room made with its alias, or the racing winner's; then observed
    again (the remaining steps apply to the room as the homeserver has it)."""
    job.step("create")
    staff = p.staff_for(state.user_id)
    room_id = mx.create_room(p.localpart, p.room_name, p.room_topic, staff)
    created = room_id is not None
    if room_id is None:
        job.log.info("alias taken by a concurrent run; using its room", alias=p.alias)
        room_id = mx.resolve(p.alias)
        if room_id is None:
            raise TransientError(f"{p.alias} was taken and released again; run again")
    return observe_room(mx, room_id), created


def converge(job: runner.Job, mx: matrix.Matrix, p: Params, state: State) -> dict[str, Any]:
    """Apply the steps `decide` gives for an existing room; what changed, for the result."""
    steps = decide(state, p)
    steps.require_unblocked(**(steps.details or {}))
    room = state.room
    assert room is not None  # decide plans a create, never these steps, for a free alias
    staff = p.staff_for(state.user_id)
    raised = to_raise(room, staff)
    invited: list[str] = []

    def invite(step: plan.Step) -> None:
        mx.invite(room.room_id, step.target)
        invited.append(step.target)

    plan.apply(job, steps, {
        "name": lambda _: mx.put_state(room.room_id, "m.room.name", {"name": p.room_name}),
        "topic": lambda _: mx.put_state(room.room_id, "m.room.topic", {"topic": p.room_topic}),
        "power_levels": lambda _: mx.put_state(
            room.room_id, "m.room.power_levels", power_levels(room, raised)
        ),
        "invite": invite,
    })  # fmt: skip
    changed = [n for n in ("name", "topic", "power_levels") if n in steps]
    return {
        "room_id": room.room_id,
        "changed": [*changed, *(["invites"] if invited else [])],
        "invited": invited,
        "raised": raised,
        "banned": banned(room, staff),
    }


def run(job: runner.Job, p: Params) -> Done:
    job.bind(tenant=p.subdomain)
    with session(job, p) as mx:
        state = observe(mx, p)
        first = decide(state, p)
        first.require_unblocked(**(first.details or {}))
        created = False
        if "create" in first:
            room, created = create(job, mx, p, state)
            state = State(state.user_id, room)
        details = {"alias": p.alias, "user_id": state.user_id, **converge(job, mx, p, state)}
    if created:
        job.log.info("room created", **details)
        return Done("created", details)
    if details["changed"]:
        job.log.info("room updated", **details)
        return Done("updated", details)
    job.log.info("room unchanged", **details)
    return Done("unchanged", details)


matrix_room = params.command(
    "matrix-room",
    Params,
    run,
    preview,
    "Ensure the tenant's support room: alias, name, topic, staff invites.",
)
