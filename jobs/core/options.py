"""Shared click options: every option has its PLANA_* variable (docs/design.md environment table).

Spec fields are taken as plain strings and validated by `jobs.core.naming`, so that every bad value,
missing ones included, is refused the same way: exit 64 and one line naming the field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from jobs.core import naming

F = TypeVar("F", bound=Callable[..., Any])

# Seconds per HTTP attempt. Here rather than in jobs.adapters.http so that declaring the option does
# not import httpx into every job (tenant-db and friends never make an HTTP request).
DEFAULT_REQUEST_TIMEOUT_S = 10.0
# The longest deadline a job accepts: a week, far beyond any job, far below float trouble.
MAX_SECONDS = 7 * 24 * 3600.0


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


def option(*decls: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*decls, envvar=env, show_envvar=True, **kwargs)


def stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(fn: F) -> F:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return apply


common = stack(
    option("--base-domain", env="PLANA_BASE_DOMAIN", default=naming.DEFAULT_BASE_DOMAIN,
           show_default=True, help="Base domain of tenant hostnames and databases."),
    option("--timeout", env="PLANA_TIMEOUT", type=Seconds(0, MAX_SECONDS, min_open=True),
           default=None,
           help="Total deadline in seconds for retries and waits [default: 600]."),
)  # fmt: skip

subdomain = option("--subdomain", env="PLANA_SUBDOMAIN", help="Tenant subdomain (DNS label).")
project_id = option("--project-id", env="PLANA_PROJECT_ID", help="PLANAClient projectId.")
tier = option("--tier", env="PLANA_TIER", help="starter | pro | enterprise.")


def _empty_env_is_given(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """click drops an empty environment variable as if unset; an empty spec field is a value."""
    envvar = param.envvar if isinstance(param.envvar, str) else None
    if value is None and envvar and os.environ.get(envvar) == "":
        return ""
    return value


# No click default: "not given" (None, meaning 18) must stay apart from an explicit "" (refused),
# given as the flag or as the variable (a spec field rendered empty).
odoo_version = option("--odoo-version", env="PLANA_ODOO_VERSION", default=None,
                      callback=_empty_env_is_given,
                      help="Odoo major version: 17, 18 or 19 [default: 18].")  # fmt: skip
owner_email = option("--owner-email", env="PLANA_OWNER_EMAIL", help="Owner's email address.")
owner_name = option("--owner-name", env="PLANA_OWNER_NAME", help="Owner's display name.")

client_spec = stack(subdomain, project_id, tier, odoo_version, owner_email, owner_name)

pg_dsn = option("--pg-dsn", env="PLANA_PG_DSN", default=None,
                help="libpq connection string; default: libpq's PG* environment.")  # fmt: skip
data_dir = option("--data-dir", env="PLANA_DATA_DIR", default=naming.DEFAULT_DATA_DIR,
                  show_default=True, help="Odoo data dir holding filestore/.")  # fmt: skip
odoo_bin = option("--odoo-bin", env="PLANA_ODOO_BIN", default="odoo", show_default=True,
                  help="The Odoo executable.")  # fmt: skip
# The Odoo config and addons path an Odoo child starts from (template-build, environment-db).
odoo_config = option("--odoo-config", env="PLANA_ODOO_CONFIG", default=None,
                     help="Odoo config file to start from [default: $ODOO_RC].")  # fmt: skip
addons_path = option("--addons-path", env="PLANA_ODOO_ADDONS_PATH", default=None,
                     help="Odoo --addons-path (default: the Odoo config's).")  # fmt: skip
generation = option("--generation", env="PLANA_GENERATION", default=None,
                    help="The XR's metadata.generation (part of the idempotency key).")  # fmt: skip

template_db = option("--template-db", env="PLANA_TEMPLATE_DB", default=None,
                     help="Clone this template database instead of the tier's "
                          "template_{code}_{version}.")  # fmt: skip
request_timeout = option("--request-timeout", env="PLANA_HTTP_TIMEOUT",
                         type=Seconds(0, 300, min_open=True), default=None,
                         help="Seconds per HTTP attempt "
                              f"[default: {DEFAULT_REQUEST_TIMEOUT_S:g}].")  # fmt: skip

# The tenant events stream: emit-event writes it, deprovision emits client.deprovisioned to it.
events_stream = stack(
    option("--redis-url", env="PLANA_REDIS_URL", default="redis://127.0.0.1:6379/0",
           show_default=True, help="Redis URL (a password in it is never logged)."),
    option("--stream", env="PLANA_EVENTS_STREAM", default=naming.EVENTS_STREAM,
           show_default=True, help="Stream key."),
)  # fmt: skip

# The key that signs and authenticates backup manifests (backup, deprovision, restore, verify).
backup_key_file = option("--backup-key-file", env="PLANA_BACKUP_KEY_FILE", default=None,
                         help="Secret file: the key signing backup manifests.")  # fmt: skip
owner_role = option("--owner-role", env="PLANA_OWNER_ROLE", default="plana", show_default=True,
                    help="PostgreSQL role owning the database (only it may connect).")  # fmt: skip

# Jobs that read a backup set (restore, backup-verify); backup's own --dest/--jobs say more.
backup_set_source = stack(
    backup_key_file,
    option("--dest", env="PLANA_BACKUP_DEST", default=None, help="Mounted backup volume."),
    option("--jobs", "jobs_n", env="PLANA_BACKUP_JOBS", type=click.IntRange(1, 16), default=1,
           show_default=True, help="pg_restore parallel jobs."),
)  # fmt: skip

# How long pg_dump (and the row counts) wait for a table lock held elsewhere (an upgrade).
DEFAULT_LOCK_WAIT_S = 60.0
# backup and deprovision (a final backup) take a set with these.
backup_options = stack(
    backup_key_file,
    option("--dest", env="PLANA_BACKUP_DEST", default=None,
           help="Mounted backup volume; sets go to {dest}/{subdomain}/{timestamp}/."),
    option("--jobs", "jobs_n", env="PLANA_BACKUP_JOBS", type=click.IntRange(1, 16),
           default=1, show_default=True,
           help="pg_dump parallel jobs; above 1 the dump is in directory format."),
    option("--lock-wait", env="PLANA_BACKUP_LOCK_WAIT", type=Seconds(0.1, 86400),
           default=DEFAULT_LOCK_WAIT_S, show_default=True,
           help="Seconds to wait for a table lock held elsewhere before failing (75)."),
)  # fmt: skip

retention_options = stack(
    option("--keep-daily", env="PLANA_BACKUP_KEEP_DAILY", type=click.IntRange(0),
           default=7, show_default=True, help="Days (that have sets) to keep one of."),
    option("--keep-weekly", env="PLANA_BACKUP_KEEP_WEEKLY", type=click.IntRange(0),
           default=4, show_default=True, help="ISO weeks to keep one set of."),
    option("--keep-monthly", env="PLANA_BACKUP_KEEP_MONTHLY", type=click.IntRange(0),
           default=6, show_default=True, help="Months to keep one set of."),
)  # fmt: skip


def client(kw: dict[str, Any], *, owner: bool = True) -> naming.ClientSpec:
    """Validate the PLANAClient spec fields in `kw` (exit 64 on the first bad one).

    With `owner=False` the owner fields may be absent (jobs that do not use them), but a value
    that is given is still validated.
    """
    domain = naming.base_domain(kw.get("base_domain"))
    email, name = kw.get("owner_email"), kw.get("owner_name")
    return naming.ClientSpec(
        tenant=naming.Tenant(naming.subdomain(kw.get("subdomain")), domain),
        project_id=naming.project_id(kw.get("project_id")),
        tier=naming.tier(kw.get("tier")),
        odoo_version=naming.odoo_version(kw.get("odoo_version")),
        owner_email=naming.owner_email(email) if owner or email else "",
        owner_name=naming.owner_name(name) if owner or name else "",
    )


def generation_value(value: str | None, field: str = "generation") -> int | None:
    if value in (None, ""):
        return None
    return naming.project_id(value, field=field)
