"""backup-verify's decide, through every state a run can be killed in: pure, no service."""

from __future__ import annotations

from jobs.commands import backup_verify
from tests.support.plans import manifest, params_of

SET = "20250310T020005Z"
SCRATCH = "acme.planapulse.app__vfy"


def p(**values: object) -> backup_verify.Params:
    return params_of(
        backup_verify.Params, subdomain="acme", dest="/backups", backup_key_file="/key", **values
    )


def state(**changes: object) -> backup_verify.State:
    base: dict[str, object] = {
        "set_name": SET, "refused": None, "manifest": manifest(SET, "acme"), "scratch": "absent",
    }  # fmt: skip
    base.update(changes)
    return backup_verify.State(**base)  # type: ignore[arg-type]


def test_a_good_state_plans_every_check() -> None:
    steps = backup_verify.decide(state(), p())
    assert steps.names == ("checksums", "filestore", "restore", "compare")
    assert steps.details == {"set": SET, "scratch": SCRATCH}
    assert SCRATCH in steps.steps[2].says


def test_a_scratch_database_left_by_a_killed_run_is_dropped_first() -> None:
    # Killed in restore or compare (its own marker), or during CREATE DATABASE (no comment).
    for left in ("ours", "unmarked"):
        steps = backup_verify.decide(state(scratch=left), p())
        assert steps.names == ("checksums", "filestore", "drop-scratch", "restore", "compare")
        assert steps.steps[2].target == SCRATCH


def test_someone_elses_database_under_the_scratch_name_is_blocked() -> None:
    steps = backup_verify.decide(state(scratch="foreign"), p())
    assert steps.blocked == f"database {SCRATCH} exists and is not ours" and not steps.steps


def test_no_set_or_a_refused_manifest_is_blocked() -> None:
    for why in ("no complete backup set in /backups/acme",
                "manifest.sig does not match manifest.json"):  # fmt: skip
        steps = backup_verify.decide(state(set_name=None, manifest=None, refused=why), p())
        assert steps.blocked == why and not steps.steps
