"""PostgreSQL connections the Kubernetes way: `PLANA_PG_DSN` if set, else libpq's own PG* env.

Also the small catalog facts several jobs observe before they act.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from jobs import redact, retry
from jobs.errors import ConfigError, JobError, TransientError, UsageError

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
) -> psycopg.Connection[Any]:
    """Connect, retrying refused/reset connections within the deadline (then exit 75)."""
    conninfo = base_conninfo(dsn)
    kwargs: dict[str, Any] = {"autocommit": autocommit, "application_name": application_name}
    if dbname:
        kwargs["dbname"] = dbname
    if "connect_timeout" not in conninfo and not os.environ.get("PGCONNECT_TIMEOUT"):
        kwargs["connect_timeout"] = 10

    def attempt() -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            raise _classify_connect(exc) from None

    return retry.call(
        attempt,
        what=f"connect to postgresql database {dbname or '(default)'}",
        deadline=deadline or retry.Deadline(),
        transient=transient,
    )


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
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    return None if row is None else row[0]


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
