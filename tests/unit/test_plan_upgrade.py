"""The upgrade's plans: which phases remain for every state a run can be killed in. Pure."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from jobs.commands.upgrade import phases as ph
from jobs.commands.upgrade import plans
from jobs.commands.upgrade.plans import Db, State
from jobs.core import naming
from jobs.ops import marker

TENANT = naming.Tenant("acme", "planapulse.app")
DB = TENANT.db_name
HOP = ph.Spec(TENANT, 17, 18, Path("/data"), None)
SAME = ph.Spec(TENANT, 17, 17, Path("/data"), None)
CHAIN = list(ph.PHASES)
TENANT_DATA = {"subdomain": "acme", "project_id": 7, "tier": "starter"}
PREFIXES = ("010_agreement_legal_stale_views.sql",)


def live(allows: bool = True, **data: Any) -> Db:
    return Db(True, marker.Kind.TENANT, "complete", {**TENANT_DATA, **data}, allows)


def upgrading(attempt: int = 1, **more: Any) -> dict[str, Any]:
    return {"from": 17, "to": 18, "base": "17.0.1.3", "attempt": attempt, **more}


def work(phases: list[str], state: str = "", spec: ph.Spec = HOP, **data: Any) -> Db:
    body = {**spec.hop(), "attempt": 1, "phases": phases, "prefixes": [], **data}
    return Db(True, marker.Kind.UPGRADE_WORK, state or (phases[-1] if phases else "snapshot"),
              body, allows_connections=True)  # fmt: skip


def rollback_copy(frm: int = 17, to: int = 18, **data: Any) -> Db:
    body = {"subdomain": "acme", "from": frm, "to": to, "tenant": TENANT_DATA, **data}
    return Db(True, marker.Kind.ROLLBACK, "complete", body, allows_connections=False)


def fresh(**over: Any) -> State:
    """A 17 tenant, live and unfrozen, nothing of an upgrade yet."""
    return replace(State(live=live(), base="17.0.1.3", fs_live=True, prefixes=PREFIXES), **over)


def frozen(work_db: Db | None, **over: Any) -> State:
    """Snapshot recorded and the tenant frozen: the chain under way."""
    return fresh(**{"live": live(False, upgrading=upgrading()), "base": None, "work": work_db,
                    **over})  # fmt: skip


def upgraded(**over: Any) -> State:
    """After the cutover: the 18 tenant, the 17 one kept as the rollback copy."""
    data: dict[str, Any] = {"odoo_version": 18, "upgraded_from": 17, "rollback_db": f"{DB}__rb17"}
    return fresh(**{"live": live(**data), "base": "18.0.1.3", "rollback": rollback_copy(),
                    "fs_rollback": True, "fs_made": True, **over})  # fmt: skip


def names(state: State, spec: ph.Spec = HOP) -> list[str]:
    p = plans.decide(state, spec)
    assert p.blocked is None, p.blocked
    return list(p.names)


def blocked(state: State, spec: ph.Spec = HOP) -> str:
    p = plans.decide(state, spec)
    assert p.blocked is not None and not p.steps, p
    return p.blocked


# --------------------------------------------------------------------------- the chain


def test_a_fresh_tenant_plans_every_phase_with_a_fresh_snapshot() -> None:
    p = plans.decide(fresh(), HOP)
    assert list(p.names) == CHAIN
    assert p.steps[0].target == plans.FRESH
    assert all(s.says for s in p.steps)
    assert (p.details or {})["prefixes_pending"] == list(PREFIXES)


def test_killed_after_recording_upgrading_before_the_freeze() -> None:
    state = fresh(live=live(True, upgrading=upgrading(attempt=0)), base=None)
    p = plans.decide(state, HOP)
    assert list(p.names) == CHAIN and p.steps[0].target == plans.FRESH


def test_killed_after_the_freeze_before_the_clone() -> None:
    p = plans.decide(frozen(None), HOP)
    assert list(p.names) == CHAIN and p.steps[0].target == plans.FRESH


def test_killed_during_the_clone_the_unmarked_copy_is_made_again() -> None:
    p = plans.decide(frozen(Db(comment=False, allows_connections=True)), HOP)
    assert list(p.names) == CHAIN and p.steps[0].target == plans.FRESH


@pytest.mark.parametrize("done", range(1, len(CHAIN)))
def test_killed_after_each_phase_the_rest_remains(done: int) -> None:
    state = frozen(work(CHAIN[:done]), fs_work=True)
    assert names(state) == CHAIN[done:]


@pytest.mark.parametrize("running", ["source-pass", "target-pass"])
def test_killed_during_a_pass_starts_again_from_a_fresh_copy(running: str) -> None:
    before = CHAIN[: CHAIN.index(running)]
    p = plans.decide(frozen(work(before, running=running)), HOP)
    assert list(p.names) == CHAIN and p.steps[0].target == plans.FRESH


def test_a_failed_or_rolled_back_copy_is_never_passed_again() -> None:
    for state in ("failed", "rolled-back"):
        p = plans.decide(frozen(work(CHAIN[:3], state=state)), HOP)
        assert list(p.names) == CHAIN and p.steps[0].target == plans.FRESH


def test_recorded_but_unfrozen_freezes_again_and_keeps_the_copy() -> None:
    state = frozen(work(CHAIN[:2]), live=live(True, upgrading=upgrading()))
    p = plans.decide(state, HOP)
    assert list(p.names) == ["snapshot", "prefix", "target-pass", "cutover"]
    assert p.steps[0].target == plans.KEEP


def test_killed_in_the_prefix_the_applied_files_stay_applied() -> None:
    state = frozen(work(CHAIN[:2], prefixes=list(PREFIXES)))
    p = plans.decide(state, HOP)
    assert list(p.names) == ["prefix", "target-pass", "cutover"]
    assert (p.details or {})["prefixes_pending"] == []
    assert (p.details or {})["prefixes_applied"] == list(PREFIXES)


def test_a_converged_tenant_plans_nothing() -> None:
    p = plans.decide(upgraded(), HOP)
    assert p.blocked is None and p.steps == ()
    assert (p.details or {})["state"] == "upgraded"


def test_killed_between_the_cutover_swap_and_its_filestore_renames() -> None:
    # The databases swapped, filestore/{db} still the 17 one, filestore/{work} the upgraded.
    state = upgraded(fs_live=True, fs_work=True, fs_rollback=False, fs_made=False)
    p = plans.decide(state, HOP)
    assert list(p.names) == ["cutover"] and p.steps[0].target == plans.RENAMES
    # One rename done: the work filestore still to move into place.
    assert names(upgraded(fs_live=False, fs_work=True)) == ["cutover"]


def test_a_work_filestore_after_both_renames_is_stale_never_published() -> None:
    p = plans.decide(upgraded(fs_live=True, fs_work=True), HOP)
    assert p.steps == ()
    assert (p.details or {})["stale_filestore"] == str(HOP.fs(HOP.work))


def test_a_work_database_beside_the_work_filestore_is_that_copys_own() -> None:
    # After a rollback and a fresh snapshot the work name holds a database again.
    assert names(upgraded(fs_work=True, work=work(CHAIN[:1]))) == []


# --------------------------------------------------------------------------- blocked


def test_a_missing_tenant_is_blocked() -> None:
    assert "does not exist" in blocked(State(live=None))


def test_a_database_not_ours_is_blocked() -> None:
    why = f"database {DB} exists but is not a plana-jobs tenant (it has no comment)"
    assert blocked(fresh(live=Db(), live_problem=why)) == why


def test_a_non_adjacent_hop_is_blocked() -> None:
    assert "one major version" in blocked(fresh(), replace(HOP, to_version=19))


def test_base_elsewhere_than_from_version_is_blocked() -> None:
    assert "not 17.0 (fromVersion)" in blocked(fresh(base="18.0.1.3"))
    assert "not an Odoo database" in blocked(fresh(base=None,
                                                   base_problem="not an Odoo database"))


def test_frozen_by_someone_else_is_blocked() -> None:
    assert "frozen, but not by an upgrade" in blocked(fresh(live=live(False)))


def test_another_hop_under_way_is_blocked() -> None:
    other = live(False, upgrading={"from": 16, "to": 17, "attempt": 1})
    assert "16 → 17" in blocked(fresh(live=other))


def test_a_foreign_database_under_the_work_name_is_blocked() -> None:
    stranger = Db(comment=True, allows_connections=True)  # someone's comment, not a marker
    assert "not this tenant's upgrade work copy" in blocked(frozen(stranger))
    tampered = replace(work(CHAIN[:2]), data={**work(CHAIN[:2]).data, "subdomain": "other"})
    assert "not this tenant's upgrade work copy" in blocked(frozen(tampered))
    assert "not this tenant's upgrade work copy" in blocked(frozen(replace(
        work(CHAIN[:2]), kind=marker.Kind.TENANT)))  # fmt: skip


def test_a_taken_rollback_name_is_blocked_before_any_phase() -> None:
    assert "is taken" in blocked(fresh(rollback=Db(comment=True)))
    assert "is taken" in blocked(frozen(work(CHAIN[:4]), rollback=rollback_copy()))


def test_a_same_major_rollback_copy_is_superseded_by_the_snapshot() -> None:
    assert names(fresh(rollback=rollback_copy(17, 17))) == CHAIN


def test_a_symlinked_filestore_is_blocked() -> None:
    assert "symlink" in blocked(fresh(fs_refused=(str(HOP.fs(DB)),)))


# --------------------------------------------------------------------------- rollback


def rollback_names(state: State, spec: ph.Spec = HOP) -> list[str]:
    p = plans.decide_rollback(state, spec)
    assert p.blocked is None, p.blocked
    return [s.target for s in p.steps]


def test_rollback_after_the_cutover_swaps_the_copy_back() -> None:
    assert rollback_names(upgraded()) == [f"{DB}__rb17"]


def test_rollback_before_the_cutover_unfreezes() -> None:
    assert rollback_names(frozen(work(CHAIN[:3]))) == [DB]


def test_rollback_killed_after_its_swap_finishes_the_renames() -> None:
    state = fresh(work=work(CHAIN, state="rolled-back"), fs_rollback=True)
    assert rollback_names(state) == [plans.RENAMES]
    assert rollback_names(fresh(work=work(CHAIN, state="rolled-back"))) == []


def test_rollback_of_a_tenant_never_upgraded_does_nothing() -> None:
    assert rollback_names(fresh()) == []


def test_rollback_refuses_another_hops_copy_or_upgrade() -> None:
    p = plans.decide_rollback(upgraded(rollback=rollback_copy(17, 17)), HOP)
    assert p.blocked is not None and "not this tenant's rollback copy" in p.blocked
    other = fresh(live=live(False, upgrading={"from": 16, "to": 17}))
    assert "roll that one back" in (plans.decide_rollback(other, HOP).blocked or "")


# --------------------------------------------------------------------------- same-major

STEPS = ["same-major", "clone", "odoo", "swap", "filestore"]


def at17(**over: Any) -> State:
    """A 17 tenant last updated at revision r1, nothing pending."""
    data: dict[str, Any] = {
        "odoo_version": 17, "addons_revision": "r1", "updated_at": "2025-01-01T00:00:00+00:00"
    }  # fmt: skip
    return replace(fresh(live=live(**data), revision="r1"), **over)


def killed(work_db: Db | None, **over: Any) -> State:
    """A same-major run killed while the tenant is frozen."""
    up = {"from": 17, "to": 17, "strategy": "same-major", "revision": "r2", "attempt": 1}
    return at17(**{"live": live(False, odoo_version=17, addons_revision="r1", upgrading=up),
                   "base": None, "work": work_db, "revision": "r2", **over})  # fmt: skip


def same_names(state: State) -> list[str]:
    p = plans.decide_same_major(state, SAME)
    assert p.blocked is None, p.blocked
    return list(p.names)


def same_blocked(state: State) -> str:
    p = plans.decide_same_major(state, SAME)
    assert p.blocked is not None and not p.steps, p
    return p.blocked


def test_same_major_at_the_same_revision_plans_nothing() -> None:
    p = plans.decide_same_major(at17(), SAME)
    assert p.steps == () and (p.details or {})["updated_at"].startswith("2025")


def test_same_major_a_new_revision_or_a_pending_module_plans_every_step() -> None:
    assert same_names(at17(revision="r2")) == STEPS
    assert same_names(at17(pending_modules=("x: to upgrade",))) == STEPS
    assert same_names(fresh(revision="r1")) == STEPS  # never updated by same-major yet


def test_same_major_without_a_known_revision_plans_the_update() -> None:
    p = plans.decide_same_major(at17(revision=None), SAME)
    assert list(p.names) == STEPS and "unknown" in str((p.details or {})["revision"])


def test_same_major_killed_before_the_clone_or_during_it_clones_afresh() -> None:
    assert same_names(killed(None)) == STEPS
    assert same_names(killed(Db(comment=False))) == STEPS
    assert same_names(killed(work([], state="snapshot", spec=SAME, strategy="same-major",
                                  revision="r2"))) == STEPS  # fmt: skip


def test_same_major_killed_during_odoo_never_trusts_the_copy() -> None:
    copy = work([], state="snapshot", spec=SAME, strategy="same-major", revision="r2",
                running="same-major")  # fmt: skip
    assert same_names(killed(copy, fs_work=True)) == STEPS


def test_same_major_killed_after_verifying_swaps_the_copy_in() -> None:
    copy = work([], state="verified", spec=SAME, strategy="same-major", revision="r2")
    assert same_names(killed(copy, fs_work=True)) == ["same-major", "swap", "filestore"]
    # Verified at another revision, or without its filestore: made again.
    assert same_names(killed(copy, fs_work=True, revision="r3")) == STEPS
    assert same_names(killed(copy, fs_work=False)) == STEPS


def test_same_major_killed_before_its_filestore_renames_finishes_them_first() -> None:
    swapped = live(odoo_version=17, addons_revision="r1", rollback_db=f"{DB}__rb17")
    state = at17(live=swapped, rollback=rollback_copy(17, 17), fs_work=True, fs_live=True)
    assert same_names(state) == ["finish-filestore"]
    assert same_names(replace(state, revision="r2")) == ["finish-filestore", *STEPS]


def test_same_major_killed_after_a_rollback_swap_finishes_its_renames() -> None:
    state = at17(work=work([], state="rolled-back", spec=SAME), fs_rollback=True)
    assert same_names(state) == ["finish-filestore"]


def test_same_major_blocked_states() -> None:
    major = live(False, upgrading=upgrading())
    assert "major upgrade" in same_blocked(at17(live=major))
    assert "frozen, but not by an upgrade" in same_blocked(at17(live=live(False)))
    assert "not 17.0" in same_blocked(at17(base="16.0.1.0", revision="r2"))
    assert "is taken" in same_blocked(at17(revision="r2", rollback=rollback_copy(17, 18)))
    orphan = same_blocked(at17(revision="r2", fs_rollback=True))
    assert "has no database" in orphan
    assert "needs fromVersion = toVersion" in (plans.decide_same_major(at17(), HOP).blocked or "")
