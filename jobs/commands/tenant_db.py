"""`plana-job tenant-db` (PLANAClient): a tenant database cloned from its tier's template.

Steps, each observed first and recorded in the work database's marker (`jobs.ops.marker`,
kind "tenant"), so that a run killed anywhere is resumed by the next one:

1. `cloned`: `CREATE DATABASE "{db}__new" TEMPLATE "{template}" OWNER … STRATEGY FILE_COPY`
   under the template's SHARED advisory lock ("template:{template}"; template-build takes it
   exclusively to swap), CONNECT revoked from PUBLIC and granted to the owner role.
2. `filestore`: the template's filestore staged beside `{data_dir}/filestore/{db}` while
   PostgreSQL clones the database (each file verified by its content address), then renamed
   into place once the clone exists, under the same lock.
3. `personalised`: `sql/tenant/personalise.sql` in one transaction: new `database.secret` and
   `database.uuid`, `database.create_date`, frozen `web.base.url`, the admin's login/email and
   the company/partner names, with the stored fields Odoo derives from them (complete_name,
   commercial_company_name; mail's email_normalized: `sql/tenant/personalise_mail.sql`).
4. `complete`: `ALTER DATABASE "{db}__new" RENAME TO "{db}"` and the marker in ONE transaction:
   the tenant's name appears only when the database is whole, and is ours from its first instant.

The whole run holds the exclusive lock "tenant:{db}", so concurrent runs for one tenant queue and
then find it complete (`unchanged`).

The clone, the template's lock and who may connect are `clone`'s (environment-db, template-build
and upgrade make their databases the same way); the personalisation is `identity.personalise`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import psycopg

from jobs.adapters import filestore, pg
from jobs.adapters.pg import locks
from jobs.core import background, naming, retry, runner
from jobs.core import options as params
from jobs.core.errors import ConflictError, UsageError
from jobs.core.result import Done
from jobs.ops import clone, identity, marker

WORK_SUFFIX = "__new"
STATES = ("cloned", "filestore", "personalised", "complete")


# --------------------------------------------------------------------------- reusable parts


def work_db(db: str) -> str:
    return db + WORK_SUFFIX


def session_name(db: str) -> str:
    """The application_name of a run's sessions for `db` (≤ 63 bytes, unique per database)."""
    tail = db if len(db) <= 40 else hashlib.sha1(db.encode(), usedforsecurity=False).hexdigest()
    return f"plana-job tenant-db {tail}"


# --------------------------------------------------------------------------- the job


@click.command("tenant-db")
@params.client_spec
@params.option(
    "--owner-role",
    env="PLANA_OWNER_ROLE",
    default=clone.DEFAULT_OWNER_ROLE,
    show_default=True,
    help="PostgreSQL role owning the database (only it may connect).",
)
@params.template_db
@params.data_dir
@params.pg_dsn
@params.common
def tenant_db(**kw: Any) -> None:
    """Create the tenant's database from its tier's template, personalised and locked down."""
    runner.run("tenant-db", lambda job: _run(job, kw), timeout=kw["timeout"])


@dataclass
class _Ctx:
    job: runner.Job
    conn: psycopg.Connection[Any]
    spec: naming.ClientSpec
    role: str
    data_dir: Path
    dsn: str | None
    template: str

    @property
    def db(self) -> str:
        return self.spec.tenant.db_name

    @property
    def work(self) -> str:
        return work_db(self.db)

    def mark(self, db: str, state: str, **data: Any) -> None:
        body = {
            "subdomain": self.spec.tenant.subdomain,
            "project_id": self.spec.project_id,
            "template": self.template,
            **data,
        }
        marker.write(self.conn, db, marker.Marker(marker.TENANT_KIND, state, body))
        self.job.log.info("marker", database=db, state=state)


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    # Observe the input first: every field is validated before anything is touched.
    spec = params.client(kw)
    role = clone.owner_role(kw["owner_role"])
    template = clone.template_name(kw["template_db"]) if kw["template_db"] else spec.template
    data_dir = Path(kw["data_dir"] or naming.DEFAULT_DATA_DIR)
    db = spec.tenant.db_name
    if len(work_db(db).encode()) > clone.MAX_DB_NAME:
        raise UsageError("subdomain", f"database name {db!r} is too long for PostgreSQL")
    dsn = kw["pg_dsn"]
    job.bind(tenant=spec.tenant.subdomain, database=db, template=template)

    job.step("connect")
    app = session_name(db)
    with pg.connection(dsn=dsn, deadline=job.deadline) as conn:
        clone.require_role(conn, role)
        ctx = _Ctx(job, conn, spec, role, data_dir, dsn, template)
        with locks.advisory(locks.tenant(db), deadline=job.deadline, dsn=dsn):
            # Named only once the lock is ours: runs still waiting for it are not orphans.
            conn.execute("SELECT set_config('application_name', %s, false)", (app,))
            clone.end_orphans(conn, app, job.deadline)
            return _converge(ctx)


def _converge(ctx: _Ctx) -> Done:
    conn, db, job = ctx.conn, ctx.db, ctx.job
    job.step("observe")
    if pg.database_exists(conn, db):
        return _existing(ctx)

    fingerprint = clone.check_template(conn, ctx.template, ctx.data_dir)
    state = _work_state(ctx, fingerprint)
    stats: dict[str, Any] = {}
    if state is None or state == "cloned":
        with clone.template_lock(ctx.template, deadline=job.deadline, dsn=ctx.dsn):
            # Re-observe under the lock: a swap may have finished while we waited for it.
            current = clone.check_template(conn, ctx.template, ctx.data_dir)
            if state is not None and current != fingerprint:
                _drop_work(ctx, staged=True)
                state = None
            fingerprint = current
            src_fs, dst_fs = (naming.filestore(n, ctx.data_dir) for n in (ctx.template, db))
            filestore.present(dst_fs)  # a symlink there is refused (65) before anything is made
            # The filestore is staged while PostgreSQL copies the database (the backend does
            # that work; this process only waits), and published only once the clone exists.
            with background.beside(
                filestore.copy_tree, src_fs, dst_fs, kind="clone", publish=False
            ) as staged:
                if state is None:
                    job.step("clone")
                    clone.create_clone(
                        conn, ctx.template, ctx.work, owner=ctx.role, deadline=job.deadline
                    )
                    job.check_locks()  # the clone may have waited long: still ours?
                    clone.restrict_connect(conn, ctx.work, ctx.role)
                    ctx.mark(ctx.work, "cloned", template_fingerprint=fingerprint)
                job.step("filestore")
            copied = staged.result()
            job.check_locks()
            copied.published = filestore.publish_staged(dst_fs, kind="clone")
            stats["filestore"] = copied.as_dict()
            ctx.mark(ctx.work, "filestore", template_fingerprint=fingerprint)
            state = "filestore"

    if state == "filestore":
        job.step("personalise")
        with pg.connection(
            ctx.work, dsn=ctx.dsn, deadline=job.deadline, application_name=session_name(db)
        ) as tenant_conn:
            stats["identity"] = identity.personalise(tenant_conn, identity.Identity.of(ctx.spec))
        ctx.mark(ctx.work, "personalised", template_fingerprint=fingerprint)

    job.step("publish")
    _publish(ctx, fingerprint)
    return Done("created", {"database": db, "template_fingerprint": fingerprint, **stats})


def _work_state(ctx: _Ctx, fingerprint: str | None) -> str | None:
    """The step a previous, interrupted run reached on the work database (None: start over)."""
    conn, work = ctx.conn, ctx.work
    if not pg.database_exists(conn, work):
        return None
    mark = marker.ours(
        conn, work, marker.TENANT_KIND, states=STATES[:-1],
        match={"subdomain": ctx.spec.tenant.subdomain},
    )  # fmt: skip
    if mark is None:
        if pg.database_comment(conn, work) is not None:
            # A comment that is not this tenant's work marker was written by someone else
            # (another tenant's marker, a hand-made note): input to refuse, never to drop.
            raise ConflictError(
                f"database {work} exists and is not this tenant's work copy: left untouched",
                database=work,
            )
        # `{db}__new` is this job's own work name: unmarked means the run died between CREATE
        # DATABASE and the marker, so the clone is complete but unrecorded. Start the clone
        # over; the staged files stay (each was verified by its content address as it was
        # copied, and a short one left by a kill is copied again by the size check).
        ctx.job.log.info("dropping an unfinished work database", database=work)
        _drop_work(ctx, staged=False)
        return None
    if mark.state == "cloned" and mark.data.get("template_fingerprint") != fingerprint:
        # Cloned from a template since replaced: its staged files are that template's.
        _drop_work(ctx, staged=True)
        return None
    ctx.job.log.info("resuming", database=work, state=mark.state)
    return mark.state


def _drop_work(ctx: _Ctx, *, staged: bool) -> None:
    """Drop the work database; `staged`: also the staged filestore (the template changed)."""
    pg.drop_database(ctx.conn, ctx.work)
    if staged:
        filestore.discard(filestore.staging_path(naming.filestore(ctx.db, ctx.data_dir), "clone"))


def _publish(ctx: _Ctx, fingerprint: str | None) -> None:
    """Rename the work database to the tenant's name and mark it complete, atomically."""
    conn, job = ctx.conn, ctx.job
    done = marker.Marker(
        marker.TENANT_KIND,
        "complete",
        {
            "subdomain": ctx.spec.tenant.subdomain,
            "project_id": ctx.spec.project_id,
            "template": ctx.template,
            "template_fingerprint": fingerprint,
        },
    )

    def attempt() -> None:
        pg.terminate_sessions(conn, ctx.work)  # e.g. a killed run's backend not yet gone
        with conn.transaction():
            pg.rename_database(conn, ctx.work, ctx.db)
            marker.write(conn, ctx.db, done)

    retry.call(attempt, what=f"rename {ctx.work}", deadline=job.deadline, transient=pg.transient)
    job.log.info("published", database=ctx.db)


def _existing(ctx: _Ctx) -> Done:
    """The tenant's database exists: ours and complete → repair drift; otherwise 65."""
    conn, db = ctx.conn, ctx.db
    mark = marker.require_ours(
        conn, db, marker.TENANT_KIND, states=("complete",),
        match={"subdomain": ctx.spec.tenant.subdomain},
        what="was not created by plana-jobs tenant-db",
    )  # fmt: skip
    repaired: list[str] = []
    if clone.public_can_connect(conn, db):
        clone.restrict_connect(conn, db, ctx.role)
        repaired.append("connect")
    fs = naming.filestore(db, ctx.data_dir)
    if not filestore.present(fs):  # a symlink there is refused (65), never followed
        # Lost (or never published by a pre-marker run): copy it again from the template.
        with clone.template_lock(ctx.template, deadline=ctx.job.deadline, dsn=ctx.dsn):
            clone.check_template(conn, ctx.template, ctx.data_dir)
            filestore.copy_tree(naming.filestore(ctx.template, ctx.data_dir), fs, kind="clone")
        repaired.append("filestore")
    details = {"database": db, "template_fingerprint": mark.data.get("template_fingerprint")}
    if repaired:
        ctx.job.log.info("repaired", what=repaired)
        return Done("updated", {**details, "repaired": repaired})
    return Done("unchanged", details)
