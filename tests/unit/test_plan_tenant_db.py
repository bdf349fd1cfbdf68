"""tenant-db's `decide` in every state a run can be killed in (or find): pure, no service."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.commands import tenant_db
from jobs.commands.tenant_db import State
from jobs.core import params, plan
from jobs.core.errors import ConflictError, TransientError
from jobs.ops import clone, marker

FP = "fp-now"  # the template's fingerprint as observed
ARGS = ["--subdomain", "acme", "--project-id", "23", "--tier", "starter",
        "--owner-email", "o@acme.example.com", "--owner-name", "Ada"]  # fmt: skip
BUILD = ["clone", "filestore", "personalise", "publish"]
READY = clone.TemplateState(FP)
MISSING = clone.TemplateState(problem="template database template_basic_18 does not exist (yet)")
UNFIT = clone.TemplateState(refused="database template_basic_18 exists but is not a template to "
                            "clone (it carries a template marker that does not fit its schema "
                            "(field 'fingerprint' is missing)): left untouched")  # fmt: skip


def make(*extra: str) -> tenant_db.Params:
    ctx = tenant_db.tenant_db.make_context("tenant-db", [*ARGS, *extra])
    return params.build(tenant_db.Params, dict(ctx.params))


P = make()


def work(state: str, fingerprint: str = FP, subdomain: str = "acme") -> marker.Seen:
    body = {"subdomain": subdomain, "project_id": 23, "template": P.template,
            "template_fingerprint": fingerprint}  # fmt: skip
    return marker.Seen(True, marker.Marker(marker.Kind.TENANT, state, body).encode())


DONE = {"subdomain": "acme", "project_id": 23, "template": P.template,
        "template_fingerprint": "fp-then"}  # fmt: skip
OTHERS = {**DONE, "subdomain": "someone-else"}
UNFIT_DONE = {**DONE, "project_id": True}  # this tenant's, but not as tenant-db writes it
COMPLETE = marker.Seen(True, marker.Marker(marker.Kind.TENANT, "complete", DONE).encode())


def state(**over: Any) -> State:
    values: dict[str, Any] = {
        "live": marker.Seen(), "work": marker.Seen(), "public_connect": False,
        "filestore": "missing", "template": READY,
    }  # fmt: skip
    return State(**{**values, **over})


def test_nothing_exists_plans_the_whole_build() -> None:
    steps = tenant_db.decide(state(), P)
    assert steps.names == tuple(BUILD) and steps.blocked is None
    assert steps.details is not None and steps.details["template_fingerprint"] == FP
    assert "resuming" not in steps.details


@pytest.mark.parametrize(
    ("reached", "left"),
    [("cloned", BUILD[1:]), ("filestore", BUILD[2:]), ("personalised", BUILD[3:])],
)
def test_a_marked_work_copy_is_resumed_from_its_step(reached: str, left: list[str]) -> None:
    fs = "missing" if reached == "cloned" else "dir"  # published with the `filestore` marker
    steps = tenant_db.decide(state(work=work(reached), filestore=fs), P)
    assert list(steps.names) == left
    assert steps.details is not None and steps.details["resuming"] == reached


def test_an_unmarked_work_copy_is_a_killed_runs_dropped_and_started_over() -> None:
    steps = tenant_db.decide(state(work=marker.Seen(True, None)), P)
    assert list(steps.names) == ["drop-unmarked", *BUILD]
    assert steps.steps[0].target == P.work


@pytest.mark.parametrize(
    "comment",
    [
        "a note someone wrote",
        'plana-jobs {"kind": "tenant", "state": "cloned", "subdomain": "someone-else"}',
        'plana-jobs {"kind": "environment", "state": "cloned"}',
        marker.Marker(marker.Kind.TENANT, "complete", {"subdomain": "acme"}).encode(),
        # This tenant's kind and subdomain, but not as tenant-db writes it: not its work copy.
        (work("cloned").comment or "").replace('"project_id":23', '"project_id":"23"'),
        (work("cloned").comment or "").replace('"cloned"', '"bogus"'),
    ],
)
def test_a_work_copy_with_someone_elses_comment_is_blocked(comment: str) -> None:
    steps = tenant_db.decide(state(work=marker.Seen(True, comment)), P)
    assert steps.steps == () and steps.blocked is not None
    assert f"database {P.work} exists and is not this tenant's work copy" in steps.blocked
    with pytest.raises(ConflictError):  # 65, with or without --dry-run
        steps.require_unblocked()


def test_a_clone_of_a_replaced_template_is_dropped_with_its_staged_files() -> None:
    steps = tenant_db.decide(state(work=work("cloned", fingerprint="fp-then")), P)
    assert list(steps.names) == ["drop-stale", *BUILD]
    assert steps.details is not None and steps.details["template_fingerprint"] == FP


def test_past_the_clone_the_work_copy_keeps_the_template_it_was_cloned_from() -> None:
    steps = tenant_db.decide(state(work=work("filestore", "fp-then"), filestore="dir"), P)
    assert list(steps.names) == ["personalise", "publish"]
    assert steps.details is not None and steps.details["template_fingerprint"] == "fp-then"


def test_a_missing_template_waits_75_before_anything_even_a_foreign_work_copy() -> None:
    for work_db in (marker.Seen(), marker.Seen(True, "a note"), work("filestore")):
        steps = tenant_db.decide(state(template=MISSING, work=work_db), P)
        assert steps.steps == () and steps.blocked is None
        with pytest.raises(TransientError, match="does not exist"):
            clone.raise_if_waiting(steps)


def test_a_template_whose_marker_does_not_fit_is_refused_65_not_waited_for() -> None:
    """A template marker no job wrote never becomes complete: blocked, never cloned as a
    template made by other means (nor retried as one still building)."""
    for over in ({}, {"work": work("cloned")}, {"live": COMPLETE, "filestore": "missing"}):
        steps = tenant_db.decide(state(**{"template": UNFIT, **over}), P)
        assert steps.steps == () and steps.blocked == UNFIT.refused, over
        clone.raise_if_waiting(steps)  # not a wait (75)
        with pytest.raises(ConflictError):
            steps.require_unblocked()
    converged = tenant_db.decide(state(template=UNFIT, live=COMPLETE, filestore="dir"), P)
    assert converged.steps == () and converged.blocked is None  # it needs no template


def test_a_symlinked_tenant_filestore_is_blocked_before_the_clone() -> None:
    steps = tenant_db.decide(state(filestore="other"), P)
    assert steps.blocked is not None and "symlink" in steps.blocked and steps.steps == ()


def test_the_complete_tenant_is_converged() -> None:
    steps = tenant_db.decide(state(live=COMPLETE, filestore="dir"), P)
    assert steps.steps == () and steps.blocked is None
    assert steps.details is not None and steps.details["template_fingerprint"] == "fp-then"
    clone.raise_if_waiting(steps)  # does not wait


def test_the_complete_tenant_needs_no_template() -> None:
    steps = tenant_db.decide(state(live=COMPLETE, filestore="dir", template=MISSING), P)
    assert steps.steps == () and steps.blocked is None
    clone.raise_if_waiting(steps)


@pytest.mark.parametrize(
    ("public", "fs", "repairs"),
    [
        (True, "dir", ["repair-connect"]),
        (False, "missing", ["repair-filestore"]),
        (True, "missing", ["repair-connect", "repair-filestore"]),
    ],
)
def test_drift_of_the_complete_tenant_is_repaired(
    public: bool, fs: str, repairs: list[str]
) -> None:
    steps = tenant_db.decide(state(live=COMPLETE, public_connect=public, filestore=fs), P)
    assert list(steps.names) == repairs and steps.blocked is None


def test_a_lost_filestore_waits_for_the_template_after_the_connect_repair() -> None:
    steps = tenant_db.decide(
        state(live=COMPLETE, public_connect=True, filestore="missing", template=MISSING), P
    )
    assert list(steps.names) == ["repair-connect"]  # CONNECT is not left open meanwhile
    with pytest.raises(TransientError, match="does not exist"):
        clone.raise_if_waiting(steps)


@pytest.mark.parametrize(
    "live",
    [
        marker.Seen(True, None),
        marker.Seen(True, "made by hand"),
        work("personalised"),  # a work marker under the live name: not complete
        marker.Seen(True, marker.Marker(marker.Kind.TENANT, "complete", OTHERS).encode()),
        marker.Seen(True, marker.Marker(marker.Kind.TENANT, "complete", UNFIT_DONE).encode()),
    ],
)
def test_a_live_database_not_ours_is_blocked(live: marker.Seen) -> None:
    steps = tenant_db.decide(state(live=live, filestore="dir"), P)
    assert steps.steps == () and steps.blocked is not None
    assert steps.blocked.startswith(f"database {P.db} exists but was not created by plana-jobs")


def test_a_live_database_with_a_symlinked_filestore_is_blocked() -> None:
    steps = tenant_db.decide(state(live=COMPLETE, filestore="other"), P)
    assert steps.blocked is not None and "symlink" in steps.blocked


def test_the_template_is_the_tiers_unless_given() -> None:
    assert P.template == "template_basic_18"
    assert make("--template-db", "template_canary").template == "template_canary"
    assert tenant_db.decide(state(), make("--template-db", "template_canary")).steps[0].says \
        .startswith(f"CREATE DATABASE {P.work} TEMPLATE template_canary ")  # fmt: skip


def test_steps_have_descriptions() -> None:
    steps = tenant_db.decide(state(work=marker.Seen(True, None)), P)
    assert all(isinstance(s, plan.Step) and s.says for s in steps.steps)
