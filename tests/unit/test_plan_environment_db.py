"""environment-db's `decide` in every state a run can be killed in (or find): pure, no service."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.commands import environment_db
from jobs.commands.environment_db import State
from jobs.core import params
from jobs.core.errors import ConflictError, TransientError
from jobs.ops import clone, marker
from tests.support import markers

FRESH = ["--subdomain", "acme", "--env", "staging", "--tier", "pro",
         "--owner-email", "o@acme.example.com", "--owner-name", "Ada"]  # fmt: skip
COPY = ["--subdomain", "acme", "--env", "staging", "--copy-from-production"]
DB = "acme--staging.planapulse.app"
FRESH_BUILD = ["clone", "neutralise", "publish"]
COPY_BUILD = ["copy-database", "copy-filestore", "neutralise", "publish"]
READY = clone.TemplateState("fp")
MISSING = clone.TemplateState(problem="template database template_pro_18 does not exist (yet)")
PRODUCTION = marker.Seen(True, marker.Marker(marker.Kind.TENANT, "complete",
                                             markers.tenant("acme")).encode())  # fmt: skip


def make(*args: str) -> environment_db.Params:
    ctx = environment_db.environment_db.make_context("environment-db", list(args))
    return params.build(environment_db.Params, dict(ctx.params))


def env(generation: int | None = 1, tenant: str = "acme", source: str = "template") -> marker.Seen:
    body = {"subdomain": "acme--staging", "tenant": tenant, "env": "staging",
            "source": source, "generation": generation}  # fmt: skip
    return marker.Seen(True, marker.Marker(marker.Kind.ENVIRONMENT, "complete", body).encode())


def state(copy: bool = False, **over: Any) -> State:
    values: dict[str, Any] = {
        "live": marker.Seen(), "work": marker.Seen(), "old": marker.Seen(),
        "fs": "missing", "fs_work": "missing", "fs_old": "missing",
        "production": PRODUCTION if copy else marker.Seen(),
        "template": None if copy else READY,
    }  # fmt: skip
    return State(**{**values, **over})


def test_fresh_from_nothing_clones_neutralises_and_publishes() -> None:
    steps = environment_db.decide(state(), make(*FRESH))
    assert list(steps.names) == FRESH_BUILD and steps.blocked is None
    assert steps.details is not None and steps.details["existing"] is False
    assert steps.steps[0].target == DB + "__env" and "template_pro_18" in steps.steps[0].says


def test_a_copy_from_nothing_dumps_restores_and_copies_the_filestore() -> None:
    steps = environment_db.decide(state(copy=True), make(*COPY))
    assert list(steps.names) == COPY_BUILD


@pytest.mark.parametrize(
    ("production", "why"),
    [
        (marker.Seen(), "database acme.planapulse.app does not exist"),
        (marker.Seen(True, None), "is not a tenant to copy as production"),
        (marker.Seen(True, env().comment), "is not a tenant to copy as production"),
        (marker.Seen(True, marker.Marker(marker.Kind.TENANT, "complete", markers.tenant(
            "acme", template=["template_pro_18"])).encode()),
         "(it carries a tenant marker that does not fit its schema (field 'template' is a list,"
         " not text))"),
    ],
)
def test_a_copy_of_a_production_that_is_not_a_tenant_is_blocked(
    production: marker.Seen, why: str
) -> None:
    steps = environment_db.decide(state(copy=True, production=production), make(*COPY))
    assert steps.steps == () and steps.blocked is not None and why in steps.blocked
    with pytest.raises(ConflictError):
        steps.require_unblocked()


@pytest.mark.parametrize("live", [marker.Seen(True, None), marker.Seen(True, "by hand"),
                                  env(tenant="other")])  # fmt: skip
def test_a_database_under_the_environments_name_not_ours_is_blocked(live: marker.Seen) -> None:
    steps = environment_db.decide(state(live=live, fs="dir"), make(*FRESH, "--refresh"))
    assert steps.steps == () and steps.blocked is not None
    assert steps.blocked.startswith(f"database {DB} exists but is not this tenant's environment")


def test_an_existing_environment_is_converged() -> None:
    steps = environment_db.decide(state(live=env(), fs="dir"), make(*FRESH))
    assert steps.steps == () and steps.blocked is None
    assert steps.details is not None and steps.details["source"] == "template"


def test_a_refresh_of_the_same_generation_is_converged() -> None:
    steps = environment_db.decide(state(live=env(1), fs="dir"),
                                  make(*FRESH, "--refresh", "--generation", "1"))  # fmt: skip
    assert steps.steps == ()


@pytest.mark.parametrize("generation", [["--generation", "2"], []])
def test_a_refresh_of_another_generation_rebuilds(generation: list[str]) -> None:
    steps = environment_db.decide(state(live=env(1), fs="dir"),
                                  make(*FRESH, "--refresh", *generation))  # fmt: skip
    assert list(steps.names) == FRESH_BUILD
    assert steps.details is not None and steps.details["existing"] is True


@pytest.mark.parametrize(
    "over",
    [
        {"old": env()},  # killed after the rename, before the old copy was dropped
        {"fs_old": "dir"},  # the old filestore left aside
        {"fs": "missing", "fs_work": "dir"},  # killed before the filestore went into place
    ],
)
def test_a_swap_killed_after_its_rename_is_finished(over: dict[str, Any]) -> None:
    steps = environment_db.decide(state(live=env(), **{"fs": "dir", **over}), make(*FRESH))
    assert list(steps.names) == ["finish-swap"]


def test_a_swap_killed_before_its_rename_is_rolled_back() -> None:
    steps = environment_db.decide(
        state(old=env(), work=marker.Seen(True, "work"), fs_old="dir"), make(*FRESH)
    )
    assert list(steps.names) == ["roll-back-swap"]


def test_a_rolled_back_refresh_is_then_rebuilt() -> None:
    work = WORK
    steps = environment_db.decide(state(old=env(1), work=work, fs_old="dir", fs_work="dir"),
                                  make(*FRESH, "--refresh", "--generation", "2"))  # fmt: skip
    assert list(steps.names) == ["roll-back-swap", "drop-work", *FRESH_BUILD]


def test_an_old_copy_not_ours_is_not_rolled_back() -> None:
    steps = environment_db.decide(state(old=marker.Seen(True, "by hand")), make(*FRESH))
    assert steps.steps == () and steps.blocked is not None


# What a killed build leaves on its work copy: this environment's work marker.
WORK = marker.Seen(True, marker.Marker(marker.Kind.ENVIRONMENT_WORK, "created", {
    "subdomain": "acme--staging", "tenant": "acme", "env": "staging"}).encode())  # fmt: skip


@pytest.mark.parametrize(
    "over", [{"work": marker.Seen(True, None)}, {"work": WORK}, {"fs_work": "dir"}]
)
def test_a_killed_builds_leftovers_are_dropped_first(over: dict[str, Any]) -> None:
    steps = environment_db.decide(state(copy=True, **over), make(*COPY))
    assert list(steps.names) == ["drop-work", *COPY_BUILD]
    assert steps.steps[0].target == DB + "__env"


@pytest.mark.parametrize("comment", ["by hand: keep", WORK.comment and WORK.comment.replace(
    '"env":"staging"', '"env":"other"')])  # fmt: skip
def test_a_work_copy_someone_else_marked_is_blocked_not_dropped(comment: str | None) -> None:
    steps = environment_db.decide(state(work=marker.Seen(True, comment)), make(*FRESH))
    assert steps.steps == () and steps.blocked is not None
    assert "acme--staging.planapulse.app__env" in steps.blocked


def test_a_missing_template_waits_75() -> None:
    steps = environment_db.decide(state(template=MISSING), make(*FRESH))
    assert steps.steps == () and steps.blocked is None
    with pytest.raises(TransientError, match="does not exist"):
        clone.raise_if_waiting(steps)


def test_a_template_whose_marker_does_not_fit_is_refused_65() -> None:
    unfit = clone.TemplateState(refused="database template_pro_18 exists but is not a template")
    steps = environment_db.decide(state(template=unfit), make(*FRESH))
    assert steps.steps == () and steps.blocked == unfit.refused
    with pytest.raises(ConflictError):
        steps.require_unblocked()


def test_a_missing_template_does_not_matter_to_an_existing_environment() -> None:
    steps = environment_db.decide(state(live=env(), fs="dir", template=MISSING), make(*FRESH))
    assert steps.steps == ()
    clone.raise_if_waiting(steps)


def test_a_missing_template_waits_after_a_roll_back() -> None:
    steps = environment_db.decide(state(old=env(1), template=MISSING),
                                  make(*FRESH, "--refresh", "--generation", "2"))  # fmt: skip
    assert list(steps.names) == ["roll-back-swap"]
    with pytest.raises(TransientError):
        clone.raise_if_waiting(steps)
