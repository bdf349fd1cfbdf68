"""Making a tenant's databases: clones of a template, empty databases to restore into, who may
connect to them, and the session names and orphan cleanup of the runs that make them.

PostgreSQL grants CONNECT and TEMPORARY to PUBLIC on every new database (and GRANTs are neither
copied by `CREATE DATABASE … TEMPLATE` nor restored by pg_restore without --create), so every
database a job creates, clones or restores goes through `restrict_connect` before it is used.

Used by tenant-db, environment-db, template-build, upgrade, restore and backup-verify:

- `template_lock(template, *, deadline, shared=True, dsn=None)`: the template's advisory lock.
- `check_template(conn, template, data_dir)` → the template's fingerprint (None when it carries
  no template marker); TransientError (75) when it is missing or mid-swap, ConflictError (65)
  when it carries a template marker that does not fit its schema. `template_state` is
  the same reading without raising (for a job's observe), `wait_for` / `raise_if_waiting` the
  plan of a job that can take its steps but not finish until the template is ready (75).
- `ROLE`, `TEMPLATE`: `owner_role` and `template_name` as click types (params.Rule).
- `create_clone(conn, source, target, *, owner, deadline)`: the bare `CREATE DATABASE … TEMPLATE
  … OWNER … STRATEGY FILE_COPY` (55006 "being accessed by other users" retried until the
  deadline). Take `template_lock` around it (and around the filestore copy).
- `create_empty(conn, name, settings, owner)`: an empty database to restore into.
- `restrict_connect(conn, db, owner)`: REVOKE CONNECT/TEMPORARY FROM PUBLIC, GRANT to owner.
- `require_role(conn, role)`: ConfigError (78) when the owner role does not exist.
- `session_name(job, db)` + `claim_session(conn, app, deadline)`: a run names its session and
  ends the sessions a killed run of the same job left on the same database.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import structlog
from psycopg import sql

from jobs.adapters import filestore, pg
from jobs.adapters.pg import locks
from jobs.core import naming, params, plan, retry
from jobs.core.errors import ConfigError, ConflictError, TransientError, UsageError
from jobs.ops import marker

if TYPE_CHECKING:
    from jobs.ops import manifest as mf

MAX_DB_NAME = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes
DEFAULT_OWNER_ROLE = "plana"


def restrict_connect(conn: psycopg.Connection[Any], db: str, owner: str | None = None) -> None:
    """REVOKE CONNECT, TEMPORARY FROM PUBLIC; GRANT them to `owner` (default: this session's role).

    A superuser connects regardless of the ACL, so scratch databases granted to the connecting
    role stay reachable by the job and by nobody else.
    """
    ident = sql.Identifier(db)
    role = sql.Identifier(owner) if owner else sql.SQL("CURRENT_USER")
    conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(ident))
    conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(ident, role))


def public_can_connect(conn: psycopg.Connection[Any], db: str) -> bool:
    """True when PUBLIC holds CONNECT on `db` (a NULL ACL means the default: it does)."""
    row = conn.execute(
        "SELECT datacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(datacl) a"
        " WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT')"
        " FROM pg_database WHERE datname = %s",
        (db,),
    ).fetchone()
    return bool(row and row[0])


@contextmanager
def template_lock(
    template: str, *, deadline: retry.Deadline, shared: bool = True, dsn: str | None = None
) -> Iterator[None]:
    """Clones hold it shared; template-build holds it exclusively for the swap."""
    with locks.advisory(locks.template(template), deadline=deadline, shared=shared, dsn=dsn):
        yield


def owner_role(value: str | None, field: str = "ownerRole") -> str:
    if not value:
        raise UsageError(field, "is required")
    if len(value.encode()) > MAX_DB_NAME or not value.isprintable():
        raise UsageError(field, f"must be a PostgreSQL role name, got {value!r}")
    return value


def template_name(value: str | None, field: str = "templateDb") -> str:
    """An explicit template database name (a blue/green or canary template, or tests)."""
    if not value or not re.fullmatch(r"template_[a-z0-9_]{1,48}", value, re.ASCII):
        raise UsageError(field, f"must match template_[a-z0-9_]{{1,48}}, got {value!r}")
    return value


ROLE = params.Rule("role", owner_role)
TEMPLATE = params.Rule("template", template_name)


def require_role(conn: psycopg.Connection[Any], role: str) -> None:
    row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if row is None:
        raise ConfigError(f"owner role {role!r} does not exist in PostgreSQL", role=role)


def role_exists(conn: psycopg.Connection[Any], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


@dataclass(frozen=True)
class TemplateState:
    """What a clone would start from: the template's fingerprint once it is ready to clone (None
    for a template made by other means), why it is not ready (yet), or why it never will be."""

    fingerprint: str | None = None
    problem: str | None = None  # set: cloning it now is 75 (missing, not complete, mid-swap)
    refused: str | None = None  # set: 65, its template marker does not fit its schema


def template_state(
    conn: psycopg.Connection[Any], template: str, data_dir: str | Path
) -> TemplateState:
    """Read only: the catalog, the template's marker and its filestore's mark."""
    if not pg.database_exists(conn, template):
        return TemplateState(
            problem=f"template database {template} does not exist (yet): its TemplateSnapshot "
            "may still be building"
        )
    comment = pg.database_comment(conn, template)
    mark, found = marker.examine(comment, marker.Kind.TEMPLATE)
    if mark is None:
        raw = marker.Marker.decode(comment)
        if raw is not None and raw.kind == marker.Kind.TEMPLATE:
            # Ours in form but not in content: no job wrote it, and no wait mends it. Never
            # cloned as a template made by other means.
            why = marker.refusal(template, "is not a template to clone", found)
            return TemplateState(refused=why)
        return TemplateState()  # a template made by other means: clone it as it is
    fingerprint = str(mark.data.get("fingerprint", ""))
    if mark.state != "complete":
        return TemplateState(problem=f"template {template} is {mark.state}, not complete")
    fs_mark = filestore.read_mark(naming.filestore(template, data_dir)) or {}
    if fs_mark.get("fingerprint") != fingerprint:
        return TemplateState(
            problem=f"template {template}: its filestore does not belong to its database "
            "(a template swap is in progress or was interrupted)"
        )
    return TemplateState(fingerprint)


def check_template(
    conn: psycopg.Connection[Any], template: str, data_dir: str | Path
) -> str | None:
    """The template's fingerprint once it is ready to clone; 75 while it is not (yet), 65 when
    its template marker does not fit its schema (it never will be)."""
    state = template_state(conn, template, data_dir)
    if state.refused is not None:
        raise ConflictError(state.refused, template=template)
    if state.problem is not None:
        raise TransientError(state.problem, template=template)
    return state.fingerprint


# A plan's detail naming what it waits for: a state that clears by itself (a template still
# building), so the job takes the steps it can and then exits 75 for Kubernetes to retry, and a
# dry run exits 75 too, as the real run would. (A blocked plan is 65: no retry resolves it.)
WAITING = "waiting_for"


def wait_for(why: str, *steps: plan.Step | None, **details: Any) -> plan.Plan:
    """The plan of `steps`, after which the job cannot finish yet because of `why` (75)."""
    return plan.of(*steps, **details, **{WAITING: why})


def raise_if_waiting(steps: plan.Plan) -> None:
    why = (steps.details or {}).get(WAITING)
    if why:
        raise TransientError(str(why))


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


def create_empty(
    conn: psycopg.Connection[Any],
    name: str,
    settings: mf.DbSettings | Mapping[str, Any],
    owner: str | None = None,
) -> None:
    """An empty database with whitelisted encoding/collation, owned by `owner`, CONNECT for it only.

    `settings` may be a plain mapping (a live database's facts): its `owner` is used when no
    `owner` is given, and its encoding and collation pass the same whitelist as a manifest's.
    """
    # Imported here: tenant-db, which never calls this, does not pay for loading it at start.
    from jobs.ops import manifest as mf

    if not isinstance(settings, mf.DbSettings):
        owner = owner or settings.get("owner")
        settings = mf.settings_of({k: settings.get(k) for k in ("encoding", "collate", "ctype")})
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))]
    if settings.encoding:
        parts.append(sql.SQL("ENCODING {}").format(sql.Literal(settings.encoding)))
    if settings.collate:
        parts.append(sql.SQL("LC_COLLATE {}").format(sql.Literal(settings.collate)))
    if settings.ctype:
        parts.append(sql.SQL("LC_CTYPE {}").format(sql.Literal(settings.ctype)))
    if owner:
        parts.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
    conn.execute(sql.SQL(" ").join(parts))
    restrict_connect(conn, name, owner)


def rename_database(conn: psycopg.Connection[Any], old: str, new: str) -> None:
    pg.terminate_sessions(conn, old)  # a straggling session would make the rename fail
    pg.rename_database(conn, old, new)


def session_name(job_name: str, db: str) -> str:
    """The application_name of a run's own sessions (≤ 63 bytes, one per job and database)."""
    tail = db if len(db) <= 36 else hashlib.sha1(db.encode(), usedforsecurity=False).hexdigest()
    return f"plana-job {job_name} {tail}"


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


def claim_session(conn: psycopg.Connection[Any], app: str, deadline: retry.Deadline) -> None:
    """Name this session `app` and end a killed run's sessions of that name (lock held)."""
    conn.execute("SELECT set_config('application_name', %s, false)", (app,))
    end_orphans(conn, app, deadline)
