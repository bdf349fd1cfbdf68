"""The names and the tidy-up of a publish-by-rename swap (restore, environment-db).

The new copy is built as `{db}{work_suffix}` plus a hidden filestore beside the live one; the
swap moves the live pair to `{db}__old` / `.{fs}.old` and the work pair into place. What is left
once the new pair holds the names is the same for every such job, so it is done here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from jobs import filestore, naming, pg

OLD_SUFFIX = "__old"


@dataclass(frozen=True)
class Names:
    db: str
    work: str
    old: str
    fs: Path
    fs_work: Path
    fs_old: Path

    @classmethod
    def of(
        cls,
        tenant: naming.Tenant,
        data_dir: str,
        *,
        work_suffix: str,
        fs_work: Callable[[Path], Path],
    ) -> Names:
        """`fs_work` names the work filestore from the live one (each job hides it its own way)."""
        fs = tenant.filestore(data_dir)
        return cls(
            db=tenant.db_name,
            work=tenant.db_name + work_suffix,
            old=tenant.db_name + OLD_SUFFIX,
            fs=fs,
            fs_work=fs_work(fs),
            fs_old=fs.parent / f".{fs.name}.old",
        )


def place_filestore(n: Names) -> bool:
    """Move the work filestore into place unless the live one is there; True if it moved."""
    if not n.fs.exists() and n.fs_work.exists():
        os.rename(n.fs_work, n.fs)
        return True
    return False


def drop_old(conn: psycopg.Connection[Any], n: Names) -> bool:
    """Drop the swapped-out database and filestore; True if either was there."""
    did = False
    if pg.database_exists(conn, n.old):
        pg.drop_database(conn, n.old)
        did = True
    if n.fs_old.exists():
        filestore.discard(n.fs_old)
        did = True
    return did
