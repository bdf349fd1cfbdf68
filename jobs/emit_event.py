"""`plana-job emit-event`: one tenant event on the Redis stream, exactly once.

The event id is derived from (type, subdomain, generation), and a Lua script makes "look the
dedupe key up, XADD, then record the entry id under it" one atomic step, so re-runs and racing
pods add the entry once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import click
import redis

from jobs import options, redis_client, retry, runner
from jobs.errors import UsageError
from jobs.result import Done

# Namespace for uuid5 event ids: fixed forever, or re-runs would stop deduplicating.
EVENT_NAMESPACE = uuid.UUID("6f1f6a3e-58c4-4f3b-9d0a-5d0c2b1e7a11")
DEFAULT_DEDUPE_TTL_S = 30 * 24 * 3600
DEFAULT_MAXLEN = 100_000
EVENT_TYPES = ("client.provisioned", "client.updated", "client.deprovisioned")

# KEYS[1] stream, KEYS[2] dedupe key; ARGV[1] ttl, ARGV[2] maxlen, ARGV[3..] field/value pairs.
# Returns {1, id} when added, {0, id} when the event was already there.
#
# A script is atomic (nothing else runs meanwhile) but not transactional: a command that fails
# aborts the script and leaves every earlier write in place. So the dedupe key is written only
# after XADD succeeded: a failing XADD (a stream key of another type, say) writes nothing, and a
# re-run starts from scratch. The SET after it cannot fail on a valid ttl (checked as an option).
XADD_ONCE = """
local known = redis.call('GET', KEYS[2])
if known then
  return {0, known}
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return {1, id}
"""

# What Redis accepts: MAXLEN is a signed 64-bit count; EX is capped so that now + ttl in
# milliseconds still fits (ten years is far below that, and far above any use).
MAXLEN_MAX = 2**63 - 1
DEDUPE_TTL_MIN_S = 60
DEDUPE_TTL_MAX_S = 10 * 365 * 24 * 3600


def event_id(event_type: str, subdomain: str, generation: int | None) -> str:
    name = f"{event_type}/{subdomain}/{generation if generation is not None else '-'}"
    return str(uuid.uuid5(EVENT_NAMESPACE, name))


def xadd_once(
    client: redis.Redis,
    stream: str,
    eid: str,
    fields: dict[str, str],
    *,
    deadline: retry.Deadline,
    ttl: int = DEFAULT_DEDUPE_TTL_S,
    maxlen: int = DEFAULT_MAXLEN,
) -> tuple[bool, str]:
    """XADD `fields` to `stream` unless event `eid` was already added: (added, entry id).

    Retries transient Redis failures until the deadline (then exit 75); refused auth → 78; a
    stream key holding another type → 65 (`redis_client.classify`).
    """
    flat = [item for pair in fields.items() for item in pair]
    dedupe_key = f"{stream}:dedupe:{eid}"
    script = client.register_script(XADD_ONCE)

    def attempt() -> tuple[int, str]:
        added, entry = script(keys=[stream, dedupe_key], args=[ttl, maxlen, *flat])
        return int(added), entry.decode() if isinstance(entry, bytes) else str(entry)

    try:
        added, entry_id = retry.call(
            attempt, what="redis XADD", deadline=deadline, transient=redis_client.transient
        )
    except redis.RedisError as exc:
        known = redis_client.classify(exc, f"redis XADD to {stream}")
        if known is None:
            raise
        raise known from None
    return bool(added), entry_id


def _event_type(value: str | None) -> str:
    if value not in EVENT_TYPES:
        raise UsageError("type", f"must be one of {', '.join(EVENT_TYPES)}, got {value!r}")
    return value


def _stream(value: str | None) -> str:
    if not value or len(value) > 200 or not value.isprintable() or " " in value:
        raise UsageError("stream", f"must be a Redis key without spaces, got {value!r}")
    return value


@click.command("emit-event")
@options.subdomain
@options.project_id
@options.tier
@options.odoo_version
@options.owner_email
@options.owner_name
@options.generation
@options.option(
    "--type",
    "event_type",
    env="PLANA_EVENT_TYPE",
    default="client.provisioned",
    show_default=True,
    help=f"Event type: {', '.join(EVENT_TYPES)}.",
)
@options.events_stream
@options.option(
    "--maxlen",
    env="PLANA_EVENTS_MAXLEN",
    type=click.IntRange(min=1, max=MAXLEN_MAX),
    default=DEFAULT_MAXLEN,
    show_default=True,
    help="Approximate stream cap.",
)
@options.option(
    "--dedupe-ttl",
    env="PLANA_EVENTS_DEDUPE_TTL",
    type=click.IntRange(min=DEDUPE_TTL_MIN_S, max=DEDUPE_TTL_MAX_S),
    default=DEFAULT_DEDUPE_TTL_S,
    show_default=True,
    help="Seconds an event id is remembered.",
)
@options.common
def emit_event(**kw: Any) -> None:
    """XADD one tenant event to the PLANA events stream, exactly once per event id."""
    runner.run("emit-event", lambda job: _run(job, kw), timeout=kw["timeout"])


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    # Observe the input first: every field is validated before Redis is contacted.
    spec = options.client(kw, owner=False)
    event_type = _event_type(kw["event_type"])
    generation = options.generation_value(kw["generation"])
    stream = _stream(kw["stream"])
    client = redis_client.from_url(kw["redis_url"])
    job.bind(tenant=spec.tenant.subdomain)

    eid = event_id(event_type, spec.tenant.subdomain, generation)
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
        added, entry_id = xadd_once(
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
