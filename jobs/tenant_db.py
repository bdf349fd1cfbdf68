"""`plana-job tenant-db` (PLANAClient): a tenant database cloned from its tier's template.

Steps, each observed first and recorded in the work database's marker (`jobs.marker`,
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

Reusable API (environment-db uses it for `{subdomain}--{env}` environments and copies):

- `template_lock(template, *, deadline, shared=True, dsn=None)`: the template's advisory lock.
- `check_template(conn, template, data_dir)` → the template's fingerprint (None when it carries
  no template marker); TransientError (75) when it is missing or mid-swap.
- `create_clone(conn, source, target, *, owner, deadline)`: the bare `CREATE DATABASE … TEMPLATE
  … OWNER … STRATEGY FILE_COPY` (55006 "being accessed by other users" retried until the
  deadline). Take `template_lock` around it (and around the filestore copy).
- `restrict_connect(conn, db, owner)`: REVOKE CONNECT/TEMPORARY FROM PUBLIC, GRANT to owner.
- `Identity` + `personalise(conn_to_db, identity)`: the personalisation, in one transaction.
- `require_role(conn, role)`: ConfigError (78) when the owner role does not exist.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.resources
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import psycopg
import structlog
from psycopg import sql

from jobs import access, background, filestore, locks, marker, naming, options, pg, retry, runner
from jobs.errors import ConfigError, ConflictError, TransientError, UsageError
from jobs.result import Done

# One rule for every database: only the owner role may connect (jobs.access).
restrict_connect = access.restrict_connect
public_can_connect = access.public_can_connect

WORK_SUFFIX = "__new"
MAX_DB_NAME = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes
DEFAULT_OWNER_ROLE = "plana"
STATES = ("cloned", "filestore", "personalised", "complete")


# --------------------------------------------------------------------------- reusable parts


def work_db(db: str) -> str:
    return db + WORK_SUFFIX


def template_lock_name(template: str) -> str:
    return f"template:{template}"


@contextmanager
def template_lock(
    template: str, *, deadline: retry.Deadline, shared: bool = True, dsn: str | None = None
) -> Iterator[None]:
    """Clones hold it shared; template-build holds it exclusively for the swap."""
    with locks.advisory(template_lock_name(template), deadline=deadline, shared=shared, dsn=dsn):
        yield


def owner_role(value: str | None, field: str = "ownerRole") -> str:
    if not value:
        raise UsageError(field, "is required")
    if len(value.encode()) > MAX_DB_NAME or not value.isprintable():
        raise UsageError(field, f"must be a PostgreSQL role name, got {value!r}")
    return value


def session_name(db: str) -> str:
    """The application_name of a run's sessions for `db` (≤ 63 bytes, unique per database)."""
    tail = db if len(db) <= 40 else hashlib.sha1(db.encode(), usedforsecurity=False).hexdigest()
    return f"plana-job tenant-db {tail}"


def end_orphans(conn: psycopg.Connection[Any], app: str, deadline: retry.Deadline) -> int:
    """End the sessions a killed run left behind (e.g. a CREATE DATABASE still running).

    Called holding the tenant's lock: any other session named `app` belongs to a dead run.
    """
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = %s AND pid <> pg_backend_pid()",
        (app,),
    ).fetchall()
    while rows and not deadline.expired():
        left = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (app,),
        ).fetchone()
        if not left or not left[0]:
            structlog.get_logger().info("ended sessions of a previous run", sessions=len(rows))
            return len(rows)
        time.sleep(0.1)
    if rows:
        raise TransientError(f"sessions of a previous run on {app!r} did not end")
    return 0


def template_name(value: str | None, field: str = "templateDb") -> str:
    """An explicit template database name (a blue/green or canary template, or tests)."""
    if not value or not re.fullmatch(r"template_[a-z0-9_]{1,48}", value, re.ASCII):
        raise UsageError(field, f"must match template_[a-z0-9_]{{1,48}}, got {value!r}")
    return value


def require_role(conn: psycopg.Connection[Any], role: str) -> None:
    row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if row is None:
        raise ConfigError(f"owner role {role!r} does not exist in PostgreSQL", role=role)


def check_template(
    conn: psycopg.Connection[Any], template: str, data_dir: str | Path
) -> str | None:
    """The template's fingerprint once it is ready to clone; 75 while it is not (yet)."""
    if not pg.database_exists(conn, template):
        raise TransientError(
            f"template database {template} does not exist (yet): its TemplateSnapshot may "
            "still be building",
            template=template,
        )
    mark = marker.read(conn, template)
    if mark is None or mark.kind != marker.TEMPLATE_KIND:
        return None  # a template made by other means: clone it as it is
    fingerprint = str(mark.data.get("fingerprint", ""))
    if mark.state != "complete":
        raise TransientError(
            f"template {template} is {mark.state}, not complete", template=template
        )
    fs_mark = filestore.read_mark(naming.filestore(template, data_dir)) or {}
    if fs_mark.get("fingerprint") != fingerprint:
        raise TransientError(
            f"template {template}: its filestore does not belong to its database "
            "(a template swap is in progress or was interrupted)",
            template=template,
        )
    return fingerprint


def create_clone(
    conn: psycopg.Connection[Any],
    source: str,
    target: str,
    *,
    owner: str,
    deadline: retry.Deadline,
) -> None:
    """`CREATE DATABASE target TEMPLATE source OWNER owner STRATEGY FILE_COPY`.

    FILE_COPY copies the files and checkpoints; WAL_LOG (the default) would write every block
    to WAL: 10 concurrent clones of 310 MB took 15 s against 5.9 s (docs/design.md).
    """
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {} STRATEGY FILE_COPY").format(
        sql.Identifier(target), sql.Identifier(source), sql.Identifier(owner)
    )
    retry.call(
        lambda: conn.execute(statement),
        what=f"clone {source} to {target}",
        deadline=deadline,
        transient=pg.transient,
    )


@dataclass(frozen=True)
class Identity:
    """Who a tenant database belongs to (the PLANAClient's owner fields and hostname)."""

    hostname: str
    owner_email: str
    owner_name: str
    company_name: str | None = None  # default: the owner's name

    @classmethod
    def of(cls, spec: naming.ClientSpec) -> Identity:
        return cls(spec.tenant.hostname, spec.owner_email, spec.owner_name)


def _statements(name: str) -> list[str]:
    """The statements of sql/{name}: comment lines dropped, split at a ";" ending a line."""
    text = importlib.resources.files("jobs.sql").joinpath(name).read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [part.strip() for part in re.split(r";\s*$", body, flags=re.M) if part.strip()]


# The characters Python's str.strip() removes (str.isspace()): Odoo strips complete_name so.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)


def email_normalized(address: str) -> str:
    """Odoo's `email_normalize` of one plain address: the domain lower-cased, and the local part
    too when it is ASCII (a non-ASCII local part is SMTPUTF8's and kept as it is)."""
    local, at, domain = address.rpartition("@")
    return (local if not local.isascii() else local.lower()) + at + domain.lower()


def _has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s"
        " AND NOT attisdropped",
        (table, column),
    ).fetchone()
    return row is not None


def personalise(conn: psycopg.Connection[Any], identity: Identity) -> dict[str, str]:
    """Give the database (connected by `conn`) its own identity, in one transaction.

    Also the stored fields Odoo derives from what changes (complete_name,
    commercial_company_name, and mail's email_normalized when mail is installed).
    Returns the non-secret facts (uuid, base_url, admin_login); the secret is never returned.
    """
    params = {
        "secret": str(uuid.uuid4()),
        "uuid": str(uuid.uuid4()),
        "create_date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "base_url": f"https://{identity.hostname}",
        "admin_login": identity.owner_email,
        "owner_email": identity.owner_email,
        "owner_name": identity.owner_name,
        "company_name": identity.company_name or identity.owner_name,
        "whitespace": PY_WHITESPACE,
        "owner_email_normalized": email_normalized(identity.owner_email),
    }
    try:
        with conn.transaction():
            for statement in _statements("tenant/personalise.sql"):
                conn.execute(statement, params)
            if _has_column(conn, "res_partner", "email_normalized"):  # mail is installed
                for statement in _statements("tenant/personalise_mail.sql"):
                    conn.execute(statement, params)
            row = conn.execute(_statements("tenant/check.sql")[0]).fetchone()
            if row is None or row[0] != params["admin_login"] or row[3] != params["uuid"]:
                raise ConflictError(
                    f"database {conn.info.dbname} has no Odoo admin user / main company to "
                    "personalise (is its template an Odoo database?)"
                )
    except psycopg.errors.UndefinedTable as exc:
        raise ConflictError(
            f"database {conn.info.dbname} is not an Odoo database: {exc.diag.message_primary}"
        ) from None
    return {"uuid": params["uuid"], "base_url": params["base_url"], "admin_login": row[0]}


# --------------------------------------------------------------------------- the job


@click.command("tenant-db")
@options.client_spec
@options.option(
    "--owner-role",
    env="PLANA_OWNER_ROLE",
    default=DEFAULT_OWNER_ROLE,
    show_default=True,
    help="PostgreSQL role owning the database (only it may connect).",
)
@options.template_db
@options.data_dir
@options.pg_dsn
@options.common
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
    spec = options.client(kw)
    role = owner_role(kw["owner_role"])
    template = template_name(kw["template_db"]) if kw["template_db"] else spec.template
    data_dir = Path(kw["data_dir"] or naming.DEFAULT_DATA_DIR)
    db = spec.tenant.db_name
    if len(work_db(db).encode()) > MAX_DB_NAME:
        raise UsageError("subdomain", f"database name {db!r} is too long for PostgreSQL")
    dsn = kw["pg_dsn"]
    job.bind(tenant=spec.tenant.subdomain, database=db, template=template)

    job.step("connect")
    app = session_name(db)
    with pg.connection(dsn=dsn, deadline=job.deadline) as conn:
        require_role(conn, role)
        ctx = _Ctx(job, conn, spec, role, data_dir, dsn, template)
        with locks.advisory(f"tenant:{db}", deadline=job.deadline, dsn=dsn):
            # Named only once the lock is ours: runs still waiting for it are not orphans.
            conn.execute("SELECT set_config('application_name', %s, false)", (app,))
            end_orphans(conn, app, job.deadline)
            return _converge(ctx)


def _converge(ctx: _Ctx) -> Done:
    conn, db, job = ctx.conn, ctx.db, ctx.job
    job.step("observe")
    if pg.database_exists(conn, db):
        return _existing(ctx)

    fingerprint = check_template(conn, ctx.template, ctx.data_dir)
    state = _work_state(ctx, fingerprint)
    stats: dict[str, Any] = {}
    if state is None or state == "cloned":
        with template_lock(ctx.template, deadline=job.deadline, dsn=ctx.dsn):
            # Re-observe under the lock: a swap may have finished while we waited for it.
            current = check_template(conn, ctx.template, ctx.data_dir)
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
                    create_clone(
                        conn, ctx.template, ctx.work, owner=ctx.role, deadline=job.deadline
                    )
                    job.check_locks()  # the clone may have waited long: still ours?
                    restrict_connect(conn, ctx.work, ctx.role)
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
            stats["identity"] = personalise(tenant_conn, Identity.of(ctx.spec))
        ctx.mark(ctx.work, "personalised", template_fingerprint=fingerprint)

    job.step("publish")
    _publish(ctx, fingerprint)
    return Done("created", {"database": db, "template_fingerprint": fingerprint, **stats})


def _work_state(ctx: _Ctx, fingerprint: str | None) -> str | None:
    """The step a previous, interrupted run reached on the work database (None: start over)."""
    conn, work = ctx.conn, ctx.work
    if not pg.database_exists(conn, work):
        return None
    mark = marker.read(conn, work)
    ours = (
        mark is not None
        and mark.kind == marker.TENANT_KIND
        and mark.data.get("subdomain") == ctx.spec.tenant.subdomain
        and mark.state in STATES[:-1]
    )
    if not ours or mark is None:
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
    mark = marker.read(conn, db)
    if (
        mark is None
        or mark.kind != marker.TENANT_KIND
        or mark.data.get("subdomain") != ctx.spec.tenant.subdomain
        or mark.state != "complete"
    ):
        raise ConflictError(
            f"database {db} exists but was not created by plana-jobs tenant-db: left untouched",
            database=db,
        )
    repaired: list[str] = []
    if public_can_connect(conn, db):
        restrict_connect(conn, db, ctx.role)
        repaired.append("connect")
    fs = naming.filestore(db, ctx.data_dir)
    if not filestore.present(fs):  # a symlink there is refused (65), never followed
        # Lost (or never published by a pre-marker run): copy it again from the template.
        with template_lock(ctx.template, deadline=ctx.job.deadline, dsn=ctx.dsn):
            check_template(conn, ctx.template, ctx.data_dir)
            filestore.copy_tree(naming.filestore(ctx.template, ctx.data_dir), fs, kind="clone")
        repaired.append("filestore")
    details = {"database": db, "template_fingerprint": mark.data.get("template_fingerprint")}
    if repaired:
        ctx.job.log.info("repaired", what=repaired)
        return Done("updated", {**details, "repaired": repaired})
    return Done("unchanged", details)
