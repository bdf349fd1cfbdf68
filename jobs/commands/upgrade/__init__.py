"""`plana-job upgrade` (TenantUpgrade): same-major updates and OpenUpgrade major upgrades.

- `upgrade --strategy same-major` (or `upgrade same-major`): `odoo -u all` on a work copy of the
  frozen tenant, verified, swapped in with the old database kept as the rollback copy
  (`jobs.commands.upgrade.same_major`); the marker records the version and addons revision it last
  updated to, so the same again is `unchanged`.
- `upgrade snapshot|source-pass|prefix|target-pass|cutover|rollback|status`: the phases of the
  snapshot-then-upgrade strategy (`jobs.commands.upgrade.phases`), one per init container, since
  they run in different images; `upgrade run` (or `--strategy snapshot-then-upgrade` without a
  phase) runs every phase in one process when both binaries are at hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from jobs.adapters import pg
from jobs.adapters.pg import locks
from jobs.commands.upgrade import phases as ph

# As a module: a `same_major` function bound here would hide the submodule of that name.
from jobs.commands.upgrade import same_major as same
from jobs.core import options as params
from jobs.core import runner
from jobs.core.errors import UsageError
from jobs.core.result import Done
from jobs.ops import clone

STRATEGIES = ("same-major", "snapshot-then-upgrade")

hop = params.stack(
    params.subdomain,
    params.option(
        "--from-version",
        env="PLANA_FROM_VERSION",
        default=None,
        help="TenantUpgrade fromVersion (17, 18).",
    ),
    params.option(
        "--to-version",
        env="PLANA_TO_VERSION",
        default=None,
        help="TenantUpgrade toVersion (fromVersion + 1; same-major: the version).",
    ),
    params.data_dir,
    params.pg_dsn,
    params.common,
)
upgrade_path = params.option(
    "--upgrade-path",
    env="PLANA_UPGRADE_PATH",
    default=None,
    help="OpenUpgrade's openupgrade_scripts/scripts directory (target pass).",
)
odoo_config = params.option(
    "--odoo-config",
    env="PLANA_ODOO_CONFIG",
    default=None,
    help="Odoo config file the passes start from [default: $ODOO_RC].",
)
addons_revision = params.option(
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
    with locks.advisory(locks.tenant(ctx.spec.db), deadline=ctx.job.deadline, dsn=ctx.spec.dsn):
        # A killed run's clone of the work copy may still run on the server (a backend reads
        # its socket only between statements): end it, or ours fails on the same name.
        clone.claim_session(ctx.conn, clone.session_name("upgrade", ctx.spec.db), ctx.job.deadline)
        return fn(ctx)


def _upgrade_path(value: str | None) -> str:
    if not value:
        raise UsageError("upgrade-path", "is required for the target pass")
    if not Path(value).is_dir():
        raise UsageError("upgrade-path", f"{value} is not a directory")
    # Its scripts import odoo.addons.openupgrade_scripts: the pass puts the addon's directory
    # on the addons path, so it must be the addon's own `scripts` (symlinks resolved).
    if Path(value).resolve().parent.name != ph.SCRIPTS_ADDON:
        raise UsageError(
            "upgrade-path", f"{value} is not the scripts directory of an {ph.SCRIPTS_ADDON} addon"
        )
    return value


def _phase(
    name: str,
    kw: dict[str, Any],
    fn: Callable[[ph.Ctx], Done],
    check: Callable[[], object] | None = None,
    same_major: bool | None = False,
) -> None:
    """`same_major` None: the phase also serves same-major (fromVersion = toVersion)."""

    def body(job: runner.Job) -> Done:
        spec = ph.spec(kw, same_major=same_major)
        if check is not None:
            check()  # more input to refuse (64) before anything is touched
        with _tenant(job, spec) as ctx:
            done = _locked(ctx, name, fn)
        return done

    runner.run("upgrade", body, timeout=kw["timeout"])


# --------------------------------------------------------------------------- same-major


def _same_major(kw: dict[str, Any]) -> None:
    def body(job: runner.Job) -> Done:
        spec = ph.spec(kw, same_major=True)
        with _tenant(job, spec) as ctx:
            return _locked(
                ctx,
                "same-major",
                lambda c: same.same_major(
                    c, kw["odoo_bin"], kw["addons_revision"], kw.get("odoo_config")
                ),
            )

    runner.run("upgrade", body, timeout=kw["timeout"])


# --------------------------------------------------------------------------- run: all phases


def _side(kw: dict[str, Any], which: str = "") -> ph.Side:
    """A pass's Odoo: `--{which}-odoo-bin`/`-config` (run), else `--odoo-bin`/`--odoo-config`;
    the config is read now, so an unreadable one is refused (78) before anything is touched."""
    prefix = f"{which}_" if which else ""
    side = ph.Side(
        kw.get(f"{prefix}odoo_bin") or kw["odoo_bin"],
        kw.get(f"{prefix}odoo_config") or kw["odoo_config"],
    )
    ph.addons_path_of(side)
    return side


def run_all(ctx: ph.Ctx, source: ph.Side, target: ph.Side, path: str) -> Done:
    s = ctx.spec
    steps: list[tuple[str, Callable[[ph.Ctx], Done]]] = [
        ("snapshot", ph.snapshot),
        (
            "source-pass",
            lambda c: ph.run_pass(c, "source-pass", "snapshot", source, s.from_version),
        ),
        ("prefix", ph.prefix),
        (
            "target-pass",
            lambda c: ph.run_pass(c, "target-pass", "prefix", target, s.to_version, path),
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
        # Each side its own binary and config: one addons path for both would give the
        # fromVersion binary the toVersion addons (and `web` fails to import).
        source = _side(kw, "source")
        target = _side(kw, "target")
        with _tenant(job, spec) as ctx:
            return run_all(ctx, source, target, path)

    runner.run("upgrade", body, timeout=kw["timeout"])


# --------------------------------------------------------------------------- click


def _strategy(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    if value not in STRATEGIES:
        raise UsageError("strategy", f"must be one of {', '.join(STRATEGIES)}, got {value!r}")
    return value


run_options = params.stack(
    params.odoo_bin,
    params.option(
        "--source-odoo-bin",
        env="PLANA_SOURCE_ODOO_BIN",
        default=None,
        help="run: the fromVersion Odoo executable [default: --odoo-bin].",
    ),
    params.option(
        "--target-odoo-bin",
        env="PLANA_TARGET_ODOO_BIN",
        default=None,
        help="run: the toVersion Odoo executable [default: --odoo-bin].",
    ),
    odoo_config,
    params.option(
        "--source-odoo-config",
        env="PLANA_SOURCE_ODOO_CONFIG",
        default=None,
        help="run: the fromVersion Odoo's config file [default: --odoo-config].",
    ),
    params.option(
        "--target-odoo-config",
        env="PLANA_TARGET_ODOO_CONFIG",
        default=None,
        help="run: the toVersion Odoo's config file [default: --odoo-config].",
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
@params.option(
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
@params.odoo_bin
@odoo_config
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
@params.odoo_bin
@odoo_config
def source_pass_command(**kw: Any) -> None:
    """fromVersion binary, --load=base,web,openupgrade_framework -u all, on the work copy."""
    _phase(
        "source-pass",
        kw,
        lambda c: ph.run_pass(c, "source-pass", "snapshot", _side(kw), c.spec.from_version),
        check=lambda: _side(kw),
    )


@upgrade.command("prefix")
@hop
def prefix_command(**kw: Any) -> None:
    """This hop's SQL pre-fixes (sql/upgrade/{from}-{to}/), each applied once and recorded."""
    _phase("prefix", kw, ph.prefix)


@upgrade.command("target-pass")
@hop
@params.odoo_bin
@odoo_config
@upgrade_path
def target_pass_command(**kw: Any) -> None:
    """toVersion binary with OpenUpgrade (--upgrade-path) -u all; base must reach toVersion."""
    _phase(
        "target-pass",
        kw,
        lambda c: ph.run_pass(
            c, "target-pass", "prefix", _side(kw), c.spec.to_version, kw["upgrade_path"]
        ),
        check=lambda: (_upgrade_path(kw["upgrade_path"]), _side(kw)),
    )


@upgrade.command("cutover")
@hop
def cutover_command(**kw: Any) -> None:
    """Live → rollback name, work copy → live name, connections allowed, marker updated."""
    _phase("cutover", kw, ph.cutover)


@upgrade.command("rollback")
@hop
def rollback_command(**kw: Any) -> None:
    """Back to the fromVersion database while the rollback copy exists (or just unfreeze).

    With fromVersion = toVersion: back to the database before the last same-major update.
    """
    _phase("rollback", kw, ph.rollback, same_major=None)


@upgrade.command("status")
@hop
def status_command(**kw: Any) -> None:
    """Print where the tenant stands (read-only)."""

    def body(job: runner.Job) -> Done:
        spec = ph.spec(kw, same_major=None)
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
