"""What a `--dry-run` (and `inspect`) must leave exactly as it was: a snapshot to compare.

`Snapshot.take(...)` records the PostgreSQL catalog (every database with its owner, ACL, whether
it accepts connections and its comment, where the jobs keep their markers), the rows of every
table of the databases named (a digest per table), a tree of files (type, size, mode,
mtime_ns, link target of every entry, without following links) and the Redis keys under a
prefix (type, value as DUMP, whether it expires). Two snapshots compare equal when nothing of
that changed; `diff` says what did.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

Row = tuple[Any, ...]


def catalog(dsn: str, only: Iterable[str] = ()) -> dict[str, Row]:
    """The databases (those whose name holds one of `only`, when given: other suites may be
    making their own meanwhile)."""
    parts = tuple(only)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, pg_get_userbyid(datdba), datacl::text, datallowconn,"
            " datistemplate, shobj_description(oid, 'pg_database') FROM pg_database"
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows if not parts or any(p in r[0] for p in parts)}


def table_digests(dsn: str, db: str) -> dict[str, str]:
    """md5 of each user table's rows, in a stable order (small test databases only)."""
    conninfo = psycopg.conninfo.make_conninfo(dsn, dbname=db)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        out: dict[str, str] = {}
        for schema, table in tables:
            query = sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
            ).format(sql.Identifier(schema, table))
            row = conn.execute(query).fetchone()
            out[f"{schema}.{table}"] = row[0] if row else ""
    return out


def tree(root: Path) -> dict[str, Row]:
    """Every entry under `root` (root included), never following a link."""
    out: dict[str, Row] = {}
    if not os.path.lexists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath) if name == "." else Path(dirpath) / name
            st = path.lstat()
            target = os.readlink(path) if path.is_symlink() else None
            rel = str(path.relative_to(root))
            out[rel] = (st.st_mode, st.st_size if not path.is_dir() else 0, st.st_mtime_ns, target)
    return out


def redis_keys(url: str, prefix: str) -> dict[bytes, Row]:
    client = redis.Redis.from_url(url)
    try:
        out: dict[bytes, Row] = {}
        for key in client.scan_iter(match=f"{prefix}*"):
            out[key] = (client.type(key), client.dump(key), client.ttl(key) >= 0)
        return out
    finally:
        client.close()


@dataclass
class Snapshot:
    catalog: dict[str, Row] = field(default_factory=dict)
    tables: dict[str, dict[str, str]] = field(default_factory=dict)
    files: dict[str, dict[str, Row]] = field(default_factory=dict)
    keys: dict[bytes, Row] = field(default_factory=dict)

    @classmethod
    def take(
        cls,
        dsn: str | None = None,
        *,
        databases: Iterable[str] = (),
        only: Iterable[str] = (),
        roots: Iterable[Path] = (),
        redis_url: str | None = None,
        prefix: str = "",
    ) -> Snapshot:
        snap = cls()
        if dsn is not None:
            snap.catalog = catalog(dsn, only)
            snap.tables = {db: table_digests(dsn, db) for db in databases if db in snap.catalog}
        snap.files = {str(root): tree(root) for root in roots}
        if redis_url is not None:
            snap.keys = redis_keys(redis_url, prefix)
        return snap

    def diff(self, other: Snapshot) -> list[str]:
        """What differs from `other`, one line per thing (empty: untouched)."""
        lines: list[str] = []
        for label, a, b in (
            ("database", self.catalog, other.catalog),
            ("redis key", self.keys, other.keys),
        ):
            lines += _diff(label, dict(a), dict(b))
        for db in sorted(set(self.tables) | set(other.tables)):
            lines += _diff(f"table of {db}", self.tables.get(db, {}), other.tables.get(db, {}))
        for root in sorted(set(self.files) | set(other.files)):
            mine, theirs = self.files.get(root, {}), other.files.get(root, {})
            lines += _diff(f"file under {root}", mine, theirs)
        return lines


def _diff(label: str, a: dict[Any, Any], b: dict[Any, Any]) -> list[str]:
    lines = [f"{label} added: {k!r}" for k in sorted(set(b) - set(a), key=repr)]
    lines += [f"{label} removed: {k!r}" for k in sorted(set(a) - set(b), key=repr)]
    lines += [f"{label} changed: {k!r}" for k in sorted(set(a) & set(b), key=repr) if a[k] != b[k]]
    return lines
