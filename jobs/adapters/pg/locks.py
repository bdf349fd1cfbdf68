"""PostgreSQL advisory locks: serialise work on one tenant or template across pods.

Session-level locks on a connection of their own, so a killed holder's lock dies with its
connection, and `pg_try_advisory_lock` in a loop so the wait is bounded (then exit 75).

A lock held this way can be lost while the job runs: the session terminated
(`pg_terminate_backend`), `idle_session_timeout`, a pooler or a network reset. The server then
lets the next holder in at once, so every held lock is kept in a registry and `check_held()`
(called by `Job.step` before each step) proves each one is still ours — one query on its own
session that finds the lock in `pg_locks` for that backend — and stops the job with 75
otherwise. The lock session itself is made immune to `idle_session_timeout` and uses TCP
keepalives, so an idle but healthy session is not the one that gets cut.

Every lock's name is made by one of the constructors below (`tenant`, `verify`, `backup`,
`template`, `template_build`), never inline: two jobs exclude each other only when they spell
the name alike, and a typo would silently end that. The texts are fixed: pods of an older image
running beside a newer one during a rollout hold the same names
(tests/integration/test_core.py pins them).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog

from jobs.adapters import pg
from jobs.core import retry, runner
from jobs.core.errors import TransientError

POLL_S = 0.2


# ---------------------------------------------------------------------------- lock names


def tenant(db: str) -> str:
    """A tenant's (or an environment's) database `db` is created, replaced or removed.

    Taken by tenant-db, environment-db, restore, upgrade (every phase) and deprovision.
    """
    return f"tenant:{db}"


def verify(db: str) -> str:
    """backup-verify's scratch copy of `db`: only its holder creates or drops it.

    Taken by backup-verify, and by deprovision so the copy is not dropped under a verify.
    """
    return f"verify:{db}"


def backup(db: str) -> str:
    """One backup of `db` at a time: taken by backup, and by deprovision for its final set."""
    return f"backup:{db}"


def template(name: str) -> str:
    """Template database `name`: clones hold it shared, template-build exclusively to swap it."""
    return f"template:{name}"


def template_build(name: str) -> str:
    """One template-build of `name` at a time (clones do not take it, so are not blocked)."""
    return f"template-build:{name}"


def key(name: str) -> int:
    """A stable signed 64-bit key for a lock name (same on every pod and Python version)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True, eq=False)  # one entry per acquisition, compared by identity
class Held:
    name: str
    key: int
    shared: bool
    conn: psycopg.Connection[Any]

    @property
    def ids(self) -> tuple[int, int]:
        """(classid, objid) of a bigint advisory key in `pg_locks`: its high and low 32 bits."""
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        return unsigned >> 32, unsigned & 0xFFFF_FFFF


_held: list[Held] = []
_held_lock = threading.Lock()


def held() -> list[Held]:
    with _held_lock:
        return list(_held)


_CHECK = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid::int8 = %s AND objid::int8 = %s AND objsubid = 1 AND mode = %s AND granted"
)


def check(lock: Held) -> None:
    """TransientError (75) unless `lock` is still held by its session."""
    classid, objid = lock.ids
    mode = "ShareLock" if lock.shared else "ExclusiveLock"
    try:
        row = lock.conn.execute(_CHECK, (classid, objid, mode)).fetchone()
    except psycopg.Error as exc:
        raise TransientError(
            f"lock {lock.name!r} lost: its session ended ({type(exc).__name__})", lock=lock.name
        ) from None
    if not row or not row[0]:
        raise TransientError(f"lock {lock.name!r} lost: no longer held", lock=lock.name)


def check_held() -> None:
    """Prove every lock this process holds is still held (75 at the first that is not)."""
    for lock in held():
        check(lock)


# Before every step (Job.step), registered on import: a job that took no lock pays nothing.
runner.on_step(check_held)


def _harden(conn: psycopg.Connection[Any]) -> None:
    """The lock session idles for the whole job: no server timeout may end it for that."""
    if conn.info.server_version >= 140000:
        conn.execute("SET idle_session_timeout = 0")
    # Server-side keepalives: a holder cut off by the network loses its lock in about a minute
    # (the kernel's default is two hours), and its next step check stops it with 75.
    conn.execute("SET tcp_keepalives_idle = 30")
    conn.execute("SET tcp_keepalives_interval = 10")
    conn.execute("SET tcp_keepalives_count = 3")


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
    conn = pg.connect(
        dsn=dsn,
        deadline=deadline,
        application_name=f"plana-job lock {name}"[:63],
        keepalive=True,
    )
    entry = Held(name, k, shared, conn)
    try:
        _harden(conn)
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
        with _held_lock:
            _held.append(entry)
        yield
    finally:
        with _held_lock:
            if entry in _held:
                _held.remove(entry)
        conn.close()  # closing the session releases every lock it holds, on every exit path
