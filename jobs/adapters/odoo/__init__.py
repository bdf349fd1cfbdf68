"""Running the Odoo binary for one major version, and reading back what it really did.

Stable API (used by template-build, upgrade, backup and environment-db):

- `Invocation`: what to run (database, modules to install/update, `--load`, `--upgrade-path`,
  data dir, addons path, extra flags); `argv(odoo_bin, version, inv, config=None)` builds the
  command line with the version's rules: 17/18 get `--without-demo=all` (with `=`: a bare
  `--without-demo` swallows the next flag), 19 gets no demo flag (no demo unless `--with-demo`).
  Always `--stop-after-init --no-http`.
- `run(odoo_bin, version, inv, *, dsn=None, base_config=None, deadline=None, timeout=None)`
  → `Completed` (a `proc.Completed` plus what Odoo's output said, below). Connection
  parameters come from `PLANA_PG_DSN` (or `dsn`) and libpq's own `PG*` environment, and never
  reach argv (which is logged): host, port, user and sslmode go into a 0600 temporary config
  file passed with `-c` (merged over `base_config`, default `$ODOO_RC`, so the image's
  addons_path and friends are kept), and everything into the child's `PG*` environment. The
  password reaches Odoo only through that environment (`PGPASSWORD`: Odoo passes no password
  to libpq when `db_password` is unset, and libpq then reads it); it is never written to the
  config file, which a SIGKILL would leave behind in `$TMPDIR`. A `db_password` of the base
  config is moved the same way. `PGDATABASE` is removed from the child's environment (Odoo 19
  would treat it like `-d`). Output is streamed into the log through `jobs.core.proc`, each line at
  the level Odoo gave it (ERROR → error, CRITICAL → critical, WARNING → warning; a traceback
  keeps the level of its record); SIGTERM stops the child; `watch=` sees every output line
  (the last ones only are kept in `tail`). Odoo refusing the `postgres`
  database user ("Using the database user 'postgres' is a security risk, aborting.", exit 1;
  Odoo 17/18 check `db_user`, else `PGUSER`) is a ConfigError (78) carrying that message.
- `Completed.error`: the line that says what went wrong, not Odoo's last line (a closing
  "ConnectionPool(...): Closed 1 connections"): the exception of the last traceback (with its
  message's continuation lines, e.g. `odoo.tools.convert.ParseError: while parsing …`), else
  the last ERROR/CRITICAL record, else the last line. `Completed.failure()` → "odoo exited
  255: <that line>", for error messages. `Completed.stopped`: why the run did not end by itself
  (ended by a signal; "Forced shutdown." by a second signal, exit 0; a KeyboardInterrupt), or
  None. A stopped run is transient (75) unless `module_states` shows it had finished: Odoo
  turns the first SIGTERM/SIGINT into KeyboardInterrupt (it ends by SIGINT) and a second one
  into `os._exit(0)`, so neither its exit code nor its silence tells whether the work was done.
- `run_command(odoo_bin, command, args, *, dsn=None, base_config=None, deadline=None, ...)`
  → `Completed`: an Odoo subcommand, `odoo {command} -c {conf} {args}` (environment-db runs
  `neutralize -d {db}`), with exactly `run`'s connection handling (`connected`).
- `base_option(name, base_config)` reads one option of the base config.
- `binary_version(odoo_bin)` → the `--version` line (e.g. "Odoo Server 18.0");
  `release_version(package)` → the same line read from an `odoo` package's own `release.py`
  (None when it does not give one), without importing Odoo: most of `odoo --version`'s 1.5-2 s
  is that import; `installed_version(odoo_bin, package)`: the release.py line when there is
  one, else `--version` (78 either way when the binary is missing); `known_version(odoo_bin,
  package)`: the release.py line or None, never starting Odoo (a dry run); `major(text)` → 18.
- `module_states(conn)` → `{name: state}` from `ir_module_module`; `check_modules(states,
  wanted)` → the list of problems (a wanted module not `installed`, anything left
  `to install`/`to upgrade`/`to remove`). The exit code of Odoo is never trusted alone: it exits 0
  after "invalid module names, ignored".
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from jobs.adapters import pg
from jobs.core import proc, redact, retry
from jobs.core.errors import ConfigError

PENDING_STATES = frozenset({"to install", "to upgrade", "to remove"})
MODULE_NAME = re.compile(r"[a-z0-9_]{1,128}", re.ASCII)
VERSION_TIMEOUT_S = 60.0

# Odoo's log record: '%(asctime)s %(pid)s %(levelname)s %(dbname)s %(name)s: %(message)s
# %(perf_info)s' (odoo/netsvc.py; dbname is "?" before a database is known, and perf_info is
# empty outside requests, hence the trailing space of every line).
_RECORD = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ (?P<level>[A-Z_]+) \S+ (?P<logger>[^\s:]+): "
    r"(?P<message>.*)"
)
_LEVELS = {
    "DEBUG": "debug",
    "INFO": "info",
    "WARNING": "warning",
    "ERROR": "error",
    "CRITICAL": "critical",
}
_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)
# odoo/cli/server.py check_postgres_user (17/18): written without a newline, then exit 1.
POSTGRES_REFUSED = "Using the database user 'postgres' is a security risk, aborting."
# ThreadedServer.signal_handler, on a second SIGTERM/SIGINT: then os._exit(0).
_FORCED = "Forced shutdown."
_ERROR_LINES = 8  # lines of an exception's message kept
_ERROR_CHARS = 400

# libpq conninfo keyword → Odoo config option. Only these have an Odoo option; everything else
# (sslrootcert, passfile, options, …) reaches the child through its PG* environment. The
# password has an option too (db_password) but never goes there: see `config_file`.
_CONF_KEYS = {
    "host": "db_host",
    "port": "db_port",
    "user": "db_user",
    "sslmode": "db_sslmode",
}
_PASSWORD_OPTION = "db_password"
# libpq conninfo keyword → the libpq environment variable the child reads.
_ENV_KEYS = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "options": "PGOPTIONS",
}


@dataclass(frozen=True)
class Invocation:
    """One `odoo --stop-after-init` run."""

    db: str
    install: Sequence[str] = ()
    update: Sequence[str] = ()
    load: Sequence[str] = ()
    upgrade_path: str | None = None
    data_dir: str | Path | None = None
    addons_path: str | None = None
    log_level: str | None = None
    extra: Sequence[str] = field(default_factory=tuple)


def argv(
    odoo_bin: str, version: int, inv: Invocation, config: str | Path | None = None
) -> list[str]:
    """The command line for `inv`; holds no secret (it is logged)."""
    args = [odoo_bin]
    if config is not None:
        args += ["-c", str(config)]
    args += ["-d", inv.db]
    if inv.install:
        args += ["-i", ",".join(inv.install)]
    if inv.update:
        args += ["-u", ",".join(inv.update)]
    if version in (17, 18):
        args.append("--without-demo=all")
    if inv.load:
        args.append("--load=" + ",".join(inv.load))
    if inv.upgrade_path:
        args.append(f"--upgrade-path={inv.upgrade_path}")
    if inv.addons_path:
        args.append(f"--addons-path={inv.addons_path}")
    if inv.data_dir is not None:
        args += ["-D", str(inv.data_dir)]
    if inv.log_level:
        args.append(f"--log-level={inv.log_level}")
    args += ["--stop-after-init", "--no-http", *inv.extra]
    return args


def connection_params(dsn: str | None = None) -> dict[str, str]:
    """libpq keywords of the configured DSN (without dbname), password included."""
    params = conninfo_to_dict(pg.base_conninfo(dsn))
    return {k: str(v) for k, v in params.items() if k != "dbname" and v not in (None, "")}


def child_env(params: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours, the DSN's parameters as PG*, and no PGDATABASE."""
    env = dict(os.environ if base is None else base)
    env.pop("PGDATABASE", None)
    for key, value in params.items():
        name = _ENV_KEYS.get(key)
        if name:
            env[name] = value
    return env


@contextmanager
def config_file(params: Mapping[str, str], base_config: str | Path | None = None) -> Iterator[Path]:
    """A 0600 Odoo config holding the connection options, deleted when the block ends.

    It is `base_config` (default `$ODOO_RC`, the image's config) with the db_* options of
    `params` laid over it, so `-c` does not lose the image's addons_path or data_dir. It never
    holds a password: a SIGKILL skips the deletion, and the file would stay in `$TMPDIR`.
    """
    parser = _base_config(base_config)
    parser.remove_option("options", _PASSWORD_OPTION)
    for key, option in _CONF_KEYS.items():
        if key in params:
            parser.set("options", option, params[key])
    # mkstemp creates the file 0600 in a private name.
    fd, name = tempfile.mkstemp(prefix="plana-odoo-", suffix=".conf")
    path = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            parser.write(fh)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _base_config(base_config: str | Path | None) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    base = base_config if base_config is not None else os.environ.get("ODOO_RC")
    if base:
        try:
            with open(base, encoding="utf-8") as fh:
                parser.read_file(fh)
        except OSError as exc:
            raise ConfigError(f"odoo config {base}: {exc.strerror}") from None
        except configparser.Error as exc:
            raise ConfigError(f"odoo config {base}: not a valid config file: {exc}") from None
    if not parser.has_section("options"):
        parser.add_section("options")
    return parser


def base_option(name: str, base_config: str | Path | None = None) -> str | None:
    """Option `name` of the base config (default `$ODOO_RC`); None when unset ("", "None",
    "False" included: how Odoo writes an unset option)."""
    value = _base_config(base_config).get("options", name, fallback="").strip()
    return value if value and value not in ("None", "False") else None


def base_password(base_config: str | Path | None = None) -> str | None:
    """`db_password` of the base config (Odoo writes "False" for none), if it sets one."""
    parser = _base_config(base_config)
    value = parser.get("options", _PASSWORD_OPTION, fallback="")
    return value if value and value.lower() != "false" else None


class Output:
    """What Odoo's output says, read line by line while it streams (both pipes: thread-safe).

    `level` is the per-line classifier `jobs.core.proc` calls; it remembers on the way what
    `error_line` later reports.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._record = "info"  # level of the record the current line belongs to
        self._in_traceback = False
        self._collecting = False  # reading the message lines of an exception
        self._counted = True  # the traceback being read counts for error_line
        self._exception: list[str] = []
        self._error = ""  # last ERROR/CRITICAL record
        self._last = ""
        self.refused = False  # the postgres database user refused
        self.forced = False  # "Forced shutdown." (a second signal)

    def level(self, line: str) -> str:
        with self._lock:
            return self._read(line)

    def _read(self, line: str) -> str:
        text = line.strip()
        if text:
            self._last = text
        record = _RECORD.match(line)
        if record is not None:
            self._record = _LEVELS.get(record["level"], "info")
            self._in_traceback = self._collecting = False
            if self._record in ("error", "critical"):
                self._error = f"{record['logger']}: {record['message'].strip()}"
            return self._record
        if POSTGRES_REFUSED in line:
            self.refused = True
            return "error"
        if text == _FORCED:
            self.forced = True
        if text == _TRACEBACK:
            # A traceback a WARNING record carries (exc_info) is not the failure.
            self._in_traceback, self._collecting = True, False
            self._counted = self._record not in ("debug", "warning")
        elif self._in_traceback:
            if text and not line[0].isspace():  # after the indented frames: the exception
                self._in_traceback = False
                if self._counted:
                    self._exception, self._collecting = [text], True
        elif self._collecting:
            if text in _CHAINED:
                self._collecting = False
            elif len(self._exception) < _ERROR_LINES:
                self._exception.append(text)
        return self._record

    def error_line(self) -> str:
        """The exception of the last traceback, else the last ERROR/CRITICAL record, else the
        last line ("" when Odoo said nothing)."""
        with self._lock:
            if self._exception:
                joined = " ".join(" ".join(self._exception).split())
                return joined if len(joined) <= _ERROR_CHARS else joined[: _ERROR_CHARS - 3] + "..."
            return self._error or self._last

    def stopped(self, returncode: int) -> str | None:
        """Why the run did not end by itself, or None."""
        with self._lock:
            if returncode < 0:
                return f"ended by signal {-returncode}"
            if self.forced:
                return f"forced shutdown after a second signal, exit {returncode}"
            if self._exception[:1] == ["KeyboardInterrupt"]:
                return f"interrupted (KeyboardInterrupt), exit {returncode}"
            return None


@dataclass(frozen=True)
class Completed(proc.Completed):
    """How an Odoo run ended, and what its output said (see `Output`)."""

    error: str = ""
    stopped: str | None = None

    def failure(self) -> str:
        """For an error message: "odoo exited 255: odoo.tools.convert.ParseError: …", or
        "odoo was stopped (ended by signal 2)" (its last words then are only KeyboardInterrupt
        or "Forced shutdown.")."""
        if self.stopped is not None:
            return f"odoo was stopped ({self.stopped})"
        return f"odoo exited {self.returncode}" + (f": {self.error}" if self.error else "")


def run(
    odoo_bin: str,
    version: int,
    inv: Invocation,
    *,
    dsn: str | None = None,
    base_config: str | Path | None = None,
    deadline: retry.Deadline | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    watch: Callable[[str], None] | None = None,
) -> Completed:
    """Run Odoo once (streamed, bounded, SIGTERM-safe) and report how it exited.

    The caller decides what the exit code means, and checks `module_states` afterwards.
    """
    return _run(
        lambda conf: argv(odoo_bin, version, inv, conf),
        dsn=dsn,
        base_config=base_config,
        deadline=deadline,
        timeout=timeout,
        env=env,
        watch=watch,
    )


def run_command(
    odoo_bin: str,
    command: str,
    args: Sequence[str],
    *,
    dsn: str | None = None,
    base_config: str | Path | None = None,
    deadline: retry.Deadline | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    watch: Callable[[str], None] | None = None,
) -> Completed:
    """`odoo {command} -c {conf} {args}` (e.g. `neutralize`, `["-d", db]`), connected as `run`.

    Odoo takes the subcommand only as its first argument; `args` hold no secret (logged).
    """
    if not MODULE_NAME.fullmatch(command):
        raise ValueError(f"not an Odoo subcommand: {command!r}")
    return _run(
        lambda conf: [odoo_bin, command, "-c", str(conf), *args],
        dsn=dsn,
        base_config=base_config,
        deadline=deadline,
        timeout=timeout,
        env=env,
        watch=watch,
    )


def _run(
    command: Callable[[Path], list[str]],
    *,
    dsn: str | None,
    base_config: str | Path | None,
    deadline: retry.Deadline | None,
    timeout: float | None,
    env: Mapping[str, str] | None,
    watch: Callable[[str], None] | None,
) -> Completed:
    """One Odoo child on our connection, its lines read as Odoo's records (see `Output`)."""
    out = Output()
    with connected(dsn, base_config, env) as (conf, child):
        done = proc.run(
            command(conf),
            name="odoo",
            env=child,
            timeout=timeout,
            deadline=deadline,
            level=out.level,
            watch=watch,
        )
    if done.returncode == 1 and out.refused:
        raise ConfigError(
            f"odoo refused to start: {POSTGRES_REFUSED} Odoo must connect as a role other "
            "than postgres (the user of PLANA_PG_DSN, or PGUSER)",
            returncode=done.returncode,
        )
    return Completed(
        returncode=done.returncode,
        tail=done.tail,
        duration_s=done.duration_s,
        error=redact.text(out.error_line()),
        stopped=out.stopped(done.returncode),
    )


@contextmanager
def connected(
    dsn: str | None = None,
    base_config: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[Path, dict[str, str]]]:
    """The `-c` file and the environment that give an Odoo child our connection (see `run`)."""
    params = connection_params(dsn)
    if "password" not in params:
        # The image's config may carry one; it moves to the environment like the DSN's.
        password = base_password(base_config)
        if password:
            params = {**params, "password": password}
    redact.register(params.get("password"))
    child = child_env(params, env)
    with config_file(params, base_config) as conf:
        yield conf, child


def binary_version(odoo_bin: str, *, deadline: retry.Deadline | None = None) -> str:
    """The first line of `odoo --version` (e.g. "Odoo Server 18.0"); 78 if it cannot run."""
    limit = VERSION_TIMEOUT_S if deadline is None else min(VERSION_TIMEOUT_S, deadline.remaining())
    env = dict(os.environ)
    env.pop("PGDATABASE", None)
    try:
        done = subprocess.run(
            [odoo_bin, "--version"],
            capture_output=True,
            text=True,
            timeout=max(limit, 1.0),
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise ConfigError(f"odoo binary not found: {odoo_bin}") from None
    except PermissionError:
        raise ConfigError(f"odoo binary not executable: {odoo_bin}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{odoo_bin} --version did not answer within {limit:.0f}s") from None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = redact.text(done.stderr.strip()[-300:])
        raise ConfigError(f"{odoo_bin} --version failed (exit {done.returncode}): {tail}")
    return lines[0]


# Runs an odoo package's release.py alone (no `odoo` import, no site-packages) and prints what
# `odoo --version` prints: odoo/tools/config.py's "%s %s" % (description, version).
_RELEASE_PROBE = """\
import runpy, sys
ns = runpy.run_path(sys.argv[1])
print("%s %s" % (ns["description"], ns["version"]))
"""
RELEASE_TIMEOUT_S = 10.0


def release_version(package: str | None) -> str | None:
    """The `--version` line of the Odoo whose `odoo` package is `package`, from its release.py.

    release.py is plain Python computing `version` from `version_info`; it runs in a separate
    isolated interpreter (a broken or hanging file is a None here, not a stuck job). None: no
    package, or no `description`/`version` in it; the caller then asks the binary.
    """
    if package is None:
        return None
    release = os.path.join(package, "release.py")
    if not os.path.isfile(release):
        return None
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _RELEASE_PROBE, release],
            capture_output=True,
            text=True,
            timeout=RELEASE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            env={},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or len(lines) != 1 or major(lines[0]) is None:
        return None
    return lines[0]


def require_runnable(odoo_bin: str) -> None:
    """78 unless `odoo_bin` is there to run (found on PATH or at its path, executable)."""
    if shutil.which(odoo_bin) is None:
        if os.path.exists(odoo_bin) or shutil.which(odoo_bin, mode=os.F_OK) is not None:
            raise ConfigError(f"odoo binary not executable: {odoo_bin}")
        raise ConfigError(f"odoo binary not found: {odoo_bin}")


def known_version(odoo_bin: str, package: str | None) -> str | None:
    """The `--version` line of `odoo_bin` read without starting it: `package`'s release.py
    line, or None when only `odoo --version` could tell (a shell wrapper). A dry run of
    template-build stops there; the binary must still be there to run: 78."""
    require_runnable(odoo_bin)
    text = release_version(package)
    if text is not None and package:
        structlog.get_logger().info(
            "odoo version", binary=text, source=os.path.join(package, "release.py")
        )
    return text


def installed_version(
    odoo_bin: str, package: str | None, *, deadline: retry.Deadline | None = None
) -> str:
    """`binary_version`, read from `package`'s release.py when that gives it (the unchanged
    template-build then starts no Odoo at all). The binary must still be there to run: 78."""
    text = known_version(odoo_bin, package)
    if text is None:
        text = binary_version(odoo_bin, deadline=deadline)
        structlog.get_logger().info("odoo version", binary=text, source="--version")
    return text


def major(version_text: str) -> int | None:
    """18 from "Odoo Server 18.0" (or "saas~18.2"); None when there is no version in it."""
    found = re.search(r"(?<![0-9])([0-9]{2})\.[0-9]+", version_text)
    return int(found.group(1)) if found else None


def version_major(version: str | None) -> int | None:
    """18 from a module version "18.0.1.3" (base's latest_version): its leading number, as
    Odoo writes it for a standard series; None for anything else ("", "saas~18.1.1.0"). The
    upgrade refuses what it cannot name exactly, where `major` reads a version out of text."""
    head = (version or "").split(".", 1)[0]
    return int(head) if head.isdigit() else None


def series(version: str | None) -> str | None:
    """`18.0.1.3` → `18.0`: the Odoo series a module version (base's latest_version) starts
    with; None for none."""
    if not version:
        return None
    parts = version.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else version


def has_module_table(conn: psycopg.Connection[Any]) -> bool:
    """Whether the database has Odoo's module table (asked without failing a transaction)."""
    found = conn.execute("SELECT to_regclass('ir_module_module')").fetchone()
    return bool(found and found[0] is not None)


INSTALLED = ("installed",)
# What Odoo loads: a module marked for update or removal is still in the registry.
LOADED = ("installed", "to upgrade", "to remove")


def base_version(conn: psycopg.Connection[Any], states: Sequence[str] = INSTALLED) -> str | None:
    """`latest_version` of the `base` module in one of `states` (e.g. "18.0.1.3"), or None:
    no such row, or no module table at all (probed first, so that a caller's transaction, a
    backup's snapshot, is never aborted by the query)."""
    if not has_module_table(conn):
        return None
    row = conn.execute(
        "SELECT latest_version FROM ir_module_module WHERE name = 'base' AND state = ANY(%s)",
        (list(states),),
    ).fetchone()
    return str(row[0]) if row and row[0] else None


def module_states(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Every module's state, read from the database Odoo just worked on."""
    rows = conn.execute("SELECT name, state FROM ir_module_module").fetchall()
    return {str(name): str(state) for name, state in rows}


def check_modules(states: Mapping[str, str], wanted: Sequence[str]) -> list[str]:
    """Problems that make a run a failure whatever Odoo's exit code said (empty: all good)."""
    problems = [
        f"{m}: {states.get(m, 'unknown module')}" for m in wanted if states.get(m) != "installed"
    ]
    asked = set(wanted)
    problems += [
        f"{m}: left {s!r}"
        for m, s in sorted(states.items())
        if s in PENDING_STATES and m not in asked
    ]
    return problems
