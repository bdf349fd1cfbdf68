"""PostgreSQL advisory locks: serialise work on one tenant or template across pods.

Session-level locks on a connection of their own, so a killed holder's lock dies with its
connection, and `pg_try_advisory_lock` in a loop so the wait is bounded (then exit 75).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import structlog

from jobs import pg, retry
from jobs.errors import TransientError

POLL_S = 0.2


def key(name: str) -> int:
    """A stable signed 64-bit key for a lock name (same on every pod and Python version)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _try(conn: psycopg.Connection[Any], k: int, shared: bool) -> bool:
    query = (
        "SELECT pg_try_advisory_lock_shared(%s)" if shared else "SELECT pg_try_advisory_lock(%s)"
    )
    row = conn.execute(query, (k,)).fetchone()
    return bool(row and row[0])


@contextmanager
def advisory(
    name: str,
    *,
    deadline: retry.Deadline,
    wait_s: float | None = None,
    shared: bool = False,
    dsn: str | None = None,
) -> Iterator[None]:
    """Hold lock `name` for the block; wait at most `wait_s` (default: the job's deadline)."""
    log = structlog.get_logger()
    k = key(name)
    conn = pg.connect(dsn=dsn, deadline=deadline, application_name=f"plana-job lock {name}"[:63])
    try:
        limit = deadline.remaining() if wait_s is None else min(wait_s, deadline.remaining())
        until = time.monotonic() + limit
        waited = False
        while not _try(conn, k, shared):
            if time.monotonic() >= until:
                raise TransientError(
                    f"lock {name!r} still held by another run after {limit:.0f}s", lock=name
                )
            if not waited:
                log.info("lock busy, waiting", lock=name, shared=shared, wait_s=round(limit, 1))
                waited = True
            time.sleep(POLL_S)
        log.debug("lock acquired", lock=name, shared=shared)
        yield
    finally:
        conn.close()  # closing the session releases every lock it holds, on every exit path
