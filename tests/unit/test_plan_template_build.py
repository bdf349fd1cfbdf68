"""template-build's plan (`decide`) in every state a run can be killed in, or find: pure, no
service. Each test builds the State the job would observe and checks the steps planned."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.commands import template_build as tb
from jobs.core import params
from jobs.core.errors import UsageError
from jobs.ops import marker

BINARY = "Odoo Server 18.0"
CODE = tb.Code(BINARY, "d" * 64)
TEMPLATE = "template_unit"
BUILD, OLD = TEMPLATE + "__build", TEMPLATE + "__old"
FULL = ("prepare", "odoo", "verify", "freeze", "swap", "cleanup")
RESUME = ("freeze", "swap", "cleanup")


def make(**over: Any) -> tb.Params:
    values: dict[str, Any] = {
        "template_code": "basic", "odoo_version": 18, "modules": ("base", "web"),
        "addons_revision": None, "addons_path": None, "odoo_config": None,
        "template_db": TEMPLATE, "force": False, "odoo_bin": "odoo", "data_dir": "/srv/data",
        "pg_dsn": None, "base_domain": "x.test", "timeout": None, "dry_run": False, **over,
    }  # fmt: skip
    return params.build(tb.Params, values)


P = make()
FP = tb.marker_data(P, CODE, BINARY)["fingerprint"]
OTHER_FP = "0" * 64


def comment(state: str, fp: str = FP, kind: str = marker.Kind.TEMPLATE, **data: Any) -> str:
    """A template marker as the job writes it (its whole schema), of fingerprint `fp`."""
    body = {**tb.marker_data(P, CODE, BINARY), "fingerprint": fp, **data}
    return marker.Marker(kind, state, body).encode()


def db(name: str, text: str | None = None, *, frozen: bool = False) -> tb.Database:
    return tb.Database(name, True, text, frozen)


LIVE = db(TEMPLATE, comment("complete"), frozen=True)  # the template as a run leaves it
FILES = tb.Files(True, FP)


NO_FILES = tb.Files()


def state(
    live: tb.Database | None = None, build: tb.Database | None = None,
    old: tb.Database | None = None, *, code: tb.Code = CODE, live_fs: tb.Files = NO_FILES,
    build_fs: tb.Files = NO_FILES, old_fs: tb.Files = NO_FILES,
) -> tb.State:  # fmt: skip
    return tb.State(
        code, live or tb.Database(TEMPLATE), build or tb.Database(BUILD), old or tb.Database(OLD),
        live_fs=live_fs, build_fs=build_fs, old_fs=old_fs,
    )  # fmt: skip


def names(s: tb.State, p: tb.Params = P) -> tuple[str, ...]:
    planned = tb.decide(s, p)
    assert planned.blocked is None, planned.blocked
    return planned.names


def blocked(s: tb.State, p: tb.Params = P) -> str:
    planned = tb.decide(s, p)
    assert planned.blocked is not None and planned.steps == ()
    return planned.blocked


# --------------------------------------------------------------------------- nothing yet


def test_nothing_yet_builds_everything() -> None:
    planned = tb.decide(state(), P)
    assert planned.names == FULL
    assert planned.details == {"template": TEMPLATE, "fingerprint": FP, "modules": ["base", "web"]}
    assert planned.steps[0].says == "no stale build to drop"
    assert "-i base,web" in planned.steps[1].says and planned.steps[1].target == BUILD
    assert f"{TEMPLATE} → {OLD}" not in planned.steps[4].says  # no live template to keep


# --------------------------------------------------------------------------- killed mid-build


def test_unmarked_build_left_by_a_killed_odoo_is_dropped_and_rebuilt() -> None:
    planned = tb.decide(state(build=db(BUILD, None), build_fs=tb.Files(True, None)), P)
    assert planned.names == FULL
    assert planned.steps[0].says == "drop the stale build and its filestore"


def test_a_build_filestore_alone_is_dropped_too() -> None:
    planned = tb.decide(state(build_fs=tb.Files(True, None)), P)
    assert planned.names == FULL
    assert planned.steps[0].says == "drop the stale build and its filestore"


def test_verified_build_of_another_fingerprint_is_rebuilt() -> None:
    stale = db(BUILD, comment("verified", OTHER_FP), frozen=True)
    assert names(state(build=stale, build_fs=tb.Files(True, OTHER_FP))) == FULL


def test_verified_build_of_this_fingerprint_is_swapped_in_without_odoo() -> None:
    verified = db(BUILD, comment("verified"))
    assert names(state(build=verified, build_fs=FILES)) == RESUME
    # Killed after the freeze: the same, freezing again is harmless.
    frozen = db(BUILD, comment("verified"), frozen=True)
    assert names(state(build=frozen, build_fs=FILES)) == RESUME


def test_verified_build_without_its_filestore_is_rebuilt() -> None:
    verified = db(BUILD, comment("verified"))
    assert names(state(build=verified)) == FULL
    assert names(state(build=verified, build_fs=tb.Files(True, OTHER_FP))) == FULL


def test_a_build_not_yet_verified_is_rebuilt() -> None:
    # A template marker in another state than verified: ours, never swapped in as it is.
    odd = db(BUILD, comment("complete"))
    assert names(state(build=odd, build_fs=FILES)) == FULL


def test_force_rebuilds_a_verified_build() -> None:
    verified = db(BUILD, comment("verified"))
    assert names(state(build=verified, build_fs=FILES), make(force=True)) == FULL


@pytest.mark.parametrize(
    ("text", "carries"),
    [
        ("made by hand", "its comment is not a plana-jobs marker"),
        (marker.Marker(marker.Kind.TENANT, "complete").encode(), "it carries a 'tenant' marker"),
    ],
    ids=["foreign-comment", "other-kind"],
)
def test_a_build_with_someone_elses_comment_is_blocked(text: str, carries: str) -> None:
    why = blocked(state(live=LIVE, build=db(BUILD, text), live_fs=FILES))
    assert why == f"database {BUILD} exists but is not ours ({carries}): left untouched"
    assert tb.decide(state(live=LIVE, build=db(BUILD, text)), P).details == {"database": BUILD}


# --------------------------------------------------------------------------- template current


def test_current_template_plans_nothing() -> None:
    planned = tb.decide(state(live=LIVE, live_fs=FILES), P)
    assert planned.steps == () and planned.blocked is None
    assert planned.details is not None and planned.details["fingerprint"] == FP


def test_killed_after_the_swap_drops_the_old_template() -> None:
    old = db(OLD, comment("complete", OTHER_FP), frozen=True)
    old_fs = tb.Files(True, OTHER_FP)
    planned = tb.decide(state(live=LIVE, old=old, live_fs=FILES, old_fs=old_fs), P)
    assert planned.names == ("cleanup",)
    assert planned.steps[0].target == OLD
    assert names(state(live=LIVE, live_fs=FILES, old_fs=tb.Files(True, OTHER_FP))) == ("cleanup",)


def test_a_stale_build_beside_a_current_template_is_dropped() -> None:
    # A run for other modules killed inside Odoo, then one for these: nothing else to do.
    left = db(BUILD, None)
    assert names(state(live=LIVE, build=left, live_fs=FILES)) == ("cleanup",)


def test_force_rebuilds_a_current_template() -> None:
    planned = tb.decide(state(live=LIVE, live_fs=FILES), make(force=True))
    assert planned.names == FULL
    assert f"{TEMPLATE} → {OLD}" in planned.steps[4].says


# --------------------------------------------------------------------------- template stale


def test_stale_template_is_rebuilt_and_swapped() -> None:
    live = db(TEMPLATE, comment("complete", OTHER_FP), frozen=True)
    planned = tb.decide(state(live=live, live_fs=tb.Files(True, OTHER_FP)), P)
    assert planned.names == FULL
    assert planned.steps[4].name == "swap" and f"{TEMPLATE} → {OLD}" in planned.steps[4].says


def test_other_modules_or_revision_make_the_template_stale() -> None:
    s = state(live=LIVE, live_fs=FILES)
    assert names(s, make(modules=("base", "mail"))) == FULL
    assert names(s, make(addons_revision="r2")) == FULL
    assert names(tb.State(tb.Code(BINARY, "e" * 64), LIVE, s.build, s.old, live_fs=FILES)) == FULL


def test_template_not_frozen_or_not_complete_is_rebuilt() -> None:
    thawed = db(TEMPLATE, comment("complete"), frozen=False)
    assert names(state(live=thawed, live_fs=FILES)) == FULL
    verified = db(TEMPLATE, comment("verified"), frozen=True)
    assert names(state(live=verified, live_fs=FILES)) == FULL


def test_template_whose_filestore_belongs_to_nothing_is_rebuilt() -> None:
    assert names(state(live=LIVE)) == FULL  # filestore gone, no build's to move in
    assert names(state(live=LIVE, live_fs=tb.Files(True, OTHER_FP))) == FULL


# --------------------------------------------------------------------------- half swapped


def test_killed_between_the_database_and_filestore_swaps_completes_the_swap() -> None:
    s = state(live=LIVE, live_fs=tb.Files(True, OTHER_FP), build_fs=FILES)
    planned = tb.decide(s, P)
    assert planned.names == ("swap-filestore", "cleanup")
    assert planned.steps[0].target == TEMPLATE


def test_killed_inside_the_filestore_swap_completes_it() -> None:
    # live → __old done, __build → live not yet.
    s = state(live=LIVE, build_fs=FILES, old_fs=tb.Files(True, OTHER_FP))
    assert names(s) == ("swap-filestore", "cleanup")


def test_half_swapped_with_force_rebuilds() -> None:
    s = state(live=LIVE, live_fs=tb.Files(True, OTHER_FP), build_fs=FILES)
    assert names(s, make(force=True)) == FULL


# --------------------------------------------------------------------------- not ours


@pytest.mark.parametrize(
    ("text", "carries"),
    [
        (None, "it has no comment"),
        ("someone's template", "its comment is not a plana-jobs marker"),
        (marker.Marker(marker.Kind.TENANT, "complete").encode(), "it carries a 'tenant' marker"),
    ],
    ids=["no-comment", "foreign-comment", "other-kind"],
)
def test_template_not_ours_is_blocked(text: str | None, carries: str) -> None:
    planned = tb.decide(state(live=db(TEMPLATE, text)), P)
    assert planned.blocked == (
        f"database {TEMPLATE} exists but was not built by plana-jobs ({carries}): left untouched"
    )
    assert planned.steps == () and planned.details == {"database": TEMPLATE}


@pytest.mark.parametrize("text", [None, "made by hand"], ids=["no-comment", "foreign-comment"])
def test_an_old_copy_not_ours_is_blocked(text: str | None) -> None:
    # `__old` is always the template it was, with its marker: anything else is someone's.
    why = blocked(state(live=LIVE, old=db(OLD, text), live_fs=FILES))
    assert why.startswith(f"database {OLD} exists but is not ours (") and "left untouched" in why


def test_binary_of_another_major_is_blocked() -> None:
    planned = tb.decide(state(code=tb.Code("Odoo Server 17.0", "d" * 64)), P)
    assert planned.blocked == "odoo is 'Odoo Server 17.0', not Odoo 18"
    assert planned.details == {"binary": "Odoo Server 17.0", "odoo_version": 18}


# --------------------------------------------------------------------------- a dry run's view


def test_dry_run_without_the_version_line_assumes_the_templates() -> None:
    """A shell-wrapper binary tells its version only by starting Odoo, which a dry run never
    does: the line the template was built with stands in, and the plan says so."""
    unknown = tb.Code(None, CODE.addons_digest)
    planned = tb.decide(state(live=LIVE, live_fs=FILES, code=unknown), P)
    assert planned.steps == ()
    assert planned.details is not None and planned.details["fingerprint"] == FP
    assert planned.details["binary_source"] == (
        f"assumed from the marker of {TEMPLATE} (a dry run starts no Odoo)"
    )
    verified = db(BUILD, comment("verified"))
    assert names(state(build=verified, build_fs=FILES, code=unknown)) == RESUME


def test_dry_run_of_a_fresh_template_without_the_version_line() -> None:
    planned = tb.decide(state(code=tb.Code(None, CODE.addons_digest)), P)
    assert planned.names == FULL
    assert planned.details is not None and planned.details["fingerprint"] is None
    assert planned.details["binary_source"] == "unknown (a dry run starts no Odoo)"


# --------------------------------------------------------------------------- parameters


def test_module_list_is_sorted_unique_or_the_codes_default() -> None:
    assert tb.module_list("web, base,web") == ("base", "web")
    assert tb.module_list("  ") is None
    assert make(modules=None).wanted_modules == ["base", "contacts", "mail", "web"]
    with pytest.raises(UsageError, match="'Bad-Name' is not an Odoo module name"):
        tb.module_list("base,Bad-Name")
    with pytest.raises(UsageError, match="is empty"):
        tb.module_list(",")


def test_template_name_defaults_to_code_and_version() -> None:
    p = make(template_db=None, template_code="pro", odoo_version=None)
    assert (p.template, p.build_db, p.old_db) == (
        "template_pro_18", "template_pro_18__build", "template_pro_18__old",
    )  # fmt: skip
