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

observe: the database's marker (this project's tenant or environment, else blocked: 65), its
settings, the leftovers of killed runs and the complete sets (with their signed `final`).
plan: `clean` each leftover, `dump`, `publish`, `retention` (the expired sets it deletes). A
backup never converges: every run takes a new set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobs.adapters import pg
from jobs.adapters.pg import locks
from jobs.core import params, plan, runner
from jobs.core.errors import ConflictError
from jobs.core.result import Done
from jobs.ops import backup_sets, retention
from jobs.ops import manifest as mf

LOCK_WAIT_S = 120.0


@params.spec
class Params(params.TenantOptions):
    dest: str = backup_sets.dest_option(
        "Mounted backup volume; sets go to {dest}/{subdomain}/{timestamp}/."
    )
    backup_key_file: str = params.backup_key_file()
    jobs_n: int = params.backup_jobs(
        "pg_dump parallel jobs; above 1 the dump is in directory format."
    )
    lock_wait: float = params.lock_wait()
    keep_daily: int = params.keep("daily", 7, "Days (that have sets) to keep one of.")
    keep_weekly: int = params.keep("weekly", 4, "ISO weeks to keep one set of.")
    keep_monthly: int = params.keep("monthly", 6, "Months to keep one set of.")
    data_dir: str = params.data_dir()
    pg_dsn: str | None = params.pg_dsn()

    @property
    def policy(self) -> retention.Policy:
        return retention.Policy(self.keep_daily, self.keep_weekly, self.keep_monthly)


@dataclass(frozen=True)
class State:
    source: backup_sets.Source | None  # the database's marker and settings, when it is ours
    refused: str | None  # why it is not a database to back up (missing, not ours)
    leftovers: tuple[str, ...]  # `.partial` / `.deleting` sets of killed runs
    sets: tuple[retention.Listed, ...]  # the complete sets, oldest first
    now: datetime  # the clock when observed: the new set's name, as far as a plan can tell


def observe(job: runner.Job, p: Params, dest: Path, key: bytes, dsn: str | None) -> State:
    tdir = backup_sets.tenant_dir(dest, p.subdomain)
    with pg.connection(dsn=dsn, deadline=job.deadline) as conn:
        try:
            source, refused = backup_sets.read_source(conn, p.tenant.db_name), None
        except ConflictError as exc:
            source, refused = None, exc.message
    return State(
        source=source,
        refused=refused,
        leftovers=tuple(backup_sets.leftovers(tdir)),
        sets=retention.listed(tdir, key),
        now=datetime.now(UTC),
    )


def _retention_says(doomed: list[str], policy: retention.Policy) -> str:
    rule = f"keep {policy.daily} daily / {policy.weekly} weekly / {policy.monthly} monthly"
    if not doomed:
        return f"delete no set ({rule})"
    return f"delete {len(doomed)} expired set(s) ({rule}): {', '.join(doomed)}"


def _new_name(state: State) -> str:
    """The name the run will give the new set: the clock's second, or the next one no set
    (complete or partial) uses yet, as `backup_sets` picks it."""
    taken = {s.name for s in state.sets} | {n.removesuffix(backup_sets.PARTIAL)
                                             for n in state.leftovers}  # fmt: skip
    when = state.now
    while backup_sets.set_name(when) in taken:
        when += timedelta(seconds=1)
    return backup_sets.set_name(when)


def decide(state: State, p: Params) -> plan.Plan:
    """The steps of one backup: pure, from what `observe` saw."""
    if state.refused is not None or state.source is None:
        return plan.blocked(state.refused or f"database {p.tenant.db_name} is not ours")
    new = _new_name(state)
    doomed = retention.doomed((*state.sets, retention.Listed(new, False)), p.policy, new)
    db, sub = p.tenant.db_name, p.subdomain
    return plan.of(
        *(
            plan.Step("clean", f"remove {name}, left by a killed run", target=name)
            for name in state.leftovers
        ),
        plan.Step("dump", f"pg_dump {db} and archive its filestore into {sub}/{new}.partial"),
        plan.Step("publish", f"sign the manifest, rename {new}.partial to {new}", target=new),
        plan.Step("retention", _retention_says(doomed, p.policy)),
        set=new,
        leftovers=list(state.leftovers),
        retention_deletes=doomed,
    )


def preview(job: runner.Job, p: Params) -> plan.Plan:
    job.bind(tenant=p.subdomain)
    dest = backup_sets.dest_volume(p.dest, params.label(Params, "dest"))
    key = mf.read_key(p.backup_key_file)
    return decide(observe(job, p, dest, key, pg.base_conninfo(p.pg_dsn)), p)


class _Backup:
    """The step actions of one run, and what they leave for the next (the pending set)."""

    def __init__(
        self, job: runner.Job, p: Params, dest: Path, key: bytes, dsn: str | None, state: State
    ) -> None:
        self.job, self.p, self.key, self.dsn, self.state = job, p, key, dsn, state
        self.tdir = backup_sets.tenant_dir(dest, p.subdomain)
        self.pending: backup_sets.Pending | None = None
        self.made: backup_sets.BackupSet | None = None
        self.deleted: list[str] = []

    def clean(self, step: plan.Step) -> None:
        backup_sets.remove_leftover(self.tdir, step.target)
        self.job.log.info("removed leftovers of interrupted runs", removed=[step.target])

    def dump(self, _step: plan.Step) -> None:
        self.pending = backup_sets.dump_set(
            self.job, self.p.tenant, self.tdir, self.p.data_dir, self.dsn, self.p.jobs_n,
            self.p.lock_wait,
        )  # fmt: skip

    def publish(self, _step: plan.Step) -> None:
        assert self.pending is not None and self.state.source is not None
        self.made = backup_sets.publish_set(
            self.job, self.p.tenant, self.pending, self.state.source, jobs_n=self.p.jobs_n,
            key=self.key,
        )  # fmt: skip

    def retention(self, _step: plan.Step) -> None:
        # Decided again now that the set exists under its real name: the plan guessed the name
        # from the clock before the dump, and a dump that ran past midnight moves it a day.
        assert self.made is not None
        sets = retention.listed(self.tdir, self.key)
        doomed = retention.doomed(sets, self.p.policy, self.made.name)
        self.deleted = retention.delete(self.job, self.tdir, doomed)

    def done(self) -> Done:
        assert self.made is not None
        m = self.made.manifest
        return Done(
            "created",
            {
                "set": self.made.name,
                "path": str(self.made.path),
                "bytes": sum(int(f["size"]) for f in m["files"].values()),
                "tables": len(m["tables"]),
                "filestore_files": m["filestore"]["files"],
                "retention_deleted": self.deleted,
            },
        )


def run(job: runner.Job, p: Params) -> Done:
    dest = backup_sets.dest_volume(p.dest, params.label(Params, "dest"))
    key = mf.read_key(p.backup_key_file)
    dsn = pg.base_conninfo(p.pg_dsn)
    job.bind(tenant=p.subdomain)
    with locks.advisory(
        locks.backup(p.tenant.db_name), deadline=job.deadline, wait_s=LOCK_WAIT_S, dsn=dsn
    ):
        state = observe(job, p, dest, key, dsn)
        work = _Backup(job, p, dest, key, dsn, state)
        actions: dict[str, Any] = {
            "clean": work.clean,
            "dump": work.dump,
            "publish": work.publish,
            "retention": work.retention,
        }
        plan.apply(job, decide(state, p), actions)
    return work.done()


backup = params.command(
    "backup",
    Params,
    run,
    preview,
    "Dump one tenant's database and filestore into a new set, then apply retention.",
)
