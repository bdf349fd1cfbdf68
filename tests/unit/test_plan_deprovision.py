"""deprovision's plan for every state a run can leave (or be killed in): pure, no service."""

from __future__ import annotations

import pytest

from jobs.commands import deprovision as dp
from jobs.core import naming, params
from jobs.core.errors import UsageError
from jobs.ops import marker

SUB = "acme"
DB = naming.db_name(SUB)
ENV = naming.db_name(f"{SUB}--stg")
SET = "20250101T000000Z"
LIVE = marker.Marker("tenant", "complete", {"subdomain": SUB})


def make(*args: str, key: bool = True) -> dp.Params:
    """The job's parameters as the command line gives them (click parses, nothing runs)."""
    argv = ["--subdomain", SUB, "--dest", "/backups", "--generation", "3", "--stream", "s"]
    if key:
        argv += ["--backup-key-file", "/run/secrets/backup-key"]
    ctx = dp.deprovision.make_context("deprovision", [*argv, *args])
    return params.build(dp.Params, ctx.params)


def owned(*names: str, hidden: bool = False) -> dict[str, naming.Owned]:
    out = {}
    for name in names:
        o = naming.owned_name(name, SUB, hidden=hidden)
        assert o is not None, name
        out[name] = o
    return out


def steps(state: dp.State, p: dp.Params | None = None) -> list[tuple[str, str]]:
    return [(s.name, s.target) for s in dp.decide(state, p or make()).steps]


def test_a_live_tenant_is_backed_up_then_removed_then_announced() -> None:
    state = dp.State(databases=owned(DB, ENV, f"{DB}__new"), entries=owned(DB, ENV), live=LIVE)
    assert steps(state) == [
        ("final-backup", DB),
        ("drop", DB), ("drop", ENV), ("drop", f"{DB}__new"),  # the live one first
        ("filestore", DB), ("filestore", ENV),
        ("event", ""),
    ]  # fmt: skip
    details = dp.decide(state, make()).details
    assert details is not None and details["final_backup"] is None
    assert details["databases"] == [DB, ENV, f"{DB}__new"]


def test_taking_the_final_backup_needs_the_key_naming_flag_and_variable() -> None:
    state = dp.State(databases=owned(DB), live=LIVE)
    with pytest.raises(UsageError) as err:
        dp.decide(state, make(key=False))
    assert err.value.message == (
        "--backup-key-file / PLANA_BACKUP_KEY_FILE: is required to take the final backup"
    )


def test_killed_after_the_final_backup_goes_on_without_another_nor_the_key() -> None:
    mark = marker.Marker("tenant", dp.STATE, {"subdomain": SUB, "final_backup": SET})
    state = dp.State(databases=owned(DB), entries=owned(DB), live=mark, taken=SET)
    plan = dp.decide(state, make(key=False))
    assert [s.name for s in plan.steps] == ["drop", "filestore", "event"]
    assert plan.details is not None and plan.details["final_backup"] == SET


def test_a_recorded_final_set_that_is_gone_is_taken_again() -> None:
    mark = marker.Marker("tenant", dp.STATE, {"subdomain": SUB, "final_backup": SET})
    state = dp.State(databases=owned(DB), live=mark, taken=None)
    assert steps(state)[0] == ("final-backup", DB)


def test_killed_after_dropping_the_live_database_the_rest_goes_with_the_final_set() -> None:
    state = dp.State(databases=owned(f"{DB}__rb17", ENV), entries=owned(DB), final=SET)
    assert steps(state) == [("drop", f"{DB}__rb17"), ("drop", ENV), ("filestore", DB),
                            ("event", "")]  # fmt: skip


def test_killed_half_way_through_the_filestores_sweeps_the_leftovers() -> None:
    trash = f".{DB}.trash-0badc0de"
    state = dp.State(entries=owned(trash, hidden=True), final=SET)
    assert steps(state) == [("filestore", trash), ("event", "")]


def test_killed_before_the_event_only_the_event_is_left_with_its_final_set() -> None:
    plan = dp.decide(dp.State(final=SET), make())
    assert plan.names == ("event",)
    assert plan.details is not None and plan.details["final_backup"] == SET


def test_a_deprovisioned_tenant_with_the_event_sent_needs_nothing() -> None:
    plan = dp.decide(dp.State(final=SET, event="1-0"), make())
    assert plan.steps == () and plan.blocked is None
    assert plan.details is not None and plan.details["entry_id"] == "1-0"


def test_a_tenant_that_never_existed_needs_no_key_and_only_the_event() -> None:
    assert steps(dp.State(), make(key=False)) == [("event", "")]


def test_a_database_not_ours_blocks_everything() -> None:
    state = dp.State(databases=owned(DB), foreign=(f"{DB}__new",), live=LIVE)
    plan = dp.decide(state, make())
    assert plan.steps == ()
    assert plan.blocked is not None and f"{DB}__new" in plan.blocked and "marker" in plan.blocked


@pytest.mark.parametrize("left", [f"{DB}__rb17", f"{DB}__old", DB])
def test_without_live_database_or_final_set_what_may_be_the_only_copy_blocks(left: str) -> None:
    entries = owned(DB) if left == DB else {}
    databases = {} if left == DB else owned(left)
    plan = dp.decide(dp.State(databases=databases, entries=entries), make())
    assert plan.steps == ()
    assert plan.blocked is not None and plan.blocked.startswith(f"{left}: no live database")


def test_without_live_database_leftovers_that_are_no_copy_go_without_a_final_set() -> None:
    state = dp.State(databases=owned(f"{DB}__vfy", ENV), entries=owned(f".{DB}.partial",
                                                                       hidden=True))  # fmt: skip
    assert [n for n, _ in steps(state)] == ["drop", "drop", "filestore", "event"]


def test_sets_that_cannot_be_authenticated_without_the_key_need_it() -> None:
    with pytest.raises(UsageError) as err:
        dp.decide(dp.State(unread_sets=True), make(key=False))
    assert err.value.message.startswith("--backup-key-file / PLANA_BACKUP_KEY_FILE: is required")
