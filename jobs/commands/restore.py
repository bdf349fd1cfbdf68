"""`plana-job restore`: a backup set into a tenant database and filestore, verified, atomic.

The set is restored aside (database `{db}__rst`, filestore `.{db}.restore.partial`), checked
against its manifest (base installed at the recorded version, the same tables with the same row
counts), and only then published by renames:

    [--replace: {db} → {db}__old, filestore → .{db}.old]
    {db}__rst → {db},  .{db}.restore.partial → filestore

then the tenant marker (with `restored_from`) is written and the old copies are dropped. A
re-run after a kill at any point either resumes (a verified work database is reused; a
half-done swap is completed or rolled back) or reports `unchanged` when the set is already the
tenant's. `--as-copy` gives the restored database its own `database.secret`/`database.uuid`,
`database.create_date` and `web.base.url`, as Odoo's duplication does.

The set is untrusted input (jobs.ops.manifest): it must be signed with the backup key and name the
tenant it is restored from (subdomain, database, base domain). From its manifest only the encoding
and collation (each from a whitelist) and the marker's kind and identity fields are applied: the
owner is always `--owner-role`, CONNECT is granted to it alone (`clone.restrict_connect`), and
where a job stood (`upgrading`, `odoo_version`, `final_backup` …) is never restored. The filestore
archive is extracted member by member (jobs.ops.set_archive). A tenant frozen for an upgrade, or
with an upgrade work copy `{db}__up{N}`, is refused: the cutover would otherwise publish a copy
taken before the restore. A `{db}__rst` without a marker is what a kill during its CREATE DATABASE
leaves (no tenant's name contains `_`), and is dropped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import psycopg

from jobs.adapters import pg
from jobs.adapters.pg import locks
from jobs.adapters.pg import tools as pg_tools
from jobs.core import naming, runner
from jobs.core import options as params
from jobs.core.errors import ConflictError, UsageError
from jobs.core.result import Done
from jobs.ops import backup_sets, clone, identity, marker, swap
from jobs.ops import manifest as mf

WORK_SUFFIX = "__rst"
UPGRADE_WORK_INFIX = "__up"  # jobs.commands.upgrade.phases: the work copy `{db}__up{to}`


# ---------------------------------------------------------------------------- building blocks


def refuse_during_upgrade(conn: psycopg.Connection[Any], db: str) -> None:
    """65 while `db` is frozen for an upgrade or has an upgrade work copy `{db}__up{N}`."""
    row = conn.execute(
        "SELECT datallowconn, shobj_description(oid, 'pg_database') FROM pg_database"
        " WHERE datname = %s",
        (db,),
    ).fetchone()
    if row is not None:
        mark = marker.Marker.decode(row[1])
        if mark is not None and "upgrading" in mark.data:
            raise ConflictError(f"{db} is frozen for an upgrade: finish or roll it back first")
        if not row[0]:
            raise ConflictError(f"{db} does not allow connections (frozen): left untouched")
    prefix = db + UPGRADE_WORK_INFIX
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
    ).fetchall()
    work = sorted(r[0] for r in rows if r[0][len(prefix) :].isdigit())
    if work:
        raise ConflictError(
            f"{db} has an upgrade under way ({', '.join(work)}): finish or roll it back first",
            database=db,
        )


# ---------------------------------------------------------------------------- the restore


def _roll_back_swap(job: runner.Job, conn: psycopg.Connection[Any], n: swap.Names) -> bool:
    """A swap killed before the work database took the tenant's name: put the old one back."""
    if pg.database_exists(conn, n.db) or not pg.database_exists(conn, n.old):
        return False
    if n.fs_old.exists() and not n.fs.exists():
        os.rename(n.fs_old, n.fs)
    clone.rename_database(conn, n.old, n.db)
    job.log.warning("rolled back an interrupted swap", database=n.db)
    return True


def _final_marker(
    manifest: mf.Manifest, set_name: str, as_copy: bool, target: naming.Tenant
) -> marker.Marker:
    """The kind and identity of the set's marker; no transient state (an upgrade, a freeze)."""
    data: dict[str, Any] = dict(manifest.marker.identity)
    data.update(subdomain=target.subdomain, restored_from=set_name, restored_as_copy=as_copy)
    return marker.Marker(kind=manifest.marker.kind, state="complete", data=data)


def _restore_checked(
    job: runner.Job,
    conn: psycopg.Connection[Any],
    n: swap.Names,
    set_dir: Path,
    manifest: mf.Manifest,
    pinned: dict[str, int],
    target: naming.Tenant,
    dsn: str | None,
    *,
    owner: str,
    as_copy: bool,
    jobs_n: int,
) -> None:
    """The work database and the staged filestore from a set whose files checked out.

    `pinned` holds the descriptors of the dump and the archive that were hashed: pg_restore and
    the extraction read those, never the set's paths again.
    """
    name = set_dir.name
    marker.drop_unmarked(job, conn, n.work, marker.RESTORE_WORK_KIND)
    work = marker.require_ours(conn, n.work, marker.RESTORE_WORK_KIND, absent_ok=True)
    reusable = (
        work is not None
        and work.state == "verified"
        and work.data.get("set") == name
        and work.data.get("as_copy") == as_copy
    )
    if not reusable:
        job.step("pg_restore")
        pg.drop_database(conn, n.work)
        clone.create_empty(conn, n.work, manifest.settings, owner)
        created = {"set": name, "subdomain": target.subdomain}
        marker.write(conn, n.work, marker.Marker(marker.RESTORE_WORK_KIND, "created", created))
        pg_tools.pg_restore(job, pinned[manifest.dump.path], n.work, dsn, jobs_n)
        job.step("verify")
        with pg.connection(n.work, dsn=dsn, deadline=job.deadline) as wconn:
            problems = backup_sets.check_restored(wconn, manifest)
            if problems:
                raise ConflictError(
                    f"restored database differs from set {name}: {'; '.join(problems[:5])}",
                    problems=problems,
                )
            if as_copy:
                identity.new_identity(wconn, target.hostname)
        state = {"set": name, "as_copy": as_copy, "subdomain": target.subdomain}
        marker.write(conn, n.work, marker.Marker(marker.RESTORE_WORK_KIND, "verified", state))
    job.step("filestore")
    # A kept stage may be half done: extract_filestore starts it afresh.
    backup_sets.extract_filestore(pinned[manifest.filestore.path], manifest, n.fs_work)


def restore_set(
    job: runner.Job,
    conn: psycopg.Connection[Any],
    set_dir: Path,
    source: naming.Tenant,
    target: naming.Tenant,
    data_dir: str,
    dsn: str | None,
    *,
    key: bytes,
    owner: str,
    replace: bool,
    as_copy: bool,
    jobs_n: int = 1,
) -> str:
    """Restore `set_dir` (a set of `source`) as `target`; the caller holds the target's lock."""
    n = swap.Names.of(target, data_dir, work_suffix=WORK_SUFFIX, fs_work=swap.restore_stage)
    name = set_dir.name
    manifest = backup_sets.load_manifest(set_dir, key)
    backup_sets.check_owner(manifest, source, name)
    refuse_during_upgrade(conn, n.db)
    _roll_back_swap(job, conn, n)
    current = marker.require_ours(
        conn, n.db, (*marker.BACKUP_KINDS, marker.RESTORE_WORK_KIND), absent_ok=True
    )
    final = _final_marker(manifest, name, as_copy, target)

    if current is not None and current.kind != marker.RESTORE_WORK_KIND:
        if current.data.get("restored_from") == name:
            job.log.info("set already restored", set=name, database=n.db)
            moved = swap.place_filestore(n)
            return "updated" if swap.drop_old(conn, n) or moved else "unchanged"
        if not replace:
            raise ConflictError(f"database {n.db} exists: pass --replace to swap it", database=n.db)
    elif current is None and n.fs.exists() and not replace:
        raise ConflictError(f"filestore {n.fs} exists without its database: pass --replace")

    if current is None or current.kind != marker.RESTORE_WORK_KIND:
        job.step("check-set")
        pinned: dict[str, int] = {}
        problems = backup_sets.check_files(set_dir, manifest, pinned)
        if problems:
            raise ConflictError(f"set {name}: {'; '.join(problems)}", problems=problems)
        try:
            _restore_checked(job, conn, n, set_dir, manifest, pinned, target, dsn,
                             owner=owner, as_copy=as_copy, jobs_n=jobs_n)  # fmt: skip
        finally:
            for fd in pinned.values():
                os.close(fd)
        job.step("swap")
        n.fs.parent.mkdir(parents=True, exist_ok=True)
        if current is not None:
            clone.rename_database(conn, n.db, n.old)
        if n.fs.exists():
            os.rename(n.fs, n.fs_old)
        clone.rename_database(conn, n.work, n.db)
    # From here the tenant's name holds the verified restore; finish publishing it.
    clone.restrict_connect(conn, n.db, owner)
    swap.place_filestore(n)
    marker.write(conn, n.db, final)
    swap.drop_old(conn, n)
    return "created" if current is None else "updated"


# ---------------------------------------------------------------------------- the command


@click.command("restore")
@params.subdomain
@params.option(
    "--set",
    "set_name",
    env="PLANA_BACKUP_SET",
    default=None,
    help="Set to restore (e.g. 20250131T020000Z); default: the newest complete set.",
)
@params.option(
    "--to-subdomain",
    env="PLANA_RESTORE_TO_SUBDOMAIN",
    default=None,
    help="Tenant to restore into; default: the set's own tenant.",
)
@params.option(
    "--replace",
    is_flag=True,
    env="PLANA_RESTORE_REPLACE",
    help="Swap over an existing database (kept until the restore is verified).",
)
@params.option(
    "--as-copy",
    is_flag=True,
    env="PLANA_RESTORE_AS_COPY",
    help="Give the restored database its own database.secret/uuid and URL.",
)
@params.backup_set_source
@params.owner_role
@params.data_dir
@params.pg_dsn
@params.common
def restore(**kw: Any) -> None:
    """Restore a backup set into a database that does not exist yet (or --replace one)."""
    runner.run("restore", lambda job: _run(job, kw), timeout=kw["timeout"])


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    domain = naming.base_domain(kw["base_domain"])
    source = naming.Tenant(naming.subdomain(kw["subdomain"]), domain)
    to_sub = kw["to_subdomain"] or source.subdomain
    target = naming.Tenant(naming.subdomain(to_sub, field="to-subdomain"), domain)
    if target != source and not kw["as_copy"]:
        # Two live tenants must never share database.secret/uuid.
        raise UsageError("to-subdomain", "restoring into another tenant needs --as-copy")
    owner = clone.owner_role(kw["owner_role"], field="owner-role")
    dest = backup_sets.dest_dir(kw["dest"])
    key = mf.read_key(kw["backup_key_file"])
    set_dir = backup_sets.pick_set(backup_sets.tenant_dir(dest, source.subdomain), kw["set_name"])
    dsn = pg.base_conninfo(kw["pg_dsn"])
    job.bind(tenant=target.subdomain)
    with (
        locks.advisory(locks.tenant(target.db_name), deadline=job.deadline, dsn=dsn),
        pg.connection(dsn=dsn, deadline=job.deadline) as conn,
    ):
        clone.require_role(conn, owner)
        refuse_deprovisioned(conn, dest, target, key, set_dir)
        clone.claim_session(conn, clone.session_name("restore", target.db_name), job.deadline)
        outcome = restore_set(
            job, conn, set_dir, source, target, kw["data_dir"], dsn, key=key, owner=owner,
            replace=kw["replace"], as_copy=kw["as_copy"], jobs_n=kw["jobs_n"],
        )  # fmt: skip
    details = {"set": set_dir.name, "database": target.db_name, "as_copy": kw["as_copy"]}
    return Done(outcome, details)  # type: ignore[arg-type]


def refuse_deprovisioned(
    conn: psycopg.Connection[Any], dest: Path, target: naming.Tenant, key: bytes, chosen: Path
) -> None:
    """65 when `target` was deprovisioned and `chosen` is not its final set.

    Decided under the tenant's lock: a restore of an older set that was waiting for
    deprovision's lock, or the retry of one that lost its lock to a deprovision, must not bring
    back an earlier state of the tenant that was just removed. A deprovisioned tenant comes back
    only from its final backup (the newest state it had): the newest set, or `--set` naming it.
    """
    if pg.database_exists(conn, target.db_name):
        return
    tdir = backup_sets.tenant_dir(dest, target.subdomain)
    for name in reversed(backup_sets.complete_sets(tdir)):
        if backup_sets.is_final(tdir / name, key):
            if chosen == tdir / name:
                return
            raise ConflictError(
                f"tenant {target.subdomain} was deprovisioned: it comes back only from its "
                f"final backup {name} (--set {name}), not from {chosen.name}",
                final_backup=name,
            )
    return
