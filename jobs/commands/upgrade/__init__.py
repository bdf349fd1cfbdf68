"""`plana-job upgrade` (TenantUpgrade): same-major updates and OpenUpgrade major upgrades.

- `upgrade --strategy same-major` (or `upgrade same-major`): `odoo -u all` on a work copy of the
  frozen tenant, verified, swapped in with the old database kept as the rollback copy
  (`jobs.commands.upgrade.same_major`); the marker records the version and addons revision it last
  updated to, so the same again is `unchanged`.
- `upgrade snapshot|source-pass|prefix|target-pass|cutover|rollback|status`: the phases of the
  snapshot-then-upgrade strategy (`jobs.commands.upgrade.phases`), one per init container, since
  they run in different images; `upgrade run` (or `--strategy snapshot-then-upgrade` without a
  phase) runs every phase in one process when both binaries are at hand.

Every run observes the tenant's three databases under its lock and plans the phases that remain
(`jobs.commands.upgrade.plans`, pure); a phase runs only when the plan has it first, and
`--dry-run` prints the plan without taking the lock or starting Odoo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from jobs.adapters import pg
from jobs.adapters.pg import locks
from jobs.commands.upgrade import phases as ph
from jobs.commands.upgrade import plans

# As a module: a `same_major` function bound here would hide the submodule of that name.
from jobs.commands.upgrade import same_major as same
from jobs.core import naming, params, plan, runner
from jobs.core.errors import ConfigError, ConflictError, UsageError
from jobs.core.result import Done
from jobs.ops import clone, marker

STRATEGIES = ("same-major", "snapshot-then-upgrade")
JOB = "upgrade"


def _upgrade_path(value: str) -> str:
    """Checked when the job runs, not when the option is parsed: it names a directory of the
    image, which the phases that do not use it never look at.

    Missing (not a directory): configuration, 78. Not an `openupgrade_scripts/scripts`: bad
    input, 64 (its scripts import odoo.addons.openupgrade_scripts, so the pass puts the addon's
    directory on the addons path: it must be the addon's own `scripts`, symlinks resolved).
    """
    if not Path(value).is_dir():
        raise ConfigError(f"--upgrade-path {value} is not a directory", upgrade_path=value)
    if Path(value).resolve().parent.name != ph.SCRIPTS_ADDON:
        raise UsageError(
            UPGRADE_PATH_LABEL,
            f"{value} is not the scripts directory of an {ph.SCRIPTS_ADDON} addon",
        )
    return value


UPGRADE_PATH_LABEL = "--upgrade-path / PLANA_UPGRADE_PATH"


def _version(flag: str, env: str, help: str) -> Any:
    return params.option(flag, env, help, type=params.ODOO_VERSION)


def _upgrade_path_option(*, required: bool) -> Any:
    return params.option(
        "--upgrade-path",
        "PLANA_UPGRADE_PATH",
        "OpenUpgrade's openupgrade_scripts/scripts directory (target pass).",
        required=required,
    )


def _odoo_config() -> Any:
    return params.option(
        "--odoo-config",
        "PLANA_ODOO_CONFIG",
        "Odoo config file the passes start from [default: $ODOO_RC].",
    )


def _addons_revision() -> Any:
    return params.option(
        "--addons-revision",
        "PLANA_ADDONS_REVISION",
        "Revision of the image's addons (e.g. its digest); default: `odoo --version`.",
    )


@params.spec
class Hop(params.TenantOptions):
    """The TenantUpgrade: tenant, fromVersion → toVersion, where this phase's files live."""

    from_version: int | None = _version(
        "--from-version", "PLANA_FROM_VERSION", "TenantUpgrade fromVersion (17, 18)."
    )
    to_version: int | None = _version(
        "--to-version",
        "PLANA_TO_VERSION",
        "TenantUpgrade toVersion (fromVersion + 1; same-major: the version).",
    )
    data_dir: str = params.data_dir()
    pg_dsn: str | None = params.pg_dsn()

    def versions_needed(self) -> int:
        """2: both versions (the phases, rollback, status); 1: either (same-major)."""
        return 2

    def __post_init__(self) -> None:
        needed = self.versions_needed()
        if needed and self.to_version is None and not (needed == 1 and self.from_version):
            raise UsageError("to_version", "is required")
        if needed == 2 and self.from_version is None:
            raise UsageError("from_version", "is required")
        version = self.to_version or self.from_version
        longest = f"{naming.Tenant(self.subdomain, self.base_domain).db_name}__up{version}"
        if len(longest.encode()) > ph.MAX_DB_NAME:
            raise UsageError("subdomain", f"work database name {longest!r} exceeds 63 bytes")

    @property
    def spec(self) -> ph.Spec:
        to_v = self.to_version or self.from_version
        from_v = self.from_version or self.to_version
        assert to_v is not None and from_v is not None  # __post_init__ required them
        tenant = naming.Tenant(self.subdomain, self.base_domain)
        return ph.Spec(tenant, from_v, to_v, Path(self.data_dir), self.pg_dsn)


@params.spec
class SameMajorParams(Hop):
    odoo_bin: str = params.odoo_bin()
    odoo_config: str | None = _odoo_config()
    addons_revision: str | None = _addons_revision()

    def versions_needed(self) -> int:
        return 1


@params.spec
class SourcePassParams(Hop):
    odoo_bin: str = params.odoo_bin()
    odoo_config: str | None = _odoo_config()


@params.spec
class TargetPassParams(SourcePassParams):
    upgrade_path: str = _upgrade_path_option(required=True)


@params.spec
class RunParams(Hop):
    odoo_bin: str = params.odoo_bin()
    source_odoo_bin: str | None = params.option(
        "--source-odoo-bin",
        "PLANA_SOURCE_ODOO_BIN",
        "run: the fromVersion Odoo executable [default: --odoo-bin].",
    )
    target_odoo_bin: str | None = params.option(
        "--target-odoo-bin",
        "PLANA_TARGET_ODOO_BIN",
        "run: the toVersion Odoo executable [default: --odoo-bin].",
    )
    odoo_config: str | None = _odoo_config()
    source_odoo_config: str | None = params.option(
        "--source-odoo-config",
        "PLANA_SOURCE_ODOO_CONFIG",
        "run: the fromVersion Odoo's config file [default: --odoo-config].",
    )
    target_odoo_config: str | None = params.option(
        "--target-odoo-config",
        "PLANA_TARGET_ODOO_CONFIG",
        "run: the toVersion Odoo's config file [default: --odoo-config].",
    )
    upgrade_path: str | None = _upgrade_path_option(required=True)
    addons_revision: str | None = _addons_revision()

    @property
    def source(self) -> ph.Side:
        return ph.Side(self.source_odoo_bin or self.odoo_bin, self.source_odoo_config
                       or self.odoo_config)  # fmt: skip

    @property
    def target(self) -> ph.Side:
        return ph.Side(self.target_odoo_bin or self.odoo_bin, self.target_odoo_config
                       or self.odoo_config)  # fmt: skip


@params.spec
class UpgradeParams(RunParams):
    """`upgrade` without a phase: --strategy chooses (and, for `inspect`, nothing is needed)."""

    strategy: str | None = params.option(
        "--strategy",
        "PLANA_STRATEGY",
        "same-major | snapshot-then-upgrade (used when no phase is named).",
        type=click.Choice(STRATEGIES),
    )
    upgrade_path: str | None = _upgrade_path_option(required=False)

    def versions_needed(self) -> int:
        if self.strategy is None:
            return 0  # a preview finds the hop under way in the live marker
        return 1 if self.strategy == "same-major" else 2

    def __post_init__(self) -> None:
        if self.strategy is None and not self.dry_run:
            raise UsageError("strategy", "is required when no phase is named")
        super().__post_init__()
        if self.strategy == "snapshot-then-upgrade" and not self.upgrade_path:
            raise UsageError("upgrade_path", "is required for the target pass")

    @property
    def same_major(self) -> bool:
        if self.strategy is not None:
            return self.strategy == "same-major"
        return self.from_version is None or self.from_version == self.to_version


# --------------------------------------------------------------------------- the tenant


@contextmanager
def _tenant(job: runner.Job, spec: ph.Spec) -> Iterator[ph.Ctx]:
    job.bind(tenant=spec.tenant.subdomain, database=spec.db)
    with pg.connection(dsn=spec.dsn, deadline=job.deadline) as conn:
        yield ph.Ctx(job, conn, spec)


@contextmanager
def _locked(ctx: ph.Ctx) -> Iterator[None]:
    """The tenant's exclusive lock (the name tenant-db uses), for a whole run."""
    with locks.advisory(locks.tenant(ctx.spec.db), deadline=ctx.job.deadline, dsn=ctx.spec.dsn):
        # A killed run's clone of the work copy may still run on the server (a backend reads
        # its socket only between statements): end it, or ours fails on the same name.
        clone.claim_session(ctx.conn, clone.session_name("upgrade", ctx.spec.db), ctx.job.deadline)
        yield


def _side(side: ph.Side) -> ph.Side:
    """The config is read now, so an unreadable one is refused (78) before anything."""
    ph.addons_path_of(side)
    return side


def _warn_stale(job: runner.Job, steps: plan.Plan) -> None:
    stale = (steps.details or {}).get("stale_filestore")
    if stale:
        # Both renames of the swap were done: this work filestore came later (a re-run
        # filestore-copy, say); publishing it would put the pre-upgrade files in place.
        job.log.warning("stale work filestore left alone", filestore=stale)


# --------------------------------------------------------------------------- the chain

Action = Callable[[plan.Step], Done]


def _chain_actions(
    ctx: ph.Ctx,
    source: ph.Side | None = None,
    target: ph.Side | None = None,
    upgrade_path: str | None = None,
) -> dict[str, Action]:
    s = ctx.spec

    def source_pass(_step: plan.Step) -> Done:
        assert source is not None
        return ph.run_pass(ctx, "source-pass", "snapshot", source, s.from_version)

    def target_pass(_step: plan.Step) -> Done:
        assert target is not None and upgrade_path is not None
        return ph.run_pass(ctx, "target-pass", "prefix", target, s.to_version, upgrade_path)

    def cutover(step: plan.Step) -> Done:
        return ph.finish_cutover(ctx) if step.target == plans.RENAMES else ph.cutover(ctx)

    return {
        "snapshot": lambda step: ph.snapshot(ctx, fresh=step.target == plans.FRESH),
        "source-pass": source_pass,
        "prefix": lambda _step: ph.prefix(ctx),
        "target-pass": target_pass,
        "cutover": cutover,
    }


def _chain_plan(ctx: ph.Ctx) -> plan.Plan:
    return plans.decide(plans.observe(ctx), ctx.spec)


def chain_preview(job: runner.Job, p: Hop) -> plan.Plan:
    """The phases left, read only: no lock, no Odoo."""
    with _tenant(job, p.spec) as ctx:
        return _chain_plan(ctx)


def _out_of_order(s: ph.Spec, phase: str, first: str) -> ConflictError:
    after = ph.PHASES[ph.PHASES.index(phase) - 1]
    fresh = " (a fresh copy)" if first == "snapshot" else ""
    return ConflictError(
        f"work copy {s.work} is missing, spoilt or not past {after}: run `upgrade {first}`"
        f"{fresh} and the phases after it",
        database=s.work,
    )


def _one_phase(
    job: runner.Job, p: Hop, phase: str, actions: Callable[[ph.Ctx], dict[str, Action]]
) -> Done:
    """One phase, when the plan has it first; `unchanged` when it has it no more."""
    with _tenant(job, p.spec) as ctx, _locked(ctx):
        steps = _chain_plan(ctx)  # again, under the lock
        steps.require_unblocked()
        _warn_stale(job, steps)
        facts = steps.details or {}
        if phase not in steps:
            return Done("unchanged", {"phase": phase, "state": facts.get("state"),
                                      "phases": facts.get("work_phases", [])})  # fmt: skip
        first = steps.steps[0]
        if first.name != phase:
            raise _out_of_order(ctx.spec, phase, first.name)
        job.step(phase)
        return actions(ctx)[phase](first)


def run_snapshot(job: runner.Job, p: Hop) -> Done:
    return _one_phase(job, p, "snapshot", _chain_actions)


def run_source_pass(job: runner.Job, p: SourcePassParams) -> Done:
    side = _side(ph.Side(p.odoo_bin, p.odoo_config))
    return _one_phase(job, p, "source-pass", lambda ctx: _chain_actions(ctx, source=side))


def run_prefix(job: runner.Job, p: Hop) -> Done:
    return _one_phase(job, p, "prefix", _chain_actions)


def run_target_pass(job: runner.Job, p: TargetPassParams) -> Done:
    path = _upgrade_path(p.upgrade_path)
    side = _side(ph.Side(p.odoo_bin, p.odoo_config))
    return _one_phase(job, p, "target-pass", lambda ctx: _chain_actions(
        ctx, target=side, upgrade_path=path))  # fmt: skip


def run_cutover(job: runner.Job, p: Hop) -> Done:
    return _one_phase(job, p, "cutover", _chain_actions)


def _run_all(job: runner.Job, spec: ph.Spec, source: ph.Side, target: ph.Side, path: str) -> Done:
    """Every phase left, in order, under one lock; `phases`: each one's outcome."""
    with _tenant(job, spec) as ctx, _locked(ctx):
        steps = _chain_plan(ctx)
        steps.require_unblocked()
        _warn_stale(job, steps)
        actions = _chain_actions(ctx, source, target, path)
        outcomes = dict.fromkeys(ph.PHASES, "unchanged")
        last: dict[str, Any] = {"state": (steps.details or {}).get("state")}
        for step in steps.steps:
            job.step(step.name)
            done = actions[step.name](step)
            outcomes[step.name], last = done.outcome, dict(done.details)
    changed = any(o != "unchanged" for o in outcomes.values())
    return Done("updated" if changed else "unchanged", {**last, "phase": "run", "phases": outcomes})


def run_run(job: runner.Job, p: RunParams) -> Done:
    # Each side its own binary and config: one addons path for both would give the
    # fromVersion binary the toVersion addons (and `web` fails to import).
    assert p.upgrade_path is not None  # a required option
    path = _upgrade_path(p.upgrade_path)
    source, target = _side(p.source), _side(p.target)
    return _run_all(job, p.spec, source, target, path)


# --------------------------------------------------------------------------- rollback, status


def rollback_preview(job: runner.Job, p: Hop) -> plan.Plan:
    with _tenant(job, p.spec) as ctx:
        return plans.decide_rollback(plans.observe(ctx, base=False), ctx.spec)


def run_rollback(job: runner.Job, p: Hop) -> Done:
    with _tenant(job, p.spec) as ctx, _locked(ctx):
        steps = plans.decide_rollback(plans.observe(ctx, base=False), ctx.spec)
        steps.require_unblocked()
        if not steps.steps:
            return Done("unchanged", {"phase": "rollback"})
        job.step("rollback")
        return ph.rollback(ctx)


def status_preview(job: runner.Job, p: Hop) -> plan.Plan:
    """status changes nothing: its plan is empty."""
    why = plans.hop_problem(p.spec, None)
    return plan.blocked(why) if why else plan.of()


def run_status(job: runner.Job, p: Hop) -> Done:
    s = p.spec
    why = plans.hop_problem(s, None)
    if why is not None:
        raise ConflictError(why)
    with _tenant(job, s) as ctx:
        job.step("status")
        if s.from_version == s.to_version:
            return ph.status(ctx, "same-major")  # one run: it resumes, or starts afresh
        steps = _chain_plan(ctx)
        return ph.status(ctx, steps.names[0] if steps.steps else None)


# --------------------------------------------------------------------------- same-major


def same_major_preview(job: runner.Job, p: SameMajorParams | UpgradeParams) -> plan.Plan:
    """The steps left, read only: the revision is --addons-revision's (Odoo is not started)."""
    with _tenant(job, p.spec) as ctx:
        state = plans.observe_same_major(ctx, p.addons_revision)
        return plans.decide_same_major(state, ctx.spec)


def _same_major(job: runner.Job, p: SameMajorParams | UpgradeParams) -> Done:
    with _tenant(job, p.spec) as ctx, _locked(ctx):
        state = plans.observe_same_major(ctx, None)
        # What blocks whatever the revision (not ours, another upgrade) before Odoo is asked.
        plans.decide_same_major(state, ctx.spec).require_unblocked()
        rev = same.revision(ctx, p.odoo_bin, p.addons_revision, p.odoo_config)
        steps = plans.decide_same_major(replace(state, revision=rev), ctx.spec)
        steps.require_unblocked()
        return same.apply(same.Run(ctx, p.odoo_bin, p.odoo_config, rev), steps)


def run_same_major(job: runner.Job, p: SameMajorParams) -> Done:
    return _same_major(job, p)


# --------------------------------------------------------------------------- upgrade itself


def run_upgrade(job: runner.Job, p: UpgradeParams) -> Done:
    if p.same_major:
        return _same_major(job, p)
    assert p.upgrade_path is not None  # __post_init__ required it
    path = _upgrade_path(p.upgrade_path)
    return _run_all(job, p.spec, _side(p.source), _side(p.target), path)


def preview_upgrade(job: runner.Job, p: UpgradeParams) -> plan.Plan:
    """The plan of the strategy given, or (`inspect`: only --subdomain) of the upgrade under
    way as the live marker records it; nothing when there is none."""
    if p.strategy is not None or p.to_version is not None or p.from_version is not None:
        return same_major_preview(job, p) if p.same_major else chain_preview(job, p)
    tenant = naming.Tenant(p.subdomain, p.base_domain)
    job.bind(tenant=tenant.subdomain, database=tenant.db_name)
    with pg.connection(dsn=p.pg_dsn, deadline=job.deadline) as conn:
        live = marker.read(conn, tenant.db_name)
    up = live.data.get("upgrading") if live is not None else None
    if not isinstance(up, dict) or not isinstance(up.get("to"), int):
        return plan.of(state="no upgrade under way", database=tenant.db_name)
    hop = replace(p, from_version=up.get("from"), to_version=up["to"])
    if up.get("strategy") == plans.SAME_MAJOR:
        return same_major_preview(job, replace(hop, strategy="same-major"))
    return chain_preview(job, hop)


# --------------------------------------------------------------------------- click


def _given(ctx: click.Context) -> dict[str, Any]:
    """The options this context's command line gave explicitly (not from env or defaults)."""
    source = click.core.ParameterSource.COMMANDLINE
    return {n: v for n, v in ctx.params.items() if ctx.get_parameter_source(n) is source}


def _flag(command: click.Command, name: str) -> str:
    param = next(p for p in command.params if p.name == name)
    env = f" / {param.envvar}" if isinstance(param.envvar, str) else ""
    return f"{param.opts[0]}{env}"


class _Phase(params.JobCommand[Any]):
    """A phase that also takes the options given before its name (`upgrade --subdomain x
    status`): they would otherwise be parsed by the group and silently dropped. They count as
    given on the command line: over the phase's variables, and refused when the phase's own
    command line says otherwise."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is not None:  # before the parse: they satisfy a required option
            ctx.default_map = {**(ctx.default_map or {}), **_given(ctx.parent)}
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is not None:
            for name, value in _given(ctx.parent).items():
                source = ctx.get_parameter_source(name)
                if source is click.core.ParameterSource.COMMANDLINE and ctx.params[name] != value:
                    raise UsageError(
                        _flag(self, name), "given before and after the phase with different values"
                    )
                ctx.params[name] = value
        return super().invoke(ctx)


def _dry_or_run(
    p: UpgradeParams,
    run: Callable[[runner.Job, UpgradeParams], Done],
    preview: Callable[[runner.Job, UpgradeParams], plan.Plan],
) -> None:
    if p.dry_run:
        runner.run(JOB, lambda job: plan.dry_run(job, preview(job, p)), timeout=p.timeout,
                   dry_run=True)  # fmt: skip
    runner.run(JOB, lambda job: run(job, p), timeout=p.timeout)


def _epilog() -> str:
    """The phases and what each does, for `upgrade --help` (from the plan's own lines)."""
    names = {"db": "{db}", "work": "{db}__up{to}", "rollback": "{db}__rb{from}",
             "from_v": "{from}", "to_v": "{to}"}  # fmt: skip
    lines = [f"  {name}: {says.format(**names)}" for name, says in plans.CHAIN.items()]
    return (
        "\b\nPhases of snapshot-then-upgrade, in order, each recorded in the work copy's marker:\n"
        + "\n".join(lines)
    )


class _Upgrade(click.Group):
    """`upgrade`: a phase by name, or (none named) --strategy's whole run."""

    command_class = _Phase

    def __init__(self) -> None:
        options = params.click_options(UpgradeParams)
        # A phase may be named after them: `upgrade --subdomain x status` and `upgrade status
        # --subdomain x` alike. So none is required here; without a phase, `invoke` checks.
        self.required = [o for o in options if o.required]
        for option in self.required:
            option.required = False
        super().__init__(
            JOB,
            params=options,
            invoke_without_command=True,
            help=(
                "Upgrade a tenant: same-major `-u all`, or OpenUpgrade phase by phase.\n\n"
                "Without a phase, --strategy chooses: same-major runs `-u all`; "
                "snapshot-then-upgrade runs every phase left (like `upgrade run`). A phase "
                "takes its options before or after its name; one it does not take is refused. "
                "--dry-run prints the steps left (no lock taken, no Odoo started)."
            ),
            epilog=_epilog(),
        )
        self.params_cls = UpgradeParams
        self.run = run_upgrade
        self.preview = preview_upgrade

    def invoke(self, ctx: click.Context) -> Any:
        named = ctx._protected_args
        phase = self.get_command(ctx, named[0]) if named else None
        if phase is not None:
            # The phase reads its own options (and the same PLANA_* variables); those given
            # before its name reach it through _Phase, one it does not take is refused.
            takes = {p.name for p in phase.params}
            for name in sorted(set(_given(ctx)) - takes):
                raise UsageError(_flag(self, name), f"not an option of `upgrade {named[0]}`")
        if named:
            return super().invoke(ctx)
        for option in self.required:
            if ctx.params.get(option.name or "") is None:
                raise UsageError(_flag(self, option.name or ""), "is required")
        _dry_or_run(params.build(UpgradeParams, dict(ctx.params)), run_upgrade, preview_upgrade)
        return None


upgrade = _Upgrade()


def _command(phase: str, cls: type[Hop], run: Any, preview: Any, help: str) -> None:
    # Named "upgrade": the job (its log lines, its result) is the upgrade, whichever phase.
    upgrade.add_command(_Phase(JOB, cls, run, preview, help), phase)


for _name, _cls, _run, _help in (
    ("snapshot", Hop, run_snapshot,
     "Freeze the tenant (base checked at fromVersion) and clone it to a fresh work copy."),
    ("source-pass", SourcePassParams, run_source_pass,
     "fromVersion binary, --load=base,web,openupgrade_framework -u all, on the work copy."),
    ("prefix", Hop, run_prefix,
     "This hop's SQL pre-fixes (sql/upgrade/{from}-{to}/), each applied once and recorded."),
    ("target-pass", TargetPassParams, run_target_pass,
     "toVersion binary with OpenUpgrade (--upgrade-path) -u all; base must reach toVersion."),
    ("cutover", Hop, run_cutover,
     "Live → rollback name, work copy → live name, connections allowed, marker updated."),
):  # fmt: skip
    _command(_name, _cls, _run, chain_preview, _help)


_command("same-major", SameMajorParams, run_same_major, same_major_preview,
         "`odoo -d {db} -u all` at the tenant's version; unchanged when already done.")  # fmt: skip
_command("rollback", Hop, run_rollback, rollback_preview,
         "Back to the fromVersion database while the rollback copy exists (or just unfreeze). "
         "With fromVersion = toVersion: back to the database before the last same-major "
         "update.")  # fmt: skip
_command("status", Hop, run_status, status_preview, "Print where the tenant stands (read-only).")
_command("run", RunParams, run_run, chain_preview,
         "Every phase left, in one process (both binaries at hand: local, compose).")  # fmt: skip
