"""account-webhook's decide: with and without a ledger, delivered or not. Pure, no receiver."""

from __future__ import annotations

from typing import Any

from jobs.commands import account_webhook as aw
from jobs.core import params


def make(**over: Any) -> aw.Params:
    values: dict[str, Any] = {
        "subdomain": "acme", "project_id": 23, "tier": "pro", "odoo_version": 18,
        "owner_email": "owner@example.com", "owner_name": "Acme Owner", "generation": 4,
        "event": "tenant.provisioned", "url": "http://portal.test/hook",
        "secret_file": "/run/secrets/whsec", "request_timeout": None,
        "redis_url": "redis://127.0.0.1:6379/0", "ledger_prefix": aw.DEFAULT_LEDGER_PREFIX,
        "base_domain": "planapulse.app", "timeout": None, "dry_run": False, **over,
    }  # fmt: skip
    return params.build(aw.Params, values)


P = make()


def test_without_a_ledger_every_run_delivers() -> None:
    steps = aw.decide(aw.State(ledger=False, delivered_at=None), make(redis_url=None))
    assert steps.names == ("deliver",)
    assert steps.details == {"type": "tenant.provisioned", "webhook_id": P.webhook_id,
                             "url": "http://portal.test/hook"}  # fmt: skip


def test_with_a_ledger_and_no_record_it_delivers_then_records() -> None:
    # Also the state a run killed after the POST and before the record leaves: one more
    # delivery of the same id (the portal keeps the first), then the record.
    steps = aw.decide(aw.State(ledger=True, delivered_at=None), P)
    assert steps.names == ("deliver", "ledger")
    assert P.webhook_id in steps.steps[0].says


def test_a_recorded_delivery_plans_nothing() -> None:
    steps = aw.decide(aw.State(ledger=True, delivered_at="2026-12-01T10:00:00+00:00"), P)
    assert steps.steps == ()
    assert steps.blocked is None
    assert (steps.details or {})["delivered_at"] == "2026-12-01T10:00:00+00:00"


def test_the_webhook_id_is_the_same_for_a_redelivery_and_new_for_a_new_generation() -> None:
    assert make().webhook_id == P.webhook_id
    assert make(generation=5).webhook_id != P.webhook_id
    assert make(event="tenant.updated").webhook_id != P.webhook_id
    assert make(generation=None).webhook_id == aw.webhook_id("tenant.provisioned", "acme", None)
