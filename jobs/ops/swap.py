"""The names and the tidy-up of a publish-by-rename swap (restore, environment-db).

The new copy is built as `{db}{work_suffix}` plus a hidden filestore beside the live one; the
swap moves the live pair to `{db}__old` / `.{fs}.old` and the work pair into place. What is left
once the new pair holds the names is the same for every such job, so it is done here.

The filestore names are looked at with `lstat` only: a live filestore that is a symlink (to
another tenant's, say) is refused when the names are taken (`FilestoreError`, 65), and the
work and old names are moved or removed as links, never through them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from jobs.adapters import filestore, pg
from jobs.core import fstree, naming

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
        """`fs_work` names the work filestore from the live one (each job hides it its own way).

        Refuses (65) a live filestore that is a symlink: the job would read or replace
        whatever it points at.
        """
        fs = tenant.filestore(data_dir)
        filestore.present(fs)
        return cls(
            db=tenant.db_name,
            work=tenant.db_name + work_suffix,
            old=tenant.db_name + OLD_SUFFIX,
            fs=fs,
            fs_work=fs_work(fs),
            fs_old=fs.parent / f".{fs.name}.old",
        )


def restore_stage(fs: Path) -> Path:
    """Where restore unpacks a set's filestore: its own staging name, no other job's."""
    return filestore.staging_path(fs, "restore")


def place_filestore(n: Names) -> bool:
    """Move the work filestore into place unless the live one is there; True if it moved."""
    if fstree.kind_of(n.fs) == "missing" and fstree.kind_of(n.fs_work) == "dir":
        os.rename(n.fs_work, n.fs)
        return True
    return False


def drop_old(conn: psycopg.Connection[Any], n: Names) -> bool:
    """Drop the swapped-out database and filestore; True if either was there."""
    did = False
    if pg.database_exists(conn, n.old):
        pg.drop_database(conn, n.old)
        did = True
    if filestore.discard(n.fs_old):  # a link there is unlinked, its target left alone
        did = True
    return did
