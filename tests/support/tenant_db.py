"""tenant-db's world, shared by the tests of tenant-db, locks, filestore isolation and the jobs
that start from a tenant: a template built by the job itself with the Odoo under test (the
module-scoped `template` fixture, exposed by the root conftest), tenant-db's arguments for it,
and the catalog probes those tests read (which databases, which sessions wait on what).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.core import naming
from tests.support import odoo_target
from tests.support.harness import OWNER_ROLE, Runner, database_names

TARGET = odoo_target.current()
VERSION = 18
# A real install of base+web and the test apps takes minutes on a loaded machine.
BUILD_TIMEOUT = 1800 if TARGET.real else 120


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


def build_template(
    pg_dsn: str, redis_url: str, tmp: Path, odoo: Path, conf: Path | None, modules: str
) -> Iterator[dict[str, Any]]:
    """A template built by the job with `odoo` (and its config), dropped afterwards."""
    data_dir = tmp / "data"
    name = "template_" + uuid.uuid4().hex[:10]
    run = Runner(pg_dsn, redis_url, tmp)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, OWNER_ROLE)
    config = ["--odoo-config", str(conf)] if conf else []
    try:
        built = run(
            ["template-build", "--template-code", "basic", "--odoo-version", str(VERSION),
             "--modules", modules, "--template-db", name, "--odoo-bin", str(odoo),
             "--data-dir", str(data_dir), *config],
            timeout=BUILD_TIMEOUT + 60, PLANA_TIMEOUT=str(BUILD_TIMEOUT),
        )  # fmt: skip
        assert built.rc == 0, built.output
        yield {"name": name, "data_dir": data_dir, "fingerprint": built.result["fingerprint"],
               "odoo": odoo, "conf": conf}  # fmt: skip
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            drop(conn, name)


@pytest.fixture(scope="module")
def template(
    pg_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One template (built by the job, with the Odoo under test) shared by this module's tests:
    base, web and the test apps (whose attachments give the filestore files)."""
    TARGET.require(VERSION)
    target = TARGET.for_admin(pg_dsn)
    tmp = tmp_path_factory.mktemp("tpl")
    odoo, conf = target.binary(tmp, VERSION), target.config(tmp, VERSION)
    modules = ",".join(("base", "web", *odoo_target.APPS))
    yield from build_template(pg_dsn, redis_url, tmp, odoo, conf, modules)


def tenant_args(sub: str, tpl: dict[str, Any], **over: str) -> list[str]:
    fields = {
        "--subdomain": sub,
        "--project-id": "23",
        "--tier": "starter",
        "--odoo-version": "18",
        "--owner-email": f"owner@{sub}.example.com",
        "--owner-name": "Ada Lovelace",
        "--template-db": tpl["name"],
        "--data-dir": str(tpl["data_dir"]),
        **over,
    }
    return ["tenant-db", *[item for pair in fields.items() for item in pair]]


def mine(conn: psycopg.Connection[Any], *tokens: str) -> set[str]:
    """The cluster's databases named with one of `tokens` (other suites share the cluster)."""
    return {n for n in database_names(conn) if any(t in n for t in tokens)}


def db_of(sub: str) -> str:
    return naming.db_name(sub)


def wait_until(check: Any, proc: subprocess.Popen[str], what: str, timeout: float = 120) -> None:
    """Poll observable state while the job runs (no fixed sleeps: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        assert proc.poll() is None, f"{what}: the job exited {proc.returncode}"
        time.sleep(0.05)


def waiting_clones(conn: psycopg.Connection[Any], app: str) -> int:
    """Sessions named `app` whose CREATE DATABASE waits for a heavyweight lock."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        " AND state = 'active' AND wait_event_type = 'Lock' AND query LIKE 'CREATE DATABASE%%'",
        (app,),
    ).fetchone()
    return int(row[0]) if row else 0


def active_sessions(conn: psycopg.Connection[Any], app: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
        (app,),
    ).fetchone()
    return int(row[0]) if row else 0


def pg_database_comment(conn: psycopg.Connection[Any], db: str) -> str:
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (db,)
    ).fetchone()
    assert row is not None and row[0]
    return str(row[0])
