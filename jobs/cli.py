"""`plana-job`: one subcommand per entrypoint. Usage errors exit 64 with one line.

Subcommands are imported only when invoked, so a job pays for its own dependencies alone
(matrix-nio is not imported to emit a Redis event).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import time
from typing import Any, NoReturn

import click

from jobs import __version__
from jobs.core import log, redact, runner
from jobs.core.errors import ExitCode, JobError, UsageError

# name → "module:attribute" of the click command. Only commands that work are listed.
COMMANDS: dict[str, str] = {
    "template-build": "jobs.commands.template_build:template_build",
    "tenant-db": "jobs.commands.tenant_db:tenant_db",
    "environment-db": "jobs.commands.environment_db:environment_db",
    "upgrade": "jobs.commands.upgrade:upgrade",
    "filestore-copy": "jobs.commands.filestore_copy:filestore_copy",
    "matrix-room": "jobs.commands.matrix_room:matrix_room",
    "account-webhook": "jobs.commands.account_webhook:account_webhook",
    "erp-callback": "jobs.commands.erp_callback:erp_callback",
    "emit-event": "jobs.commands.emit_event:emit_event",
    "backup": "jobs.commands.backup:backup",
    "backup-verify": "jobs.commands.backup_verify:backup_verify",
    "restore": "jobs.commands.restore:restore",
    "deprovision": "jobs.commands.deprovision:deprovision",
    "inspect": "jobs.commands.inspect:inspect",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command: Any = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        _end_of_startup()
        return command


def _end_of_startup() -> None:
    """Collect normally from here on, never again scanning what start-up allocated.

    `main` turns the cyclic collector off while the modules load: start-up allocates some
    hundred thousand objects that live until exit, and collecting over them again and again
    found nothing and cost ≈ 30 ms of CPU per job (measured; ten tenants at once compete for
    that CPU). Frozen, they are left out of every later collection.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="plana-job")
def cli() -> None:
    """Job runners behind PLANA's Crossplane Compositions.

    Every option also reads its PLANA_* environment variable. Exit codes: 0 done,
    64 bad input, 65 state conflict, 70 bug, 75 transient (retry), 78 configuration.

    \b
    Every job also reads:
      PLANA_LOG_FORMAT       json (default off a TTY) or console (default on a TTY);
                             anything else exits 64
      PLANA_TERMINATION_LOG  where the result object is also written, for Kubernetes'
                             termination message (default /dev/termination-log; skipped
                             when not writable)

    Contracts and architecture: docs/design.md in the source repository.
    """


def _job_name(argv: list[str]) -> str:
    names = [a for a in argv if a in COMMANDS]
    return names[0] if names else "plana-job"


def _undecodable(args: list[str]) -> str | None:
    """The flag or variable whose value is not valid UTF-8 (Python holds such bytes as lone
    surrogates, which no driver, log line or result can encode), or None."""
    for i, arg in enumerate(args):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            flag = arg.partition("=")[0] if arg.startswith("--") else None
            if flag is None and i and args[i - 1].startswith("--"):
                flag = args[i - 1]
            return flag or f"argument {i + 1}"
    for name, value in sorted(os.environ.items()):
        if name.startswith("PLANA_"):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return name
    return None


def _refuse(args: list[str], started: float, code: ExitCode, message: str) -> NoReturn:
    # One line naming the problem, never click's multi-line usage dump.
    message = " ".join(message.split())
    job = _job_name(args)
    click.echo(f"plana-job{' ' + job if job in COMMANDS else ''}: error: {message}", err=True)
    runner.finish(job, started, int(code), "failed", {"error": message})


def usage_line(exc: click.ClickException) -> str:
    """One line naming the option by its flag and its variable, as every job's own errors do."""
    param = exc.param if isinstance(exc, click.BadParameter) else None
    if isinstance(param, click.Option) and param.opts:
        names = " / ".join([param.opts[0], *([param.envvar] if isinstance(param.envvar, str)
                                             else [])])  # fmt: skip
        if isinstance(exc, click.MissingParameter):
            return f"{names}: is required"
        return f"{names}: {exc.message}"
    return exc.format_message()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    started = time.monotonic()
    bad = _undecodable(args)
    if bad is not None:
        _refuse(args, started, ExitCode.USAGE, f"{bad}: must be valid UTF-8")
    try:
        log.format_from_env()  # a bad PLANA_LOG_FORMAT is bad input, refused before anything
    except UsageError as exc:
        _refuse(args, started, exc.code, exc.message)
    gc.disable()  # until the command's module is loaded: see _end_of_startup
    try:
        code = cli.main(args=args, prog_name="plana-job", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        # Bare `plana-job`: a person asking what there is. The normal help on stdout, no result
        # line (no job ran), and 64 all the same: a Job started without its subcommand did nothing.
        click.echo(exc.ctx.get_help() if exc.ctx else cli.get_help(click.Context(cli)))
        sys.exit(int(ExitCode.USAGE))
    except click.ClickException as exc:
        _refuse(args, started, ExitCode.USAGE, redact.text(usage_line(exc)))  # 64, not click's 2
    except JobError as exc:  # raised by a group's own callback, before any job body runs
        _refuse(args, started, exc.code, redact.text(exc.message))
    except click.Abort:
        click.echo("plana-job: aborted", err=True)
        sys.exit(int(ExitCode.TEMPFAIL))
    sys.exit(code if isinstance(code, int) else 0)
