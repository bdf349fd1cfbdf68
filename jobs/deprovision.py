"""`plana-job deprovision` (PLANAClient deleted): final backup, drop, remove filestore, event.

1. Observe: a database under the tenant's name must carry this project's marker (kind tenant or
   environment), or nothing is touched (65).
2. A final backup set (`final: true` in its manifest, so retention never deletes it). If it
   fails, the job stops there (the backup's exit code) and the tenant is left as it was.
3. The marker becomes `deprovisioning` with the final set's name: from here a re-run after a
   kill skips the backup and goes on.
4. `DROP DATABASE … WITH (FORCE)`, then the filestore is removed (renamed aside first, so a crash
   never leaves half of it under the real name).
5. `client.deprovisioned` on the events stream, exactly once per (subdomain, generation).

A second run finds nothing left and the event already sent: `unchanged`. A filestore whose
database is already gone is removed only when this tenant's final backup exists (the proof that
this job dropped the database); otherwise it is left alone (65).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from jobs import (
    backup,
    emit_event,
    filestore,
    locks,
    manifest,
    marker,
    naming,
    options,
    pg,
    redis_client,
    runner,
)
from jobs.errors import ConflictError
from jobs.result import Done

EVENT_TYPE = "client.deprovisioned"
STATE = "deprovisioning"


def final_set(dest: Path, subdomain: str, key: bytes) -> str | None:
    """The newest complete, signed set of the tenant marked `final`, if any."""
    tdir = backup.tenant_dir(dest, subdomain)
    for name in reversed(backup.complete_sets(tdir)):
        if backup.is_final(tdir / name, key):
            return name
    return None


@click.command("deprovision")
@options.subdomain
@options.project_id
@options.tier
@options.generation
@backup.backup_options
@options.events_stream
@options.data_dir
@options.pg_dsn
@options.common
def deprovision(**kw: Any) -> None:
    """Final backup, then drop the tenant's database and filestore; emit client.deprovisioned."""
    runner.run("deprovision", lambda job: _run(job, kw), timeout=kw["timeout"])  # fmt: skip


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    # Every input is checked before anything is touched.
    tenant = naming.Tenant(naming.subdomain(kw["subdomain"]), naming.base_domain(kw["base_domain"]))
    project = naming.project_id(kw["project_id"]) if kw["project_id"] else None
    tier = naming.tier(kw["tier"]) if kw["tier"] else None
    generation = options.generation_value(kw["generation"])
    dest = backup.dest_dir(kw["dest"])
    dsn = pg.base_conninfo(kw["pg_dsn"])
    key = manifest.read_key(kw["backup_key_file"])
    client = redis_client.from_url(kw["redis_url"])
    db, fs = tenant.db_name, tenant.filestore(kw["data_dir"])
    job.bind(tenant=tenant.subdomain)
    details: dict[str, Any] = {"database": db}
    changed: list[str] = []

    with (
        locks.advisory(f"tenant:{db}", deadline=job.deadline, dsn=dsn),
        pg.connection(dsn=dsn, deadline=job.deadline) as conn,
    ):
        job.step("observe")
        mark = marker.read(conn, db) if pg.database_exists(conn, db) else None
        if pg.database_exists(conn, db):
            if mark is None or mark.kind not in backup.BACKUP_KINDS:
                raise ConflictError(
                    f"database {db} does not carry this project's tenant marker: left untouched",
                    database=db,
                )
            assert mark is not None
            kept = mark.data.get("final_backup")
            tdir = backup.tenant_dir(dest, tenant.subdomain)
            if mark.state != STATE or not (kept and (tdir / str(kept) / backup.MANIFEST).is_file()):
                job.step("final-backup")
                with locks.advisory(backup.lock_name(db), deadline=job.deadline, dsn=dsn):
                    made = backup.take(
                        job, tenant, dest, kw["data_dir"], dsn, kw["jobs_n"],
                        final=True, lock_wait=kw["lock_wait"], key=key,
                    )  # fmt: skip
                kept = made.name
                marker.write(
                    conn, db, marker.Marker(mark.kind, STATE, {**mark.data, "final_backup": kept})
                )
            details["final_backup"] = kept
            job.step("drop")
            pg.drop_database(conn, db, missing_ok=False)  # it was seen under our lock: must exist
            changed.append("database")
        else:
            details["final_backup"] = final_set(dest, tenant.subdomain, key)
        if fs.exists():
            if not details["final_backup"]:
                raise ConflictError(
                    f"filestore {fs} has no database and no final backup: left untouched"
                )
            job.step("filestore")
            filestore.discard(fs)
            changed.append("filestore")
        filestore.discard(filestore.staging_path(fs))  # a tenant-db or restore stage, if any

    job.step("event")
    fields = {
        "type": EVENT_TYPE,
        "subdomain": tenant.subdomain,
        "hostname": tenant.hostname,
        "db_name": db,
        "occurred_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    eid = emit_event.event_id(EVENT_TYPE, tenant.subdomain, generation)
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
        added, entry = emit_event.xadd_once(
            client, kw["stream"], eid, fields, deadline=job.deadline
        )
    finally:
        client.close()
    if added:
        changed.append("event")
    details.update(removed=changed, event_id=eid, entry_id=entry)
    return Done("updated" if changed else "unchanged", details)
