"""What a tenant database and filestore hold, compared by digest (small test tenants only)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg
from psycopg import sql

from jobs.core import naming


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
        for (table,) in rows:
            if table in skip:
                continue
            q = sql.SQL("SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), ''))"
                        " FROM {} x").format(sql.Identifier(table))  # fmt: skip
            row = conn.execute(q).fetchone()
            assert row is not None
            out[table] = row[0]
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
