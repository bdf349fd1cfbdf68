"""Neutralising a copy of a tenant's database, as Odoo does it, and proving it was.

A copy of production must never send its mail or run its crons: `neutralise` has the copy's own
Odoo binary run `odoo neutralize` on it (every installed module's `data/neutralize.sql`), and
`check_neutralised` (`sql/environment/check.sql`) says what is still live.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import psycopg

from jobs.adapters import odoo, pg
from jobs.adapters.pg import script
from jobs.core import runner
from jobs.core.errors import ConfigError, ConflictError, TransientError


def database_major(conn: psycopg.Connection[Any]) -> int | None:
    """The Odoo major version of the database Odoo would load (its `base` module's)."""
    version = odoo.base_version(conn, odoo.LOADED)
    return odoo.major(version) if version else None


@dataclass(frozen=True)
class Odoo:
    """The environment's Odoo, as the job was given it, and the version it said it is."""

    bin: str
    binary: str  # its `--version` line, e.g. "Odoo Server 18.0"
    config: str | None = None  # the Odoo config to start from (None: $ODOO_RC)
    addons_path: str | None = None
    dsn: str | None = None


def require_binary(odoo_bin: str) -> None:
    """78 when `odoo_bin` is not there to run, as `odoo.binary_version` would say, found without
    starting it (a dry run and `inspect` start no Odoo): its version is the run's to ask."""
    if shutil.which(odoo_bin) is not None:
        return
    if os.path.sep in odoo_bin and os.path.exists(odoo_bin):
        raise ConfigError(f"odoo binary not executable: {odoo_bin}")
    raise ConfigError(f"odoo binary not found: {odoo_bin}")


def neutralise(job: runner.Job, odoo_: Odoo, db: str) -> None:
    """`odoo neutralize -d db` with the environment's own binary (one transaction, in Odoo).

    Odoo's own mechanism, so every installed module's `data/neutralize.sql` is applied, those
    of custom addons on the addons path too. The binary must be the database's major version:
    another version's SQL is written for another schema. A failed run leaves nothing applied
    (Odoo rolls back) and a re-run starts over from a new copy, hence 75.
    """
    with pg.connection(db, dsn=odoo_.dsn, deadline=job.deadline) as wconn:
        db_major = database_major(wconn)
    if db_major is None:
        raise ConflictError(f"{db} is not an Odoo database (no installed base module)")
    if db_major != odoo.major(odoo_.binary):
        raise ConflictError(
            f"{db} is Odoo {db_major}, {odoo_.bin} is {odoo_.binary!r}: cannot neutralise it",
            binary=odoo_.binary,
        )
    args = ["-d", db]
    if odoo_.addons_path:
        args.append(f"--addons-path={odoo_.addons_path}")
    done = odoo.run_command(
        odoo_.bin, "neutralize", args, dsn=odoo_.dsn, base_config=odoo_.config,
        deadline=job.deadline,
    )  # fmt: skip
    if done.returncode < 0:
        raise TransientError(f"odoo neutralize was killed by signal {-done.returncode}")
    if done.returncode != 0:
        said = " | ".join(done.tail[-3:]) or "(no output)"
        raise TransientError(f"odoo neutralize exited {done.returncode}: {said}"[:600])


def check_neutralised(conn: psycopg.Connection[Any]) -> list[str]:
    row = conn.execute(script.read("environment/check.sql")).fetchone()
    assert row is not None
    problems = []
    if row[0] != "true":
        problems.append(f"database.is_neutralized is {row[0]!r}")
    if row[1]:
        problems.append(f"{row[1]} outgoing mail servers still active")
    if row[2]:
        problems.append(f"{row[2]} scheduled actions still active")
    if row[3]:
        problems.append("the neutralized-database banner (web.neutralize_banner) is inactive")
    return problems
