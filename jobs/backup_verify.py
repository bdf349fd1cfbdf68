"""`plana-job backup-verify`: a backup that was never restored is a hope, not a backup.

Checks the set's files against the manifest's sizes and sha256, restores the database into a
scratch database (`{db}__vfy`), checks that `base` is installed at the recorded version and that
the tables and their row counts are those the manifest recorded, checks every filestore file in
the archive against its content address (read from the archive, nothing extracted), and drops
the scratch database on every path. Any mismatch: exit 65. A scratch database left by a killed
run is dropped by the next one (it carries its own marker, so nothing else ever is).
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Any

import click

from jobs import backup, filestore, locks, marker, naming, options, pg, restore, runner
from jobs.errors import ConflictError
from jobs.result import Done

SCRATCH_SUFFIX = "__vfy"
SCRATCH_KIND = "verify-scratch"


def check_archive(path: Path, info: dict[str, Any]) -> list[str]:
    """Content addresses and file count of a filestore archive, read in one streaming pass."""
    problems: list[str] = []
    files = 0
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                files += 1
                name = member.name.removeprefix("./")
                if not filestore.is_content_name(name):
                    continue
                fh = tar.extractfile(member)
                assert fh is not None
                digest = hashlib.sha1(usedforsecurity=False)
                while chunk := fh.read(backup.CHUNK):
                    digest.update(chunk)
                if digest.hexdigest() != name.rsplit("/", 1)[-1]:
                    problems.append(f"filestore {name}: content does not match its name")
    except (tarfile.TarError, OSError) as exc:
        problems.append(f"filestore archive unreadable: {exc}")
    if info.get("files") is not None and files != info["files"]:
        problems.append(f"filestore: {files} files in the archive != recorded {info['files']}")
    return problems


def verify_set(
    job: runner.Job,
    set_dir: Path,
    scratch: str,
    dsn: str | None,
    jobs_n: int = 1,
    subdomain: str | None = None,
) -> list[str]:
    """Every problem found with the set (empty: it restores and matches its manifest)."""
    manifest = backup.load_manifest(set_dir)
    job.step("checksums")
    problems = backup.check_files(set_dir, manifest)
    if problems:
        return problems  # restoring a corrupt dump proves nothing more
    job.step("filestore")
    problems += check_archive(
        set_dir / str(manifest["filestore"]["path"]), manifest.get("filestore") or {}
    )
    job.check_locks()  # after reading the whole archive: still ours before touching scratch
    with pg.connection(dsn=dsn, deadline=job.deadline) as conn:
        if pg.database_exists(conn, scratch):
            mark = marker.read(conn, scratch)
            if mark is None or mark.kind != SCRATCH_KIND:
                raise ConflictError(f"database {scratch} exists and is not our scratch database")
            pg.drop_database(conn, scratch)
        job.step("restore")
        settings = dict(manifest.get("database_settings") or {})
        settings.pop("owner", None)  # the scratch copy needs no tenant role
        restore.create_empty(conn, scratch, settings)
        try:
            marker.write(
                conn, scratch, marker.Marker(SCRATCH_KIND, "created", {"subdomain": subdomain})
            )
            try:
                restore.pg_restore(job, set_dir / manifest["dump"]["path"], scratch, dsn, jobs_n)
            except Exception as exc:  # the dump passed its checksum but does not restore
                return [*problems, f"pg_restore: {getattr(exc, 'message', exc)}"]
            job.step("compare")
            with pg.connection(scratch, dsn=dsn, deadline=job.deadline) as sconn:
                problems += restore.check_restored(sconn, manifest)
        finally:
            pg.drop_database(conn, scratch)
    return problems


@click.command("backup-verify")
@options.subdomain
@options.option(
    "--set",
    "set_name",
    env="PLANA_BACKUP_SET",
    default=None,
    help="Set to verify; default: the newest complete set.",
)
@options.backup_set_source
@options.pg_dsn
@options.common
def backup_verify(**kw: Any) -> None:
    """Verify a backup set: checksums, a scratch restore, base version, tables, filestore."""
    runner.run("backup-verify", lambda job: _run(job, kw), timeout=kw["timeout"])  # fmt: skip


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    tenant = naming.Tenant(naming.subdomain(kw["subdomain"]), naming.base_domain(kw["base_domain"]))
    dest = backup.dest_dir(kw["dest"])
    set_dir = backup.pick_set(backup.tenant_dir(dest, tenant.subdomain), kw["set_name"])
    dsn = pg.base_conninfo(kw["pg_dsn"])
    job.bind(tenant=tenant.subdomain)
    lock = f"verify:{tenant.db_name}"
    with locks.advisory(lock, deadline=job.deadline, dsn=dsn):
        scratch = tenant.db_name + SCRATCH_SUFFIX
        problems = verify_set(job, set_dir, scratch, dsn, kw["jobs_n"], tenant.subdomain)
    if problems:
        raise ConflictError(
            f"set {set_dir.name} failed verification: {'; '.join(problems[:5])}",
            set=set_dir.name,
            problems=problems[:20],
        )
    return Done("unchanged", {"set": set_dir.name, "verified": True})
