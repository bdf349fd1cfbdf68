"""The naming contract's seed examples, exactly as docs/design.md states them."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.core import naming
from jobs.core.errors import UsageError


def test_seed_examples() -> None:
    tenant = naming.Tenant("acme")
    assert tenant.db_name == "acme.planapulse.app"
    assert tenant.hostname == "acme.planapulse.app"
    assert tenant.filestore() == Path("/var/lib/odoo/filestore/acme.planapulse.app")
    assert naming.room_localpart("acme", 23) == "support-acme-023"
    assert naming.room_alias("acme", 23, "planapulse.com") == "#support-acme-023:planapulse.com"
    assert naming.namespace(18) == "plana-odoo-18"
    assert naming.namespace(17) == "plana-odoo"
    assert naming.namespace(19) == "plana-odoo-19"
    assert naming.template_db("basic", 18) == "template_basic_18"
    assert naming.template_for_tier("starter") == "basic"
    assert naming.template_for_tier("pro") == "pro"
    assert naming.template_for_tier("enterprise") == "enterprise"
    assert naming.EVENTS_STREAM == "PLANA:events"


def test_client_spec_derives_template_and_namespace() -> None:
    spec = naming.ClientSpec(
        tenant=naming.Tenant("acme", "example.org"),
        project_id=7,
        tier="starter",
        odoo_version=17,
        owner_email="a@example.org",
        owner_name="A",
    )
    assert spec.template == "template_basic_17"
    assert spec.namespace == "plana-odoo"
    assert spec.tenant.db_name == "acme.example.org"
    assert naming.room_localpart("acme", 1234) == "support-acme-1234"


def test_longest_subdomain_leaves_room_for_work_suffixes() -> None:
    longest = "a" * naming.SUBDOMAIN_MAX
    db = naming.Tenant(naming.subdomain(longest)).db_name
    assert len((db + "__build").encode()) <= 63
    with pytest.raises(UsageError) as err:
        naming.subdomain(longest + "a")
    assert err.value.field == "subdomain"


@pytest.mark.parametrize("value", ["a", "acme", "a1", "acme-corp", "0day", "x" * 40])
def test_valid_subdomains(value: str) -> None:
    assert naming.subdomain(value) == value


def test_defaults() -> None:
    assert naming.odoo_version(None) == 18
    with pytest.raises(UsageError):  # given but empty is refused, not taken as the default
        naming.odoo_version("")
    assert naming.base_domain(None) == "planapulse.app"


def test_environment_names_can_never_be_a_tenants() -> None:
    env = naming.environment("acme", "stg")
    assert env.db_name == "acme--stg.planapulse.app"
    assert env.hostname == "acme--stg.planapulse.app"
    assert env.filestore() == Path("/var/lib/odoo/filestore/acme--stg.planapulse.app")
    # The tenant `acme-stg` has another name, and no subdomain can have the environment's.
    assert naming.Tenant(naming.subdomain("acme-stg")).db_name != env.db_name
    for taken in ("acme--stg", "a--b", "x--"):
        with pytest.raises(UsageError) as err:
            naming.subdomain(taken)
        assert err.value.field == "subdomain"
    for bad in ("", None, "st--g", "-stg", "stg-", "Stg", "st_g", "st.g"):
        with pytest.raises(UsageError) as err:
            naming.environment("acme", bad)
        assert err.value.field == "env"


def test_environment_names_fit_postgresql_with_their_work_suffix() -> None:
    sub = "a" * naming.SUBDOMAIN_MAX
    # {sub}--{env}.planapulse.app + "__env": 40 + 2 + env + 15 + 5 bytes.
    fits = naming.environment(sub, "e", work_suffix_max=5)
    assert len(fits.db_name.encode()) + 5 == 63
    with pytest.raises(UsageError) as err:
        naming.environment(sub, "ee", work_suffix_max=5)
    assert err.value.field == "env"


@pytest.mark.parametrize(
    ("name", "owned"),
    [
        ("acme.planapulse.app", naming.Owned("acme.planapulse.app", None, None)),
        ("acme.planapulse.app__rb17", naming.Owned("acme.planapulse.app", None, "rb17")),
        ("acme--stg.planapulse.app", naming.Owned("acme--stg.planapulse.app", "stg", None)),
        ("acme--stg.planapulse.app__env", naming.Owned("acme--stg.planapulse.app", "stg", "env")),
        ("acmex.planapulse.app", None),
        ("acme-stg.planapulse.app", None),
        ("acmex--stg.planapulse.app", None),
        ("acme--st--g.planapulse.app", None),
        ("acme.planapulse.app.x", None),
        ("acme.planapulse.appx", None),
        ("acme.planapulse.app__", None),
        ("acme.planapulse.app__x.y", None),
        ("acme.planapulseXapp", None),  # the dots are literal
    ],
)
def test_owned_names_are_exact(name: str, owned: naming.Owned | None) -> None:
    assert naming.owned_name(name, "acme") == owned


@pytest.mark.parametrize(
    ("name", "base", "tail"),
    [
        (".acme.planapulse.app.partial", "acme.planapulse.app", "partial"),
        (".acme.planapulse.app.trash-0badc0de", "acme.planapulse.app", "trash-0badc0de"),
        (".acme.planapulse.app__up18.partial", "acme.planapulse.app", "partial"),
        ("..acme--stg.planapulse.app.env.partial", "acme--stg.planapulse.app", "env.partial"),
        (".acmex.planapulse.app.partial", None, None),
        (".acme-stg.planapulse.app.old", None, None),
        (".acme.planapulse.app", None, None),
        ("acme.planapulse.app.partial", None, None),
    ],
)
def test_hidden_leftovers_are_matched_exactly(
    name: str, base: str | None, tail: str | None
) -> None:
    owned = naming.owned_name(name, "acme", hidden=True)
    found = (owned.base, owned.hidden) if owned is not None else (None, None)
    assert found == (base, tail)
