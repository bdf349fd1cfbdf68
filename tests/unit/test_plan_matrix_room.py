"""matrix-room's decide for every state a run can leave (or find) the room in: pure, no Synapse."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from jobs.commands import matrix_room as mr
from jobs.core import params

BOT = "@plana-bot:plana.test"
ANA, BO = "@ana:plana.test", "@bo:plana.test"
ALIAS = "#support-acme-023:plana.test"


def make(**over: Any) -> mr.Params:
    values: dict[str, Any] = {
        "subdomain": "acme", "project_id": 23, "tier": "pro", "odoo_version": None,
        "owner_email": None, "owner_name": "Acme Owner", "homeserver": "http://hs.test",
        "server_name": "plana.test", "token_file": "/run/secrets/token", "invite": (ANA, BO),
        "request_timeout": None, "base_domain": "planapulse.app", "timeout": None,
        "dry_run": False, **over,
    }  # fmt: skip
    return params.build(mr.Params, values)


P = make()
# The room as a complete run leaves it: name, topic, staff invited and moderators.
CONVERGED = mr.RoomState(
    "!room:plana.test",
    readable=True,
    name=P.room_name,
    topic=P.room_topic,
    power_levels={"users": {BOT: 100, ANA: 50, BO: 50}, "users_default": 0, "kick": 50},
    membership={BOT: "join", ANA: "invite", BO: "join"},
)


def names(state: mr.State, p: mr.Params = P) -> list[str]:
    steps = mr.decide(state, p)
    assert steps.blocked is None, steps.blocked
    return list(steps.names)


def test_a_free_alias_plans_the_creation_then_the_staff_power_levels() -> None:
    steps = mr.decide(mr.State(BOT, None), P)
    assert steps.names == ("create", "power_levels")
    assert steps.steps[0].target == ALIAS
    assert steps.details == {"alias": ALIAS, "user_id": BOT}


def test_a_free_alias_without_staff_is_only_the_creation() -> None:
    assert names(mr.State(BOT, None), make(invite=())) == ["create"]
    # The bot is never its own invitee.
    assert names(mr.State(BOT, None), make(invite=(BOT,))) == ["create"]


def test_a_converged_room_plans_nothing() -> None:
    steps = mr.decide(mr.State(BOT, CONVERGED), P)
    assert steps.steps == ()
    assert steps.details == {"alias": ALIAS, "user_id": BOT, "room_id": CONVERGED.room_id,
                             "banned": []}  # fmt: skip


def test_killed_after_the_create_only_the_power_levels_remain() -> None:
    # The room as the homeserver creates it: invites sent, staff at the default level.
    fresh = replace(CONVERGED, power_levels={"users": {BOT: 100}, "users_default": 0},
                    membership={BOT: "join", ANA: "invite", BO: "invite"})  # fmt: skip
    assert names(mr.State(BOT, fresh)) == ["power_levels"]
    assert mr.to_raise(fresh, P.staff_for(BOT)) == [ANA, BO]


def test_killed_mid_convergence_plans_what_still_differs() -> None:
    half = replace(CONVERGED, topic=None, membership={BOT: "join", ANA: "invite"})
    steps = mr.decide(mr.State(BOT, half), P)
    assert steps.names == ("topic", "invite")
    assert steps.steps[1].target == BO


def test_a_renamed_room_with_a_kicked_member_is_put_back() -> None:
    changed = replace(CONVERGED, name="Somebody else's room", topic="by hand",
                      membership={BOT: "join", ANA: "invite", BO: "leave"})  # fmt: skip
    steps = mr.decide(mr.State(BOT, changed), P)
    assert steps.names == ("name", "topic", "invite")
    assert [s.target for s in steps.steps if s.name == "invite"] == [BO]


def test_a_banned_staff_member_stays_banned_and_is_reported() -> None:
    room = replace(CONVERGED, membership={BOT: "join", ANA: "invite", BO: "ban"})
    steps = mr.decide(mr.State(BOT, room), P)
    assert steps.names == ()
    assert (steps.details or {})["banned"] == [BO]


def test_nobody_is_lowered_and_the_default_level_counts() -> None:
    above = replace(CONVERGED, power_levels={"users": {BOT: 100, ANA: 100}, "users_default": 0})
    assert mr.to_raise(above, [ANA, BO]) == [BO]
    everyone = replace(CONVERGED, power_levels={"users": {}, "users_default": 50})
    assert mr.to_raise(everyone, [ANA, BO]) == []


def test_the_power_levels_keep_everything_else_and_add_no_creator() -> None:
    # Room v12: creators are not in `users` and must not be put there.
    room = replace(CONVERGED, power_levels={"users": {}, "kick": 50, "events": {"m.room.name": 50}})
    content = mr.power_levels(room, [ANA])
    assert content == {"users": {ANA: 50}, "kick": 50, "events": {"m.room.name": 50}}
    assert room.power_levels["users"] == {}  # the observed state is not changed


def test_an_alias_pointing_to_a_room_we_may_not_read_is_blocked() -> None:
    foreign = mr.RoomState("!theirs:plana.test", readable=False)
    steps = mr.decide(mr.State(BOT, foreign), P)
    assert steps.steps == ()
    assert steps.blocked is not None and "not ours" in steps.blocked
    assert "!theirs:plana.test" in steps.blocked


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", ()), (f"{BO}, {ANA} {BO}", (ANA, BO)), (f"{ANA}\n{BO},", (ANA, BO))],
)
def test_invitees_are_sorted_without_duplicates(value: str, expected: tuple[str, ...]) -> None:
    assert mr.invitees(value) == expected
