"""Tenant events on the PLANA events stream, exactly once (emit-event, deprovision).

The event id is derived from (type, subdomain, generation), and a Lua script makes "look the
dedupe key up, XADD, then record the entry id under it" one atomic step, so re-runs and racing
pods add the entry once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import redis

from jobs.adapters import redis_client
from jobs.core import naming, params, retry
from jobs.core.errors import UsageError

# Namespace for uuid5 event ids: fixed forever, or re-runs would stop deduplicating.
EVENT_NAMESPACE = uuid.UUID("6f1f6a3e-58c4-4f3b-9d0a-5d0c2b1e7a11")
DEFAULT_DEDUPE_TTL_S = 30 * 24 * 3600
DEFAULT_MAXLEN = 100_000

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


def event_id(event_type: str, subdomain: str, generation: int | None) -> str:
    name = f"{event_type}/{subdomain}/{generation if generation is not None else '-'}"
    return str(uuid.uuid5(EVENT_NAMESPACE, name))


def client_event(
    event_type: str,
    tenant: naming.Tenant,
    generation: int | None,
    **facts: str | int | None,
) -> tuple[str, dict[str, str]]:
    """(event id, fields) of one tenant event: the one schema every event on the stream has.

    Always: type, event_id, subdomain, hostname, db_name, occurred_at (UTC, seconds); then
    generation and each of `facts` (project_id, tier, odoo_version, owner_email, final_backup,
    …) that is known, as a string. A fact that is None or "" is left out, never sent empty.
    """
    eid = event_id(event_type, tenant.subdomain, generation)
    fields = {
        "type": event_type,
        "event_id": eid,
        "subdomain": tenant.subdomain,
        "hostname": tenant.hostname,
        "db_name": tenant.db_name,
        "occurred_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    known = {"generation": generation, **facts}
    fields.update({k: str(v) for k, v in known.items() if v is not None and v != ""})
    return eid, fields


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
    dedupe_key = _dedupe_key(stream, eid)
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


def _dedupe_key(stream: str, eid: str) -> str:
    return f"{stream}:dedupe:{eid}"


def recorded(client: redis.Redis, stream: str, eid: str, *, deadline: retry.Deadline) -> str | None:
    """The stream entry id event `eid` was added as (still remembered), or None. Read only."""

    def attempt() -> str | None:
        value = client.get(_dedupe_key(stream, eid))
        return value.decode() if isinstance(value, bytes) else None

    try:
        return retry.call(attempt, what="redis GET", deadline=deadline,
                          transient=redis_client.transient)  # fmt: skip
    except redis.RedisError as exc:
        known = redis_client.classify(exc, f"redis GET on {stream}")
        if known is None:
            raise
        raise known from None


def stream_name(value: str | None) -> str:
    if not value or len(value) > 200 or not value.isprintable() or " " in value:
        raise UsageError("stream", f"must be a Redis key without spaces, got {value!r}")
    return value


# The stream key as a click type: emit-event, deprovision and inspect take it.
STREAM = params.Rule("key", stream_name)
