"""`plana-job tenant-db` (PLANAClient): a tenant database cloned from its tier's template.

observe → plan → apply. `observe` reads the catalog (the tenant's database and its work copy
`{db}__new`, their comments, who may connect), the tenant's filestore and the template's state;
`decide` turns that into the steps still to take; `run` takes them, each recorded in the work
database's marker (`jobs.ops.marker`, kind "tenant") so that a run killed anywhere is resumed by
the next one:

1. `clone`: `CREATE DATABASE "{db}__new" TEMPLATE "{template}" OWNER … STRATEGY FILE_COPY`
   under the template's SHARED advisory lock ("template:{template}"; template-build takes it
   exclusively to swap), CONNECT revoked from PUBLIC and granted to the owner role. Marker
   `cloned`.
2. `filestore`: the template's filestore staged beside `{data_dir}/filestore/{db}` while
   PostgreSQL clones the database (each file verified by its content address), then renamed
   into place once the clone exists, under the same lock. Marker `filestore`.
3. `personalise`: `sql/tenant/personalise.sql` in one transaction: new `database.secret` and
   `database.uuid`, `database.create_date`, frozen `web.base.url`, the admin's login/email and
   the company/partner names, with the stored fields Odoo derives from them (complete_name,
   commercial_company_name; mail's email_normalized: `sql/tenant/personalise_mail.sql`).
   Marker `personalised`.
4. `publish`: `ALTER DATABASE "{db}__new" RENAME TO "{db}"` and the marker `complete` in ONE
   transaction: the tenant's name appears only when the database is whole, and is ours from
   its first instant.

Before them, a work copy a killed run left is dropped: `drop-unmarked` (no comment: killed
between CREATE DATABASE and its marker) or `drop-stale` (cloned from a template since replaced,
with its staged files). A work copy with anyone else's comment is refused (65), never dropped.
Once published, a run repairs drift: `repair-connect` (PUBLIC may connect again),
`repair-filestore` (the filestore was lost).

The whole run holds the exclusive lock "tenant:{db}", so concurrent runs for one tenant queue and
then find it complete (`unchanged`).

The clone, the template's lock and who may connect are `clone`'s (environment-db, template-build
and upgrade make their databases the same way); the personalisation is `identity.personalise`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from jobs.adapters import filestore, pg
from jobs.adapters.pg import locks
from jobs.core import background, fstree, naming, params, plan, retry, runner
from jobs.core.errors import JobError, UsageError
from jobs.core.result import Done
from jobs.ops import clone, identity, marker

WORK_SUFFIX = "__new"
STATES = ("cloned", "filestore", "personalised", "complete")
# The steps taken holding the template's shared lock: they read the template.
UNDER_TEMPLATE_LOCK = frozenset({"drop-unmarked", "drop-stale", "clone", "filestore"})
REPAIRS = {"repair-connect": "connect", "repair-filestore": "filestore"}


# --------------------------------------------------------------------------- reusable parts


def work_db(db: str) -> str:
    return db + WORK_SUFFIX


def session_name(db: str) -> str:
    """The application_name of a run's sessions for `db` (≤ 63 bytes, unique per database)."""
    tail = db if len(db) <= 40 else hashlib.sha1(db.encode(), usedforsecurity=False).hexdigest()
    return f"plana-job tenant-db {tail}"


# --------------------------------------------------------------------------- parameters


@params.spec
class Params(params.ClientSpec):
    owner_role: str = params.owner_role(clone.ROLE, clone.DEFAULT_OWNER_ROLE)
    template_db: str | None = params.template_db(clone.TEMPLATE)
    data_dir: str = params.data_dir()
    pg_dsn: str | None = params.pg_dsn()

    def __post_init__(self) -> None:
        if len(self.work.encode()) > clone.MAX_DB_NAME:
            raise UsageError("subdomain", f"database name {self.db!r} is too long for PostgreSQL")

    @property
    def db(self) -> str:
        return self.tenant.db_name

    @property
    def work(self) -> str:
        return work_db(self.db)

    @property
    def template(self) -> str:
        return self.template_db or self.client.template

    @property
    def filestore(self) -> Path:
        return naming.filestore(self.db, self.data_dir)


# --------------------------------------------------------------------------- observe


@dataclass(frozen=True)
class State:
    live: marker.Seen  # `{db}`
    work: marker.Seen  # `{db}__new`
    public_connect: bool  # PUBLIC may connect to `{db}` (drift: grants were reset)
    filestore: str  # the tenant's filestore: "dir", "missing" or "other" (a symlink: refused)
    template: clone.TemplateState


def observe(conn: psycopg.Connection[Any], p: Params) -> State:
    """Read only: the catalog, the tenant's filestore (lstat) and the template's marks."""
    live = marker.seen(conn, p.db)
    return State(
        live=live,
        work=marker.seen(conn, p.work),
        public_connect=live.exists and clone.public_can_connect(conn, p.db),
        filestore=fstree.kind_of(p.filestore),
        template=clone.template_state(conn, p.template, p.data_dir),
    )


# --------------------------------------------------------------------------- decide


def _symlinked(path: Path) -> str:
    return f"{path} is a symlink or not a directory: refused, never followed"


def decide(s: State, p: Params) -> plan.Plan:
    """The steps still to take (pure): see the module docstring."""
    if s.live.exists:
        return _decide_live(s, p)
    details: dict[str, Any] = {"database": p.db, "template": p.template}
    if s.template.refused is not None:
        return plan.blocked(s.template.refused, **details)
    if s.template.problem is not None:
        return clone.wait_for(s.template.problem, **details)
    mark, found = marker.examine(
        s.work.comment, marker.Kind.TENANT, states=STATES[:-1],
        match={"subdomain": p.subdomain},
    )  # fmt: skip
    fingerprint = s.template.fingerprint
    reached: str | None = None  # the step a killed run recorded on the work copy
    drop: plan.Step | None = None
    if not s.work.exists:
        pass
    elif mark is None and s.work.comment is not None:
        # A comment that is not this tenant's work marker was written by someone else
        # (another tenant's marker, a hand-made note): input to refuse, never to drop.
        return plan.blocked(
            f"database {p.work} exists and is not this tenant's work copy ({found}): "
            "left untouched",
            **{**details, "database": p.work},
        )
    elif mark is None:
        # `{db}__new` is this job's own work name: unmarked means the run died between CREATE
        # DATABASE and the marker. Start the clone over; the staged files stay (each was
        # verified by its content address as it was copied; a short one is copied again).
        drop = plan.Step("drop-unmarked", f"DROP DATABASE {p.work}: a killed run's unmarked clone",
                         target=p.work)  # fmt: skip
    elif mark.state == "cloned" and mark.data.get("template_fingerprint") != fingerprint:
        # Cloned from a template since replaced: its staged files are that template's too.
        drop = plan.Step(
            "drop-stale",
            f"DROP DATABASE {p.work} and its staged filestore: cloned from a replaced template",
            target=p.work,
        )
    else:
        reached = mark.state
        if reached != "cloned":  # past the clone: it is the recorded template's copy
            fingerprint = mark.data.get("template_fingerprint")
    if reached in (None, "cloned") and s.filestore == "other":
        return plan.blocked(_symlinked(p.filestore), **details)
    details["template_fingerprint"] = fingerprint
    if reached is not None:
        details["resuming"] = reached
    return plan.of(
        drop,
        _step("clone", p) if reached is None else None,
        _step("filestore", p) if reached in (None, "cloned") else None,
        _step("personalise", p) if reached != "personalised" else None,
        _step("publish", p),
        **details,
    )


def _step(name: str, p: Params) -> plan.Step:
    says = {
        "clone": f"CREATE DATABASE {p.work} TEMPLATE {p.template} OWNER {p.owner_role}, "
        "CONNECT for the owner only",
        "filestore": f"copy {p.template}'s filestore to {p.filestore} (staged, verified)",
        "personalise": f"give {p.work} the tenant's identity (secret, uuid, URL, owner)",
        "publish": f"RENAME {p.work} TO {p.db} and mark it complete, in one transaction",
    }[name]
    return plan.Step(name, says, target=p.work if name != "filestore" else str(p.filestore))


def _decide_live(s: State, p: Params) -> plan.Plan:
    """The tenant's database exists: ours and complete → repair drift; otherwise 65."""
    details: dict[str, Any] = {"database": p.db, "template": p.template}
    mark, found = marker.examine(
        s.live.comment, marker.Kind.TENANT, states=("complete",),
        match={"subdomain": p.subdomain},
    )  # fmt: skip
    if mark is None:
        return plan.blocked(
            marker.refusal(p.db, "was not created by plana-jobs tenant-db", found), **details
        )
    if s.filestore == "other":
        return plan.blocked(_symlinked(p.filestore), **details)
    details["template_fingerprint"] = mark.data.get("template_fingerprint")
    connect = None
    if s.public_connect:
        connect = plan.Step("repair-connect", f"REVOKE CONNECT ON {p.db} FROM PUBLIC, GRANT it "
                            f"to {p.owner_role}", target=p.db)  # fmt: skip
    if s.filestore == "dir":
        return plan.of(connect, **details)
    # Lost (or never published by a pre-marker run): copied again from the template.
    copy = plan.Step("repair-filestore", f"copy {p.template}'s filestore to {p.filestore} again",
                     target=str(p.filestore))  # fmt: skip
    if s.template.refused is not None:
        return plan.blocked(s.template.refused, **details)
    if s.template.problem is not None:
        return clone.wait_for(s.template.problem, connect, **details)
    return plan.of(connect, copy, **details)


# --------------------------------------------------------------------------- preview and run


def preview(job: runner.Job, p: Params) -> plan.Plan:
    """observe + decide, read only (`--dry-run`, `inspect`); 78 and 75 as the run would exit."""
    job.bind(tenant=p.subdomain, database=p.db, template=p.template)
    with pg.connection(dsn=p.pg_dsn, deadline=job.deadline) as conn:
        clone.require_role(conn, p.owner_role)
        steps = decide(observe(conn, p), p)
    _require(steps, p)
    if (steps.details or {}).get(clone.WAITING):
        for step in steps.steps:  # what the run would take before the wait stops it (75)
            job.log.info("would", step=step.name, says=step.says)
        clone.raise_if_waiting(steps)
    return steps


@dataclass
class _Ctx:
    job: runner.Job
    conn: psycopg.Connection[Any]
    p: Params

    def mark(self, state: str, fingerprint: object) -> None:
        """The work copy's marker: the step it reached."""
        body = {"subdomain": self.p.subdomain, "project_id": self.p.project_id,
                "template": self.p.template, "template_fingerprint": fingerprint}  # fmt: skip
        marker.write(self.conn, self.p.work, marker.Marker(marker.Kind.TENANT, state, body))
        self.job.log.info("marker", database=self.p.work, state=state)


def run(job: runner.Job, p: Params) -> Done:
    db = p.db
    job.bind(tenant=p.subdomain, database=db, template=p.template)
    job.step("connect")
    app = session_name(db)
    with pg.connection(dsn=p.pg_dsn, deadline=job.deadline) as conn:
        clone.require_role(conn, p.owner_role)
        with locks.advisory(locks.tenant(db), deadline=job.deadline, dsn=p.pg_dsn):
            # Named only once the lock is ours: runs still waiting for it are not orphans.
            conn.execute("SELECT set_config('application_name', %s, false)", (app,))
            clone.end_orphans(conn, app, job.deadline)
            job.step("observe")
            return _converge(_Ctx(job, conn, p))


def _converge(ctx: _Ctx) -> Done:
    p = ctx.p
    steps = decide(observe(ctx.conn, p), p)
    _require(steps, p)
    resuming = (steps.details or {}).get("resuming")
    if resuming is not None:
        ctx.job.log.info("resuming", database=p.work, state=resuming)
    if not steps.steps:
        clone.raise_if_waiting(steps)  # the template is not ready: nothing can be done yet
        return Done("unchanged", {"database": p.db, **_fingerprint(steps)})
    if set(steps.names) & REPAIRS.keys():
        return _repair(ctx, steps)
    stats: dict[str, Any] = {}
    if set(steps.names) & UNDER_TEMPLATE_LOCK:
        with clone.template_lock(p.template, deadline=ctx.job.deadline, dsn=p.pg_dsn):
            # Re-observed under the lock: a swap may have finished while we waited for it.
            steps = decide(observe(ctx.conn, p), p)
            _require(steps, p)
            clone.raise_if_waiting(steps)
            stats.update(_take(ctx, steps, [s for s in steps.steps
                                            if s.name in UNDER_TEMPLATE_LOCK]))  # fmt: skip
    clone.raise_if_waiting(steps)
    later = [s for s in steps.steps if s.name not in UNDER_TEMPLATE_LOCK]
    stats.update(_take(ctx, steps, later))
    return Done("created", {"database": p.db, **_fingerprint(steps), **stats})


def _fingerprint(steps: plan.Plan) -> dict[str, Any]:
    """The fingerprint of the template the database is (or will be) a clone of."""
    return {"template_fingerprint": (steps.details or {}).get("template_fingerprint")}


def _require(steps: plan.Plan, p: Params) -> None:
    steps.require_unblocked(database=(steps.details or {}).get("database", p.db))


def _take(ctx: _Ctx, steps: plan.Plan, todo: Sequence[plan.Step]) -> dict[str, Any]:
    """Take the steps `todo` of plan `steps`, in order; what they report."""
    fingerprint = (steps.details or {}).get("template_fingerprint")
    names = [s.name for s in todo]
    stats: dict[str, Any] = {}
    for step in todo:
        if step.name in ("drop-unmarked", "drop-stale"):
            ctx.job.step(step.name)
            if step.name == "drop-unmarked":
                ctx.job.log.info("dropping an unfinished work database", database=ctx.p.work)
            _drop_work(ctx, staged=step.name == "drop-stale")
        elif step.name == "filestore":  # with the clone, when planned: they run side by side
            stats["filestore"] = _clone_and_stage(ctx, "clone" in names, fingerprint)
        elif step.name == "personalise":
            ctx.job.step("personalise")
            stats["identity"] = _personalise(ctx)
            ctx.mark("personalised", fingerprint)
        elif step.name == "publish":
            ctx.job.step("publish")
            _publish(ctx, fingerprint)
        elif step.name != "clone":  # (the clone is taken inside `filestore`, beside the copy)
            # A plan naming a step the job cannot take is a bug, never skipped.
            raise JobError(f"no action for planned step {step.name!r}")
    return stats


def _clone_and_stage(ctx: _Ctx, cloning: bool, fingerprint: object) -> dict[str, Any]:
    """Clone (when `cloning`) while the template's filestore is staged beside it; publish the
    staged tree once the clone exists. Called holding the template's shared lock."""
    job, p = ctx.job, ctx.p
    src_fs, dst_fs = naming.filestore(p.template, p.data_dir), p.filestore
    filestore.present(dst_fs)  # a symlink there is refused (65) before anything is made
    # The filestore is staged while PostgreSQL copies the database (the backend does that
    # work; this process only waits), and published only once the clone exists.
    with background.beside(
        filestore.copy_tree, src_fs, dst_fs, kind="clone", publish=False
    ) as staged:
        if cloning:
            job.step("clone")
            clone.create_clone(ctx.conn, p.template, p.work, owner=p.owner_role,
                               deadline=job.deadline)  # fmt: skip
            job.check_locks()  # the clone may have waited long: still ours?
            clone.restrict_connect(ctx.conn, p.work, p.owner_role)
            ctx.mark("cloned", fingerprint)
        job.step("filestore")
    copied = staged.result()
    job.check_locks()
    copied.published = filestore.publish_staged(dst_fs, kind="clone")
    ctx.mark("filestore", fingerprint)
    return copied.as_dict()


def _personalise(ctx: _Ctx) -> dict[str, str]:
    p = ctx.p
    with pg.connection(
        p.work, dsn=p.pg_dsn, deadline=ctx.job.deadline, application_name=session_name(p.db)
    ) as tenant_conn:
        return identity.personalise(tenant_conn, identity.Identity.of(p.client))


def _drop_work(ctx: _Ctx, *, staged: bool) -> None:
    """Drop the work database; `staged`: also the staged filestore (the template changed)."""
    pg.drop_database(ctx.conn, ctx.p.work)
    if staged:
        filestore.discard(filestore.staging_path(ctx.p.filestore, "clone"))


def _publish(ctx: _Ctx, fingerprint: object) -> None:
    """Rename the work database to the tenant's name and mark it complete, atomically."""
    conn, job, p = ctx.conn, ctx.job, ctx.p
    body = {"subdomain": p.subdomain, "project_id": p.project_id, "template": p.template,
            "template_fingerprint": fingerprint}  # fmt: skip
    done = marker.Marker(marker.Kind.TENANT, "complete", body)

    def attempt() -> None:
        pg.terminate_sessions(conn, p.work)  # e.g. a killed run's backend not yet gone
        with conn.transaction():
            pg.rename_database(conn, p.work, p.db)
            marker.write(conn, p.db, done)

    retry.call(attempt, what=f"rename {p.work}", deadline=job.deadline, transient=pg.transient)
    job.log.info("published", database=p.db)


def _repair(ctx: _Ctx, steps: plan.Plan) -> Done:
    """The tenant's database is ours and complete: repair what drifted."""
    p = ctx.p
    repaired: list[str] = []
    for step in steps.steps:
        ctx.job.step(step.name)
        if step.name == "repair-connect":
            clone.restrict_connect(ctx.conn, p.db, p.owner_role)
        elif step.name == "repair-filestore":
            with clone.template_lock(p.template, deadline=ctx.job.deadline, dsn=p.pg_dsn):
                clone.check_template(ctx.conn, p.template, p.data_dir)
                src = naming.filestore(p.template, p.data_dir)
                filestore.copy_tree(src, p.filestore, kind="clone")
        repaired.append(REPAIRS[step.name])
    ctx.job.log.info("repaired", what=repaired)
    clone.raise_if_waiting(steps)  # after the repairs that need no template
    return Done("updated", {"database": p.db, **_fingerprint(steps), "repaired": repaired})


tenant_db = params.command(
    "tenant-db",
    Params,
    run,
    preview,
    "Create the tenant's database from its tier's template, personalised and locked down.",
)
