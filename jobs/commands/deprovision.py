"""`plana-job deprovision` (PLANAClient deleted): final backup, then every database and filestore
directory of the tenant removed, and the event.

What is the tenant's is decided by name and marker, never by a prefix (`naming.owned_name`):
its database `{db}` = `{subdomain}.{domain}`, its environments `{subdomain}--{env}.{domain}`, the
work copies of either (`…__new`, `__old`, `__rst`, `__vfy`, `__up{N}`, `__rb{N}`, `__env`), the
filestores `filestore/{name}` of all of them and the hidden leftovers `filestore/.{name}.*`
(staging, `.old`, `.trash-…`). No subdomain contains "--" or "_", so none of these names can be
another tenant's.

1. Observe everything first. The live database must carry a `tenant` marker naming this
   subdomain; an environment an `environment` marker naming this tenant; a work copy a marker
   of one of the kinds written under that name naming this tenant (the kinds that once carried
   no subdomain are accepted without one: the exact work name proves it) or no comment at all
   (a job killed between CREATE DATABASE and its marker). Anything else under these names is
   not ours: nothing at all is touched (65).
2. A final backup set of the live database (`final: true`, kept by retention). If it fails, the
   job stops there (the backup's exit code) and the tenant is left as it was.
3. The live marker becomes `deprovisioning` with the final set's name: a re-run after a kill
   skips the backup and goes on.
4. Every database found is dropped (`DROP DATABASE … WITH (FORCE)`), then every filestore entry
   found is removed (`filestore.discard`: renamed aside first; links and files are unlinked, a
   link's target is never touched). Leftovers are swept on every run, so a removal killed
   half-way is finished by the next one.
5. `client.deprovisioned` on the events stream, exactly once per (subdomain, generation).

Without the live database, what may hold the tenant's only copy (the live filestore, a
swapped-out `__old` or a rollback `__rb{N}` copy) is removed only when this tenant's final
backup exists (the proof that this job dropped the database); otherwise nothing is touched (65).
A re-run that finds nothing left and the event already sent: `unchanged`.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import psycopg

from jobs.adapters import filestore, pg, redis_client
from jobs.adapters.pg import locks
from jobs.core import naming, runner
from jobs.core import options as params
from jobs.core.errors import ConflictError
from jobs.core.result import Done
from jobs.ops import backup_sets, events, manifest, marker

EVENT_TYPE = "client.deprovisioned"
STATE = "deprovisioning"


def final_set(dest: Path, subdomain: str, key: bytes) -> str | None:
    """The newest complete, signed set of the tenant marked `final`, if any."""
    tdir = backup_sets.tenant_dir(dest, subdomain)
    for name in reversed(backup_sets.complete_sets(tdir)):
        if backup_sets.is_final(tdir / name, key):
            return name
    return None


@click.command("deprovision")
@params.subdomain
@params.project_id
@params.tier
@params.generation
@params.backup_options
@params.events_stream
@params.data_dir
@params.pg_dsn
@params.common
def deprovision(**kw: Any) -> None:
    """Final backup, then drop the tenant's database and filestore; emit client.deprovisioned."""
    runner.run("deprovision", lambda job: _run(job, kw), timeout=kw["timeout"])  # fmt: skip


# Marker kinds a database may carry under each of the tenant's names (live or work copy).
TENANT_LIVE: tuple[str, ...] = (marker.TENANT_KIND,)
TENANT_WORK = (
    marker.TENANT_KIND,  # `__new` (tenant-db), `__old` (a restore's swapped-out live)
    marker.RESTORE_WORK_KIND,
    marker.VERIFY_SCRATCH_KIND,
    marker.UPGRADE_WORK_KIND,
    marker.ROLLBACK_KIND,
)
ENV_LIVE = (marker.ENVIRONMENT_KIND,)
ENV_WORK = (marker.ENVIRONMENT_KIND, marker.ENVIRONMENT_WORK_KIND)
# Kinds whose writers recorded no subdomain before: accepted without one under a work name.
OLD_FORM = (marker.RESTORE_WORK_KIND, marker.VERIFY_SCRATCH_KIND, marker.ENVIRONMENT_WORK_KIND)


def like_escape(text: str) -> str:
    """`text` as a LIKE pattern matching itself (backslash is LIKE's default escape)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _ours(mark: marker.Marker | None, comment: str | None, owned: naming.Owned, sub: str) -> bool:
    """Whether a database under one of the tenant's names carries this tenant's marker."""
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
        if _ours(marker.Marker.decode(comment), comment, owned, sub):
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


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    # Every input is checked before anything is touched.
    tenant = naming.Tenant(naming.subdomain(kw["subdomain"]), naming.base_domain(kw["base_domain"]))
    project = naming.project_id(kw["project_id"]) if kw["project_id"] else None
    tier = naming.tier(kw["tier"]) if kw["tier"] else None
    generation = params.generation_value(kw["generation"])
    stream = events.stream_name(kw["stream"])  # as emit-event checks it
    dest = backup_sets.dest_dir(kw["dest"])
    dsn = pg.base_conninfo(kw["pg_dsn"])
    key = manifest.read_key(kw["backup_key_file"])
    client = redis_client.from_url(kw["redis_url"])
    db = tenant.db_name
    root = naming.filestore(db, kw["data_dir"]).parent
    job.bind(tenant=tenant.subdomain)
    details: dict[str, Any] = {"database": db}
    changed: list[str] = []

    with (
        locks.advisory(locks.tenant(db), deadline=job.deadline, dsn=dsn),
        # backup-verify's lock: its scratch copy `{db}__vfy` is not dropped under it.
        locks.advisory(locks.verify(db), deadline=job.deadline, dsn=dsn),
        pg.connection(dsn=dsn, deadline=job.deadline) as conn,
    ):
        job.step("observe")
        found, foreign = _databases(conn, tenant)
        live = db in found
        if foreign:
            raise ConflictError(
                f"database(s) {', '.join(foreign)} do not carry this tenant's marker: "
                "nothing touched",
                databases=foreign,
            )
        entries = _entries(root, tenant)
        if live:
            mark = marker.read(conn, db)
            assert mark is not None  # checked by _databases
            kept = mark.data.get("final_backup")
            tdir = backup_sets.tenant_dir(dest, tenant.subdomain)
            if mark.state != STATE or not (
                kept and (tdir / str(kept) / backup_sets.MANIFEST).is_file()
            ):
                job.step("final-backup")
                with locks.advisory(locks.backup(db), deadline=job.deadline, dsn=dsn):
                    made = backup_sets.take(
                        job, tenant, dest, kw["data_dir"], dsn, kw["jobs_n"],
                        final=True, lock_wait=kw["lock_wait"], key=key,
                    )  # fmt: skip
                kept = made.name
                marker.write(
                    conn, db, marker.Marker(mark.kind, STATE, {**mark.data, "final_backup": kept})
                )
            details["final_backup"] = kept
        else:
            details["final_backup"] = final_set(dest, tenant.subdomain, key)
            precious = [n for n, o in [*found.items(), *entries.items()] if _precious(o)]
            if precious and not details["final_backup"]:
                raise ConflictError(
                    f"{', '.join(precious)}: no live database and no final backup: nothing touched",
                    left=precious,
                )

        job.step("drop")
        # The live database first: from then on the final set is what proves the rest ours.
        dropped = sorted(found, key=lambda n: n != db)
        for name in dropped:
            pg.drop_database(conn, name)
        job.step("filestore")
        for name in entries:
            _remove_entry(root, name)
        left = sorted(_entries(root, tenant))
        if left:
            raise ConflictError(f"could not remove {', '.join(left)}", left=left)
        if found:
            changed.append("database")
        if entries:
            changed.append("filestore")
        details.update(databases=dropped, filestores=list(entries))

    job.step("event")
    fields = {
        "type": EVENT_TYPE,
        "subdomain": tenant.subdomain,
        "hostname": tenant.hostname,
        "db_name": db,
        "occurred_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    eid = events.event_id(EVENT_TYPE, tenant.subdomain, generation)
    fields["event_id"] = eid
    if project is not None:
        fields["project_id"] = str(project)
    if tier is not None:
        fields["tier"] = tier
    if generation is not None:
        fields["generation"] = str(generation)
    if details.get("final_backup"):
        fields["final_backup"] = str(details["final_backup"])
    try:
        added, entry = events.xadd_once(client, stream, eid, fields, deadline=job.deadline)
    finally:
        client.close()
    if added:
        changed.append("event")
    details.update(removed=changed, event_id=eid, entry_id=entry)
    return Done("updated" if changed else "unchanged", details)
