"""`plana-job backup-verify`: a backup that was never restored is a hope, not a backup.

Authenticates the set (its manifest's HMAC, jobs.ops.manifest) and checks it was taken of this
tenant, checks the set's files against the manifest's sizes and sha256, checks every member of
the filestore archive (regular files and directories with plain relative names only; each
content-addressed file against its name, read from the archive, nothing extracted), restores
the database into a scratch database (`{db}__vfy`, CONNECT for the job's own role only), checks
that `base` is installed at the recorded version and that the tables and their row counts are
those the manifest recorded, and drops the scratch database on every path.

Exit codes: any mismatch, and a dump pg_restore cannot read, is 65; pg_restore missing or a
refused login is 78; SIGTERM or a lost connection is 75 (never counted as a problem of the
set). A scratch database left by a killed run is dropped by the next one: one carrying its
own marker, or none at all (a kill during its CREATE DATABASE; no tenant's name contains `_`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from jobs.adapters import pg
from jobs.adapters.pg import locks
from jobs.adapters.pg import tools as pg_tools
from jobs.core import naming, proc, runner
from jobs.core import options as params
from jobs.core.errors import ConfigError, ConflictError, TransientError
from jobs.core.result import Done
from jobs.ops import backup_sets, clone, marker, set_archive
from jobs.ops import manifest as mf

SCRATCH_SUFFIX = "__vfy"
# What pg_restore prints when the server, not the dump, is the problem: retry later (75).
_SERVER_TROUBLE = (
    "connection to server",
    "server closed the connection",
    "could not connect",
    "terminating connection",
    "the database system is",
    "no space left",
    "could not receive data",
    "could not send data",
)


def check_archive(archive_fd: int, info: mf.Filestore) -> list[str]:
    """Every problem with the filestore archive's members, read in one streaming pass from the
    descriptor that was hashed (left open)."""
    fd = os.dup(archive_fd)  # fdopen below closes its own copy
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(fd, "rb") as fh:
        report = set_archive.scan(fh)
    problems = list(report.problems)
    if report.files != info.files:
        problems.append(f"filestore: {report.files} files in the archive != recorded {info.files}")
    return problems


def _pg_restore(job: runner.Job, dump_fd: int, db: str, dsn: str | None, jobs_n: int) -> str | None:
    """Restore into the scratch database: None when it restored, else why the dump is bad.

    Only a dump pg_restore cannot use is a problem of the set; a missing binary (78), a
    SIGTERM (75) or a server that went away (75) propagate as what they are.
    """
    argv, env = pg_tools.pg_restore_argv(db, dsn, jobs_n, dump_fd)
    done = proc.run(argv, name="pg_restore", env=env, deadline=job.deadline, pass_fds=(dump_fd,))
    if done.returncode == 0:
        return None
    err = pg_tools.child_failed("pg_restore", done.returncode, done.tail)
    said = " | ".join(done.tail[-3:]).lower()
    if isinstance(err, ConfigError) or any(s in said for s in _SERVER_TROUBLE):
        raise err
    if done.returncode < 0:  # killed by a signal (the OOM killer): not the dump's fault
        raise TransientError(err.args[0] if err.args else "pg_restore was killed")
    return f"pg_restore: {getattr(err, 'message', err)}"


def verify_set(
    job: runner.Job,
    set_dir: Path,
    tenant: naming.Tenant,
    dsn: str | None,
    key: bytes,
    jobs_n: int = 1,
) -> list[str]:
    """Every problem found with the set (empty: it restores and matches its manifest)."""
    manifest = backup_sets.load_manifest(set_dir, key)
    backup_sets.check_owner(manifest, tenant, set_dir.name)
    job.step("checksums")
    pinned: dict[str, int] = {}
    problems = backup_sets.check_files(set_dir, manifest, pinned)
    if problems:
        return problems  # restoring a corrupt dump proves nothing more
    try:
        return _verify_checked(job, set_dir, manifest, tenant, dsn, pinned, jobs_n)
    finally:
        for fd in pinned.values():
            os.close(fd)


def _verify_checked(
    job: runner.Job,
    set_dir: Path,
    manifest: mf.Manifest,
    tenant: naming.Tenant,
    dsn: str | None,
    pinned: dict[str, int],
    jobs_n: int,
) -> list[str]:
    """The rest of `verify_set`, once the set's files match their checksums.

    `pinned` holds the descriptors of the dump and the archive that were hashed: the archive
    scan and pg_restore read those, never the set's paths again.
    """
    scratch = tenant.db_name + SCRATCH_SUFFIX
    problems: list[str] = []
    job.step("filestore")
    problems += check_archive(pinned[manifest.filestore.path], manifest.filestore)
    job.check_locks()  # after reading the whole archive: still ours before touching scratch
    with pg.connection(dsn=dsn, deadline=job.deadline) as conn:
        clone.claim_session(conn, clone.session_name("verify", tenant.db_name), job.deadline)
        marker.drop_unmarked(job, conn, scratch, marker.VERIFY_SCRATCH_KIND)
        if pg.database_exists(conn, scratch):
            pg.drop_database(conn, scratch)  # our own marker: a killed run's scratch copy
        job.step("restore")
        # No tenant role: CONNECT for the job's own role only.
        clone.create_empty(conn, scratch, manifest.settings, None)
        try:
            marker.write(
                conn,
                scratch,
                marker.Marker(
                    marker.VERIFY_SCRATCH_KIND, "created", {"subdomain": tenant.subdomain}
                ),
            )
            bad = _pg_restore(job, pinned[manifest.dump.path], scratch, dsn, jobs_n)
            if bad:  # the dump passed its checksum but does not restore
                return [*problems, bad]
            job.step("compare")
            with pg.connection(scratch, dsn=dsn, deadline=job.deadline) as sconn:
                problems += backup_sets.check_restored(sconn, manifest)
        finally:
            pg.drop_database(conn, scratch)
    return problems


@click.command("backup-verify")
@params.subdomain
@params.option(
    "--set",
    "set_name",
    env="PLANA_BACKUP_SET",
    default=None,
    help="Set to verify; default: the newest complete set.",
)
@params.backup_set_source
@params.pg_dsn
@params.common
def backup_verify(**kw: Any) -> None:
    """Verify a backup set: checksums, a scratch restore, base version, tables, filestore."""
    runner.run("backup-verify", lambda job: _run(job, kw), timeout=kw["timeout"])  # fmt: skip


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    tenant = naming.Tenant(naming.subdomain(kw["subdomain"]), naming.base_domain(kw["base_domain"]))
    dest = backup_sets.dest_dir(kw["dest"])
    key = mf.read_key(kw["backup_key_file"])
    set_dir = backup_sets.pick_set(backup_sets.tenant_dir(dest, tenant.subdomain), kw["set_name"])
    dsn = pg.base_conninfo(kw["pg_dsn"])
    job.bind(tenant=tenant.subdomain)
    # The scratch database's owner: only this job (and deprovision, to drop it) names it.
    with locks.advisory(locks.verify(tenant.db_name), deadline=job.deadline, dsn=dsn):
        problems = verify_set(job, set_dir, tenant, dsn, key, kw["jobs_n"])
    if problems:
        raise ConflictError(
            f"set {set_dir.name} failed verification: {'; '.join(problems[:5])}",
            set=set_dir.name,
            problems=problems[:20],
        )
    return Done("unchanged", {"set": set_dir.name, "verified": True})
