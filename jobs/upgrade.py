"""`plana-job upgrade` (TenantUpgrade): same-major updates and OpenUpgrade major upgrades.

- `upgrade --strategy same-major` (or `upgrade same-major`): one `odoo -d {db} -u all` under the
  tenant's lock, module states verified afterwards; the marker records the version and addons
  revision it last updated to, so the same again is `unchanged`.
- `upgrade snapshot|source-pass|prefix|target-pass|cutover|rollback|status`: the phases of the
  snapshot-then-upgrade strategy (`jobs.upgrade_phases`), one per init container, since they run
  in different images; `upgrade run` (or `--strategy snapshot-then-upgrade` without a phase)
  runs every phase in one process when both binaries are at hand.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from jobs import locks, marker, odoo, options, pg, restore, runner
from jobs import upgrade_phases as ph
from jobs.errors import ConflictError, TransientError, UsageError
from jobs.result import Done

STRATEGIES = ("same-major", "snapshot-then-upgrade")

hop = options.stack(
    options.subdomain,
    options.option(
        "--from-version",
        env="PLANA_FROM_VERSION",
        default=None,
        help="TenantUpgrade fromVersion (17, 18).",
    ),
    options.option(
        "--to-version",
        env="PLANA_TO_VERSION",
        default=None,
        help="TenantUpgrade toVersion (fromVersion + 1; same-major: the version).",
    ),
    options.data_dir,
    options.pg_dsn,
    options.common,
)
upgrade_path = options.option(
    "--upgrade-path",
    env="PLANA_UPGRADE_PATH",
    default=None,
    help="OpenUpgrade's openupgrade_scripts/scripts directory (target pass).",
)
addons_revision = options.option(
    "--addons-revision",
    env="PLANA_ADDONS_REVISION",
    default=None,
    help="Revision of the image's addons (e.g. its digest); default: `odoo --version`.",
)


@contextmanager
def _tenant(job: runner.Job, spec: ph.Spec) -> Iterator[ph.Ctx]:
    job.bind(tenant=spec.tenant.subdomain, database=spec.db)
    with pg.connection(dsn=spec.dsn, deadline=job.deadline) as conn:
        yield ph.Ctx(job, conn, spec)


def _locked(ctx: ph.Ctx, phase: str, fn: Callable[[ph.Ctx], Done]) -> Done:
    """One phase under the tenant's exclusive lock (the name tenant-db uses)."""
    ctx.job.step(phase)
    with locks.advisory(f"tenant:{ctx.spec.db}", deadline=ctx.job.deadline, dsn=ctx.spec.dsn):
        # A killed run's clone of the work copy may still run on the server (a backend reads
        # its socket only between statements): end it, or ours fails on the same name.
        restore.end_orphans(
            ctx.conn, restore.session_name("upgrade", ctx.spec.db), ctx.job.deadline
        )
        return fn(ctx)


def _upgrade_path(value: str | None) -> str:
    if not value:
        raise UsageError("upgrade-path", "is required for the target pass")
    if not Path(value).is_dir():
        raise UsageError("upgrade-path", f"{value} is not a directory")
    return value


def _phase(
    name: str,
    kw: dict[str, Any],
    fn: Callable[[ph.Ctx], Done],
    check: Callable[[], object] | None = None,
) -> None:
    def body(job: runner.Job) -> Done:
        spec = ph.spec(kw)
        if check is not None:
            check()  # more input to refuse (64) before anything is touched
        with _tenant(job, spec) as ctx:
            done = _locked(ctx, name, fn)
        return done

    runner.run("upgrade", body, timeout=kw["timeout"])


# --------------------------------------------------------------------------- same-major


def same_major(ctx: ph.Ctx, odoo_bin: str, revision: str | None) -> Done:
    s, conn = ctx.spec, ctx.conn
    version = s.to_version
    live = ph.live_marker(ctx)
    if "upgrading" in live.data:
        raise ConflictError(f"a major upgrade of {s.db} is under way: finish or roll it back")
    text = ph.check_binary(odoo_bin, version, ctx.job.deadline)
    rev = revision or text
    base = ph.base_version(ctx, s.db)
    if ph.major_of(base) != version:
        raise ConflictError(f"{s.db}: base is at {base or 'nothing'}, not {version}.0", base=base)
    details: dict[str, Any] = {"strategy": "same-major", "odoo_version": version, "revision": rev}
    same = live.data.get("odoo_version") == version and live.data.get("addons_revision") == rev
    if same and not ph.verify(ctx, s.db, version):
        return Done("unchanged", {**details, "updated_at": live.data.get("updated_at")})
    inv = odoo.Invocation(db=s.db, update=["all"], data_dir=s.data_dir)
    done = odoo.run(odoo_bin, version, inv, dsn=s.dsn, deadline=ctx.job.deadline)
    problems = [] if done.returncode == 0 or done.stopped else [done.failure()]
    problems += ph.verify(ctx, s.db, version)
    if problems and done.stopped is not None:  # stopped before it finished: retry
        raise TransientError(f"-u all on {s.db}: {done.failure()}: {'; '.join(problems[:5])}")
    if problems:
        raise ConflictError(f"-u all on {s.db} failed: {'; '.join(problems[:5])}")
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    live.data.update(odoo_version=version, addons_revision=rev, updated_at=now)
    marker.write(conn, s.db, live)
    return Done("updated", {**details, "updated_at": now, "duration_s_odoo": done.duration_s})


def _same_major(kw: dict[str, Any]) -> None:
    def body(job: runner.Job) -> Done:
        spec = ph.spec(kw, same_major=True)
        with _tenant(job, spec) as ctx:
            return _locked(
                ctx, "same-major", lambda c: same_major(c, kw["odoo_bin"], kw["addons_revision"])
            )

    runner.run("upgrade", body, timeout=kw["timeout"])


# --------------------------------------------------------------------------- run: all phases


def run_all(ctx: ph.Ctx, source_bin: str, target_bin: str, path: str) -> Done:
    s = ctx.spec
    steps: list[tuple[str, Callable[[ph.Ctx], Done]]] = [
        ("snapshot", ph.snapshot),
        (
            "source-pass",
            lambda c: ph.run_pass(c, "source-pass", "snapshot", source_bin, s.from_version),
        ),
        ("prefix", ph.prefix),
        (
            "target-pass",
            lambda c: ph.run_pass(c, "target-pass", "prefix", target_bin, s.to_version, path),
        ),
        ("cutover", ph.cutover),
    ]
    outcomes: dict[str, str] = {}
    last = Done("unchanged")
    for name, fn in steps:
        last = _locked(ctx, name, fn)
        outcomes[name] = last.outcome
    changed = any(o != "unchanged" for o in outcomes.values())
    details = {**last.details, "phase": "run", "phases": outcomes}
    return Done("updated" if changed else "unchanged", details)


def _run_all(kw: dict[str, Any]) -> None:
    def body(job: runner.Job) -> Done:
        spec = ph.spec(kw)
        path = _upgrade_path(kw["upgrade_path"])
        source_bin = kw["source_odoo_bin"] or kw["odoo_bin"]
        target_bin = kw["target_odoo_bin"] or kw["odoo_bin"]
        with _tenant(job, spec) as ctx:
            return run_all(ctx, source_bin, target_bin, path)

    runner.run("upgrade", body, timeout=kw["timeout"])


# --------------------------------------------------------------------------- click


def _strategy(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    if value not in STRATEGIES:
        raise UsageError("strategy", f"must be one of {', '.join(STRATEGIES)}, got {value!r}")
    return value


run_options = options.stack(
    options.odoo_bin,
    options.option(
        "--source-odoo-bin",
        env="PLANA_SOURCE_ODOO_BIN",
        default=None,
        help="run: the fromVersion Odoo executable [default: --odoo-bin].",
    ),
    options.option(
        "--target-odoo-bin",
        env="PLANA_TARGET_ODOO_BIN",
        default=None,
        help="run: the toVersion Odoo executable [default: --odoo-bin].",
    ),
    upgrade_path,
    addons_revision,
)


def _given(ctx: click.Context) -> dict[str, Any]:
    """The options this context's command line gave explicitly (not from env or defaults)."""
    source = click.core.ParameterSource.COMMANDLINE
    return {n: v for n, v in ctx.params.items() if ctx.get_parameter_source(n) is source}


def _flag(command: click.Command, name: str) -> str:
    param = next(p for p in command.params if p.name == name)
    env = f" ({param.envvar})" if isinstance(param.envvar, str) else ""
    return f"{param.opts[0]}{env}"


class _Phase(click.Command):
    """A phase that also takes the options given before its name (`upgrade --subdomain x
    status`): they would otherwise be parsed by the group and silently dropped."""

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is not None:
            mine = _given(ctx)
            for name, value in _given(ctx.parent).items():
                if name in mine and mine[name] != value:
                    flag = _flag(self, name)
                    raise UsageError(flag, "given before and after the phase with different values")
                ctx.params[name] = value
        return super().invoke(ctx)


class _UpgradeGroup(click.Group):
    command_class = _Phase


@click.group("upgrade", cls=_UpgradeGroup, invoke_without_command=True)
@options.option(
    "--strategy",
    env="PLANA_STRATEGY",
    default=None,
    help="same-major | snapshot-then-upgrade (used when no phase is named).",
)
@hop
@run_options
@click.pass_context
def upgrade(ctx: click.Context, /, **kw: Any) -> None:
    """Upgrade a tenant: same-major `-u all`, or OpenUpgrade phase by phase.

    Without a phase, --strategy chooses: same-major runs `-u all`; snapshot-then-upgrade runs
    every phase (like `upgrade run`). A phase takes its options before or after its name;
    one it does not take is refused.
    """
    if ctx.invoked_subcommand is not None:
        # The phase reads its own options (and the same PLANA_* variables); those given before
        # its name reach it through _Phase, and one it does not take is refused, not dropped.
        phase = upgrade.get_command(ctx, ctx.invoked_subcommand)
        assert phase is not None
        takes = {p.name for p in phase.params}
        for name in sorted(set(_given(ctx)) - takes):
            raise UsageError(_flag(upgrade, name), f"not an option of `upgrade {phase.name}`")
        return
    strategy = _strategy(kw.pop("strategy"))
    if strategy is None:
        raise click.UsageError("--strategy (PLANA_STRATEGY) or a phase is required")
    if strategy == "same-major":
        _same_major(kw)
    _run_all(kw)


@upgrade.command("same-major")
@hop
@options.odoo_bin
@addons_revision
def same_major_command(**kw: Any) -> None:
    """`odoo -d {db} -u all` at the tenant's version; unchanged when already done."""
    _same_major(kw)


@upgrade.command("snapshot")
@hop
def snapshot_command(**kw: Any) -> None:
    """Freeze the tenant (base checked at fromVersion) and clone it to a fresh work copy."""
    _phase("snapshot", kw, ph.snapshot)


@upgrade.command("source-pass")
@hop
@options.odoo_bin
def source_pass_command(**kw: Any) -> None:
    """fromVersion binary, --load=base,web,openupgrade_framework -u all, on the work copy."""
    _phase(
        "source-pass",
        kw,
        lambda c: ph.run_pass(c, "source-pass", "snapshot", kw["odoo_bin"], c.spec.from_version),
    )


@upgrade.command("prefix")
@hop
def prefix_command(**kw: Any) -> None:
    """This hop's SQL pre-fixes (sql/upgrade/{from}-{to}/), each applied once and recorded."""
    _phase("prefix", kw, ph.prefix)


@upgrade.command("target-pass")
@hop
@options.odoo_bin
@upgrade_path
def target_pass_command(**kw: Any) -> None:
    """toVersion binary with OpenUpgrade (--upgrade-path) -u all; base must reach toVersion."""
    _phase(
        "target-pass",
        kw,
        lambda c: ph.run_pass(
            c, "target-pass", "prefix", kw["odoo_bin"], c.spec.to_version, kw["upgrade_path"]
        ),
        check=lambda: _upgrade_path(kw["upgrade_path"]),
    )


@upgrade.command("cutover")
@hop
def cutover_command(**kw: Any) -> None:
    """Live → rollback name, work copy → live name, connections allowed, marker updated."""
    _phase("cutover", kw, ph.cutover)


@upgrade.command("rollback")
@hop
def rollback_command(**kw: Any) -> None:
    """Back to the fromVersion database while the rollback copy exists (or just unfreeze)."""
    _phase("rollback", kw, ph.rollback)


@upgrade.command("status")
@hop
def status_command(**kw: Any) -> None:
    """Print where the tenant stands (read-only)."""

    def body(job: runner.Job) -> Done:
        spec = ph.spec(kw)
        with _tenant(job, spec) as ctx:
            job.step("status")
            return ph.status(ctx)

    runner.run("upgrade", body, timeout=kw["timeout"])


@upgrade.command("run")
@hop
@run_options
def run_command(**kw: Any) -> None:
    """Every phase in one process (local and compose runs: both binaries at hand)."""
    _run_all(kw)
