"""`plana-job inspect`: one tenant's whole state and every job's next step. Read only.

What an on-call engineer runs first, safe on a live system: it writes nothing, takes no lock and
starts no Odoo. It reports
- every database of the tenant (live, work copies, rollback, environments) with its marker,
- its filestore directories (files, bytes) and staging/trash leftovers,
- its backup sets (newest, newest whose signed manifest and files check out) and leftovers,
- the upgrade state (from the markers of the work copy and the rollback),
- its events on the stream,
- and for each job the steps it would take next: the job's own `preview` (observe + plan), run
  with `--subdomain`, the options given to inspect that the job also takes, and the job's
  PLANA_* variables from the environment (as the job's pod would have them). A job that needs
  more (an environment name, a target version) says which option.

Exit 0; 65 when the tenant is in a state no job can resolve alone (a job's plan is blocked, or
something in the tenant's namespace is not ours), saying which; 75/78 when a source could not
be read (the rest is still reported). A console table on a TTY, JSON (the result object)
otherwise (`--format`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from jobs.commands.inspect import render, view
from jobs.core import naming, params, plan, runner
from jobs.core.errors import ConflictError, ExitCode, JobError, UsageError
from jobs.core.result import Done
from jobs.ops import events, marker

NAME = "inspect"


@params.spec
class Params(params.TenantOptions):
    pg_dsn: str | None = params.pg_dsn()
    data_dir: str = params.data_dir()
    dest: str | None = params.option(
        "--dest", "PLANA_BACKUP_DEST", "Mounted backup volume: its sets are listed when given."
    )
    backup_key_file: str | None = params.backup_key_file(required=False)
    redis_url: str | None = params.option(
        "--redis-url",
        "PLANA_REDIS_URL",
        "Redis with the events stream (and the jobs' ledgers): read when given.",
    )
    stream: str = params.option(
        "--stream",
        "PLANA_EVENTS_STREAM",
        "Stream key.",
        type=events.STREAM,
        default=naming.EVENTS_STREAM,
        show_default=True,
    )
    format: str | None = params.option(
        "--format",
        "PLANA_INSPECT_FORMAT",
        "table or json [default: table on a TTY, else json].",
        type=click.Choice(("table", "json")),
    )


# inspect's options a job may take too: handed on to each job's preview when given.
SHARED = ("subdomain", "base_domain", "pg_dsn", "data_dir", "dest", "backup_key_file",
          "redis_url", "stream", "timeout")  # fmt: skip


def run(job: runner.Job, p: Params) -> Done:
    job.bind(tenant=p.subdomain)
    report: dict[str, Any] = {"subdomain": p.subdomain, "database": p.tenant.db_name}
    errors: dict[str, dict[str, Any]] = {}
    problems: list[str] = []

    def section(name: str, read: Any) -> Any:
        try:
            return read()
        except JobError as exc:
            errors[name] = {"error": exc.message, "exit_code": int(exc.code)}
        except Exception as exc:  # a driver's failure: what it means, else a bug of inspect
            known = runner.classify(exc)
            if known is None:
                raise
            errors[name] = {"error": known.message, "exit_code": int(known.code)}
        return None

    dbs = section("databases", lambda: _databases(job, p)) or []
    report["databases"] = view.as_dicts(dbs)
    problems += [f"database {d.name} is not ours: {d.problem}" for d in dbs if d.problem]
    report["upgrade"] = _upgrade(dbs)
    stores = section("filestores", lambda: view.filestores(Path(p.data_dir), p.tenant)) or []
    report["filestores"] = view.as_dicts(stores)
    problems += [f"filestore {f.name} is a {f.kind}" for f in stores if f.kind == "symlink"]
    if p.dest:
        sets = section("backups", lambda: _backups(p))
        if sets is not None:
            problems += [f"backup set {s.name}: {s.status}" for s in sets.sets
                         if s.status not in ("valid", "unverified")]  # fmt: skip
            report["backups"] = {
                "sets": view.as_dicts(sets.sets),
                "newest": sets.newest,
                "newest_valid": sets.newest_valid,
                "leftovers": sets.leftovers,
            }
    if p.redis_url:
        report["events"] = section("events", lambda: _events(p))
    plans = _plans(p)
    report["plans"] = plans
    # A blocked plan is shown with its job, not counted: it is what that job would refuse now
    # (restore onto an existing tenant without --replace, verify with no set yet), often by
    # design. What no job resolves alone is what inspect itself finds in the namespace.
    if errors:
        report["errors"] = errors
    report["problems"] = problems
    _show(p, report)
    if problems:
        raise ConflictError(
            f"{p.subdomain}: {len(problems)} problem(s) no job resolves alone: "
            + "; ".join(problems),
            **report,
        )
    if errors:
        worst = max(e["exit_code"] for e in errors.values())
        error = JobError("; ".join(f"{k}: {v['error']}" for k, v in errors.items()), **report)
        error.code = ExitCode(worst)
        raise error
    return Done("unchanged", report)


def preview(job: runner.Job, p: Params) -> plan.Plan:
    return plan.of()  # inspect is read only: there is never anything to plan


def _databases(job: runner.Job, p: Params) -> list[view.Database]:
    from jobs.adapters import pg

    with pg.connection(dsn=p.pg_dsn, deadline=job.deadline) as conn:
        return view.databases(conn, p.tenant)


def _backups(p: Params) -> view.Backups:
    from jobs.ops import manifest

    key = manifest.read_key(p.backup_key_file) if p.backup_key_file else None
    return view.backups(Path(p.dest or ""), p.tenant, key)


def _events(p: Params) -> list[dict[str, str]]:
    from jobs.adapters import redis_client

    client = redis_client.from_url(p.redis_url or "")
    try:
        return view.events(client, p.stream, p.subdomain)
    finally:
        client.close()


def _upgrade(dbs: list[view.Database]) -> dict[str, Any]:
    # A database that is not ours (another tenant's marker, one that does not fit its schema)
    # is a problem of its own, never this tenant's upgrade.
    ours = [d for d in dbs if d.problem is None]
    work = [d for d in ours if d.kind == marker.Kind.UPGRADE_WORK]
    rollback = [d for d in ours if d.kind == marker.Kind.ROLLBACK]
    status = "in progress" if work else ("done, rollback kept" if rollback else "none")
    out: dict[str, Any] = {"status": status}
    if work:
        out["work"] = {"database": work[0].name, "phase": work[0].state, **work[0].facts}
    if rollback:
        out["rollback"] = [d.name for d in rollback]
    return out


def _plans(p: Params) -> dict[str, dict[str, Any]]:
    """Each job's next steps, from its own preview (jobs reached through the group: commands
    never import one another)."""
    ctx = click.get_current_context()
    group = ctx.parent.command if ctx.parent else None
    if not isinstance(group, click.Group) or ctx.parent is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name in group.list_commands(ctx.parent):
        if name == NAME:
            continue
        command = group.get_command(ctx.parent, name)
        # A job's command (params.JobCommand) or a group that plans as one (upgrade).
        if command is not None and hasattr(command, "preview") and hasattr(command, "params_cls"):
            out[name] = _plan_of(name, command, p, ctx.parent)
    return out


def _plan_of(name: str, command: Any, p: Params, parent: click.Context) -> dict[str, Any]:
    mine = {n: getattr(p, n) for n in SHARED if getattr(p, n) is not None}
    theirs = {n: opt for n, opt in params.options(command.params_cls)}
    args: list[str] = []
    for n, value in mine.items():
        if n in theirs:
            args += [theirs[n].flag, str(value)]
    args.append("--dry-run")  # what inspect runs of each job: its dry run
    needs = [
        opt.label
        for n, opt in theirs.items()
        if opt.required and n not in mine and not os.environ.get(opt.env)
    ]
    if needs:  # all of them at once, not only the first click would stop at
        return {"needs": ", ".join(needs)}
    try:
        sub = command.make_context(name, args, parent=parent, resilient_parsing=False)
        job_params = params.build(command.params_cls, dict(sub.params))
    except click.MissingParameter as exc:
        return {"needs": _needs(exc)}
    except click.ClickException as exc:
        return {"error": exc.format_message(), "exit_code": int(ExitCode.USAGE)}
    except UsageError as exc:  # a check across options: what the job needs given together
        return {"needs": exc.message}
    except JobError as exc:
        return {"error": exc.message, "exit_code": int(exc.code)}
    job = runner.Job(name, p.timeout, dry_run=True)
    try:
        planned = command.preview(job, job_params)
    except ConflictError as exc:
        return {"blocked": exc.message}
    except JobError as exc:
        return {"error": exc.message, "exit_code": int(exc.code)}
    except Exception as exc:
        known = runner.classify(exc)
        if known is None:
            return {"error": f"{type(exc).__name__}: {exc}", "exit_code": int(ExitCode.SOFTWARE)}
        return {"error": known.message, "exit_code": int(known.code)}
    if not isinstance(planned, plan.Plan):
        return {"error": "no plan", "exit_code": int(ExitCode.SOFTWARE)}
    return planned.as_dict()


def _needs(exc: click.MissingParameter) -> str:
    param = exc.param
    if isinstance(param, click.Option) and param.opts:
        env = f" / {param.envvar}" if isinstance(param.envvar, str) else ""
        return f"{param.opts[0]}{env}"
    return exc.format_message()


def _show(p: Params, report: dict[str, Any]) -> None:
    fmt = p.format or ("table" if sys.stdout.isatty() else "json")
    if fmt == "table":
        click.echo(render.table(report))


inspect = params.command(
    NAME,
    Params,
    run,
    preview,
    "Show one tenant's databases, filestores, backups, upgrade, events and each job's next "
    "step. Read only.",
)
