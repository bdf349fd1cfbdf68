"""PostgreSQL connections the Kubernetes way: `PLANA_PG_DSN` if set, else libpq's own PG* env.

Also the small catalog facts several jobs observe before they act.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict

from jobs.core import redact, retry, runner
from jobs.core.errors import ConfigError, JobError, TransientError, UsageError

MAINTENANCE_DB = "postgres"


def base_conninfo(dsn: str | None = None) -> str:
    """The configured conninfo; its password (and PGPASSWORD) are registered for redaction."""
    dsn = dsn if dsn is not None else os.environ.get("PLANA_PG_DSN", "")
    redact.register(os.environ.get("PGPASSWORD"))
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise UsageError("PLANA_PG_DSN", "is not a valid libpq connection string") from None
    redact.register(str(params.get("password") or ""))
    return dsn


# SQLSTATEs worth retrying outside the OperationalError family (serialization failure, deadlock).
_TRANSIENT_STATES = frozenset({"40001", "40P01"})
# OperationalError classes that a retry cannot change: program limits (54), configuration file
# errors (F0), refused authorization (28).
_NEVER_TRANSIENT_CLASSES = ("54", "F0", "28")
# A failed connect carries no SQLSTATE (libpq reports it as text before any session exists), so
# refused credentials can only be recognised by what the server said.
_AUTH_TEXT = ("authentication failed", "no password supplied", "no pg_hba.conf entry")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact.text(text.splitlines()[0] if text else repr(exc))


def config_problem(exc: BaseException) -> bool:
    """Refused credentials or a missing role: configuration (78), never worth a retry."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate or ""
    if state.startswith(("28", "F0")):
        return True
    low = str(exc).lower()
    return any(s in low for s in _AUTH_TEXT) or ("role" in low and "does not exist" in low)


def transient(exc: BaseException) -> bool:
    """A failure a later attempt may not meet: the connection was refused, reset or terminated
    (`pg_terminate_backend`, a restart, a network cut: OperationalError with or without
    SQLSTATE, AdminShutdown 57P01), the server is starting or out of connections, a lock or
    serialization conflict. Refused authentication and program limits are not."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate or ""
    if state in _TRANSIENT_STATES or state.startswith("08"):
        return True
    if not isinstance(exc, psycopg.OperationalError) or config_problem(exc):
        return False
    return not state.startswith(_NEVER_TRANSIENT_CLASSES)


def classify(exc: BaseException) -> JobError | None:
    """The JobError a PostgreSQL failure stands for, or None when it is not one we can name."""
    if config_problem(exc):
        return ConfigError(f"postgresql: {_first_line(exc)}")
    if transient(exc):
        return TransientError(f"postgresql: {type(exc).__name__}: {_first_line(exc)}")
    return None


# The runner asks this module through hooks, registered on import: a job that never loads it
# pays nothing for it (see runner.add_classifier).
runner.add_classifier(classify)


def _classify_connect(exc: psycopg.OperationalError) -> Exception:
    if config_problem(exc):
        return ConfigError(f"postgresql: {_first_line(exc)}")
    return exc


def connect(
    dbname: str | None = None,
    *,
    dsn: str | None = None,
    deadline: retry.Deadline | None = None,
    autocommit: bool = True,
    application_name: str = "plana-job",
    keepalive: bool = False,
) -> psycopg.Connection[Any]:
    """Connect, retrying refused/reset connections within the deadline (then exit 75).

    `keepalive`: TCP keepalives and `tcp_user_timeout` for a session that idles for long.
    """
    conninfo = base_conninfo(dsn)
    kwargs: dict[str, Any] = {"autocommit": autocommit, "application_name": application_name}
    if dbname:
        kwargs["dbname"] = dbname
    if "connect_timeout" not in conninfo and not os.environ.get("PGCONNECT_TIMEOUT"):
        kwargs["connect_timeout"] = 10

    if keepalive:
        kwargs.update(_keepalive_params(conninfo))

    def attempt() -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            raise _classify_connect(exc) from None

    conn = retry.call(
        attempt,
        what=f"connect to postgresql database {dbname or '(default)'}",
        deadline=deadline or retry.Deadline(),
        transient=transient,
    )
    _register(conn, conninfo, kwargs)
    return conn


# Client-side TCP keepalives and a bound on unacknowledged data: a session that must notice a
# dead peer (the lock session, idle for the whole job) fails within about a minute instead of
# hanging until the kernel's two-hour default. libpq ignores them on Unix-domain sockets.
_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def _keepalive_params(conninfo: str) -> dict[str, Any]:
    given = conninfo_to_dict(conninfo)
    return {k: v for k, v in _KEEPALIVE.items() if k not in given}


# --------------------------------------------------------------------------- open connections


@dataclass(frozen=True)
class _Opened:
    conninfo: str
    kwargs: dict[str, Any]
    thread: int  # the thread that opened it (a signal handler runs on the main thread)


# Every connection this process opened through `connect`, weakly: the signal path must reach
# connections used by background threads too, without keeping closed ones alive.
_open: weakref.WeakKeyDictionary[psycopg.Connection[Any], _Opened] = weakref.WeakKeyDictionary()
_open_lock = threading.Lock()

CANCEL_WAIT_S = 10.0


def _register(conn: psycopg.Connection[Any], conninfo: str, kwargs: dict[str, Any]) -> None:
    with _open_lock:
        _open[conn] = _Opened(conninfo, dict(kwargs), threading.get_ident())


def open_connections() -> list[tuple[psycopg.Connection[Any], _Opened]]:
    with _open_lock:
        return [(c, o) for c, o in list(_open.items()) if not c.closed]


def _busy(conn: psycopg.Connection[Any]) -> bool:
    """A statement was sent and its result not yet read (it may still run on the server)."""
    return not conn.closed and conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE


def _idle_session(
    opened: list[tuple[psycopg.Connection[Any], _Opened]],
) -> psycopg.Connection[Any] | None:
    """An idle session of this thread (the lock session, usually) to watch the others from."""
    me = threading.get_ident()
    for conn, info in opened:
        if info.thread != me or conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            continue
        # Held: this thread was interrupted inside one of its calls; never reuse that one.
        if conn.lock.acquire(blocking=False):
            conn.lock.release()
            return conn
    return None


def _watch(watcher: psycopg.Connection[Any], pids: list[int], until: float) -> list[int]:
    """Re-send `pg_cancel_backend` until none of `pids` is active (or `until`); those left."""
    while True:
        rows = watcher.execute(
            "SELECT pid, pg_cancel_backend(pid) FROM pg_stat_activity"
            " WHERE pid = ANY(%s) AND state = 'active'",
            (pids,),
        ).fetchall()
        if not rows or time.monotonic() >= until:
            return [int(r[0]) for r in rows]
        time.sleep(0.05)


def cancel_running(wait_s: float = CANCEL_WAIT_S) -> list[int]:
    """Cancel every statement in flight on this process's connections; wait until it is gone.

    For the signal path: the job is about to exit, and a statement left queued on the server
    (a CREATE DATABASE waiting for a lock, say) would otherwise finish after the job released
    its locks. Sends the cancel request of each busy connection, then watches
    `pg_stat_activity` from another session — an idle one of this thread (the lock session) or
    else a new one — re-sending `pg_cancel_backend` until none of those backends is active (a
    cancel that reaches a backend before it starts the statement is ignored by the server).
    Bounded by `wait_s`; returns the backend pids that were cancelled. Never raises: the job is
    stopping anyway, and the server ends a session whose client is gone at its next read.
    """
    log = structlog.get_logger()
    opened = open_connections()
    busy = [conn for conn, _ in opened if _busy(conn)]
    if not busy:
        return []
    pids = [conn.info.backend_pid for conn in busy]
    for conn in busy:
        try:
            conn.cancel_safe(timeout=min(2.0, wait_s))
        except Exception as exc:  # the watch below re-sends it through pg_cancel_backend
            log.warning("cancel request failed", pid=conn.info.backend_pid, error=_brief(exc))
    until = time.monotonic() + wait_s
    reused = _idle_session([(c, o) for c, o in opened if c not in busy])
    if reused is not None:
        try:
            left = _watch(reused, pids, until)
        except psycopg.Error:
            reused = None  # e.g. the lock session was the one that got cut: use a new one
    if reused is None:
        info = opened[0][1]
        extra = {**info.kwargs, "connect_timeout": 5, "application_name": "plana-job cancel"}
        try:
            with psycopg.connect(info.conninfo, **extra) as fresh:
                left = _watch(fresh, pids, until)
        except Exception as exc:
            log.warning("could not confirm the cancel", pids=pids, error=_brief(exc))
            return pids
    if left:
        log.warning("statements still running after cancel", pids=left)
    else:
        log.info("cancelled running statements", pids=pids)
    return pids


# On SIGTERM, before the unwinding closes the lock sessions (runner._on_signal).
runner.on_terminate(cancel_running)


def _brief(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact.text(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}")


@contextmanager
def connection(dbname: str | None = None, **kwargs: Any) -> Iterator[psycopg.Connection[Any]]:
    conn = connect(dbname, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def conninfo_for(dbname: str, dsn: str | None = None) -> str:
    """A conninfo naming `dbname` (for child processes such as pg_dump)."""
    return psycopg.conninfo.make_conninfo(base_conninfo(dsn), dbname=dbname)


def database_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def database_comment(conn: psycopg.Connection[Any], name: str) -> str | None:
    """`COMMENT ON DATABASE` text: readable without connecting to that database."""
    return described(conn, name)[1]


def described(conn: psycopg.Connection[Any], name: str) -> tuple[bool, str | None]:
    """(whether `name` exists, its comment) in one catalog read: "is it ours?" asks both."""
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    return (False, None) if row is None else (True, row[0])


def set_database_comment(conn: psycopg.Connection[Any], name: str, comment: str) -> None:
    conn.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment))
    )


def drop_database(conn: psycopg.Connection[Any], name: str, *, missing_ok: bool = True) -> None:
    """`DROP DATABASE … WITH (FORCE)`: sessions still on it are ended, not waited for."""
    if_exists = sql.SQL("IF EXISTS ") if missing_ok else sql.SQL("")
    conn.execute(sql.SQL("DROP DATABASE {}{} WITH (FORCE)").format(if_exists, sql.Identifier(name)))


def rename_database(conn: psycopg.Connection[Any], old: str, new: str) -> None:
    """`ALTER DATABASE … RENAME TO …`; fails while `old` has sessions (see terminate_sessions)."""
    conn.execute(
        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    )


def terminate_sessions(conn: psycopg.Connection[Any], name: str) -> int:
    """End every other session on `name`; returns how many were ended."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    ).fetchall()
    return len(rows)


def server_version(conn: psycopg.Connection[Any]) -> int:
    return conn.info.server_version
