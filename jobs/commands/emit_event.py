"""`plana-job emit-event`: one tenant event on the Redis stream, exactly once.

The event id is derived from (type, subdomain, generation), and the entry is added at most once
per id (`events.xadd_once`), so re-runs and racing pods add it once.

observe: is the event id still remembered (its dedupe key)? plan: nothing when it is, else one
`xadd` step. The XADD itself checks the id again atomically, so a racing pod that added it
between the two is seen as `unchanged` all the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from jobs.adapters import redis_client
from jobs.core import params, plan, runner
from jobs.core.result import Done
from jobs.ops import events

EVENT_TYPES = ("client.provisioned", "client.updated", "client.deprovisioned")


# What Redis accepts: MAXLEN is a signed 64-bit count; EX is capped so that now + ttl in
# milliseconds still fits (ten years is far below that, and far above any use).
MAXLEN_MAX = 2**63 - 1
DEDUPE_TTL_MIN_S = 60
DEDUPE_TTL_MAX_S = 10 * 365 * 24 * 3600


@params.spec
class Params(params.ClientSpec):
    owner_email: str | None = params.owner_email(required=False)
    owner_name: str | None = params.owner_name(required=False)
    generation: int | None = params.generation()
    event_type: str = params.option(
        "--type",
        "PLANA_EVENT_TYPE",
        f"Event type: {', '.join(EVENT_TYPES)}.",
        type=click.Choice(EVENT_TYPES),
        default="client.provisioned",
        show_default=True,
    )
    redis_url: str = params.redis_url()
    stream: str = params.stream(events.STREAM)
    maxlen: int = params.option(
        "--maxlen",
        "PLANA_EVENTS_MAXLEN",
        "Approximate stream cap.",
        type=click.IntRange(min=1, max=MAXLEN_MAX),
        default=events.DEFAULT_MAXLEN,
        show_default=True,
    )
    dedupe_ttl: int = params.option(
        "--dedupe-ttl",
        "PLANA_EVENTS_DEDUPE_TTL",
        "Seconds an event id is remembered.",
        type=click.IntRange(min=DEDUPE_TTL_MIN_S, max=DEDUPE_TTL_MAX_S),
        default=events.DEFAULT_DEDUPE_TTL_S,
        show_default=True,
    )

    @property
    def event_id(self) -> str:
        return events.event_id(self.event_type, self.subdomain, self.generation)


@dataclass(frozen=True)
class State:
    entry_id: str | None  # the entry the event was already added as, while remembered


def observe(job: runner.Job, p: Params) -> State:
    client = redis_client.from_url(p.redis_url)
    try:
        return State(events.recorded(client, p.stream, p.event_id, deadline=job.deadline))
    finally:
        client.close()


def decide(state: State, p: Params) -> plan.Plan:
    details = {"stream": p.stream, "event_id": p.event_id, "type": p.event_type}
    if state.entry_id is not None:
        return plan.of(entry_id=state.entry_id, **details)
    return plan.of(plan.Step("xadd", f"XADD {p.event_type} {p.event_id} to {p.stream}"), **details)


def preview(job: runner.Job, p: Params) -> plan.Plan:
    job.bind(tenant=p.subdomain)
    return decide(observe(job, p), p)


def _fields(p: Params) -> dict[str, str]:
    spec = p.client
    return events.client_event(
        p.event_type,
        spec.tenant,
        p.generation,
        project_id=spec.project_id,
        tier=spec.tier,
        odoo_version=spec.odoo_version,
        owner_email=spec.owner_email,
    )[1]


def run(job: runner.Job, p: Params) -> Done:
    steps = preview(job, p)
    details = {"stream": p.stream, "event_id": p.event_id, "type": p.event_type}
    if "xadd" not in steps:
        entry_id = (steps.details or {}).get("entry_id")
        job.log.info("event already on the stream", **details, entry_id=entry_id)
        return Done("unchanged", {**details, "entry_id": entry_id})
    job.step("xadd")
    client = redis_client.from_url(p.redis_url)
    try:
        added, entry_id = events.xadd_once(
            client,
            p.stream,
            p.event_id,
            _fields(p),
            deadline=job.deadline,
            ttl=p.dedupe_ttl,
            maxlen=p.maxlen,
        )
    finally:
        client.close()
    done = {**details, "entry_id": entry_id}
    if added:
        job.log.info("event added", **done)
        return Done("created", done)
    job.log.info("event already on the stream", **done)
    return Done("unchanged", done)


emit_event = params.command(
    "emit-event",
    Params,
    run,
    preview,
    "XADD one tenant event to the PLANA events stream, exactly once per event id.",
)
