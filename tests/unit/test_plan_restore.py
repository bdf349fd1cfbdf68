"""restore's decide, through every state a run can be killed in: pure, no service."""

from __future__ import annotations

import pytest

from jobs.commands import restore
from jobs.core.errors import UsageError
from jobs.ops import marker
from jobs.ops.marker import Marker
from tests.support.plans import manifest, params_of

SET = "20250310T020005Z"
DB = "acme.planapulse.app"
TENANT = Marker("tenant", "complete", {"subdomain": "acme", "project_id": 7})
RESTORED = Marker("tenant", "complete", {"subdomain": "acme", "restored_from": SET})
FULL = ("check-set", "pg_restore", "verify", "filestore", "swap", "publish")


def p(**values: object) -> restore.Params:
    return params_of(
        restore.Params, subdomain="acme", dest="/backups", backup_key_file="/key", **values
    )


def ours(mark: Marker) -> restore.Db:
    return restore.Db(exists=True, mark=mark)


def work(state: str, set_name: str = SET, as_copy: bool = False) -> restore.Db:
    data = {"set": set_name, "as_copy": as_copy, "subdomain": "acme"}
    return ours(Marker(marker.Kind.RESTORE_WORK, state, data))


def state(**changes: object) -> restore.State:
    """Nothing of the tenant exists yet; the set is there and authentic."""
    base: dict[str, object] = {
        "set_name": SET, "set_refused": None, "manifest": manifest(SET, "acme"),
        "manifest_refused": None, "final_backup": None, "fs_refused": None,
        "db": restore.Db(), "allows_conn": True, "upgrading": False, "upgrade_work": (),
        "old": restore.Db(), "work": restore.Db(),
        "fs": "missing", "fs_old": "missing", "fs_work": "missing",
    }  # fmt: skip
    base.update(changes)
    return restore.State(**base)  # type: ignore[arg-type]


def decided(s: restore.State, **values: object) -> tuple[tuple[str, ...], str]:
    steps = restore.decide(s, p(**values))
    assert steps.blocked is None, steps.blocked
    return steps.names, restore.outcome(s, steps)


# --------------------------------------------------------------------------- a new tenant


def test_a_fresh_restore_plans_every_step_and_creates() -> None:
    assert decided(state()) == (FULL, "created")


def test_a_work_database_killed_in_pg_restore_or_verify_is_restored_again() -> None:
    # pg_restore drops it first: its marker says "created", not "verified".
    assert decided(state(work=work("created"))) == (FULL, "created")


def test_an_unmarked_work_database_is_dropped_first() -> None:
    # A kill during its CREATE DATABASE leaves it without a comment.
    names, _ = decided(state(work=restore.Db(exists=True, unmarked=True)))
    assert names == ("drop-work", *FULL)


def test_a_verified_work_database_of_this_set_is_reused() -> None:
    # Killed in filestore (or before the swap): only the filestore is extracted again.
    names, outcome = decided(state(work=work("verified"), fs_work="dir"))
    assert names == ("check-set", "filestore", "swap", "publish") and outcome == "created"


def test_a_verified_work_database_of_another_set_or_copy_mode_is_not_reused() -> None:
    assert decided(state(work=work("verified", "20250101T000000Z")))[0] == FULL
    assert decided(state(work=work("verified", as_copy=True)))[0] == FULL


def test_a_work_database_that_is_not_ours_is_blocked() -> None:
    why = f"database {DB}__rst exists but is not ours (it carries a 'tenant' marker)"
    steps = restore.decide(state(work=restore.Db(exists=True, refused=why)), p())
    assert steps.blocked == why and not steps.steps


# --------------------------------------------------------------------------- swap and publish


def test_a_swap_killed_before_the_work_copy_took_the_name_is_rolled_back_first() -> None:
    s = state(old=ours(TENANT), work=work("verified"), fs_old="dir", fs_work="dir")
    names, outcome = decided(s, replace=True)
    assert names == ("rollback", "check-set", "filestore", "swap", "publish", "drop-old")
    assert outcome == "updated"


def test_a_rollback_comes_first_even_when_the_rest_is_refused() -> None:
    # Re-run without --replace: the tenant gets its database back, then the run is refused.
    steps = restore.decide(state(old=ours(TENANT), fs_old="dir"), p())
    assert steps.names == ("rollback",) and steps.blocked is not None
    assert "--replace" in steps.blocked


def test_a_swap_killed_after_the_rename_only_publishes() -> None:
    s = state(db=ours(Marker(marker.Kind.RESTORE_WORK, "verified", {"set": SET})),
              old=ours(TENANT), fs_work="dir")  # fmt: skip
    assert decided(s, replace=True) == (("publish", "drop-old"), "updated")


def test_killed_while_dropping_the_old_copies_drops_them() -> None:
    s = state(db=ours(RESTORED), old=ours(TENANT), fs="dir", fs_old="dir")
    assert decided(s) == (("drop-old",), "updated")


def test_killed_before_the_filestore_was_placed_places_it() -> None:
    s = state(db=ours(RESTORED), fs_work="dir")
    assert decided(s) == (("place-filestore",), "updated")


def test_an_already_restored_tenant_is_converged() -> None:
    assert decided(state(db=ours(RESTORED), fs="dir")) == ((), "unchanged")


# --------------------------------------------------------------------------- refusals


def test_an_existing_tenant_needs_replace() -> None:
    refused = restore.decide(state(db=ours(TENANT), fs="dir"), p())
    assert refused.blocked == f"database {DB} exists: pass --replace to swap it"
    names, outcome = decided(state(db=ours(TENANT), fs="dir"), replace=True)
    assert names == (*FULL, "drop-old") and outcome == "updated"


def test_a_filestore_without_its_database_needs_replace() -> None:
    steps = restore.decide(state(fs="dir"), p())
    assert steps.blocked is not None and "exists without its database" in steps.blocked
    assert decided(state(fs="dir"), replace=True)[0] == (*FULL, "drop-old")


def test_someone_elses_database_is_blocked() -> None:
    why = f"database {DB} exists but is not ours (its comment is not a plana-jobs marker)"
    steps = restore.decide(state(db=restore.Db(exists=True, refused=why)), p(replace=True))
    assert steps.blocked == why and not steps.steps


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"db": ours(TENANT), "upgrading": True}, "frozen for an upgrade"),
        ({"db": ours(TENANT), "allows_conn": False}, "does not allow connections"),
        ({"upgrade_work": (f"{DB}__up19",)}, "upgrade under way"),
    ],
)
def test_an_upgrade_under_way_is_blocked(changes: dict[str, object], says: str) -> None:
    steps = restore.decide(state(**changes), p(replace=True))
    assert steps.blocked is not None and says in steps.blocked and not steps.steps


def test_a_deprovisioned_tenant_comes_back_only_from_its_final_backup() -> None:
    steps = restore.decide(state(final_backup="20250401T000000Z"), p())
    assert steps.blocked is not None and "deprovisioned" in steps.blocked
    assert decided(state(final_backup=SET)) == (FULL, "created")


@pytest.mark.parametrize(
    "changes",
    [
        {"set_name": None, "manifest": None, "set_refused": "no complete backup set in /b/acme"},
        {"manifest": None, "manifest_refused": f"set {SET} belongs to other, not to acme"},
        {"fs_refused": "/data/filestore/acme.planapulse.app is a symlink or not a directory"},
    ],
)
def test_a_set_that_fails_validation_or_a_symlinked_filestore_is_blocked(
    changes: dict[str, object],
) -> None:
    steps = restore.decide(state(**changes), p())
    assert steps.blocked in changes.values() and not steps.steps


def test_another_tenant_needs_as_copy() -> None:
    with pytest.raises(UsageError) as err:
        p(to_subdomain="other")
    assert err.value.message == (
        "--to-subdomain / PLANA_RESTORE_TO_SUBDOMAIN: restoring into another tenant needs --as-copy"
    )
    names, outcome = decided(state(), to_subdomain="other", as_copy=True)
    assert names == FULL and outcome == "created"
