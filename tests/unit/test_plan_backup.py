"""backup's decide, through every state a run can be killed in: pure, no service."""

from __future__ import annotations

from datetime import UTC, datetime

from jobs.commands import backup
from jobs.ops import backup_sets, marker, retention
from tests.support.plans import params_of

NOW = datetime(2025, 3, 10, 2, 0, 5, tzinfo=UTC)
NEW = "20250310T020005Z"
SOURCE = backup_sets.Source(marker.Marker("tenant", "complete", {"subdomain": "acme"}), {}, "16")


def p(**values: object) -> backup.Params:
    return params_of(
        backup.Params, subdomain="acme", dest="/backups", backup_key_file="/key", **values
    )


def state(**changes: object) -> backup.State:
    base: dict[str, object] = {
        "source": SOURCE, "refused": None, "leftovers": (), "sets": (), "now": NOW,
    }  # fmt: skip
    base.update(changes)
    return backup.State(**base)  # type: ignore[arg-type]


def daily(day: int, month: int = 3, final: bool = False) -> retention.Listed:
    return retention.Listed(f"2025{month:02d}{day:02d}T020000Z", final)


def test_a_first_backup_dumps_publishes_and_deletes_nothing() -> None:
    steps = backup.decide(state(), p())
    assert steps.names == ("dump", "publish", "retention")
    assert steps.details == {"set": NEW, "leftovers": [], "retention_deletes": []}
    assert steps.steps[1].target == NEW


def test_leftovers_of_killed_runs_are_cleaned_first() -> None:
    # Killed in dump or publish (a .partial), or in retention's delete (a .deleting).
    left = (f"{NEW[:-3]}00Z.partial", "20250101T020000Z.deleting")
    steps = backup.decide(state(leftovers=left), p())
    assert steps.names == ("clean", "clean", "dump", "publish", "retention")
    assert [s.target for s in steps.steps[:2]] == list(left)


def test_a_database_that_is_not_ours_or_missing_is_blocked() -> None:
    why = "database acme.planapulse.app exists but does not carry this project's marker"
    steps = backup.decide(state(source=None, refused=why), p())
    assert steps.blocked == why and steps.steps == ()


def test_retention_lists_the_sets_it_deletes_never_a_final_one() -> None:
    sets = (daily(1, final=True), daily(2), daily(3), *(daily(d) for d in range(4, 10)))
    steps = backup.decide(state(sets=sets), p(keep_daily=3, keep_weekly=0, keep_monthly=0))
    # Kept: the new set (today) and the two most recent days before it; the final one always.
    deleted = [s.name for s in sets[1:7]]
    assert steps.details is not None and steps.details["retention_deletes"] == deleted
    assert steps.steps[-1].name == "retention" and deleted[0] in steps.steps[-1].says


def test_a_set_newer_than_the_clock_is_never_deleted() -> None:
    # The node's clock jumped back: a set from "the future" is kept, whatever the policy.
    future = retention.Listed("20990101T020000Z", False)
    steps = backup.decide(state(sets=(daily(1), future)), p(keep_daily=0, keep_weekly=0,
                                                             keep_monthly=0))  # fmt: skip
    assert steps.details is not None and steps.details["retention_deletes"] == [daily(1).name]


def test_doomed_is_the_same_before_and_after_the_set_exists() -> None:
    # The plan (before the dump) and the retention step (after it) decide alike.
    sets = tuple(daily(d) for d in range(1, 10))
    policy = retention.Policy(2, 1, 1)
    before = retention.doomed(sets, policy, NEW)
    after = retention.doomed((*sets, retention.Listed(NEW, False)), policy, NEW)
    assert before == after and before
