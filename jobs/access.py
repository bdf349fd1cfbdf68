"""Who may connect to a database this project creates or restores: its owner role, nobody else.

PostgreSQL grants CONNECT and TEMPORARY to PUBLIC on every new database (and GRANTs are neither
copied by `CREATE DATABASE … TEMPLATE` nor restored by pg_restore without --create), so every
database a job creates, clones or restores goes through `restrict_connect` before it is used.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql


def restrict_connect(conn: psycopg.Connection[Any], db: str, owner: str | None = None) -> None:
    """REVOKE CONNECT, TEMPORARY FROM PUBLIC; GRANT them to `owner` (default: this session's role).

    A superuser connects regardless of the ACL, so scratch databases granted to the connecting
    role stay reachable by the job and by nobody else.
    """
    ident = sql.Identifier(db)
    role = sql.Identifier(owner) if owner else sql.SQL("CURRENT_USER")
    conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(ident))
    conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(ident, role))


def public_can_connect(conn: psycopg.Connection[Any], db: str) -> bool:
    """True when PUBLIC holds CONNECT on `db` (a NULL ACL means the default: it does)."""
    row = conn.execute(
        "SELECT datacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(datacl) a"
        " WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT')"
        " FROM pg_database WHERE datname = %s",
        (db,),
    ).fetchone()
    return bool(row and row[0])
