"""The cluster's catalog as the tenant tests look at it: the jobs' owner role, the databases a
test made (other suites share the cluster), their comments, and dropping them."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from tests.conftest import database_names

OWNER_ROLE = "plana"  # the role owning the tenants' databases (docs/tenant-db.md)


def ensure_role(conn: psycopg.Connection[Any], role: str, login: bool = False) -> None:
    try:
        conn.execute(
            sql.SQL("CREATE ROLE {} " + ("LOGIN" if login else "NOLOGIN")).format(
                sql.Identifier(role)
            )
        )
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        pass  # another test run made it first


def drop(conn: psycopg.Connection[Any], name: str) -> None:
    ident = sql.Identifier(name)
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def mine(conn: psycopg.Connection[Any], *tokens: str) -> set[str]:
    """The cluster's databases named with one of `tokens` (other suites share the cluster)."""
    return {n for n in database_names(conn) if any(t in n for t in tokens)}


def pg_database_comment(conn: psycopg.Connection[Any], db: str) -> str:
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (db,)
    ).fetchone()
    assert row is not None and row[0]
    return str(row[0])
