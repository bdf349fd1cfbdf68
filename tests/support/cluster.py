"""The shared PostgreSQL cluster in tests: roles made once, and the databases of one test.

Copied from tests/test_tenant_db.py (test modules do not import one another): `ensure_role`
makes a role another run may have made first, `mine` lists the databases named with a test's
tokens (other suites share the cluster).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from tests.conftest import OWNER_ROLE, database_names

__all__ = ["OWNER_ROLE", "ensure_role", "mine"]


def ensure_role(conn: psycopg.Connection[Any], role: str, login: bool = False) -> None:
    try:
        conn.execute(
            sql.SQL("CREATE ROLE {} " + ("LOGIN" if login else "NOLOGIN")).format(
                sql.Identifier(role)
            )
        )
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        pass  # another test run made it first


def mine(conn: psycopg.Connection[Any], *tokens: str) -> set[str]:
    """The cluster's databases named with one of `tokens` (other suites share the cluster)."""
    return {n for n in database_names(conn) if any(t in n for t in tokens)}
