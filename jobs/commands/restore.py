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

observe: the set and its authenticated manifest, the tenant's database (its marker, whether it is
frozen for an upgrade, upgrade work copies), `{db}__old`, `{db}__rst` (its marker), the live, old
and staged filestores, and the tenant's final backup when its database is gone. plan: [`rollback`]
`drop-work`, `check-set`, [`pg_restore`, `verify`] (skipped when a verified work database of this
set is reused), `filestore`, `swap`, `publish`, `drop-old`; an already-restored tenant plans only
what is left of publishing (`place-filestore`, `drop-old`), or nothing.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from jobs.adapters import pg
from jobs.adapters.pg import locks
from jobs.adapters.pg import tools as pg_tools
from jobs.core import fstree, naming, params, plan, runner
from jobs.core.errors import ConflictError, UsageError
from jobs.core.result import Done
from jobs.ops import backup_sets, clone, identity, marker, swap
from jobs.ops import manifest as mf

WORK_SUFFIX = "__rst"
UPGRADE_WORK_INFIX = "__up"  # jobs.commands.upgrade.phases: the work copy `{db}__up{to}`
# What may hold the tenant's name (and `{db}__old`): a tenant or environment, or our work copy
# renamed into place by a swap that was killed before its marker was written.
CURRENT_KINDS = (*marker.BACKUP_KINDS, marker.Kind.RESTORE_WORK)


# ---------------------------------------------------------------------------- parameters


@params.spec
class Params(params.TenantOptions):
    set_name: str | None = params.option(
        "--set",
        "PLANA_BACKUP_SET",
        "Set to restore (e.g. 20250131T020000Z); default: the newest complete set.",
        type=params.Rule("set", backup_sets.set_name_arg),
    )
    to_subdomain: str | None = params.option(
        "--to-subdomain",
        "PLANA_RESTORE_TO_SUBDOMAIN",
        "Tenant to restore into; default: the set's own tenant.",
        type=params.SUBDOMAIN,
    )
    replace: bool = params.option(
        "--replace",
        "PLANA_RESTORE_REPLACE",
        "Swap over an existing database (kept until the restore is verified).",
        is_flag=True,
        default=False,
    )
    as_copy: bool = params.option(
        "--as-copy",
        "PLANA_RESTORE_AS_COPY",
        "Give the restored database its own database.secret/uuid and URL.",
        is_flag=True,
        default=False,
    )
    dest: str = backup_sets.dest_option()
    backup_key_file: str = params.backup_key_file()
    jobs_n: int = params.backup_jobs()
    owner_role: str = params.owner_role(clone.ROLE)
    data_dir: str = params.data_dir()
    pg_dsn: str | None = params.pg_dsn()

    def __post_init__(self) -> None:
        if self.target != self.source and not self.as_copy:
            # Two live tenants must never share database.secret/uuid.
            raise UsageError("to_subdomain", "restoring into another tenant needs --as-copy")

    @property
    def source(self) -> naming.Tenant:
        return naming.Tenant(self.subdomain, self.base_domain)

    @property
    def target(self) -> naming.Tenant:
        return naming.Tenant(self.to_subdomain or self.subdomain, self.base_domain)

    def names(self) -> swap.Names:
        """The target's names; refuses (65) a live filestore that is a symlink."""
        return swap.Names.of(
            self.target, self.data_dir, work_suffix=WORK_SUFFIX, fs_work=swap.restore_stage
        )


# ---------------------------------------------------------------------------- observe


@dataclass(frozen=True)
class Db:
    """A database name as observed: absent, ours as asked (its marker), or refused (why)."""

    exists: bool = False
    mark: marker.Marker | None = None
    refused: str | None = None
    unmarked: bool = False  # exists without any comment: a kill during its CREATE DATABASE


@dataclass(frozen=True)
class State:
    set_name: str | None  # the chosen set (None: there is none)
    set_refused: str | None  # why there is no set to restore
    manifest: mf.Manifest | None  # authenticated, of the source tenant
    manifest_refused: str | None  # why the set's manifest is refused
    final_backup: str | None  # the target's final set, when its database is gone
    fs_refused: str | None  # the live filestore is a symlink (or not a directory)
    db: Db  # the target `{db}`
    allows_conn: bool  # `{db}` accepts connections (not frozen)
    upgrading: bool  # `{db}`'s marker says an upgrade is under way
    upgrade_work: tuple[str, ...]  # `{db}__up{N}` work copies
    old: Db  # `{db}__old`
    work: Db  # `{db}__rst`
    fs: str  # fstree.kind_of: "dir", "missing" or "other"
    fs_old: str
    fs_work: str


def _db(conn: psycopg.Connection[Any], name: str, kinds: tuple[str, ...], *, work: bool) -> Db:
    if not pg.database_exists(conn, name):
        return Db()
    if work and pg.database_comment(conn, name) is None:
        return Db(exists=True, unmarked=True)
    try:
        return Db(exists=True, mark=marker.require_ours(conn, name, kinds))
    except ConflictError as exc:
        return Db(exists=True, refused=exc.message)


def _frozen(conn: psycopg.Connection[Any], db: str) -> tuple[bool, bool, tuple[str, ...]]:
    """(accepts connections, marked as upgrading, its upgrade work copies `{db}__up{N}`)."""
    row = conn.execute(
        "SELECT datallowconn, shobj_description(oid, 'pg_database') FROM pg_database"
        " WHERE datname = %s",
        (db,),
    ).fetchone()
    allows, upgrading = True, False
    if row is not None:
        # Its form only, not its schema: `upgrading` in any plana-jobs marker holds the
        # restore back (the target itself is checked ours in `_db`).
        mark = marker.Marker.decode(row[1])
        allows, upgrading = bool(row[0]), mark is not None and "upgrading" in mark.data
    prefix = db + UPGRADE_WORK_INFIX
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
    ).fetchall()
    work = tuple(sorted(r[0] for r in rows if r[0][len(prefix) :].isdigit()))
    return allows, upgrading, work


def _final_backup(dest: Path, target: naming.Tenant, key: bytes) -> str | None:
    """The newest validly signed `final` set of `target` (a deprovisioned tenant's last)."""
    tdir = backup_sets.tenant_dir(dest, target.subdomain)
    for name in reversed(backup_sets.complete_sets(tdir)):
        if backup_sets.is_final(tdir / name, key):
            return name
    return None


def _chosen(
    dest: Path, p: Params, key: bytes
) -> tuple[str | None, str | None, mf.Manifest | None, str | None]:
    """(set name, why none, manifest, why the manifest is refused)."""
    try:
        set_dir = backup_sets.pick_set(backup_sets.tenant_dir(dest, p.subdomain), p.set_name)
    except ConflictError as exc:
        return None, exc.message, None, None
    try:
        manifest = backup_sets.load_manifest(set_dir, key)
        backup_sets.check_owner(manifest, p.source, set_dir.name)
    except ConflictError as exc:
        return set_dir.name, None, None, exc.message
    return set_dir.name, None, manifest, None


def observe(
    job: runner.Job, conn: psycopg.Connection[Any], p: Params, dest: Path, key: bytes
) -> State:
    """Everything the restore decides on; reads only (a missing owner role is 78)."""
    clone.require_role(conn, p.owner_role)
    name, set_refused, manifest, manifest_refused = _chosen(dest, p, key)
    fs_refused: str | None = None
    try:
        n = p.names()
    except fstree.FilestoreError as exc:  # nothing else about the filestores matters then
        fs_refused, kinds = exc.message, ("other", "missing", "missing")
    else:
        kinds = (fstree.kind_of(n.fs), fstree.kind_of(n.fs_old), fstree.kind_of(n.fs_work))
    db = p.target.db_name
    allows, upgrading, up_work = _frozen(conn, db)
    there = _db(conn, db, CURRENT_KINDS, work=False)
    return State(
        set_name=name,
        set_refused=set_refused,
        manifest=manifest,
        manifest_refused=manifest_refused,
        final_backup=None if there.exists else _final_backup(dest, p.target, key),
        fs_refused=fs_refused,
        db=there,
        allows_conn=allows,
        upgrading=upgrading,
        upgrade_work=up_work,
        old=_db(conn, db + swap.OLD_SUFFIX, CURRENT_KINDS, work=False),
        work=_db(conn, db + WORK_SUFFIX, (marker.Kind.RESTORE_WORK,), work=True),
        fs=kinds[0],
        fs_old=kinds[1],
        fs_work=kinds[2],
    )


# ---------------------------------------------------------------------------- decide


def _rolled_back(state: State) -> State | None:
    """The state once a swap killed before the work database took the tenant's name is put
    back (the old database and filestore under their names again); None if there is none."""
    if state.db.exists or not state.old.exists:
        return None
    fs_back = state.fs_old != "missing" and state.fs == "missing"
    return dataclasses.replace(
        state,
        db=state.old,
        old=Db(),
        fs=state.fs_old if fs_back else state.fs,
        fs_old="missing" if fs_back else state.fs_old,
    )


def _blocked_by_upgrade(state: State, db: str) -> str | None:
    """Why a restore must wait for an upgrade: its cutover would publish a copy taken before."""
    if state.db.exists and state.upgrading:
        return f"{db} is frozen for an upgrade: finish or roll it back first"
    if state.db.exists and not state.allows_conn:
        return f"{db} does not allow connections (frozen): left untouched"
    if state.upgrade_work:
        work = ", ".join(state.upgrade_work)
        return f"{db} has an upgrade under way ({work}): finish or roll it back first"
    return None


def _blocked_by_deprovision(state: State, p: Params) -> str | None:
    """A deprovisioned tenant comes back only from its final backup (the newest state it had).

    Decided under the tenant's lock: a restore of an older set that was waiting for
    deprovision's lock, or the retry of one that lost its lock to a deprovision, must not bring
    back an earlier state of the tenant that was just removed.
    """
    final = state.final_backup
    if state.db.exists or final is None:
        return None
    if p.target.subdomain == p.subdomain and state.set_name == final:
        return None
    return (
        f"tenant {p.target.subdomain} was deprovisioned: it comes back only from its "
        f"final backup {final} (--set {final}), not from {state.set_name}"
    )


def _restored_already(state: State, name: str) -> bool:
    mark = state.db.mark
    return (
        mark is not None
        and mark.kind != marker.Kind.RESTORE_WORK
        and mark.data.get("restored_from") == name
    )


def _reusable(work: Db, name: str, as_copy: bool) -> bool:
    """A work database a killed run restored and verified from this set, as asked."""
    mark = work.mark
    return (
        mark is not None
        and mark.state == "verified"
        and mark.data.get("set") == name
        and mark.data.get("as_copy") == as_copy
    )


def _old_left(state: State) -> bool:
    return state.old.exists or state.fs_old != "missing"


def _finish(state: State, n_db: str) -> list[plan.Step]:
    """What is left once the tenant's name holds the restored copy: nothing when converged."""
    steps = []
    if state.fs == "missing" and state.fs_work == "dir":
        steps.append(plan.Step("place-filestore", "rename the staged filestore into place"))
    if _old_left(state):
        steps.append(plan.Step("drop-old", f"drop {n_db}__old and the old filestore"))
    return steps


def _restore_steps(state: State, p: Params, name: str) -> plan.Plan:
    """The full restore (or its rest, once the work copy holds the name)."""
    db, work = p.target.db_name, p.target.db_name + WORK_SUFFIX
    publish = plan.Step(
        "publish", f"restrict CONNECT to {p.owner_role}, place the filestore, write the marker"
    )
    drop_old = plan.Step("drop-old", f"drop {db}__old and the old filestore")
    current = state.db.mark
    if current is not None and current.kind == marker.Kind.RESTORE_WORK:
        # Killed after the swap renamed the work copy into place: only publishing is left.
        return plan.of(publish, drop_old if _old_left(state) else None)
    if state.work.refused is not None:
        return plan.blocked(state.work.refused, database=work)
    reuse = _reusable(state.work, name, p.as_copy)
    aside = [f"{db} to {db}__old"] if current is not None else []
    aside += ["the filestore to .old"] if state.fs != "missing" else []
    moves = ", ".join([*aside, f"{work} to {db}", "the stage to the filestore"])
    leaves_old = current is not None or state.fs != "missing" or _old_left(state)
    return plan.of(
        plan.Step("drop-work", f"drop {work}, left unmarked by a killed run", target=work)
        if state.work.unmarked
        else None,
        plan.Step("check-set", f"check the files of set {name} against their sizes and sha256"),
        None if reuse else plan.Step("pg_restore", f"create {work} and pg_restore the dump"),
        None
        if reuse
        else plan.Step(
            "verify",
            "compare base version, tables and row counts"
            + (", then give it its own identity (--as-copy)" if p.as_copy else ""),
        ),
        plan.Step("filestore", f"extract filestore.tar into {swap.restore_stage(Path(db)).name}"),
        plan.Step("swap", f"rename {moves}"),
        publish,
        drop_old if leaves_old else None,
    )


def decide(state: State, p: Params) -> plan.Plan:
    """The steps still to take to restore the set as the target tenant: pure."""
    db = p.target.db_name
    why = (
        state.set_refused
        or _blocked_by_deprovision(state, p)
        or state.fs_refused
        or state.manifest_refused
        or _blocked_by_upgrade(state, db)
    )
    if why is not None or state.set_name is None or state.manifest is None:
        return plan.blocked(why or "no set to restore", database=db)
    name = state.set_name
    details: dict[str, Any] = {"set": name, "database": db, "as_copy": p.as_copy}
    rollback: list[plan.Step] = []
    rolled = _rolled_back(state)
    if rolled is not None:
        rollback.append(plan.Step("rollback", f"put {db}__old back as {db} (a swap was killed)"))
        state = rolled
    if state.db.refused is not None:
        return plan.of(*rollback, blocked=state.db.refused, **details)
    if _restored_already(state, name):
        return plan.of(*rollback, *_finish(state, db), **details)
    if state.db.mark is not None and state.db.mark.kind != marker.Kind.RESTORE_WORK:
        if not p.replace:
            why = f"database {db} exists: pass --replace to swap it"
            return plan.of(*rollback, blocked=why, **details)
    elif state.db.mark is None and state.fs != "missing" and not p.replace:
        fs = p.target.filestore(p.data_dir)
        why = f"filestore {fs} exists without its database: pass --replace"
        return plan.of(*rollback, blocked=why, **details)
    rest = _restore_steps(state, p, name)
    return plan.of(*rollback, *rest.steps, blocked=rest.blocked, **details)


def outcome(state: State, steps: plan.Plan) -> str:
    """`created` (no database before), `updated` (one replaced, or publishing finished),
    `unchanged` (already restored from that set, nothing left)."""
    rolled = _rolled_back(state)
    before = rolled or state
    if _restored_already(before, steps.details["set"] if steps.details else ""):
        return "updated" if steps.steps else "unchanged"
    return "created" if before.db.mark is None else "updated"


def preview(job: runner.Job, p: Params) -> plan.Plan:
    job.bind(tenant=p.target.subdomain)
    dest = backup_sets.dest_volume(p.dest, params.label(Params, "dest"))
    key = mf.read_key(p.backup_key_file)
    with pg.connection(dsn=pg.base_conninfo(p.pg_dsn), deadline=job.deadline) as conn:
        return decide(observe(job, conn, p, dest, key), p)


# ---------------------------------------------------------------------------- apply


def _final_marker(
    manifest: mf.Manifest, set_name: str, as_copy: bool, target: naming.Tenant
) -> marker.Marker:
    """The kind and identity of the set's marker; no transient state (an upgrade, a freeze)."""
    data: dict[str, Any] = dict(manifest.marker.identity)
    data.update(subdomain=target.subdomain, restored_from=set_name, restored_as_copy=as_copy)
    return marker.Marker(kind=manifest.marker.kind, state="complete", data=data)


class _Restore(backup_sets.SetWork):
    """The step actions of one restore and what they share: the session, the target's names,
    the set and the descriptors of the dump and the archive that were hashed (pg_restore and
    the extraction read those, never the set's paths again)."""

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
        self.n = p.names()
        # Whether the swap moves a database aside: decided from the state once rolled back.
        self.had_db = (_rolled_back(state) or state).db.exists

    def rollback(self, _step: plan.Step) -> None:
        n = self.n
        if fstree.kind_of(n.fs_old) != "missing" and fstree.kind_of(n.fs) == "missing":
            os.rename(n.fs_old, n.fs)
        clone.rename_database(self.conn, n.old, n.db)
        self.job.log.warning("rolled back an interrupted swap", database=n.db)

    def drop_work(self, _step: plan.Step) -> None:
        marker.drop_unmarked(self.job, self.conn, self.n.work, marker.Kind.RESTORE_WORK)

    def check_set(self, _step: plan.Step) -> None:
        problems = backup_sets.check_files(self.set_dir, self.manifest, self.pinned)
        if problems:
            raise ConflictError(f"set {self.name}: {'; '.join(problems)}", problems=problems)

    def pg_restore(self, _step: plan.Step) -> None:
        conn, work = self.conn, self.n.work
        pg.drop_database(conn, work)  # a work copy of another set, or not verified
        clone.create_empty(conn, work, self.manifest.settings, self.p.owner_role)
        created = {"set": self.name, "subdomain": self.p.target.subdomain}
        marker.write(conn, work, marker.Marker(marker.Kind.RESTORE_WORK, "created", created))
        dump_fd = self.pinned[self.manifest.dump.path]
        pg_tools.pg_restore(self.job, dump_fd, work, self.dsn, self.p.jobs_n)

    def verify(self, _step: plan.Step) -> None:
        with pg.connection(self.n.work, dsn=self.dsn, deadline=self.job.deadline) as wconn:
            problems = backup_sets.check_restored(wconn, self.manifest)
            if problems:
                raise ConflictError(
                    f"restored database differs from set {self.name}: {'; '.join(problems[:5])}",
                    problems=problems,
                )
            if self.p.as_copy:
                identity.new_identity(wconn, self.p.target.hostname)
        state = {"set": self.name, "as_copy": self.p.as_copy, "subdomain": self.p.target.subdomain}
        marker.write(
            self.conn, self.n.work, marker.Marker(marker.Kind.RESTORE_WORK, "verified", state)
        )

    def filestore(self, _step: plan.Step) -> None:
        # A kept stage may be half done: extract_filestore starts it afresh.
        archive_fd = self.pinned[self.manifest.filestore.path]
        backup_sets.extract_filestore(archive_fd, self.manifest, self.n.fs_work)

    def swap(self, _step: plan.Step) -> None:
        n = self.n
        n.fs.parent.mkdir(parents=True, exist_ok=True)
        if self.had_db:
            clone.rename_database(self.conn, n.db, n.old)
        if n.fs.exists():
            os.rename(n.fs, n.fs_old)
        clone.rename_database(self.conn, n.work, n.db)

    def publish(self, _step: plan.Step) -> None:
        # From here the tenant's name holds the verified restore; finish publishing it.
        clone.restrict_connect(self.conn, self.n.db, self.p.owner_role)
        swap.place_filestore(self.n)
        final = _final_marker(self.manifest, self.name, self.p.as_copy, self.p.target)
        marker.write(self.conn, self.n.db, final)

    def place_filestore(self, _step: plan.Step) -> None:
        swap.place_filestore(self.n)

    def drop_old(self, _step: plan.Step) -> None:
        swap.drop_old(self.conn, self.n)

    def actions(self) -> dict[str, Any]:
        return {
            "rollback": self.rollback,
            "drop-work": self.drop_work,
            "check-set": self.check_set,
            "pg_restore": self.pg_restore,
            "verify": self.verify,
            "filestore": self.filestore,
            "swap": self.swap,
            "publish": self.publish,
            "place-filestore": self.place_filestore,
            "drop-old": self.drop_old,
        }


def run(job: runner.Job, p: Params) -> Done:
    dest = backup_sets.dest_volume(p.dest, params.label(Params, "dest"))
    key = mf.read_key(p.backup_key_file)
    dsn = pg.base_conninfo(p.pg_dsn)
    target = p.target
    job.bind(tenant=target.subdomain)
    with (
        locks.advisory(locks.tenant(target.db_name), deadline=job.deadline, dsn=dsn),
        pg.connection(dsn=dsn, deadline=job.deadline) as conn,
    ):
        # First: a killed run's sessions end (its CREATE DATABASE settles) before we look.
        clone.claim_session(conn, clone.session_name("restore", target.db_name), job.deadline)
        state = observe(job, conn, p, dest, key)
        steps = decide(state, p)
        if steps.blocked is not None and "rollback" not in steps:
            steps.require_unblocked()  # 65, nothing changed
        work = _Restore(job, conn, p, dest, dsn, state)
        try:
            if steps.blocked is not None:
                # A swap killed halfway left the tenant without its database: put the old one
                # back even when what comes next is refused (a re-run without --replace).
                job.step("rollback")
                work.rollback(steps.steps[0])
            plan.apply(job, steps, work.actions())
        finally:
            work.close()
    details = {"set": state.set_name, "database": target.db_name, "as_copy": p.as_copy}
    return Done(outcome(state, steps), details)  # type: ignore[arg-type]


restore = params.command(
    "restore",
    Params,
    run,
    preview,
    "Restore a backup set into a database that does not exist yet (or --replace one).",
)
