"""Tenants to back up and the means to inspect and tamper with their sets, shared by the backup,
restore, retention, trust, isolation, attack and kill tests: `make_tenant` (a tenant as tenant-db
leaves it), digests of its rows and files, a set's manifest rewritten (and re-signed) as whoever
holds the backup key would, and the `world` fixture (a tenant with data and a backup volume,
exposed by the root conftest).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.core import naming
from jobs.ops import marker
from tests.support import markers
from tests.support.harness import BACKUP_KEY, JOB_ROLE, OWNER_ROLE, STANDINS, job_dsn
from tests.support.tenant_db import ensure_role


def make_tenant(
    pg_dsn: str,
    sub: str,
    data_dir: Path,
    partners: int = 50,
    *,
    base: tuple[str, Path] | None = None,
) -> str:
    """A tenant database as tenant-db leaves it: Odoo-initialised, marked, with some data.

    With `base` (a database the Odoo under test initialised, and its filestore) it is a clone
    of that; without, the stand-in initialises it (base, mail, contacts): the tests of other
    files that only need an Odoo-shaped tenant, whichever Odoo is under test.
    """
    db = naming.db_name(sub)
    if base is not None:
        job_dsn(pg_dsn)  # the jobs' role exists
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                sql.Identifier(db), sql.Identifier(base[0]), sql.Identifier(JOB_ROLE)))  # fmt: skip
        if base[1].is_dir():
            shutil.copytree(base[1], naming.filestore(db, data_dir))
    else:
        params = psycopg.conninfo.conninfo_to_dict(job_dsn(pg_dsn))  # Odoo refuses `postgres`
        env = {**os.environ, "PGHOST": str(params.get("host", "127.0.0.1")),
               "PGPORT": str(params.get("port", 5432)), "PGUSER": JOB_ROLE}  # fmt: skip
        env.pop("PGDATABASE", None)
        subprocess.run(
            [sys.executable, str(STANDINS / "odoo"), "-d", db, "-i", "base,mail,contacts",
             "--without-demo=all", "--stop-after-init", "-D", str(data_dir)],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        marker.write(conn, db, marker.Marker("tenant", "complete", markers.tenant(sub)))
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO res_partner (name, email) SELECT 'partner ' || i, 'p' || i || '@x.test'"
            " FROM generate_series(1, %s) i",
            (partners,),
        )
    add_attachment(data_dir, db, b"an invoice, as a customer uploaded it")
    return db


def add_attachment(data_dir: Path, db: str, content: bytes) -> str:
    sha = hashlib.sha1(content).hexdigest()
    path = naming.filestore(db, data_dir) / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return sha


def table_digests(pg_dsn: str, db: str, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """md5 of every table's rows in a stable order: equal digests, equal contents."""
    out: dict[str, str] = {}
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
        tables = [r[0] for r in rows]
        for t in tables:
            if t in skip:
                continue
            q = sql.SQL("SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), ''))"
                        " FROM {} x").format(sql.Identifier(t))  # fmt: skip
            row = conn.execute(q).fetchone()
            assert row is not None
            out[t] = row[0]
    return out


def tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def config(pg_dsn: str, db: str) -> dict[str, str]:
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        return dict(conn.execute("SELECT key, value FROM ir_config_parameter").fetchall())


def write_manifest(set_dir: Path, manifest: Any, *, sign: bool = True) -> None:
    """Rewrite a set's manifest as whoever holds the backup key would (or without re-signing)."""
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    (set_dir / "manifest.json").write_bytes(body)
    if sign:
        sig = hmac.new(BACKUP_KEY.encode(), body, hashlib.sha256).hexdigest()
        (set_dir / "manifest.sig").write_text(sig + "\n")


@pytest.fixture
def world(pg_dsn: str, uid: str, tmp_path: Path, drop_dbs: list[str]) -> dict[str, Any]:
    """One tenant with data and a backup volume; drop_dbs cleans everything named after uid."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, OWNER_ROLE)
    data_dir = tmp_path / "data"
    dest = tmp_path / "backups"
    dest.mkdir()
    drop_dbs.append(f"{uid}%")
    db = make_tenant(pg_dsn, uid, data_dir)
    args = ["--subdomain", uid, "--dest", str(dest), "--data-dir", str(data_dir)]
    return {"sub": uid, "db": db, "data_dir": data_dir, "dest": dest, "args": args}


def seal(set_dir: Path, data: dict[str, Any], rel: str) -> None:
    """Record a file's new size and sha256 in the manifest, as a backup would have."""
    body = (set_dir / rel).read_bytes()
    data["files"][rel] = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def verify_args(w: dict[str, Any]) -> list[str]:
    return ["backup-verify", "--subdomain", w["sub"], "--dest", str(w["dest"])]
