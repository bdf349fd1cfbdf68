"""`plana-job backup`: one tenant's database and filestore as a complete, verifiable set.

Layout under the mounted `--dest`:

    {dest}/{subdomain}/{YYYYMMDDTHHMMSSZ}/db.dump | db.dir/   pg_dump custom | directory format
                                          filestore.tar       the filestore, paths relative to it
                                          manifest.json       sizes, sha256, versions, row counts
                                          manifest.sig        HMAC-SHA256 of manifest.json

A set is built as `{ts}.partial` and published by one rename; `manifest.json` is written last
inside it, so a directory without `.partial` and with a manifest is complete by construction. A
killed run leaves only a `.partial`, which the next run (holding the tenant's backup lock, so no
live run's work is touched) deletes. Retention then removes expired sets, each renamed to
`.deleting` first so a crash mid-delete never leaves a half set that looks complete.

A set is input to validate when it is read back (jobs.ops.manifest): its manifest must carry a
valid signature made with the backup key, follow the schema and name the tenant it is read for.
Taking and reading sets is `backup_sets`'s; deprovision takes its final set the same way.

The dump and the manifest's facts (base version, tables, exact row counts) come from one
exported snapshot, so what the manifest promises is exactly what the dump holds.
"""

from __future__ import annotations

from typing import Any

import click

from jobs.adapters import pg
from jobs.adapters.pg import locks
from jobs.core import naming, runner
from jobs.core import options as params
from jobs.core.result import Done
from jobs.ops import backup_sets, retention
from jobs.ops import manifest as mf

LOCK_WAIT_S = 120.0


@click.command("backup")
@params.subdomain
@params.backup_options
@params.retention_options
@params.data_dir
@params.pg_dsn
@params.common
def backup(**kw: Any) -> None:
    """Dump one tenant's database and filestore into a new set, then apply retention."""
    runner.run("backup", lambda job: _run(job, kw), timeout=kw["timeout"])


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    tenant = naming.Tenant(naming.subdomain(kw["subdomain"]), naming.base_domain(kw["base_domain"]))
    dest = backup_sets.dest_dir(kw["dest"])
    policy = retention.Policy(kw["keep_daily"], kw["keep_weekly"], kw["keep_monthly"])
    dsn = pg.base_conninfo(kw["pg_dsn"])
    key = mf.read_key(kw["backup_key_file"])
    job.bind(tenant=tenant.subdomain)
    with locks.advisory(
        locks.backup(tenant.db_name), deadline=job.deadline, wait_s=LOCK_WAIT_S, dsn=dsn
    ):
        made = backup_sets.take(job, tenant, dest, kw["data_dir"], dsn, kw["jobs_n"],
                                lock_wait=kw["lock_wait"], key=key)  # fmt: skip
        job.step("retention")
        deleted = retention.apply_retention(
            job, backup_sets.tenant_dir(dest, tenant.subdomain), policy, made.name, key
        )
    return Done(
        "created",
        {
            "set": made.name,
            "path": str(made.path),
            "bytes": sum(int(f["size"]) for f in made.manifest["files"].values()),
            "tables": len(made.manifest["tables"]),
            "filestore_files": made.manifest["filestore"]["files"],
            "retention_deleted": deleted,
        },
    )
