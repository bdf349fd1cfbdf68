"""Backup sets: their layout on the backup volume, how one is taken, and how one is read back.

    {dest}/{subdomain}/{YYYYMMDDTHHMMSSZ}/db.dump | db.dir/   pg_dump custom | directory format
                                          filestore.tar       the filestore, paths relative to it
                                          manifest.json       sizes, sha256, versions, row counts
                                          manifest.sig        HMAC-SHA256 of manifest.json

`take` builds a set as `{ts}.partial` and publishes it by one rename, `manifest.json` written
last inside it (the caller holds the tenant's backup lock, `locks.backup`). Its parts, for a job
that plans them one by one (backup): `read_source` (the marker and settings), `leftovers` /
`remove_leftover` (what killed runs left), `dump_set` and `publish_set`. `remove_tree` deletes a
set crash-safely (renamed to `.deleting` first, jobs.core.fstree.remove_aside). Reading one back
(restore, backup-verify, deprovision) goes through `load_manifest`, `check_owner` and
`check_files`: a set is untrusted input (jobs.ops.manifest). `check_restored` and
`extract_filestore` compare a restored copy with its set and unpack its filestore.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from jobs.adapters import filestore, odoo, pg
from jobs.adapters.pg import tools as pg_tools
from jobs.core import background, fstree, naming, params, proc, runner
from jobs.core.errors import ConfigError, ConflictError, TransientError, UsageError
from jobs.ops import manifest as mf
from jobs.ops import marker, set_archive

SET_NAME = mf.SET_NAME
SET_FORMAT = "%Y%m%dT%H%M%SZ"
MANIFEST = mf.MANIFEST
DUMP_FILE = mf.DUMP_FILE
DUMP_DIR = mf.DUMP_DIR
FILESTORE_TAR = mf.FILESTORE_TAR
PARTIAL = ".partial"
DELETING = ".deleting"
MANIFEST_FORMAT = mf.FORMAT
CHUNK = 1 << 20
# Room a set needs below --dest: "/{subdomain ≤ 63}/{set}.partial/db.dir/NNNN.dat.gz" and tar's
# temporary names, with margin.
SET_PATH_ROOM = 160


# ---------------------------------------------------------------------------- set layout


def set_time(name: str) -> datetime:
    return datetime.strptime(name, SET_FORMAT).replace(tzinfo=UTC)


def set_name(t: datetime) -> str:
    return t.astimezone(UTC).strftime(SET_FORMAT)


def tenant_dir(dest: Path, subdomain: str) -> Path:
    return dest / subdomain


def complete_sets(tdir: Path) -> list[str]:
    """Names of the complete sets under a tenant's directory, oldest first."""
    if not tdir.is_dir():
        return []
    return sorted(
        p.name for p in tdir.iterdir() if SET_NAME.fullmatch(p.name) and (p / MANIFEST).is_file()
    )


def open_set(set_dir: Path) -> int:
    """The set directory by descriptor: `{tenant dir}/{set}` with both levels O_NOFOLLOW."""
    try:
        return mf.open_set(set_dir.parent.parent, set_dir.parent.name, set_dir.name)
    except FileNotFoundError:
        raise ConflictError(f"set {set_dir.name}: no such set in {set_dir.parent}") from None
    except OSError as exc:  # ELOOP/ENOTDIR: a level was swapped for a link or a file
        raise ConflictError(
            f"set {set_dir.name}: cannot be opened safely: {exc.strerror}"
        ) from None


def load_manifest(set_dir: Path, key: bytes) -> mf.Manifest:
    """The authenticated, schema-checked manifest of a set (65 on any doubt)."""
    fd = open_set(set_dir)
    try:
        return mf.load(fd, key, set_dir.name)[0]
    finally:
        os.close(fd)


def is_final(set_dir: Path, key: bytes) -> bool:
    """True only when the set's manifest is validly signed and says `final: true`.

    Retention and deprovision need only this one fact, and only from a signed manifest.
    """
    try:
        fd = open_set(set_dir)
    except ConflictError:
        return False
    try:
        data = mf.authenticated(fd, key, set_dir.name)
    except ConflictError:
        return False
    finally:
        os.close(fd)
    return isinstance(data, dict) and data.get("final") is True


def check_owner(m: mf.Manifest, tenant: naming.Tenant, label: str) -> None:
    """A set is only ever read for the tenant it was taken of (65 otherwise)."""
    got = (m.subdomain, m.database, m.base_domain)
    want = (tenant.subdomain, tenant.db_name, tenant.base_domain)
    if got != want:
        raise ConflictError(
            f"set {label} belongs to {m.subdomain} (database {m.database}, domain "
            f"{m.base_domain}), not to {tenant.subdomain}: refused",
            set=label,
        )


def set_name_arg(value: str) -> str:
    """A `--set` value: a set's name, `20250131T020000Z` (64 otherwise)."""
    if not SET_NAME.fullmatch(value):
        raise UsageError("set", f"must be a set name like 20250131T020000Z, got {value!r}")
    return value


def pick_set(tdir: Path, wanted: str | None, field: str = "set") -> Path:
    """The set named `wanted`, or the newest complete one; ConflictError when there is none."""
    if wanted:
        try:
            set_name_arg(wanted)
        except UsageError as exc:
            raise UsageError(field, exc.problem) from None
        path = tdir / wanted
        if not (path / MANIFEST).is_file():
            raise ConflictError(f"set {wanted}: no complete set of that name in {tdir}")
        return path
    sets = complete_sets(tdir)
    if not sets:
        raise ConflictError(f"no complete backup set in {tdir}")
    return tdir / sets[-1]


class SetWork:
    """What a job reading one chosen set holds while it acts on it: the set's manifest as
    checked, its name and directory, and the descriptors of the files `check_files` hashed
    (pinned: what is read afterwards is those, never the set's paths again). `close` closes
    them. backup-verify and restore build their step actions on it."""

    def __init__(self, dest: Path, subdomain: str, manifest: mf.Manifest | None, name: str | None):
        assert manifest is not None and name is not None, "a set was chosen before acting on it"
        self.manifest, self.name = manifest, name
        self.set_dir = tenant_dir(dest, subdomain) / name
        self.pinned: dict[str, int] = {}

    def close(self) -> None:
        for fd in self.pinned.values():
            os.close(fd)
        self.pinned.clear()


def check_files(set_dir: Path, m: mf.Manifest, pinned: dict[str, int] | None = None) -> list[str]:
    """Every mismatch between the set's files and the manifest's sizes and checksums.

    `pinned` receives the checked dump's descriptor (see `manifest.check_files`).
    """
    fd = open_set(set_dir)
    try:
        return mf.check_files(fd, m, pinned)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Delete a set so that no crash leaves it looking complete: renamed to `.deleting` first.

    A failed removal is left as the `.deleting` it already is, for the next run's sweep.
    """
    aside = path if path.name.endswith(DELETING) else path.with_name(path.name + DELETING)
    fstree.remove_aside(path, aside, best_effort=True)


def leftovers(tdir: Path) -> list[str]:
    """The `.partial` and `.deleting` sets killed runs left under a tenant's directory."""
    if not tdir.is_dir():
        return []
    return sorted(
        p.name
        for p in tdir.iterdir()
        if p.is_dir() and (p.name.endswith(PARTIAL) or p.name.endswith(DELETING))
    )


def remove_leftover(tdir: Path, name: str) -> None:
    """Remove one leftover (caller holds the lock): never a set, only an unfinished one."""
    if not (name.endswith(PARTIAL) or name.endswith(DELETING)):
        raise ValueError(f"not a leftover set name: {name!r}")
    shutil.rmtree(tdir / name, ignore_errors=True)


def clean_leftovers(tdir: Path) -> list[str]:
    """Remove `.partial` and `.deleting` sets left by killed runs (caller holds the lock)."""
    removed = leftovers(tdir)
    for name in removed:
        remove_leftover(tdir, name)
    return removed


DEST_ENV = "PLANA_BACKUP_DEST"


def dest_path(value: str) -> str:
    """`--dest` as a path that can hold sets: printable, within NAME_MAX and PATH_MAX (64).

    Only the value is checked (a click type, before any side effect); whether it is a mounted,
    writable directory is `dest_volume`'s (78).
    """
    raw = os.fsencode(value)
    name_max = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    if not value:
        raise UsageError("dest", "is required")
    if b"\0" in raw or not value.isprintable():
        raise UsageError("dest", "must be a printable path")
    if any(len(part) > name_max for part in raw.split(b"/")):
        raise UsageError("dest", f"has a component longer than {name_max} bytes")
    if len(os.fsencode(os.path.abspath(value))) + SET_PATH_ROOM > os.pathconf("/", "PC_PATH_MAX"):
        raise UsageError("dest", "is too long to hold backup sets")
    try:
        os.stat(value)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UsageError("dest", f"is not a usable path: {exc.strerror}") from None
    return value


# --dest as every job that reads or writes sets declares it: the value checked by click (64).
DEST = params.Rule("path", dest_path)


def dest_option(help: str = "Mounted backup volume.") -> Any:
    return params.option("--dest", DEST_ENV, help, type=DEST, required=True)


def dest_volume(value: str, label: str = "dest") -> Path:
    """The mounted backup volume `value` names: an existing, writable directory (78)."""
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"{label}: {value} is not a directory (is the volume mounted?)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{label}: {value} is not writable")
    return path


def dest_dir(value: str | None, field: str = "dest") -> Path:
    """The mounted backup volume: required and a usable path (64); existing, writable (78)."""
    if not value:
        raise UsageError(field, f"is required ({DEST_ENV})")
    try:
        dest_path(value)
    except UsageError as exc:
        raise UsageError(field, f"{exc.problem} ({DEST_ENV})") from None
    return dest_volume(value, field)


# ---------------------------------------------------------------------------- observing the db


@dataclass
class Snapshot:
    """What one exported snapshot says about the database being dumped."""

    snapshot_id: str
    base_version: str | None
    tables: dict[str, dict[str, int]]
    settings: dict[str, Any]


def database_settings(conn: psycopg.Connection[Any], db: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate,"
        " d.datctype, has_database_privilege('public', d.oid, 'CONNECT')"
        " FROM pg_database d WHERE d.datname = %s",
        (db,),
    ).fetchone()
    assert row is not None
    return {
        "owner": row[0],
        "encoding": row[1],
        "collate": row[2],
        "ctype": row[3],
        "public_connect": bool(row[4]),
    }


def table_names(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_toast%%' ORDER BY 1, 2"
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def row_counts(conn: psycopg.Connection[Any], names: list[tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for schema, table in names:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


# ---------------------------------------------------------------------------- taking a set


@dataclass
class BackupSet:
    path: Path
    manifest: dict[str, Any]  # as written (and signed)

    @property
    def name(self) -> str:
        return self.path.name


def _new_set_name(tdir: Path) -> str:
    """A UTC timestamp name that no set (complete or not) uses yet."""
    while True:
        name = set_name(datetime.now(UTC))
        if not (tdir / name).exists() and not (tdir / (name + PARTIAL)).exists():
            return name
        time.sleep(0.2)  # two sets within one second: wait for the next second


def _dump(
    job: runner.Job,
    db: str,
    snap: Snapshot,
    work: Path,
    dsn: str | None,
    jobs_n: int,
    lock_wait: float,
) -> dict[str, dict[str, Any]]:
    conninfo, env = pg_tools.child_conninfo(db, dsn)
    argv = [
        "pg_dump",
        f"--dbname={conninfo}",
        f"--snapshot={snap.snapshot_id}",
        f"--lock-wait-timeout={int(lock_wait * 1000)}ms",
        "--no-sync",  # we fsync what we publish ourselves
    ]
    files: dict[str, dict[str, Any]] = {}
    if jobs_n > 1:
        target = work / DUMP_DIR
        argv += ["--format=directory", f"--jobs={jobs_n}", f"--file={target}"]
        done = proc.run(argv, name="pg_dump", env=env, deadline=job.deadline)
        if done.returncode != 0:
            raise pg_tools.child_failed("pg_dump", done.returncode, done.tail)
        for p in sorted(target.iterdir()):
            files[f"{DUMP_DIR}/{p.name}"] = _seal(p)
        return files
    # Written by pg_dump itself (not through a pipe): a seekable file gets data offsets in its
    # TOC, which parallel pg_restore needs, and it is faster.
    target = work / DUMP_FILE
    argv += ["--format=custom", f"--file={target}"]
    done = proc.run(argv, name="pg_dump", env=env, deadline=job.deadline)
    if done.returncode != 0:
        raise pg_tools.child_failed("pg_dump", done.returncode, done.tail)
    files[DUMP_FILE] = _seal(target)
    return files


def _seal(path: Path) -> dict[str, Any]:
    """Size and sha256 of a finished file, and fsync it (the set must survive a node crash).

    The fsync (waiting on the disk) runs beside the hashing (CPU), not after it; it is joined
    before the file is closed, and its failure (EIO) fails the set.
    """
    with path.open("rb") as fh:
        with background.workers() as side:
            synced = side.start(os.fsync, fh.fileno())
            digest = hashlib.sha256()
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    synced.result()
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _archive_filestore(
    job: runner.Job, fs: Path, work: Path, *, stop: threading.Event
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """`filestore.tar` of the tenant's filestore, built from descriptors (jobs.core.fstree).

    Not `tar --files-from`: tar opens each listed name by path and follows a directory the
    tenant swapped for a symlink after the listing. Here each directory is opened relative to
    its parent with O_NOFOLLOW and each file's bytes come from its own descriptor (sendfile),
    so nothing outside the tenant's tree can get into its set. A symlinked filestore root is
    refused (FilestoreError, 65). An absent filestore (no attachment ever stored) archives as
    an empty tar.

    Runs beside pg_dump (jobs.core.background): `stop` (the job is unwinding: SIGTERM, a failed
    dump) is checked between files, so the job exits after at most one more file, leaving the
    partial `filestore.tar` in the unpublished `.partial` set (`Stopped`).
    """
    target = work / FILESTORE_TAR
    root = fstree.open_root(fs)
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        tar = fstree.TarWriter(out)
        if root is not None:
            for rel, dir_fd, listed in fstree.walk(root):
                if job.deadline.expired():
                    raise TransientError("filestore archive still running at the deadline")
                for name, _size in listed:
                    if stop.is_set():
                        raise background.Stopped("filestore archive")
                    tar.add(dir_fd, name, f"{rel}/{name}" if rel else name)
        tar.close()
    finally:
        os.close(out)
        if root is not None:
            os.close(root)
    info = {
        "path": FILESTORE_TAR,
        "files": tar.files,
        "bytes": tar.bytes,
        "present": root is not None,
    }
    sealed = {FILESTORE_TAR: _seal(target)}
    job.log.info("filestore archived", files=tar.files, bytes=tar.bytes)
    return sealed, info


@contextlib.contextmanager
def _exported_snapshot(
    job: runner.Job, db: str, dsn: str | None
) -> Iterator[tuple[psycopg.Connection[Any], Snapshot]]:
    """A read-only repeatable-read transaction whose snapshot pg_dump and the counts share."""
    with pg.connection(db, dsn=dsn, deadline=job.deadline, autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        names = table_names(conn)
        estimates = dict(
            conn.execute(
                "SELECT n.nspname || '.' || c.relname, c.reltuples::bigint FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"
            ).fetchall()
        )
        tables = {
            f"{s}.{t}": {"estimate": max(-1, int(estimates.get(f"{s}.{t}", -1)))} for s, t in names
        }
        snap = Snapshot(row[0], odoo.base_version(conn), tables, {})
        yield conn, snap
        conn.rollback()


def _count_in_snapshot(
    db: str, dsn: str | None, job: runner.Job, snapshot_id: str, lock_wait: float
) -> dict[str, int]:
    """Exact row counts in the dump's snapshot, on a second connection while pg_dump runs."""
    with pg.connection(db, dsn=dsn, deadline=job.deadline, autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id)))
        # As pg_dump's --lock-wait-timeout: an exclusive lock held elsewhere fails the run.
        conn.execute(
            sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(lock_wait * 1000)}ms"))
        )
        counts = row_counts(conn, table_names(conn))
        conn.rollback()
    job.log.info("rows counted", tables=len(counts))
    return counts


@dataclass(frozen=True)
class Source:
    """What a set records of the database it is taken of, read before the dump."""

    mark: marker.Marker
    settings: dict[str, Any]
    server_version: str | None


def read_source(conn: psycopg.Connection[Any], db: str) -> Source:
    """The database's marker (it must be this project's tenant or environment: 65 otherwise),
    settings and server version. Reads only."""
    mark = marker.require_ours(
        conn, db, marker.BACKUP_KINDS, what="does not carry this project's marker"
    )
    server = conn.execute("SHOW server_version").fetchone()
    return Source(mark, database_settings(conn, db), server[0] if server else None)


@dataclass
class Pending:
    """A set dumped into `{name}.partial`, not yet published (no manifest)."""

    work: Path
    name: str
    started: datetime
    files: dict[str, dict[str, Any]]
    snap: Snapshot
    filestore: dict[str, Any]


def dump_set(
    job: runner.Job,
    tenant: naming.Tenant,
    tdir: Path,
    data_dir: str,
    dsn: str | None,
    jobs_n: int = 1,
    lock_wait: float = params.DEFAULT_LOCK_WAIT_S,
) -> Pending:
    """The dump, the exact row counts and the filestore archive, into a new `{ts}.partial`."""
    db = tenant.db_name
    tdir.mkdir(parents=True, exist_ok=True)
    name = _new_set_name(tdir)
    work = tdir / (name + PARTIAL)
    work.mkdir()
    started = datetime.now(UTC)
    with _exported_snapshot(job, db, dsn) as (_conn, snap):
        # Beside pg_dump, in the job's log context; on SIGTERM (or a failed dump) the archiver
        # stops between two files and both are joined before the job unwinds further. A row
        # count in flight is cancelled by the runner's SIGTERM hook (jobs.adapters.pg).
        with background.workers() as side:
            counting = side.start(_count_in_snapshot, db, dsn, job, snap.snapshot_id, lock_wait)
            # The filestore is archived while pg_dump runs: its files are content-addressed and
            # only ever added, so every file the snapshot references is there to be listed.
            fs = tenant.filestore(data_dir)
            archiving = side.start(_archive_filestore, job, fs, work, stop=side.stop)
            files = _dump(job, db, snap, work, dsn, jobs_n, lock_wait)
    exc = counting.exception()
    if isinstance(exc, psycopg.Error):
        raise TransientError(f"counting rows in the dump's snapshot: {type(exc).__name__}: {exc}")
    if exc is not None:
        raise exc
    for table, rows in counting.result().items():
        if table in snap.tables:
            snap.tables[table]["rows"] = rows
    fs_files, fs_info = archiving.result()
    files.update(fs_files)
    return Pending(work, name, started, files, snap, fs_info)


def publish_set(
    job: runner.Job,
    tenant: naming.Tenant,
    pending: Pending,
    source: Source,
    *,
    jobs_n: int = 1,
    final: bool = False,
    key: bytes,
) -> BackupSet:
    """Write the signed manifest last and rename `{ts}.partial` to `{ts}`: the set is complete."""
    pg_dump_version = subprocess.run(
        ["pg_dump", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    snap, mark, name = pending.snap, source.mark, pending.name
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "set": name,
        "subdomain": tenant.subdomain,
        "database": tenant.db_name,
        "base_domain": tenant.base_domain,
        "final": final,
        "started_at": pending.started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dump": {"format": "directory" if jobs_n > 1 else "custom",
                 "path": DUMP_DIR if jobs_n > 1 else DUMP_FILE},
        "filestore": pending.filestore,
        "files": pending.files,
        "postgresql": {"server_version": source.server_version, "pg_dump": pg_dump_version},
        "odoo": {"series": odoo.series(snap.base_version), "base_version": snap.base_version},
        "database_settings": source.settings,
        "marker": {"kind": mark.kind, "state": mark.state, **mark.data},
        "tables": snap.tables,
    }  # fmt: skip
    body = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
    work = pending.work
    # The signature first: a set is complete once manifest.json is there, and must be signed.
    _write_durably(work / mf.SIGNATURE, mf.sign(key, body).encode("ascii") + b"\n")
    _write_durably(work / MANIFEST, body)
    fstree.fsync_dir(work)
    final_path = work.parent / name
    work.rename(final_path)
    fstree.fsync_dir(work.parent)
    job.log.info("set written", set=name, files=len(pending.files), tables=len(snap.tables))
    return BackupSet(final_path, manifest)


def take(
    job: runner.Job,
    tenant: naming.Tenant,
    dest: Path,
    data_dir: str,
    dsn: str | None,
    jobs_n: int = 1,
    final: bool = False,
    lock_wait: float = params.DEFAULT_LOCK_WAIT_S,
    *,
    key: bytes,
) -> BackupSet:
    """Write one complete set for `tenant`; the caller holds the tenant's backup lock.

    Steps `observe`, `dump`, `publish` in one call (deprovision's final backup); the backup job
    plans and runs the same parts one by one.
    """
    tdir = tenant_dir(dest, tenant.subdomain)
    job.step("observe")
    with pg.connection(dsn=dsn, deadline=job.deadline) as conn:
        source = read_source(conn, tenant.db_name)
    tdir.mkdir(parents=True, exist_ok=True)
    removed = clean_leftovers(tdir)
    if removed:
        job.log.info("removed leftovers of interrupted runs", removed=removed)
    job.step("dump")
    pending = dump_set(job, tenant, tdir, data_dir, dsn, jobs_n, lock_wait)
    job.step("publish")
    return publish_set(job, tenant, pending, source, jobs_n=jobs_n, final=final, key=key)


def _write_durably(path: Path, body: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.rename(path)


# ---------------------------------------------------------------------------- restoring a set


def check_restored(conn: psycopg.Connection[Any], manifest: mf.Manifest) -> list[str]:
    """What differs between a restored database and its set's manifest (empty: it matches)."""
    problems: list[str] = []
    want_version = manifest.base_version
    got_version = odoo.base_version(conn)
    if want_version and got_version != want_version:
        problems.append(f"base: installed version {got_version} != recorded {want_version}")
    tables = manifest.tables
    names = table_names(conn)
    got = {f"{s}.{t}" for s, t in names}
    missing, extra = sorted(set(tables) - got), sorted(got - set(tables))
    if missing:
        problems.append(f"tables missing: {', '.join(missing[:10])}")
    if extra:
        problems.append(f"tables not in the manifest: {', '.join(extra[:10])}")
    counts = row_counts(conn, [(s, t) for s, t in names if f"{s}.{t}" in tables])
    for key, rows in sorted(counts.items()):
        want = tables[key].rows
        if want is not None and rows != want:
            problems.append(f"{key}: {rows} rows != recorded {want}")
    return problems


def extract_filestore(archive_fd: int, manifest: mf.Manifest, stage: Path) -> int:
    """Unpack the set's filestore (open at `archive_fd`, the descriptor that was hashed; left
    open) into `stage` (emptied first), member by member; returns the files."""
    filestore.discard(stage)  # whatever is there, a link included (removed, never followed)
    try:
        stage.mkdir(parents=True)
        stage_fd = mf.open_dir(str(stage))
    except OSError as exc:  # something was put there since: another writer in the filestore dir
        raise ConflictError(
            f"staging {stage.name}: cannot be created safely: {exc.strerror}"
        ) from None
    archive_fd = os.dup(archive_fd)  # fdopen below closes its own copy
    os.lseek(archive_fd, 0, os.SEEK_SET)
    try:
        with os.fdopen(archive_fd, "rb") as fh:
            report = set_archive.extract(fh, stage_fd)
        os.fsync(stage_fd)
    finally:
        os.close(stage_fd)
    if report.files != manifest.filestore.files:
        raise ConflictError(
            f"restored filestore: {report.files} files != recorded {manifest.filestore.files}"
        )
    return report.files
