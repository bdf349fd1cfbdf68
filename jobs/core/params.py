"""Typed, frozen parameter objects: every job's options, declared once, parsed by click.

A job declares its parameters as a `@params.spec` class, one field per option:

    @params.spec
    class Params(params.Common):
        subdomain: str = params.subdomain()
        maxlen: int = params.option("--maxlen", "PLANA_EVENTS_MAXLEN", "Approximate stream cap.",
                                    type=click.IntRange(1), default=10_000)

and `params.command(name, Params, run, preview)` makes the click command: one click option per
field (with its PLANA_* variable), converted by a click type that runs the naming rule (so a bad
value never reaches the job body), and one frozen `Params` handed to the body. Every usage error
is one line naming the flag and its variable, `--subdomain / PLANA_SUBDOMAIN: is required`,
raised before any side effect (exit 64), whether click refused the value or a check across
fields in the class's `__post_init__` did (it raises `UsageError("<field name>", …)`, and the
builder puts the field's flag and variable in its place).

A required option (no default) is marked `required` in `--help`. Not giving one is bad input
(64), the same everywhere; an option that is given but names something missing or unreadable (a
secret file, a volume, a role) is configuration (78).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, Final, Generic, TypeVar, dataclass_transform

import click

from jobs.core import naming, plan, runner
from jobs.core.errors import UsageError

T = TypeVar("T")
P = TypeVar("P", bound="Common")

# Seconds per HTTP attempt. Here rather than in jobs.adapters.http so that declaring the option does
# not import httpx into every job (tenant-db and friends never make an HTTP request).
DEFAULT_REQUEST_TIMEOUT_S: Final = 10.0
# The longest deadline a job accepts: a week, far beyond any job, far below float trouble.
MAX_SECONDS: Final = 7 * 24 * 3600.0
# How long pg_dump (and the row counts) wait for a table lock held elsewhere (an upgrade).
DEFAULT_LOCK_WAIT_S: Final = 60.0

_OPTION: Final = "plana-option"


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option of a job: its flag, its variable and how its value is read."""

    flag: str
    env: str
    help: str
    type: Any = None
    default: Any = None
    required: bool = False
    show_default: bool | str = False
    is_flag: bool = False
    # click drops an empty variable as if unset; for a spec field rendered empty ("") that
    # would turn a refused value into a silent default.
    empty_env_is_value: bool = False

    @property
    def label(self) -> str:
        """How every usage error names the option: its flag and its variable."""
        return f"{self.flag} / {self.env}"


def option(
    flag: str,
    env: str,
    help: str,
    *,
    type: Any = None,
    default: Any = None,
    required: bool = False,
    show_default: bool | str = False,
    is_flag: bool = False,
    empty_env_is_value: bool = False,
) -> Any:
    """A field of a `spec` class that is one option (the field's name is the parameter's)."""
    opt = Option(
        flag, env, help, type, default, required, show_default, is_flag, empty_env_is_value
    )
    return dataclasses.field(metadata={_OPTION: opt})


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(option,))
def spec(cls: type[T]) -> type[T]:
    """Make `cls` a frozen, keyword-only dataclass of options (see the module docstring)."""
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


def options(cls: type[Any]) -> Iterator[tuple[str, Option]]:
    """(field name, option) of a spec class in declaration order, `Common`'s last (`--help`)."""
    mine: list[tuple[str, Option]] = []
    common: list[tuple[str, Option]] = []
    common_names = {f.name for f in dataclasses.fields(Common)}
    for f in dataclasses.fields(cls):
        opt = f.metadata.get(_OPTION)
        if isinstance(opt, Option):
            (common if f.name in common_names else mine).append((f.name, opt))
    yield from mine
    yield from common


def label(cls: type[Any], name: str) -> str:
    """The flag and variable of field `name` of `cls` (the name itself if it is no option)."""
    return next((opt.label for n, opt in options(cls) if n == name), name)


def build(cls: type[P], values: dict[str, Any]) -> P:
    """The parameters object from click's values; a check across fields names flag and variable."""
    try:
        return cls(**values)
    except UsageError as exc:
        raise UsageError(label(cls, exc.field), exc.problem) from None


# --------------------------------------------------------------------------- click types


class Rule(click.ParamType[T, Any]):
    """A naming rule (jobs.core.naming) as a click type: the value is normalised or refused.

    The rule's message is kept and the field name it gives is replaced by the option's flag and
    variable (the command line's names, not the spec's).
    """

    def __init__(self, name: str, rule: Callable[[str], T]) -> None:
        self.name = name
        self.rule = rule

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> T:
        if not isinstance(value, str):
            return value  # type: ignore[no-any-return]  # a default already of the type
        try:
            return self.rule(value)
        except UsageError as exc:
            self.fail(exc.problem, param, ctx)

    def __repr__(self) -> str:
        return f"Rule({self.name})"


class Seconds(click.ParamType[float, Any]):
    """A finite number of seconds in [min, max]: every float option of every job uses it.

    `float()` takes "nan", "inf" and "-1" alike, and a NaN compares false with every bound, so
    click.FloatRange would let it through; here anything else is refused by click before the
    job body runs: exit 64, one line naming the flag and its variable, no side effect.
    """

    name = "seconds"

    def __init__(
        self, min: float = 0.0, max: float = MAX_SECONDS, *, min_open: bool = False
    ) -> None:
        self.min, self.max, self.min_open = float(min), float(max), min_open

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        low_ok = number > self.min if self.min_open else number >= self.min
        if not math.isfinite(number) or not low_ok or number > self.max:
            low = "(" if self.min_open else "["
            self.fail(
                f"{value!r} is not a finite number of seconds in {low}{self.min:g}, {self.max:g}]",
                param,
                ctx,
            )
        return number

    def __repr__(self) -> str:
        return f"Seconds({self.min:g}, {self.max:g})"


SUBDOMAIN: Final = Rule("subdomain", naming.subdomain)
BASE_DOMAIN: Final = Rule("domain", naming.base_domain)
PROJECT_ID: Final = Rule("integer", naming.project_id)
TIER: Final = Rule("tier", naming.tier)
ODOO_VERSION: Final = Rule("version", naming.odoo_version)
OWNER_EMAIL: Final = Rule("email", naming.owner_email)
OWNER_NAME: Final = Rule("name", naming.owner_name)


# --------------------------------------------------------------------------- shared fields
# Options several jobs take, declared once so that flag, variable, rule and help agree.


def subdomain(help: str = "Tenant subdomain (DNS label).") -> Any:
    return option("--subdomain", "PLANA_SUBDOMAIN", help, type=SUBDOMAIN, required=True)


def project_id(*, required: bool = True) -> Any:
    return option(
        "--project-id",
        "PLANA_PROJECT_ID",
        "PLANAClient projectId.",
        type=PROJECT_ID,
        required=required,
    )


def tier(*, required: bool = True) -> Any:
    return option(
        "--tier", "PLANA_TIER", "starter | pro | enterprise.", type=TIER, required=required
    )


def odoo_version() -> Any:
    # No click default: "not given" (18) must stay apart from an explicit "" (refused), given
    # as the flag or as the variable (a spec field rendered empty).
    return option(
        "--odoo-version",
        "PLANA_ODOO_VERSION",
        f"Odoo major version: 17, 18 or 19 [default: {naming.DEFAULT_ODOO_VERSION}].",
        type=ODOO_VERSION,
        empty_env_is_value=True,
    )


def owner_email(*, required: bool = True) -> Any:
    return option(
        "--owner-email",
        "PLANA_OWNER_EMAIL",
        "Owner's email address.",
        type=OWNER_EMAIL,
        required=required,
    )


def owner_name(*, required: bool = True) -> Any:
    return option(
        "--owner-name",
        "PLANA_OWNER_NAME",
        "Owner's display name.",
        type=OWNER_NAME,
        required=required,
    )


def pg_dsn() -> Any:
    return option(
        "--pg-dsn", "PLANA_PG_DSN", "libpq connection string; default: libpq's PG* environment."
    )


def data_dir() -> Any:
    return option(
        "--data-dir",
        "PLANA_DATA_DIR",
        "Odoo data dir holding filestore/.",
        default=naming.DEFAULT_DATA_DIR,
        show_default=True,
    )


def request_timeout() -> Any:
    return option(
        "--request-timeout",
        "PLANA_HTTP_TIMEOUT",
        f"Seconds per HTTP attempt [default: {DEFAULT_REQUEST_TIMEOUT_S:g}].",
        type=Seconds(0, 300, min_open=True),
    )


def generation() -> Any:
    return option(
        "--generation",
        "PLANA_GENERATION",
        "The XR's metadata.generation (part of the idempotency key).",
        type=Rule("integer", lambda v: naming.project_id(v) if v else None),
        empty_env_is_value=True,
    )


def odoo_bin() -> Any:
    return option(
        "--odoo-bin", "PLANA_ODOO_BIN", "The Odoo executable.", default="odoo", show_default=True
    )


def odoo_config() -> Any:
    # The Odoo config and addons path an Odoo child starts from (template-build, environment-db).
    return option(
        "--odoo-config", "PLANA_ODOO_CONFIG", "Odoo config file to start from [default: $ODOO_RC]."
    )


def addons_path() -> Any:
    return option(
        "--addons-path",
        "PLANA_ODOO_ADDONS_PATH",
        "Odoo --addons-path (default: the Odoo config's).",
    )


def template_db(rule: Any = None) -> Any:
    """`rule`: the name's (jobs.ops.clone's, given by the command: ops is above core)."""
    return option(
        "--template-db",
        "PLANA_TEMPLATE_DB",
        "Clone this template database instead of the tier's template_{code}_{version}.",
        type=rule,
    )


def owner_role(rule: Any = None, default: str = "plana") -> Any:
    """`rule`: the role name's (jobs.ops.clone.ROLE, given by the command)."""
    return option(
        "--owner-role",
        "PLANA_OWNER_ROLE",
        "PostgreSQL role owning the database (only it may connect).",
        type=rule,
        default=default,
        show_default=True,
    )


# The tenant events stream: emit-event writes it, deprovision emits client.deprovisioned to it.
def redis_url() -> Any:
    return option(
        "--redis-url",
        "PLANA_REDIS_URL",
        "Redis URL (a password in it is never logged).",
        default="redis://127.0.0.1:6379/0",
        show_default=True,
    )


def stream(rule: Rule[str]) -> Any:
    """`rule`: the stream key's (jobs.ops.events.stream_name, wrapped by the command)."""
    return option(
        "--stream",
        "PLANA_EVENTS_STREAM",
        "Stream key.",
        type=rule,
        default=naming.EVENTS_STREAM,
        show_default=True,
    )


# The key that signs and authenticates backup manifests (backup, deprovision, restore, verify).
def backup_key_file(*, required: bool = True) -> Any:
    return option(
        "--backup-key-file",
        "PLANA_BACKUP_KEY_FILE",
        "Secret file: the key signing backup manifests.",
        required=required,
    )


def backup_jobs(help: str = "pg_restore parallel jobs.") -> Any:
    return option(
        "--jobs",
        "PLANA_BACKUP_JOBS",
        help,
        type=click.IntRange(1, 16),
        default=1,
        show_default=True,
    )


def lock_wait() -> Any:
    # How long pg_dump (and the row counts) wait for a table lock held elsewhere (an upgrade).
    return option(
        "--lock-wait",
        "PLANA_BACKUP_LOCK_WAIT",
        "Seconds to wait for a table lock held elsewhere before failing (75).",
        type=Seconds(0.1, 86400),
        default=DEFAULT_LOCK_WAIT_S,
        show_default=True,
    )


def keep(period: str, default: int, help: str) -> Any:
    """--keep-daily / --keep-weekly / --keep-monthly: the retention policy's counts."""
    return option(
        f"--keep-{period}",
        f"PLANA_BACKUP_KEEP_{period.upper()}",
        help,
        type=click.IntRange(0),
        default=default,
        show_default=True,
    )


@spec
class Common:
    """The options every job takes."""

    base_domain: str = option(
        "--base-domain",
        "PLANA_BASE_DOMAIN",
        "Base domain of tenant hostnames and databases.",
        type=BASE_DOMAIN,
        default=naming.DEFAULT_BASE_DOMAIN,
        show_default=True,
    )
    timeout: float | None = option(
        "--timeout",
        "PLANA_TIMEOUT",
        "Total deadline in seconds for retries and waits [default: 600].",
        type=Seconds(0, MAX_SECONDS, min_open=True),
    )
    dry_run: bool = option(
        "--dry-run",
        "PLANA_DRY_RUN",
        "Print the steps the job would take and change nothing (outcome `planned`).",
        is_flag=True,
        default=False,
    )


@spec
class TenantOptions(Common):
    """A job about one tenant: its --subdomain, and the tenant it names with --base-domain."""

    subdomain: str = subdomain()

    @property
    def tenant(self) -> naming.Tenant:
        return naming.Tenant(self.subdomain, self.base_domain)


@spec
class ClientSpec(TenantOptions):
    """The PLANAClient spec fields (tenant-db, emit-event, …)."""

    project_id: int = project_id()
    tier: str = tier()
    odoo_version: int | None = odoo_version()
    owner_email: str | None = owner_email()
    owner_name: str | None = owner_name()

    @property
    def client(self) -> naming.ClientSpec:
        return naming.ClientSpec(
            tenant=self.tenant,
            project_id=self.project_id,
            tier=self.tier,
            odoo_version=naming.DEFAULT_ODOO_VERSION
            if self.odoo_version is None
            else self.odoo_version,
            owner_email=self.owner_email or "",
            owner_name=self.owner_name or "",
        )


# --------------------------------------------------------------------------- the click command


def _empty_env_is_given(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    envvar = param.envvar if isinstance(param.envvar, str) else None
    if value is None and envvar and os.environ.get(envvar) == "":
        return param.type_cast_value(_ctx, "")  # refused (or normalised) by the option's rule
    return value


def click_options(cls: type[Any]) -> list[click.Parameter]:
    made: list[click.Parameter] = []
    for name, opt in options(cls):
        # No default given to click at all when there is none: click (8.3+) takes an explicit
        # None as a value, and a required option would never be missing.
        default: dict[str, Any] = {} if opt.default is None else {"default": opt.default}
        if opt.is_flag:  # only then: an explicit is_flag=False changes how click parses values
            default["is_flag"] = True
        made.append(
            click.Option(
                [opt.flag, name],
                envvar=opt.env,
                show_envvar=True,
                type=opt.type,
                **default,
                required=opt.required,
                show_default=opt.show_default,
                help=opt.help,
                callback=_empty_env_is_given if opt.empty_env_is_value else None,
            )
        )
    return made


class JobCommand(click.Command, Generic[P]):
    """A job's click command, carrying its parameters class and its read-only `preview`.

    `preview(job, params)` observes and plans without changing anything: `--dry-run` runs it
    instead of the job, and `plana-job inspect` runs it for every job of a tenant.
    """

    def __init__(
        self,
        name: str,
        params_cls: type[P],
        run: Callable[[Any, P], Any],
        preview: Callable[[Any, P], Any],
        help: str,
    ) -> None:
        super().__init__(name, params=click_options(params_cls), callback=self._invoke, help=help)
        self.params_cls = params_cls
        self.run = run
        self.preview = preview

    def _invoke(self, **values: Any) -> None:
        p = build(self.params_cls, values)
        if p.dry_run:
            runner.run(
                self.name or "",
                lambda job: plan.dry_run(job, self.preview(job, p)),
                timeout=p.timeout,
                dry_run=True,
            )
        runner.run(self.name or "", lambda job: self.run(job, p), timeout=p.timeout)


def command(
    name: str,
    params_cls: type[P],
    run: Callable[[Any, P], Any],
    preview: Callable[[Any, P], Any],
    help: str,
) -> JobCommand[P]:
    """The click command of a job: `run(job, params) -> Done`, `preview(job, params) -> Plan`."""
    return JobCommand(name, params_cls, run, preview, help)
