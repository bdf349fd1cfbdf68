"""One schema per marker kind (`jobs.ops.marker.SCHEMAS`): what fits, what does not and how it
is worded, and the check `write` makes. Pure: no service (a marker read from a database is
tests/integration/test_marker.py's)."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.commands import environment_db
from jobs.commands import template_build as tb
from jobs.core import params
from jobs.ops import marker
from jobs.ops.marker import Kind, Marker

TENANT = {"subdomain": "acme", "project_id": 23, "template": "template_basic_18",
          "template_fingerprint": "f" * 64}  # fmt: skip
# One marker of each kind as its job writes it (a state of it, the data it carries).
WRITTEN: dict[Kind, tuple[str, dict[str, Any]]] = {
    Kind.TENANT: ("complete", TENANT),
    Kind.TEMPLATE: ("complete", {
        "fingerprint": "f" * 64, "code": "basic", "odoo_version": 18, "modules": ["base"],
        "binary": "Odoo Server 18.0", "addons_revision": "", "addons_digest": "d" * 64,
        "addons_missing": [],
    }),
    Kind.ENVIRONMENT: ("complete", {"subdomain": "acme--staging", "tenant": "acme",
                                    "env": "staging", "source": "template", "generation": 3}),
    Kind.ENVIRONMENT_WORK: ("created", {"subdomain": "acme--staging", "tenant": "acme",
                                        "env": "staging"}),
    Kind.RESTORE_WORK: ("verified", {"set": "20250101T000000Z", "as_copy": False,
                                     "subdomain": "acme"}),
    Kind.VERIFY_SCRATCH: ("created", {"subdomain": "acme"}),
    Kind.UPGRADE_WORK: ("snapshot", {"subdomain": "acme", "from": 17, "to": 18, "attempt": 1,
                                     "phases": ["snapshot"], "prefixes": []}),
    Kind.ROLLBACK: ("complete", {"subdomain": "acme", "from": 17, "to": 18, "tenant": TENANT}),
}  # fmt: skip
JSON_TYPES = {str, int, bool, float, list, dict, type(None)}


def test_every_kind_has_one_schema_and_every_schema_is_of_json_types() -> None:
    assert set(marker.SCHEMAS) == set(Kind) == set(WRITTEN)
    for kind, schema in marker.SCHEMAS.items():
        assert schema.states and len(set(schema.states)) == len(schema.states), kind
        assert not set(schema.fields) & set(schema.optional), kind  # each field declared once
        assert not {"kind", "state"} & {*schema.fields, *schema.optional}, kind
        wants = [*schema.fields.values(), *schema.optional.values()]
        while wants:
            want = wants.pop()
            if isinstance(want, Kind):
                assert want in marker.SCHEMAS
                continue
            if isinstance(want, marker.Shape):  # an object with fields of its own
                assert not set(want.fields) & set(want.optional), (kind, want.name)
                wants += [*want.fields.values(), *want.optional.values()]
                continue
            assert set(want if isinstance(want, tuple) else (want,)) <= JSON_TYPES, (kind, want)


def test_the_kinds_are_their_strings() -> None:
    kinds: list[str] = [Kind.TENANT, Kind.UPGRADE_WORK]  # what callers compare with a str
    assert kinds == ["tenant", "upgrade-work"]
    assert marker.BACKUP_KINDS == ("tenant", "environment")
    assert Marker(Kind.TENANT, "complete", TENANT).encode().startswith(
        'plana-jobs {"kind":"tenant"'
    )


@pytest.mark.parametrize("kind", list(Kind))
def test_a_marker_as_its_job_writes_it_fits_in_every_state_of_its_kind(kind: Kind) -> None:
    data = WRITTEN[kind][1]
    for each in marker.SCHEMAS[kind].states:
        mark = Marker(kind, each, dict(data))
        assert marker.problem(mark) is None and marker.misfit(mark) is None, each
        assert marker.unwritable(mark) is None
        assert marker.parse(mark.encode()) == mark
        assert marker.examine(mark.encode(), kind) == (mark, None)


@pytest.mark.parametrize("kind", list(Kind))
def test_only_the_fields_every_marker_carries_are_required(kind: Kind) -> None:
    schema = marker.SCHEMAS[kind]
    required = {name: WRITTEN[kind][1][name] for name in schema.fields}
    assert marker.problem(Marker(kind, schema.states[0], required)) is None
    for name in schema.fields:
        less = {k: v for k, v in required.items() if k != name}
        assert marker.problem(Marker(kind, schema.states[0], less)) == (
            f"field {name!r} is missing"
        )


def test_what_the_jobs_build_their_markers_from_fits() -> None:
    """The data of the markers whose builders are pure: template-build's, environment-db's."""
    p = params.build(tb.Params, {
        "template_code": "basic", "odoo_version": None, "modules": None, "addons_revision": None,
        "addons_path": None, "odoo_config": None, "template_db": None, "force": False,
        "odoo_bin": "odoo", "data_dir": "/srv/data", "pg_dsn": None, "base_domain": "x.test",
        "timeout": None, "dry_run": False,
    })  # fmt: skip
    code = tb.Code("Odoo Server 18.0", "d" * 64, ("missing_mod",))
    data = tb.marker_data(p, code, "Odoo Server 18.0")
    assert marker.problem(Marker(Kind.TEMPLATE, "verified", data)) is None
    env = environment_db.environment_db.make_context("environment-db", [
        "--subdomain", "acme", "--env", "staging", "--tier", "starter",
        "--owner-email", "o@acme.example.com", "--owner-name", "Ada"])  # fmt: skip
    owner = params.build(environment_db.Params, dict(env.params)).owner
    assert marker.problem(Marker(Kind.ENVIRONMENT_WORK, "created", owner)) is None


@pytest.mark.parametrize(
    ("kind", "state", "change", "why"),
    [
        (Kind.TENANT, "complete", {"subdomain": ["acme"]},
         "field 'subdomain' is a list, not text"),
        (Kind.TENANT, "complete", {"project_id": "23"},
         "field 'project_id' is text, not an integer"),
        (Kind.TENANT, "complete", {"project_id": True},
         "field 'project_id' is a boolean, not an integer"),
        (Kind.TENANT, "complete", {"project_id": 23.0},
         "field 'project_id' is a number, not an integer"),
        (Kind.TENANT, "complete", {"template_fingerprint": {"a": 1}},
         "field 'template_fingerprint' is an object, not text or null"),
        (Kind.TENANT, "complete", {"template_fingerprint": None}, None),  # a template by hand
        (Kind.TENANT, "complete", {"final_backup": 7},
         "field 'final_backup' is an integer, not text"),  # optional: checked when there
        (Kind.TENANT, "complete", {"upgrading": "yes"},
         "field 'upgrading' is text, not an upgrade record"),
        (Kind.TENANT, "bogus", {}, "state 'bogus' is not a tenant state"),
        (Kind.TENANT, "verified", {}, "state 'verified' is not a tenant state"),  # another kind's
        (Kind.TEMPLATE, "complete", {"modules": "base"}, "field 'modules' is text, not a list"),
        (Kind.TEMPLATE, "complete", {"odoo_version": False},
         "field 'odoo_version' is a boolean, not an integer"),
        (Kind.ENVIRONMENT, "complete", {"generation": "3"},
         "field 'generation' is text, not an integer or null"),
        (Kind.RESTORE_WORK, "verified", {"as_copy": 0},
         "field 'as_copy' is an integer, not a boolean"),
        (Kind.UPGRADE_WORK, "snapshot", {"to": None}, "field 'to' is null, not an integer"),
        (Kind.UPGRADE_WORK, "cutover", {}, "state 'cutover' is not an upgrade-work state"),
        (Kind.ROLLBACK, "complete", {"tenant": ["acme"]},
         "field 'tenant' is a list, not a tenant marker's data"),
        (Kind.ROLLBACK, "complete", {"tenant": {**TENANT, "project_id": None}},
         "field 'tenant' is not a tenant marker's data "
         "(field 'project_id' is null, not an integer)"),
        (Kind.TENANT, "complete", {"whatever": ["not", "declared"]}, None),  # ignored
    ],
)  # fmt: skip
def test_a_marker_that_does_not_fit_says_what_does_not(
    kind: Kind, state: str, change: dict[str, Any], why: str | None
) -> None:
    mark = Marker(kind, state, {**WRITTEN[kind][1], **change})
    assert marker.problem(mark) == why
    assert marker.unwritable(mark) == why  # write refuses exactly what a reader would
    if why is None:
        return
    a = "an" if kind in (Kind.ENVIRONMENT, Kind.ENVIRONMENT_WORK, Kind.UPGRADE_WORK) else "a"
    assert marker.misfit(mark) == f"{a} {kind} marker that does not fit its schema ({why})"
    assert marker.parse(mark.encode()) is None
    assert marker.examine(mark.encode(), kind) == (
        None, f"it carries {a} {kind} marker that does not fit its schema ({why})"
    )


def test_a_kind_no_job_writes_fits_no_schema() -> None:
    mark = Marker("tenantx", "complete", dict(TENANT))
    assert marker.problem(mark) == "kind 'tenantx' is not a plana-jobs marker kind"
    assert marker.parse(mark.encode()) is None
    assert marker.declared(mark, "subdomain") is None


def test_the_checks_order_kind_then_schema_then_state_then_identity() -> None:
    misfit = Marker(Kind.TENANT, "bogus", {**TENANT, "subdomain": "other"}).encode()
    assert marker.examine(misfit, Kind.ENVIRONMENT) == (None, "it carries a 'tenant' marker")
    assert marker.examine(misfit, Kind.TENANT, states=("complete",))[1] == (
        "it carries a tenant marker that does not fit its schema "
        "(state 'bogus' is not a tenant state)"
    )
    cloned = Marker(Kind.TENANT, "cloned", {**TENANT, "subdomain": "other"}).encode()
    assert marker.examine(cloned, Kind.TENANT, states=("complete",))[1] == (
        "it carries a tenant marker in state 'cloned'"
    )
    assert marker.examine(cloned, Kind.TENANT, match={"subdomain": "acme"})[1] == (
        "it carries a tenant marker for subdomain 'other'"
    )


def test_write_refuses_data_that_would_replace_the_kind_or_the_state() -> None:
    mark = Marker(Kind.TENANT, "complete", {**TENANT, "state": "cloned"})
    assert marker.unwritable(mark) == "field 'state' would replace the marker's own state"
    assert marker.problem(mark) is None  # read back, it would be a different marker


def test_declared_reads_only_what_the_kind_declares() -> None:
    env = Marker(Kind.ENVIRONMENT, "complete", dict(WRITTEN[Kind.ENVIRONMENT][1]))
    assert marker.declared(env, "tenant") == "acme"
    tenant = Marker(Kind.TENANT, "complete", {**TENANT, "tenant": "acme"})
    assert marker.declared(tenant, "tenant") is None  # not a tenant marker's field
    assert marker.declared(tenant, "subdomain") == "acme"


def test_the_declared_types_in_words() -> None:
    assert marker.describe(str) == "text"
    assert marker.describe((int, type(None))) == "an integer or null"
    assert marker.describe(Kind.TENANT) == "a tenant marker's data"
    assert marker.describe(Kind.ENVIRONMENT) == "an environment marker's data"


UPGRADING = {"from": 17, "to": 18, "base": "17.0.1.3", "attempt": 1}


@pytest.mark.parametrize(
    ("upgrading", "says"),
    [
        ({**UPGRADING, "attempt": "x"},
         "field 'upgrading' is not an upgrade record (field 'attempt' is text, not an integer)"),
        ({**UPGRADING, "to": True},
         "field 'upgrading' is not an upgrade record (field 'to' is a boolean, not an integer)"),
        ({"from": 17, "to": 18},
         "field 'upgrading' is not an upgrade record (field 'attempt' is missing)"),
        ({**UPGRADING, "revision": 5},
         "field 'upgrading' is not an upgrade record (field 'revision' is an integer, not text)"),
        (["17", "18"], "field 'upgrading' is a list, not an upgrade record"),
    ],
)  # fmt: skip
def test_a_frozen_tenants_upgrade_record_is_checked_field_by_field(
    upgrading: object, says: str
) -> None:
    # What upgrade reads back on a re-run (attempt, from, to): a forged one is refused, not
    # a crash at int(...) (70).
    fits = Marker(Kind.TENANT, "complete", {**TENANT, "upgrading": UPGRADING})
    assert marker.problem(fits) is None
    same = {**UPGRADING, "base": None, "strategy": "same-major", "revision": "r1"}
    assert marker.problem(Marker(Kind.TENANT, "complete", {**TENANT, "upgrading": same})) is None
    forged = Marker(Kind.TENANT, "complete", {**TENANT, "upgrading": upgrading})
    assert marker.problem(forged) == says
    assert marker.unwritable(forged) is not None


def test_a_failed_passs_record_is_checked() -> None:
    work = {"subdomain": "acme", "from": 17, "to": 18, "attempt": 1}
    failed = {"phase": "target-pass", "problems": ["Failed to initialize database"]}
    assert marker.problem(Marker(Kind.UPGRADE_WORK, "failed", {**work, "failed": failed})) is None
    wrong = Marker(Kind.UPGRADE_WORK, "failed", {**work, "failed": {"problems": []}})
    assert marker.problem(wrong) == (
        "field 'failed' is not a failure record (field 'phase' is missing)"
    )
