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
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

import click
import psycopg

from jobs.adapters import filestore, odoo, pg
from jobs.adapters.pg import locks
from jobs.adapters.pg import tools as pg_tools
from jobs.core import naming, proc, retry, runner
from jobs.core import options as params
from jobs.core.errors import ConfigError, ConflictError, JobError
from jobs.core.result import Done
from jobs.ops import backup_sets, clone, identity, marker, neutralise, swap

WORK_SUFFIX = "__env"


def _names(env: naming.Tenant, data_dir: str) -> swap.Names:
    return swap.Names.of(
        env, data_dir, work_suffix=WORK_SUFFIX, fs_work=lambda fs: fs.parent / f".{fs.name}.env"
    )


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


def _build(job: runner.Job, conn: psycopg.Connection[Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """The environment as `{db}__env` + `.{db}.env`, neutralised and verified."""
    n: swap.Names = ctx["names"]
    env_tenant: naming.Tenant = ctx["env_tenant"]
    dsn = ctx["dsn"]
    # The binary that will neutralise must run before anything is copied (78 if it cannot).
    ctx["binary"] = odoo.binary_version(ctx["odoo_bin"], deadline=job.deadline)
    if odoo.major(ctx["binary"]) is None:
        raise ConfigError(f"{ctx['odoo_bin']} --version said {ctx['binary']!r}: no Odoo version")
    pg.drop_database(conn, n.work)
    filestore.discard(n.fs_work)
    facts: dict[str, Any] = {}
    if ctx["copy"]:
        prod: str = ctx["production"]
        job.step("copy-database")
        settings = backup_sets.database_settings(conn, prod)
        settings["owner"] = ctx["role"]
        settings["public_connect"] = False
        clone.create_empty(conn, n.work, settings)
        marker.write(
            conn, n.work, marker.Marker(marker.ENVIRONMENT_WORK_KIND, "created", ctx["owner"])
        )
        _copy_database(job, prod, n.work, dsn)
        job.step("copy-filestore")
        facts["filestore"] = filestore.copy_tree(
            ctx["production_fs"], n.fs_work, kind="env"
        ).as_dict()
        with pg.connection(n.work, dsn=dsn, deadline=job.deadline) as wconn:
            identity.new_identity(wconn, env_tenant.hostname)
    else:
        template = ctx["template"]
        job.step("clone")
        with clone.template_lock(template, deadline=job.deadline, dsn=dsn):
            clone.check_template(conn, template, Path(ctx["data_dir"]))
            clone.create_clone(conn, template, n.work, owner=ctx["role"], deadline=job.deadline)
            job.check_locks()
            clone.restrict_connect(conn, n.work, ctx["role"])
            marker.write(
                conn, n.work, marker.Marker(marker.ENVIRONMENT_WORK_KIND, "created", ctx["owner"])
            )
            src_fs = naming.filestore(template, ctx["data_dir"])
            facts["filestore"] = filestore.copy_tree(src_fs, n.fs_work, kind="env").as_dict()
        with pg.connection(n.work, dsn=dsn, deadline=job.deadline) as wconn:
            who = identity.Identity(env_tenant.hostname, ctx["owner_email"], ctx["owner_name"])
            facts["identity"] = identity.personalise(wconn, who)
    job.step("neutralise")
    try:
        neutralise.neutralise(job, ctx, n.work)
        with pg.connection(n.work, dsn=dsn, deadline=job.deadline) as wconn:
            problems = neutralise.check_neutralised(wconn)
        if problems:
            raise ConflictError(f"environment not neutralised: {'; '.join(problems)}")
    except JobError:
        # Not left behind: a copy of production with its mail servers and crons still live.
        # (If this fails too, the next run drops it before anything else.)
        with contextlib.suppress(psycopg.Error):
            pg.drop_database(conn, n.work)
        raise
    facts["neutralised"] = ctx["binary"]
    return facts


def _publish(
    conn: psycopg.Connection[Any], n: swap.Names, final: marker.Marker, job: runner.Job
) -> None:
    """Old environment aside, work database and filestore in, marker: then drop the old."""
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


def _finish(conn: psycopg.Connection[Any], n: swap.Names) -> bool:
    """Complete a publication: filestore into place, old copies dropped. True if it did work."""
    moved = swap.place_filestore(n)
    return swap.drop_old(conn, n) or moved


@click.command("environment-db")
@params.subdomain
@params.option(
    "--env",
    "env_name",
    env="PLANA_ENVIRONMENT",
    default=None,
    help="Environment name (DNS label without '--'), e.g. staging: {subdomain}--{env}.",
)
@params.tier
@params.odoo_version
@params.owner_email
@params.owner_name
@params.generation
@params.option(
    "--copy-from-production",
    is_flag=True,
    env="PLANA_COPY_FROM_PRODUCTION",
    help="Copy the tenant's database and filestore instead of the tier's template.",
)
@params.option(
    "--refresh",
    is_flag=True,
    env="PLANA_REFRESH",
    help="Rebuild an existing environment (once per --generation).",
)
@params.option(
    "--owner-role",
    env="PLANA_OWNER_ROLE",
    default=clone.DEFAULT_OWNER_ROLE,
    show_default=True,
    help="PostgreSQL role owning the database.",
)
@params.template_db
@params.odoo_bin
@params.odoo_config
@params.addons_path
@params.data_dir
@params.pg_dsn
@params.common
def environment_db(**kw: Any) -> None:
    """Create (or --refresh) a tenant environment, fresh or copied, always neutralised."""
    runner.run("environment-db", lambda job: _run(job, kw), timeout=kw["timeout"])  # fmt: skip


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    domain = naming.base_domain(kw["base_domain"])
    sub = naming.subdomain(kw["subdomain"])
    env_name = kw["env_name"]
    # The longest name it works under: `{db}__env` or `{db}__old`.
    longest = max(len(WORK_SUFFIX), len(swap.OLD_SUFFIX))
    env_tenant = naming.environment(sub, env_name, domain, work_suffix_max=longest)
    copy = bool(kw["copy_from_production"])
    ctx: dict[str, Any] = {
        "copy": copy, "env_tenant": env_tenant, "data_dir": kw["data_dir"],
        "role": clone.owner_role(kw["owner_role"]),
        "names": _names(env_tenant, kw["data_dir"]),
        # Whose the work copy is, so deprovision can tell it from anyone else's.
        "owner": {"subdomain": env_tenant.subdomain, "tenant": sub, "env": env_name},
        # The environment's Odoo: it neutralises the copy (`neutralise.neutralise`).
        "odoo_bin": kw["odoo_bin"] or "odoo", "odoo_config": kw["odoo_config"],
        "addons_path": kw["addons_path"],
    }  # fmt: skip
    if copy:
        prod = naming.Tenant(sub, domain)
        ctx.update(production=prod.db_name, production_fs=prod.filestore(kw["data_dir"]))
    else:
        tier = naming.tier(kw["tier"])
        version = naming.odoo_version(kw["odoo_version"])
        ctx.update(
            template=clone.template_name(kw["template_db"], field="template-db")
            if kw["template_db"]
            else naming.template_db(naming.template_for_tier(tier), version),
            owner_email=naming.owner_email(kw["owner_email"]),
            owner_name=naming.owner_name(kw["owner_name"]),
        )
    generation = params.generation_value(kw["generation"])
    dsn = ctx["dsn"] = kw["pg_dsn"]
    n: swap.Names = ctx["names"]
    job.bind(tenant=sub, environment=env_tenant.subdomain)

    with (
        pg.connection(dsn=dsn, deadline=job.deadline) as conn,
        locks.advisory(locks.tenant(n.db), deadline=job.deadline, dsn=dsn),
    ):
        clone.require_role(conn, ctx["role"])
        # A killed run's CREATE DATABASE of the work copy may still be running on the server
        # (it does not read its socket until done): end it, or ours collides with it.
        clone.claim_session(conn, clone.session_name("environment", n.db), job.deadline)
        job.step("observe")
        if not pg.database_exists(conn, n.db) and pg.database_exists(conn, n.old):
            # A killed swap: the old pair comes back, filestore first. Renaming the database
            # first would let a kill in between leave the old database under the live name with
            # its filestore still aside, and the next run would take the work filestore for it.
            if n.fs_old.exists() and not n.fs.exists():
                os.rename(n.fs_old, n.fs)
            clone.rename_database(conn, n.old, n.db)
        current = marker.require_ours(
            conn, n.db, marker.ENVIRONMENT_KIND, match={"tenant": sub},
            what="is not this tenant's environment", absent_ok=True,
        )  # fmt: skip
        if current is not None:
            repaired = _finish(conn, n)
            same_generation = (
                generation is not None and current.data.get("generation") == generation
            )
            if not kw["refresh"] or same_generation:
                details = {"database": n.db, "source": current.data.get("source")}
                return Done("updated" if repaired else "unchanged", details)
        if copy:
            marker.require_ours(
                conn,
                ctx["production"],
                marker.TENANT_KIND,
                what="is not a tenant to copy as production",
            )
        facts = _build(job, conn, ctx)
        final = marker.Marker(marker.ENVIRONMENT_KIND, "complete", {
            "subdomain": env_tenant.subdomain, "tenant": sub, "env": env_name,
            "source": "production" if copy else "template", "generation": generation,
        })  # fmt: skip
        job.step("publish")
        _publish(conn, n, final, job)
    details = {"database": n.db, "hostname": env_tenant.hostname,
               "source": final.data["source"], **facts}  # fmt: skip
    return Done("updated" if current is not None else "created", details)
