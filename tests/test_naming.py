"""The naming contract's seed examples, exactly as DESIGN.md states them."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import naming
from jobs.errors import UsageError


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
