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

observe: the set (`--set` or the newest complete one), its authenticated manifest of this
tenant, and what holds the scratch name. plan: `checksums`, `filestore`, [`drop-scratch`],
`restore`, `compare`; blocked (65) when there is no such set, its manifest is not authentic or
not this tenant's, or someone else's database holds the scratch name. Verifying never
converges: every run checks the set again.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg

from jobs.adapters import pg
from jobs.adapters.pg import locks
from jobs.adapters.pg import tools as pg_tools
from jobs.core import params, plan, proc, runner
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


# ---------------------------------------------------------------------------- parameters


@params.spec
class Params(params.TenantOptions):
    set_name: str | None = params.option(
        "--set",
        "PLANA_BACKUP_SET",
        "Set to verify; default: the newest complete set.",
        type=params.Rule("set", backup_sets.set_name_arg),
    )
    dest: str = backup_sets.dest_option()
    backup_key_file: str = params.backup_key_file()
    jobs_n: int = params.backup_jobs()
    pg_dsn: str | None = params.pg_dsn()

    @property
    def scratch(self) -> str:
        return self.tenant.db_name + SCRATCH_SUFFIX


# ---------------------------------------------------------------------------- observe, decide

# What holds the scratch name: nothing, a killed run's copy (its marker, or no comment at all:
# a kill during its CREATE DATABASE), or someone else's database.
Scratch = Literal["absent", "ours", "unmarked", "foreign"]


@dataclass(frozen=True)
class State:
    set_name: str | None  # the set to verify
    refused: str | None  # why there is nothing to verify: no set, not authentic, not ours
    manifest: mf.Manifest | None  # authenticated, of this tenant
    scratch: Scratch


def _scratch(conn: psycopg.Connection[Any], name: str) -> Scratch:
    exists, comment = pg.described(conn, name)
    if not exists:
        return "absent"
    if comment is None:
        return "unmarked"
    mark = marker.parse(comment)  # a scratch marker that does not fit its schema: foreign
    return "ours" if mark is not None and mark.kind == marker.Kind.VERIFY_SCRATCH else "foreign"


def observe(
    job: runner.Job, conn: psycopg.Connection[Any], p: Params, dest: Path, key: bytes
) -> State:
    name: str | None = None
    manifest: mf.Manifest | None = None
    refused: str | None = None
    try:
        set_dir = backup_sets.pick_set(backup_sets.tenant_dir(dest, p.subdomain), p.set_name)
        name = set_dir.name
        manifest = backup_sets.load_manifest(set_dir, key)
        backup_sets.check_owner(manifest, p.tenant, name)
    except ConflictError as exc:
        manifest, refused = None, exc.message
    return State(name, refused, manifest, _scratch(conn, p.scratch))


def decide(state: State, p: Params) -> plan.Plan:
    """The checks of one verification, pure: every run makes them all again."""
    if state.refused is not None or state.manifest is None or state.set_name is None:
        return plan.blocked(state.refused or "no set to verify")
    scratch, name = p.scratch, state.set_name
    if state.scratch == "foreign":
        return plan.blocked(f"database {scratch} exists and is not ours", database=scratch)
    leftover = state.scratch in ("ours", "unmarked")
    return plan.of(
        plan.Step("checksums", f"check the files of set {name} against their sizes and sha256"),
        plan.Step("filestore", "check every member of filestore.tar (type, name, content)"),
        plan.Step("drop-scratch", f"drop {scratch}, left by a killed run", target=scratch)
        if leftover
        else None,
        plan.Step("restore", f"pg_restore the dump into a scratch database {scratch}"),
        plan.Step("compare", f"compare base version, tables and row counts, then drop {scratch}"),
        set=name,
        scratch=scratch,
    )


def preview(job: runner.Job, p: Params) -> plan.Plan:
    job.bind(tenant=p.subdomain)
    dest = backup_sets.dest_volume(p.dest, params.label(Params, "dest"))
    key = mf.read_key(p.backup_key_file)
    with pg.connection(dsn=pg.base_conninfo(p.pg_dsn), deadline=job.deadline) as conn:
        return decide(observe(job, conn, p, dest, key), p)


# ---------------------------------------------------------------------------- apply


def _failed(name: str, problems: list[str]) -> ConflictError:
    return ConflictError(
        f"set {name} failed verification: {'; '.join(problems[:5])}",
        set=name,
        problems=problems[:20],
    )


class _Verify(backup_sets.SetWork):
    """The step actions of one verification and what they share: the set and the descriptors
    of the files that were hashed (the archive scan and pg_restore read those, never the set's
    paths again), one session, and the problems found so far."""

    def __init__(
        self,
        job: runner.Job,
        conn: psycopg.Connection[Any],
        p: Params,
        dest: Path,
        dsn: str | None,
        state: State,
    ) -> None:
        super().__init__(dest, p.subdomain, state.manifest, state.set_name)
        self.job, self.conn, self.p, self.dsn = job, conn, p, dsn
        self.problems: list[str] = []
        self.stack = contextlib.ExitStack()
        self.stack.callback(self.close)

    def checksums(self, _step: plan.Step) -> None:
        problems = backup_sets.check_files(self.set_dir, self.manifest, self.pinned)
        if problems:
            raise _failed(self.name, problems)  # restoring a corrupt dump proves nothing more

    def filestore(self, _step: plan.Step) -> None:
        info = self.manifest.filestore
        self.problems += check_archive(self.pinned[info.path], info)
        self.job.check_locks()  # after reading the whole archive: still ours before the scratch

    def drop_scratch(self, _step: plan.Step) -> None:
        marker.drop_unmarked(self.job, self.conn, self.p.scratch, marker.Kind.VERIFY_SCRATCH)
        if pg.database_exists(self.conn, self.p.scratch):
            pg.drop_database(self.conn, self.p.scratch)  # our own marker: a killed run's copy

    def restore(self, _step: plan.Step) -> None:
        scratch, conn = self.p.scratch, self.conn
        # No tenant role: CONNECT for the job's own role only.
        clone.create_empty(conn, scratch, self.manifest.settings, None)
        # Dropped on every path from here, when the run's stack unwinds (before its session
        # closes); one killed before this is the next run's `drop-scratch`.
        self.stack.callback(pg.drop_database, conn, scratch)
        mark = {"subdomain": self.p.subdomain}
        marker.write(conn, scratch, marker.Marker(marker.Kind.VERIFY_SCRATCH, "created", mark))
        bad = _pg_restore(self.job, self.pinned[self.manifest.dump.path], scratch, self.dsn,
                          self.p.jobs_n)  # fmt: skip
        if bad:  # the dump passed its checksum but does not restore
            raise _failed(self.name, [*self.problems, bad])

    def compare(self, _step: plan.Step) -> None:
        with pg.connection(self.p.scratch, dsn=self.dsn, deadline=self.job.deadline) as sconn:
            self.problems += backup_sets.check_restored(sconn, self.manifest)
        if self.problems:
            raise _failed(self.name, self.problems)

    def actions(self) -> dict[str, Any]:
        return {
            "checksums": self.checksums,
            "filestore": self.filestore,
            "drop-scratch": self.drop_scratch,
            "restore": self.restore,
            "compare": self.compare,
        }


def run(job: runner.Job, p: Params) -> Done:
    dest = backup_sets.dest_volume(p.dest, params.label(Params, "dest"))
    key = mf.read_key(p.backup_key_file)
    dsn = pg.base_conninfo(p.pg_dsn)
    job.bind(tenant=p.subdomain)
    # The scratch database's owner: only this job (and deprovision, to drop it) names it.
    with (
        locks.advisory(locks.verify(p.tenant.db_name), deadline=job.deadline, dsn=dsn),
        pg.connection(dsn=dsn, deadline=job.deadline) as conn,
    ):
        # First: a killed run's sessions end (its CREATE DATABASE settles) before we look.
        clone.claim_session(conn, clone.session_name("verify", p.tenant.db_name), job.deadline)
        state = observe(job, conn, p, dest, key)
        steps = decide(state, p)
        steps.require_unblocked()
        verify = _Verify(job, conn, p, dest, dsn, state)
        with verify.stack:
            plan.apply(job, steps, verify.actions())
    return Done("unchanged", {"set": state.set_name, "verified": True})


backup_verify = params.command(
    "backup-verify",
    Params,
    run,
    preview,
    "Verify a backup set: checksums, a scratch restore, base version, tables, filestore.",
)
