"""`plana-job deprovision` (PLANAClient deleted): final backup, then every database and filestore
directory of the tenant removed, and the event.

What is the tenant's is decided by name and marker, never by a prefix (`naming.owned_name`):
its database `{db}` = `{subdomain}.{domain}`, its environments `{subdomain}--{env}.{domain}`, the
work copies of either (`…__new`, `__old`, `__rst`, `__vfy`, `__up{N}`, `__rb{N}`, `__env`), the
filestores `filestore/{name}` of all of them and the hidden leftovers `filestore/.{name}.*`
(staging, `.old`, `.trash-…`). No subdomain contains "--" or "_", so none of these names can be
another tenant's.

observe (under the tenant's and backup-verify's locks in a run; nothing written): the databases
under the tenant's names with their markers, the filestore entries, the live marker's final
backup (or, without a live database, the newest signed final set), whether the event is on the
stream. plan:

1. A database under these names that is not ours (the live one without a `tenant` marker naming
   this subdomain, an environment whose `environment` marker names another tenant, a work copy
   with a marker of another kind or tenant; a work copy with no comment at all is a job killed
   between CREATE DATABASE and its marker, and ours): blocked, nothing touched (65).
2. `final-backup`: a final backup set of the live database (`final: true`, kept by retention),
   then the live marker becomes `deprovisioning` with the set's name, so a re-run after a kill
   skips it. If the backup fails the job stops there (the backup's exit code), the tenant as it
   was. No step when the marker already names a complete set.
3. `drop` per database found (`DROP DATABASE … WITH (FORCE)`), the live one first: from then on
   the final set is what proves the rest ours. Then `filestore` per entry found
   (`filestore.discard`: renamed aside first; links and files are unlinked, a link's target is
   never touched). Leftovers are swept on every run, so a removal killed half-way is finished by
   the next one.
4. `event`: `client.deprovisioned` on the events stream (`events.client_event`, the one schema),
   exactly once per (subdomain, generation); no step once it is there.

Without the live database, what may hold the tenant's only copy (the live filestore, a
swapped-out `__old` or a rollback `__rb{N}` copy) is removed only when this tenant's final
backup exists (the proof that this job dropped the database); otherwise blocked (65).
A re-run that finds nothing left and the event already sent: `unchanged`.

The backup key is needed only to take the final set or to authenticate the sets that may be it:
not given then, 64 naming --backup-key-file / PLANA_BACKUP_KEY_FILE; given but unreadable, 78.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from jobs.adapters import filestore, pg, redis_client
from jobs.adapters.pg import locks
from jobs.core import naming, params, plan, retry, runner
from jobs.core.errors import ConflictError, UsageError
from jobs.core.result import Done
from jobs.ops import backup_sets, events, manifest, marker

EVENT_TYPE = "client.deprovisioned"
STATE = "deprovisioning"


@params.spec
class Params(params.TenantOptions):
    project_id: int | None = params.project_id(required=False)
    tier: str | None = params.tier(required=False)
    generation: int | None = params.generation()
    backup_key_file: str | None = params.backup_key_file(required=False)
    dest: str = backup_sets.dest_option(
        "Mounted backup volume; sets go to {dest}/{subdomain}/{timestamp}/."
    )
    jobs: int = params.backup_jobs(
        "pg_dump parallel jobs; above 1 the dump is in directory format."
    )
    lock_wait: float = params.lock_wait()
    redis_url: str = params.redis_url()
    stream: str = params.stream(events.STREAM)
    data_dir: str = params.data_dir()
    pg_dsn: str | None = params.pg_dsn()

    @property
    def root(self) -> Path:
        """`{data_dir}/filestore`: where the tenant's filestore entries are."""
        return naming.filestore(self.tenant.db_name, self.data_dir).parent

    @property
    def event_id(self) -> str:
        return events.event_id(EVENT_TYPE, self.subdomain, self.generation)

    def key(self) -> bytes | None:
        """The backup key when one is given (78 if it is unreadable or short), else None."""
        return None if self.backup_key_file is None else manifest.read_key(self.backup_key_file)


def key_required(why: str) -> UsageError:
    return UsageError(params.label(Params, "backup_key_file"), f"is required {why}")


def final_set(dest: Path, subdomain: str, key: bytes) -> str | None:
    """The newest complete, signed set of the tenant marked `final`, if any."""
    tdir = backup_sets.tenant_dir(dest, subdomain)
    for name in reversed(backup_sets.complete_sets(tdir)):
        if backup_sets.is_final(tdir / name, key):
            return name
    return None


# Marker kinds a database may carry under each of the tenant's names (live or work copy).
TENANT_LIVE: tuple[str, ...] = (marker.Kind.TENANT,)
TENANT_WORK = (
    marker.Kind.TENANT,  # `__new` (tenant-db), `__old` (a restore's swapped-out live)
    marker.Kind.RESTORE_WORK,
    marker.Kind.VERIFY_SCRATCH,
    marker.Kind.UPGRADE_WORK,
    marker.Kind.ROLLBACK,
)
ENV_LIVE = (marker.Kind.ENVIRONMENT,)
ENV_WORK = (marker.Kind.ENVIRONMENT, marker.Kind.ENVIRONMENT_WORK)
# Kinds whose writers recorded no subdomain before: accepted without one under a work name.
OLD_FORM = (marker.Kind.RESTORE_WORK, marker.Kind.VERIFY_SCRATCH, marker.Kind.ENVIRONMENT_WORK)


def like_escape(text: str) -> str:
    """`text` as a LIKE pattern matching itself (backslash is LIKE's default escape)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _ours(mark: marker.Marker | None, comment: str | None, owned: naming.Owned, sub: str) -> bool:
    """Whether a database under one of the tenant's names carries this tenant's marker.

    `mark` is the comment parsed (`marker.parse`): None for a comment that is no marker of
    ours, one that does not fit its kind's schema included (refused, never dropped).
    """
    if mark is None:
        # No comment at all under a work name: a job killed between CREATE DATABASE and its
        # marker. The name is the tenant's alone ("_" is in no subdomain), so it is ours.
        return comment is None and owned.work is not None
    if owned.env is None:
        kinds = TENANT_LIVE if owned.work is None else TENANT_WORK
        label = sub
    else:
        kinds = ENV_LIVE if owned.work is None else ENV_WORK
        label = f"{sub}{naming.ENV_SEPARATOR}{owned.env}"
    if mark.kind not in kinds:
        return False
    old_form = owned.work is not None and mark.kind in OLD_FORM
    if owned.env is not None:
        tenant = mark.data.get("tenant")  # environments name their tenant too
        if tenant != sub and not (tenant is None and old_form):
            return False
    named = mark.data.get("subdomain")
    if named is None:
        return old_form
    return bool(named == label)


def _databases(
    conn: psycopg.Connection[Any], tenant: naming.Tenant
) -> tuple[dict[str, naming.Owned], list[str]]:
    """(the tenant's databases, those under its names that are not ours), each sorted."""
    sub, domain = tenant.subdomain, tenant.base_domain
    own = like_escape(tenant.db_name) + "%"
    envs = like_escape(f"{sub}{naming.ENV_SEPARATOR}") + "%" + like_escape(f".{domain}") + "%"
    rows = conn.execute(
        "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
        " WHERE datname LIKE %s OR datname LIKE %s ORDER BY datname",
        (own, envs),
    ).fetchall()
    found: dict[str, naming.Owned] = {}
    foreign: list[str] = []
    for name, comment in rows:
        owned = naming.owned_name(name, sub, domain)
        if owned is None:
            continue  # e.g. `acme.planapulse.appx`: the LIKE was only a first cut
        if _ours(marker.parse(comment), comment, owned, sub):
            found[name] = owned
        else:
            foreign.append(name)
    return found, foreign


def _entries(root: Path, tenant: naming.Tenant) -> dict[str, naming.Owned]:
    """The tenant's entries directly under `{data_dir}/filestore`, by name."""
    out: dict[str, naming.Owned] = {}
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return out
    for name in names:
        hidden = name.startswith(".")
        owned = naming.owned_name(name, tenant.subdomain, tenant.base_domain, hidden=hidden)
        if owned is not None:
            out[name] = owned
    return out


def _precious(owned: naming.Owned) -> bool:
    """May hold the tenant's only copy once its live database is gone (live, `__old`, `__rb`)."""
    if owned.env is not None:
        return False
    if owned.hidden is not None:
        return owned.hidden == "old"  # `.{db}.old`: the live filestore, swapped aside
    return owned.work is None or owned.work == "old" or owned.work.startswith("rb")


def _remove_entry(root: Path, name: str) -> None:
    """One filestore entry: a directory through `discard`, anything else unlinked (a link is
    removed, never followed)."""
    path = root / name
    try:
        st = path.lstat()
    except FileNotFoundError:
        return  # swept already, by the `discard` of the tree it was the trash of
    if stat.S_ISDIR(st.st_mode):
        filestore.discard(path)
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- observe


@dataclass(frozen=True)
class State:
    """What is left of the tenant, and what this job has done of it already."""

    databases: Mapping[str, naming.Owned] = field(default_factory=dict)  # ours, catalog order
    foreign: tuple[str, ...] = ()  # under the tenant's names but not carrying its marker
    entries: Mapping[str, naming.Owned] = field(default_factory=dict)  # ours in filestore/
    live: marker.Marker | None = None  # the live database's marker
    taken: str | None = None  # the final set the live marker names, still complete
    final: str | None = None  # without the live database: the newest signed final set
    unread_sets: bool = False  # without the live database: sets there was no key to read
    event: str | None = None  # the entry client.deprovisioned was added as, while remembered


def _taken(mark: marker.Marker, dest: Path, subdomain: str) -> str | None:
    """The final set a `deprovisioning` marker names, if that set is still complete."""
    kept = mark.data.get("final_backup")
    if mark.state != STATE or not kept:
        return None
    tdir = backup_sets.tenant_dir(dest, subdomain)
    return str(kept) if (tdir / str(kept) / backup_sets.MANIFEST).is_file() else None


def _event(p: Params, deadline: retry.Deadline) -> str | None:
    client = redis_client.from_url(p.redis_url)
    try:
        return events.recorded(client, p.stream, p.event_id, deadline=deadline)
    finally:
        client.close()


def observe(
    conn: psycopg.Connection[Any],
    p: Params,
    dest: Path,
    key: bytes | None,
    deadline: retry.Deadline,
) -> State:
    tenant, db = p.tenant, p.tenant.db_name
    found, foreign = _databases(conn, tenant)
    live = marker.read(conn, db) if db in found else None
    if db in found and live is None:  # its marker went between the two reads: not ours now
        del found[db]
        foreign.insert(0, db)
    taken = final = None
    unread = False
    if live is not None:
        taken = _taken(live, dest, p.subdomain)
    elif key is not None:
        final = final_set(dest, p.subdomain, key)
    else:
        unread = bool(backup_sets.complete_sets(backup_sets.tenant_dir(dest, p.subdomain)))
    return State(
        databases=found,
        foreign=tuple(foreign),
        entries=_entries(p.root, tenant),
        live=live,
        taken=taken,
        final=final,
        unread_sets=unread,
        event=_event(p, deadline),
    )


# --------------------------------------------------------------------------- plan


def decide(state: State, p: Params) -> plan.Plan:
    db = p.tenant.db_name
    if state.foreign:
        names = ", ".join(state.foreign)
        why = f"database(s) {names} do not carry this tenant's marker: nothing touched"
        return plan.blocked(why, databases=list(state.foreign))
    live = db in state.databases
    backup = None
    if live and state.taken is None:
        if p.backup_key_file is None:
            raise key_required("to take the final backup")
        says = f"final backup set of {db} under {p.dest}, then {db} marked {STATE}"
        backup = plan.Step("final-backup", says, target=db)
    if not live:
        if state.unread_sets:
            raise key_required("to find the final backup among the tenant's sets")
        owned = [*state.databases.items(), *state.entries.items()]
        precious = [name for name, o in owned if _precious(o)]
        if precious and state.final is None:
            why = f"{', '.join(precious)}: no live database and no final backup: nothing touched"
            return plan.blocked(why, left=precious)
    # The live database first: from then on the final set is what proves the rest ours.
    dropped = sorted(state.databases, key=lambda n: n != db)
    event = None
    if state.event is None:
        event = plan.Step("event", f"XADD {EVENT_TYPE} {p.event_id} to {p.stream}")
    return plan.of(
        backup,
        *(plan.Step("drop", f"DROP DATABASE {n} WITH (FORCE)", target=n) for n in dropped),
        *(plan.Step("filestore", f"remove {p.root / n}", target=n) for n in state.entries),
        event,
        database=db,
        final_backup=state.taken if live else state.final,
        databases=dropped,
        filestores=list(state.entries),
        event_id=p.event_id,
        entry_id=state.event,
    )


def _inputs(p: Params) -> tuple[str, Path, bytes | None]:
    """The connection string, the backup volume and the key: each usable, or 64/78 now."""
    dest = backup_sets.dest_dir(p.dest)  # not a mounted, writable directory: 78
    return pg.base_conninfo(p.pg_dsn), dest, p.key()


def preview(job: runner.Job, p: Params) -> plan.Plan:
    job.bind(tenant=p.subdomain)
    dsn, dest, key = _inputs(p)
    with pg.connection(dsn=dsn, deadline=job.deadline) as conn:
        return decide(observe(conn, p, dest, key, job.deadline), p)


# --------------------------------------------------------------------------- apply


def run(job: runner.Job, p: Params) -> Done:
    job.bind(tenant=p.subdomain)
    dsn, dest, key = _inputs(p)
    db = p.tenant.db_name
    with (
        locks.advisory(locks.tenant(db), deadline=job.deadline, dsn=dsn),
        # backup-verify's lock: its scratch copy `{db}__vfy` is not dropped under it.
        locks.advisory(locks.verify(db), deadline=job.deadline, dsn=dsn),
        pg.connection(dsn=dsn, deadline=job.deadline) as conn,
    ):
        job.step("observe")
        state = observe(conn, p, dest, key, job.deadline)
        steps = decide(state, p)
        steps.require_unblocked(**dict(steps.details or {}))
        details = dict(steps.details or {})
        actions = _actions(job, p, conn, dsn, dest, key, state, details)
        plan.apply(job, _only(steps, lambda s: s.name != "event"), actions)
        left = sorted(_entries(p.root, p.tenant))
        if left:
            raise ConflictError(f"could not remove {', '.join(left)}", left=left)
    # The event once the tenant is gone, outside its locks (a re-run adds it if this one is cut).
    plan.apply(job, _only(steps, lambda s: s.name == "event"), actions)
    added = details.pop("added", False)
    done = {"database": bool(state.databases), "filestore": bool(state.entries), "event": added}
    removed = [what for what, did in done.items() if did]
    return Done("updated" if removed else "unchanged", {**details, "removed": removed})


def _only(steps: plan.Plan, which: Callable[[plan.Step], bool]) -> plan.Plan:
    return plan.Plan(tuple(s for s in steps.steps if which(s)))


def _actions(
    job: runner.Job,
    p: Params,
    conn: psycopg.Connection[Any],
    dsn: str,
    dest: Path,
    key: bytes | None,
    state: State,
    details: dict[str, Any],
) -> dict[str, Callable[[plan.Step], object]]:
    """What each step does; `details` (the result) gains the final set and the entry id."""
    db = p.tenant.db_name

    def final_backup(_: plan.Step) -> None:
        assert key is not None and state.live is not None  # decide and observe see to it
        with locks.advisory(locks.backup(db), deadline=job.deadline, dsn=dsn):
            made = backup_sets.take(job, p.tenant, dest, p.data_dir, dsn, p.jobs, final=True,
                                    lock_wait=p.lock_wait, key=key)  # fmt: skip
        mark = state.live
        marker.write(
            conn, db, marker.Marker(mark.kind, STATE, {**mark.data, "final_backup": made.name})
        )
        details["final_backup"] = made.name

    def drop(step: plan.Step) -> None:
        pg.drop_database(conn, step.target)

    def remove(step: plan.Step) -> None:
        _remove_entry(p.root, step.target)

    def event(_: plan.Step) -> None:
        eid, fields = events.client_event(
            EVENT_TYPE, p.tenant, p.generation, project_id=p.project_id, tier=p.tier,
            final_backup=details["final_backup"],
        )  # fmt: skip
        client = redis_client.from_url(p.redis_url)
        try:
            added, entry = events.xadd_once(client, p.stream, eid, fields, deadline=job.deadline)
        finally:
            client.close()
        details.update(added=added, entry_id=entry)

    return {"final-backup": final_backup, "drop": drop, "filestore": remove, "event": event}


deprovision = params.command(
    "deprovision",
    Params,
    run,
    preview,
    "Final backup, then drop the tenant's database and filestore; emit client.deprovisioned.",
)
