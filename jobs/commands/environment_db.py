"""`plana-job environment-db` (TenantEnvironment): environment `{env}` of a tenant as its own
database, named `{subdomain}--{env}` (`naming.environment`): database, filestore and hostname
follow the naming contract, and can never be those of a tenant (no subdomain contains "--").

Two sources:
- fresh (default): a clone of the tier's template, personalised, exactly as `tenant-db` does it
  (`clone.create_clone`, `clone.restrict_connect`, `identity.personalise`, under the template's
  shared lock);
- `--copy-from-production`: `pg_dump | pg_restore` of the tenant's database, streamed, and a
  content-verified copy of its filestore. pg_dump reads one MVCC snapshot and takes only ACCESS
  SHARE locks: production keeps serving, no session of it is ended, nothing is frozen.

Either way the environment is built aside (`{db}__env`, `.{db}.env`), gets its own
`database.secret`/`database.uuid`/`web.base.url`, is neutralised by Odoo itself (the
environment's binary runs `odoo neutralize -d {db}__env`: every installed module's
`data/neutralize.sql`, custom addons' included), and is verified neutralised before it is
published by renames (the old environment, on `--refresh`, is kept until then).
Idempotent: an existing environment is `unchanged`; `--refresh` rebuilds it once per
`--generation` (the XR's), so a re-created Job does not refresh again.

observe → plan → apply: `observe` reads the environment's databases (live, `__env`, `__old`),
their comments, the filestores beside them and the source (production or the template);
`decide` plans the steps: `roll-back-swap` / `finish-swap` (what a killed publish left),
`drop-work` (a killed build's copy), then `clone` or `copy-database` + `copy-filestore`,
`neutralise` and `publish`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from typing import Any

import psycopg

from jobs.adapters import filestore, odoo, pg
from jobs.adapters.pg import locks
from jobs.adapters.pg import tools as pg_tools
from jobs.core import fstree, naming, params, plan, proc, retry, runner
from jobs.core.errors import ConfigError, ConflictError, JobError, UsageError
from jobs.core.result import Done
from jobs.ops import backup_sets, clone, identity, marker, neutralise, swap

WORK_SUFFIX = "__env"
# The longest name it works under: `{db}__env` or `{db}__old`.
LONGEST_SUFFIX = max(len(WORK_SUFFIX), len(swap.OLD_SUFFIX))
TIDY = ("roll-back-swap", "finish-swap")
BUILD = ("drop-work", "clone", "copy-database", "copy-filestore", "neutralise", "publish")


# --------------------------------------------------------------------------- parameters


@params.spec
class Params(params.TenantOptions):
    env_name: str = params.option(
        "--env",
        "PLANA_ENVIRONMENT",
        "Environment name (DNS label without '--'), e.g. staging: {subdomain}--{env}.",
        required=True,
    )
    tier: str | None = params.tier(required=False)
    odoo_version: int | None = params.odoo_version()
    owner_email: str | None = params.owner_email(required=False)
    owner_name: str | None = params.owner_name(required=False)
    generation: int | None = params.generation()
    copy_from_production: bool = params.option(
        "--copy-from-production",
        "PLANA_COPY_FROM_PRODUCTION",
        "Copy the tenant's database and filestore instead of the tier's template.",
        is_flag=True,
        default=False,
    )
    refresh: bool = params.option(
        "--refresh",
        "PLANA_REFRESH",
        "Rebuild an existing environment (once per --generation).",
        is_flag=True,
        default=False,
    )
    owner_role: str = params.owner_role(clone.ROLE, clone.DEFAULT_OWNER_ROLE)
    template_db: str | None = params.template_db(clone.TEMPLATE)
    odoo_bin: str = params.odoo_bin()
    odoo_config: str | None = params.odoo_config()
    addons_path: str | None = params.addons_path()
    data_dir: str = params.data_dir()
    pg_dsn: str | None = params.pg_dsn()

    def __post_init__(self) -> None:
        self.env_tenant  # noqa: B018  (the environment's names, checked: 64 when they cannot be)
        if not self.copy_from_production:  # a fresh clone is the owner's, of the tier's template
            for field in ("tier", "owner_email", "owner_name"):
                if getattr(self, field) is None:
                    raise UsageError(field, "is required (without --copy-from-production)")

    @property
    def env_tenant(self) -> naming.Tenant:
        return naming.environment(self.subdomain, self.env_name, self.base_domain,
                                  work_suffix_max=LONGEST_SUFFIX, field="env_name")  # fmt: skip

    @property
    def production(self) -> naming.Tenant:
        return naming.Tenant(self.subdomain, self.base_domain)

    @property
    def template(self) -> str:
        if self.template_db:
            return self.template_db
        version = naming.DEFAULT_ODOO_VERSION if self.odoo_version is None else self.odoo_version
        return naming.template_db(naming.template_for_tier(self.tier or ""), version)

    @property
    def source(self) -> str:
        return "production" if self.copy_from_production else "template"

    @property
    def owner(self) -> dict[str, Any]:
        """Whose the work copy is, so deprovision can tell it from anyone else's."""
        env = self.env_tenant
        return {"subdomain": env.subdomain, "tenant": self.subdomain, "env": self.env_name}


def names(p: Params) -> swap.Names:
    """The environment's names; 65 when its live filestore is a symlink (`swap.Names.of`)."""
    return swap.Names.of(p.env_tenant, p.data_dir, work_suffix=WORK_SUFFIX,
                         fs_work=lambda fs: fs.parent / f".{fs.name}.env")  # fmt: skip


# --------------------------------------------------------------------------- observe


@dataclass(frozen=True)
class State:
    live: marker.Seen  # `{db}`
    work: marker.Seen  # `{db}__env`: a killed build's copy
    old: marker.Seen  # `{db}__old`: the environment a killed swap set aside
    fs: str  # fstree.kind_of of the live filestore, its work and old copies
    fs_work: str
    fs_old: str
    production: marker.Seen  # the tenant's database (with --copy-from-production)
    template: clone.TemplateState | None  # the template (fresh), None when copying


def observe(conn: psycopg.Connection[Any], p: Params) -> State:
    """Read only: the catalog, lstat of the filestores, the source's marks."""
    n = names(p)
    copying = p.copy_from_production
    return State(
        live=marker.seen(conn, n.db),
        work=marker.seen(conn, n.work),
        old=marker.seen(conn, n.old),
        fs=fstree.kind_of(n.fs),
        fs_work=fstree.kind_of(n.fs_work),
        fs_old=fstree.kind_of(n.fs_old),
        production=marker.seen(conn, p.production.db_name) if copying else marker.Seen(),
        template=None if copying else clone.template_state(conn, p.template, p.data_dir),
    )


# --------------------------------------------------------------------------- decide


def decide(s: State, p: Params) -> plan.Plan:
    """The steps still to take (pure): see the module docstring."""
    env = p.env_tenant
    db, work, old = env.db_name, env.db_name + WORK_SUFFIX, env.db_name + swap.OLD_SUFFIX
    details: dict[str, Any] = {"database": db, "source": p.source}
    tidy: plan.Step | None = None
    live = s.live
    if not s.live.exists and s.old.exists:
        # A killed swap: the old pair comes back (then what the swap left is tidied).
        tidy = plan.Step("roll-back-swap", f"RENAME {old} TO {db} and its filestore back: "
                         "a swap killed before its rename", target=db)  # fmt: skip
        live = s.old
    elif s.live.exists and (
        s.old.exists or s.fs_old != "missing" or (s.fs == "missing" and s.fs_work == "dir")
    ):
        tidy = plan.Step("finish-swap", f"filestore into place, {old} and its filestore "
                         "dropped: a swap killed after its rename", target=db)  # fmt: skip
    current: marker.Marker | None = None
    if live.exists:
        current, found = marker.examine(live.comment, marker.Kind.ENVIRONMENT,
                                      match={"tenant": p.subdomain})  # fmt: skip
        if current is None:
            return plan.blocked(
                marker.refusal(db, "is not this tenant's environment", found), **details
            )
        same_generation = (
            p.generation is not None and current.data.get("generation") == p.generation
        )
        if not p.refresh or same_generation:
            return plan.of(tidy, **{**details, "source": current.data.get("source")})
    details["existing"] = current is not None  # a rebuild of an existing environment: `updated`
    source = _source(s, p, tidy, details)
    if isinstance(source, plan.Plan):
        return source
    if s.work.exists and s.work.comment is not None:
        # `{db}__env` is this job's own work name, but a comment on it that is not this
        # environment's work marker was written by someone else: refused, never dropped.
        mark, found = marker.examine(s.work.comment, marker.Kind.ENVIRONMENT_WORK, match=p.owner)
        if mark is None:
            return plan.blocked(
                marker.refusal(work, "is not this environment's work copy", found), **details
            )
    drop = None
    if s.work.exists or s.fs_work != "missing":
        drop = plan.Step("drop-work", f"DROP DATABASE {work} and its filestore: a killed run's "
                         "half-built copy, never neutralised", target=work)  # fmt: skip
    return plan.of(
        tidy,
        drop,
        *source,
        plan.Step(
            "neutralise", f"odoo neutralize -d {work} with {p.odoo_bin}, then check it", target=work
        ),
        plan.Step(
            "publish", f"swap {work} in as {db} (the old one aside until then), marked", target=db
        ),
        **details,
    )


def _source(
    s: State, p: Params, tidy: plan.Step | None, details: dict[str, Any]
) -> tuple[plan.Step, ...] | plan.Plan:
    """The steps that fill the work copy, or the plan that cannot (blocked, waiting)."""
    work = p.env_tenant.db_name + WORK_SUFFIX
    if p.copy_from_production:
        prod = p.production.db_name
        if not s.production.exists:
            return plan.blocked(f"database {prod} does not exist", **details)
        mark, found = marker.examine(s.production.comment, marker.Kind.TENANT)
        if mark is None:
            return plan.blocked(
                marker.refusal(prod, "is not a tenant to copy as production", found), **details
            )
        return (
            plan.Step("copy-database", f"pg_dump {prod} | pg_restore into {work}", target=work),
            plan.Step(
                "copy-filestore", f"copy {prod}'s filestore, then a new identity", target=work
            ),
        )
    if s.template is not None and s.template.refused is not None:
        return plan.blocked(s.template.refused, **details)
    if s.template is not None and s.template.problem is not None:
        return clone.wait_for(s.template.problem, tidy, **details)
    return (
        plan.Step(
            "clone",
            f"CREATE DATABASE {work} TEMPLATE {p.template}, its filestore, "
            "personalised for the owner",
            target=work,
        ),
    )


# --------------------------------------------------------------------------- preview and run


def preview(job: runner.Job, p: Params) -> plan.Plan:
    """observe + decide, read only (`--dry-run`, `inspect`); 78 and 75 as the run would exit."""
    job.bind(tenant=p.subdomain, environment=p.env_tenant.subdomain)
    with pg.connection(dsn=p.pg_dsn, deadline=job.deadline) as conn:
        clone.require_role(conn, p.owner_role)
        steps = decide(observe(conn, p), p)
    steps.require_unblocked(database=p.env_tenant.db_name)
    if (steps.details or {}).get(clone.WAITING):
        for step in steps.steps:  # what the run would take before the wait stops it (75)
            job.log.info("would", step=step.name, says=step.says)
        clone.raise_if_waiting(steps)
    if "neutralise" in steps:
        neutralise.require_binary(p.odoo_bin)  # no binary to run: 78, as the run would exit
    return steps


@dataclass
class _Ctx:
    job: runner.Job
    conn: psycopg.Connection[Any]
    p: Params
    n: swap.Names

    def mark_work(self) -> None:
        work = marker.Marker(marker.Kind.ENVIRONMENT_WORK, "created", self.p.owner)
        marker.write(self.conn, self.n.work, work)


def run(job: runner.Job, p: Params) -> Done:
    env = p.env_tenant
    job.bind(tenant=p.subdomain, environment=env.subdomain)
    with (
        pg.connection(dsn=p.pg_dsn, deadline=job.deadline) as conn,
        locks.advisory(locks.tenant(env.db_name), deadline=job.deadline, dsn=p.pg_dsn),
    ):
        clone.require_role(conn, p.owner_role)
        # A killed run's CREATE DATABASE of the work copy may still be running on the server
        # (it does not read its socket until done): end it, or ours collides with it.
        clone.claim_session(conn, clone.session_name("environment", env.db_name), job.deadline)
        job.step("observe")
        ctx = _Ctx(job, conn, p, names(p))
        steps = decide(observe(conn, p), p)
        steps.require_unblocked(database=env.db_name)
        return _apply(ctx, steps)


def _apply(ctx: _Ctx, steps: plan.Plan) -> Done:
    job, p = ctx.job, ctx.p
    details = dict(steps.details or {})
    existing = bool(details.pop("existing", False))
    unknown = set(steps.names) - set(TIDY) - set(BUILD)
    if unknown:  # a plan naming a step the job cannot take is a bug, never skipped
        raise JobError(f"no action for planned step(s) {sorted(unknown)}")
    tidied = False
    for step in steps.steps:
        if step.name in TIDY:
            job.step(step.name)
            _tidy(ctx, roll_back=step.name == "roll-back-swap")
            tidied = True
    clone.raise_if_waiting(steps)  # the template is not ready (yet): 75, after the tidy-up
    if "publish" not in steps:
        return Done("updated" if tidied else "unchanged", details)
    # The binary that will neutralise must run before anything is copied (78 if it cannot).
    binary = _odoo(job, p)
    facts: dict[str, Any] = {}
    for step in steps.steps:
        if step.name in BUILD:
            job.step(step.name)
            facts.update(_BUILD_ACTIONS[step.name](ctx, binary))
    details.update(hostname=p.env_tenant.hostname, **facts)
    return Done("updated" if existing else "created", details)


def _odoo(job: runner.Job, p: Params) -> neutralise.Odoo:
    binary = odoo.binary_version(p.odoo_bin, deadline=job.deadline)
    if odoo.major(binary) is None:
        raise ConfigError(f"{p.odoo_bin} --version said {binary!r}: no Odoo version")
    return neutralise.Odoo(p.odoo_bin, binary, p.odoo_config, p.addons_path, p.pg_dsn)


def _tidy(ctx: _Ctx, *, roll_back: bool) -> None:
    """What a killed swap left: rolled back before its rename, finished after it."""
    conn, n = ctx.conn, ctx.n
    if roll_back:
        # Filestore first: renaming the database first would let a kill in between leave the
        # old database under the live name with its filestore still aside, and the next run
        # would take the work filestore for it.
        if n.fs_old.exists() and not n.fs.exists():
            os.rename(n.fs_old, n.fs)
        clone.rename_database(conn, n.old, n.db)
    _finish(conn, n)


# --------------------------------------------------------------------------- build steps


def _drop_work(ctx: _Ctx, _odoo: neutralise.Odoo) -> dict[str, Any]:
    pg.drop_database(ctx.conn, ctx.n.work)
    filestore.discard(ctx.n.fs_work)
    return {}


def _copy_db(ctx: _Ctx, _odoo: neutralise.Odoo) -> dict[str, Any]:
    conn, p, n = ctx.conn, ctx.p, ctx.n
    prod = p.production.db_name
    settings = backup_sets.database_settings(conn, prod)
    settings["owner"] = p.owner_role
    settings["public_connect"] = False
    clone.create_empty(conn, n.work, settings)
    ctx.mark_work()
    _copy_database(ctx.job, prod, n.work, p.pg_dsn)
    return {}


def _copy_fs(ctx: _Ctx, _odoo: neutralise.Odoo) -> dict[str, Any]:
    p, n = ctx.p, ctx.n
    copied = filestore.copy_tree(p.production.filestore(p.data_dir), n.fs_work, kind="env")
    with pg.connection(n.work, dsn=p.pg_dsn, deadline=ctx.job.deadline) as wconn:
        identity.new_identity(wconn, p.env_tenant.hostname)
    return {"filestore": copied.as_dict()}


def _clone(ctx: _Ctx, _odoo: neutralise.Odoo) -> dict[str, Any]:
    job, conn, p, n = ctx.job, ctx.conn, ctx.p, ctx.n
    with clone.template_lock(p.template, deadline=job.deadline, dsn=p.pg_dsn):
        clone.check_template(conn, p.template, p.data_dir)  # again, under the lock
        clone.create_clone(conn, p.template, n.work, owner=p.owner_role, deadline=job.deadline)
        job.check_locks()
        clone.restrict_connect(conn, n.work, p.owner_role)
        ctx.mark_work()
        src_fs = naming.filestore(p.template, p.data_dir)
        copied = filestore.copy_tree(src_fs, n.fs_work, kind="env")
    with pg.connection(n.work, dsn=p.pg_dsn, deadline=job.deadline) as wconn:
        who = identity.Identity(p.env_tenant.hostname, p.owner_email or "", p.owner_name or "")
        facts = identity.personalise(wconn, who)
    return {"filestore": copied.as_dict(), "identity": facts}


def _neutralise(ctx: _Ctx, binary: neutralise.Odoo) -> dict[str, Any]:
    n = ctx.n
    try:
        neutralise.neutralise(ctx.job, binary, n.work)
        with pg.connection(n.work, dsn=ctx.p.pg_dsn, deadline=ctx.job.deadline) as wconn:
            problems = neutralise.check_neutralised(wconn)
        if problems:
            raise ConflictError(f"environment not neutralised: {'; '.join(problems)}")
    except JobError:
        # Not left behind: a copy of production with its mail servers and crons still live.
        # (If this fails too, the next run drops it before anything else.)
        with contextlib.suppress(psycopg.Error):
            pg.drop_database(ctx.conn, n.work)
        raise
    return {"neutralised": binary.binary}


def _publish(ctx: _Ctx, _odoo: neutralise.Odoo) -> dict[str, Any]:
    """Old environment aside, work database and filestore in, marker: then drop the old."""
    conn, n, p, job = ctx.conn, ctx.n, ctx.p, ctx.job
    final = marker.Marker(marker.Kind.ENVIRONMENT, "complete", {
        **p.owner, "source": p.source, "generation": p.generation,
    })  # fmt: skip
    n.fs.parent.mkdir(parents=True, exist_ok=True)
    if pg.database_exists(conn, n.db):
        clone.rename_database(conn, n.db, n.old)
    if n.fs.exists():
        os.rename(n.fs, n.fs_old)

    def attempt() -> None:
        pg.terminate_sessions(conn, n.work)
        with conn.transaction():
            clone.rename_database(conn, n.work, n.db)
            marker.write(conn, n.db, final)

    retry.call(attempt, what=f"rename {n.work}", deadline=job.deadline,
               transient=pg.transient)  # fmt: skip
    _finish(conn, n)
    return {}


_BUILD_ACTIONS = {
    "drop-work": _drop_work,
    "clone": _clone,
    "copy-database": _copy_db,
    "copy-filestore": _copy_fs,
    "neutralise": _neutralise,
    "publish": _publish,
}


def _copy_database(job: runner.Job, source: str, work: str, dsn: str | None) -> None:
    """pg_dump | pg_restore, streamed: no dump file, and production is only read."""
    src_info, env = pg_tools.child_conninfo(source, dsn)
    dst_info, _ = pg_tools.child_conninfo(work, dsn)
    dump_argv = ["pg_dump", f"--dbname={src_info}", "--format=custom", "--compress=0",
                 "--lock-wait-timeout=60000ms"]  # fmt: skip
    restore_argv = ["pg_restore", f"--dbname={dst_info}", "--exit-on-error", "--no-comments"]
    with proc.spawn(dump_argv, name="pg_dump", env=env, stdout=subprocess.PIPE) as dump:
        with proc.spawn(restore_argv, name="pg_restore", env=env, stdin=dump.popen.stdout) as rst:
            assert dump.popen.stdout is not None
            dump.popen.stdout.close()  # pg_restore holds the pipe now; pg_dump sees it close
            restored = rst.wait(deadline=job.deadline)
        dumped = dump.wait(deadline=job.deadline)
    if dumped != 0:
        raise pg_tools.child_failed("pg_dump", dumped, list(dump.tail))
    if restored != 0:
        raise pg_tools.child_failed("pg_restore", restored, list(rst.tail))


def _finish(conn: psycopg.Connection[Any], n: swap.Names) -> bool:
    """Complete a publication: filestore into place, old copies dropped. True if it did work."""
    moved = swap.place_filestore(n)
    return swap.drop_old(conn, n) or moved


environment_db = params.command(
    "environment-db",
    Params,
    run,
    preview,
    "Create (or --refresh) a tenant environment, fresh or copied, always neutralised.",
)
