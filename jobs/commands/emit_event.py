"""`plana-job emit-event`: one tenant event on the Redis stream, exactly once.

The event id is derived from (type, subdomain, generation), and the entry is added at most once
per id (`events.xadd_once`), so re-runs and racing pods add it once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from jobs.adapters import redis_client
from jobs.core import params, runner
from jobs.core.errors import UsageError
from jobs.core.result import Done
from jobs.ops import events

EVENT_TYPES = ("client.provisioned", "client.updated", "client.deprovisioned")


# What Redis accepts: MAXLEN is a signed 64-bit count; EX is capped so that now + ttl in
# milliseconds still fits (ten years is far below that, and far above any use).
MAXLEN_MAX = 2**63 - 1
DEDUPE_TTL_MIN_S = 60
DEDUPE_TTL_MAX_S = 10 * 365 * 24 * 3600


def _event_type(value: str | None) -> str:
    if value not in EVENT_TYPES:
        raise UsageError("type", f"must be one of {', '.join(EVENT_TYPES)}, got {value!r}")
    return value


@click.command("emit-event")
@params.subdomain
@params.project_id
@params.tier
@params.odoo_version
@params.owner_email
@params.owner_name
@params.generation
@params.option(
    "--type",
    "event_type",
    env="PLANA_EVENT_TYPE",
    default="client.provisioned",
    show_default=True,
    help=f"Event type: {', '.join(EVENT_TYPES)}.",
)
@params.events_stream
@params.option(
    "--maxlen",
    env="PLANA_EVENTS_MAXLEN",
    type=click.IntRange(min=1, max=MAXLEN_MAX),
    default=events.DEFAULT_MAXLEN,
    show_default=True,
    help="Approximate stream cap.",
)
@params.option(
    "--dedupe-ttl",
    env="PLANA_EVENTS_DEDUPE_TTL",
    type=click.IntRange(min=DEDUPE_TTL_MIN_S, max=DEDUPE_TTL_MAX_S),
    default=events.DEFAULT_DEDUPE_TTL_S,
    show_default=True,
    help="Seconds an event id is remembered.",
)
@params.common
def emit_event(**kw: Any) -> None:
    """XADD one tenant event to the PLANA events stream, exactly once per event id."""
    runner.run("emit-event", lambda job: _run(job, kw), timeout=kw["timeout"])


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    # Observe the input first: every field is validated before Redis is contacted.
    spec = params.client(kw, owner=False)
    event_type = _event_type(kw["event_type"])
    generation = params.generation_value(kw["generation"])
    stream = events.stream_name(kw["stream"])
    client = redis_client.from_url(kw["redis_url"])
    job.bind(tenant=spec.tenant.subdomain)

    eid = events.event_id(event_type, spec.tenant.subdomain, generation)
    fields: dict[str, str] = {
        "type": event_type,
        "event_id": eid,
        "subdomain": spec.tenant.subdomain,
        "project_id": str(spec.project_id),
        "tier": spec.tier,
        "odoo_version": str(spec.odoo_version),
        "hostname": spec.tenant.hostname,
        "db_name": spec.tenant.db_name,
        "occurred_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if generation is not None:
        fields["generation"] = str(generation)
    if spec.owner_email:
        fields["owner_email"] = spec.owner_email
    job.step("xadd")
    try:
        added, entry_id = events.xadd_once(
            client,
            stream,
            eid,
            fields,
            deadline=job.deadline,
            ttl=kw["dedupe_ttl"],
            maxlen=kw["maxlen"],
        )
    finally:
        client.close()
    details = {"stream": stream, "event_id": eid, "type": event_type, "entry_id": entry_id}
    if added:
        job.log.info("event added", **details)
        return Done("created", details)
    job.log.info("event already on the stream", **details)
    return Done("unchanged", details)
