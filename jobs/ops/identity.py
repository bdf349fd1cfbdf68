"""A tenant database's own identity: who it belongs to, and what makes it no copy of another.

- `Identity` + `personalise(conn_to_db, identity)`: a clone of a template made the tenant's
  (`sql/tenant/personalise.sql`), in one transaction (tenant-db, environment-db).
- `new_identity(conn_to_db, hostname)`: what Odoo's duplication resets, for a copy of another
  database (restore --as-copy, environment-db --copy-from-production).
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from jobs.adapters.pg import script
from jobs.core import naming
from jobs.core.errors import ConflictError


@dataclass(frozen=True)
class Identity:
    """Who a tenant database belongs to (the PLANAClient's owner fields and hostname)."""

    hostname: str
    owner_email: str
    owner_name: str
    company_name: str | None = None  # default: the owner's name

    @classmethod
    def of(cls, spec: naming.ClientSpec) -> Identity:
        return cls(spec.tenant.hostname, spec.owner_email, spec.owner_name)


@functools.cache
def _identity_sql() -> tuple[str, ...]:
    """What every copy of a database gets (sql/tenant/identity.sql), personalised or not.
    Read on first use, not at import: a job's start (and `--help`) never depends on it."""
    return tuple(script.statements("tenant/identity.sql"))


# The characters Python's str.strip() removes (str.isspace()): Odoo strips complete_name so.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)


def email_normalized(address: str) -> str:
    """Odoo's `email_normalize` of one plain address: the domain lower-cased, and the local part
    too when it is ASCII (a non-ASCII local part is SMTPUTF8's and kept as it is)."""
    local, at, domain = address.rpartition("@")
    return (local if not local.isascii() else local.lower()) + at + domain.lower()


def _has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s"
        " AND NOT attisdropped",
        (table, column),
    ).fetchone()
    return row is not None


def personalise(conn: psycopg.Connection[Any], identity: Identity) -> dict[str, str]:
    """Give the database (connected by `conn`) its own identity, in one transaction.

    Also the stored fields Odoo derives from what changes (complete_name,
    commercial_company_name, and mail's email_normalized when mail is installed).
    Returns the non-secret facts (uuid, base_url, admin_login); the secret is never returned.
    """
    params = {
        **_fresh_identity(identity.hostname),
        "admin_login": identity.owner_email,
        "owner_email": identity.owner_email,
        "owner_name": identity.owner_name,
        "company_name": identity.company_name or identity.owner_name,
        "whitespace": PY_WHITESPACE,
        "owner_email_normalized": email_normalized(identity.owner_email),
    }
    try:
        with conn.transaction():
            for statement in [*_identity_sql(), *script.statements("tenant/personalise.sql")]:
                conn.execute(statement, params)
            if _has_column(conn, "res_partner", "email_normalized"):  # mail is installed
                for statement in script.statements("tenant/personalise_mail.sql"):
                    conn.execute(statement, params)
            row = conn.execute(script.statements("tenant/check.sql")[0]).fetchone()
            if row is None or row[0] != params["admin_login"] or row[3] != params["uuid"]:
                raise ConflictError(
                    f"database {conn.info.dbname} has no Odoo admin user / main company to "
                    "personalise (is its template an Odoo database?)"
                )
    except psycopg.errors.UndefinedTable as exc:
        raise ConflictError(
            f"database {conn.info.dbname} is not an Odoo database: {exc.diag.message_primary}"
        ) from None
    return {"uuid": params["uuid"], "base_url": params["base_url"], "admin_login": row[0]}


def new_identity(conn: psycopg.Connection[Any], hostname: str) -> None:
    """What Odoo's duplication resets: a copy never shares secret or uuid with its original."""
    fresh = _fresh_identity(hostname)  # once: every statement gets the same new identity
    with conn.transaction():
        for statement in _identity_sql():
            conn.execute(statement, fresh)


def _fresh_identity(hostname: str) -> dict[str, str]:
    """identity.sql's parameters: a new secret and uuid, now, the URL of `hostname`."""
    return {
        "secret": str(uuid.uuid4()),
        "uuid": str(uuid.uuid4()),
        "create_date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "base_url": f"https://{hostname}",
    }
