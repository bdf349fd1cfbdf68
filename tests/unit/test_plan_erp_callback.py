"""erp-callback's decide for each state the ERP can hold the record in. Pure, no ERP."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.commands import erp_callback as erp
from jobs.core import params
from jobs.core.errors import UsageError


def make(**over: Any) -> erp.Params:
    values: dict[str, Any] = {
        "subdomain": "acme", "project_id": 23, "tier": "pro", "odoo_version": 18,
        "owner_email": None, "owner_name": None, "erp_url": "http://erp.test",
        "erp_db": "plana_erp", "erp_login": "jobs@plana.test",
        "erp_api_key_file": "/run/secrets/erp", "erp_api": "jsonrpc",
        "erp_model": erp.DEFAULT_MODEL, "erp_fields": erp.field_map(""), "state": "active",
        "request_timeout": None, "base_domain": "planapulse.app", "timeout": None,
        "dry_run": False, **over,
    }  # fmt: skip
    return params.build(erp.Params, values)


P = make()
RECORD = {"id": 7, "subdomain": "acme", "project_id": 23, "tier": "pro", "odoo_version": "18",
          "hostname": "acme.planapulse.app", "state": "active"}  # fmt: skip


def test_no_record_plans_the_create() -> None:
    steps = erp.decide(erp.State(()), P)
    assert steps.names == ("create",)
    assert steps.details == {"model": erp.DEFAULT_MODEL, "api": "jsonrpc"}


def test_a_record_that_agrees_plans_nothing() -> None:
    # Also the state a run killed after its create (before it exited) leaves.
    steps = erp.decide(erp.State((RECORD,)), P)
    assert steps.steps == ()
    assert (steps.details or {})["record_id"] == 7


def test_a_record_that_differs_plans_a_write_of_the_differing_fields() -> None:
    older = {**RECORD, "tier": "starter", "odoo_version": "17"}
    steps = erp.decide(erp.State((older,)), P)
    assert steps.names == ("write",)
    assert (steps.details or {})["changed"] == ["odoo_version", "tier"]
    assert erp.differing(older, P) == {"tier": "pro", "odoo_version": "18"}


def test_several_records_for_one_subdomain_are_blocked() -> None:
    steps = erp.decide(erp.State((RECORD, {**RECORD, "id": 8})), P)
    assert steps.steps == ()
    assert steps.blocked is not None and "several records" in steps.blocked
    assert (steps.details or {})["record_ids"] == [7, 8]


def test_renamed_fields_are_compared_under_the_erp_names() -> None:
    p = make(erp_fields=erp.field_map("hostname=name,state=x_state"))
    assert set(p.wanted) == {"subdomain", "project_id", "tier", "odoo_version", "name", "x_state"}
    renamed = {k: v for k, v in RECORD.items() if k not in ("hostname", "state")}
    renamed |= {"name": "acme.planapulse.app", "x_state": "active"}
    assert erp.decide(erp.State((renamed,)), p).steps == ()
    assert erp.decide(erp.State((RECORD,)), p).names == ("write",)


@pytest.mark.parametrize("name", ["erp_db", "erp_login"])
def test_jsonrpc_needs_database_and_login_json2_does_not(name: str) -> None:
    with pytest.raises(UsageError) as err:
        make(**{name: None})
    flag = {"erp_db": "--erp-db / PLANA_ERP_DB", "erp_login": "--erp-login / PLANA_ERP_LOGIN"}
    assert err.value.message == f"{flag[name]}: is required with --erp-api jsonrpc"
    assert make(erp_api="json2", **{name: None}).erp_api == "json2"


def test_field_map_refuses_unknown_names_and_collisions() -> None:
    with pytest.raises(UsageError, match="expected name=erp_field"):
        erp.field_map("colour=x_colour")
    with pytest.raises(UsageError, match="same ERP field"):
        erp.field_map("hostname=tier")
