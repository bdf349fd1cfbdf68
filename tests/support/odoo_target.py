"""The Odoo under test: the stand-in (CI, the default) or real Odoo 17/18 (test mode).

Real-Odoo test mode is on when `PLANA_TEST_ODOO17_BIN` or `PLANA_TEST_ODOO18_BIN` is set
(`make test-odoo`, README "Real-Odoo test mode"). Tests written against this module drive
whichever Odoo that is, with the same calls:

    target = odoo_target.current().for_admin(pg_dsn)  # pg_dsn: the session's superuser
    odoo_target.ensure_role(pg_dsn, target)   # once: the role of target.dsn exists
    target.require(version)                   # skips a version this mode does not have
    odoo = target.binary(tmp, version)        # an executable `odoo` of that major version
    conf = target.config(tmp, version)        # its addons path (+ tests/support/addons), a data dir
    env = target.env()                        # PG* of target.dsn, no stray ODOO_*/PG*
    target.dsn                                # the job's PLANA_PG_DSN (a LOGIN CREATEDB role)
    target.binary(tmp, v, log_calls=log); calls(log)   # what the jobs ran, one argv per call
    target.binary(tmp, v, python=True)        # a Python-script odoo beside its odoo package
    target.config(tmp, 18, openupgrade=True)  # + OpenUpgrade's addons (if has_openupgrade(18))
    target.upgrade_path(tmp, 18)              # --upgrade-path for 17 -> 18

Variables of test mode (each version that has a BIN needs its ADDONS):

- `PLANA_TEST_ODOO17_BIN`, `PLANA_TEST_ODOO18_BIN`: an Odoo executable (`odoo-bin`, or the
  image's `odoo`) of that major version.
- `PLANA_TEST_ODOO17_ADDONS`, `PLANA_TEST_ODOO18_ADDONS`: that version's addons path
  (comma-separated, as Odoo's `addons_path`; at least the directory holding `web`: a source
  checkout's `addons`, the packaged Odoo's `.../odoo/addons`). tests/support/addons is added to it.
- `PLANA_TEST_OPENUPGRADE_PATH`: optional, the directory holding the OpenUpgrade 18.0 addons
  `openupgrade_framework` and `openupgrade_scripts` (an OpenUpgrade checkout, or the pip
  wheels' `site-packages/odoo/addons`): the 17 -> 18 migration.
- `PLANA_TEST_OPENUPGRADE17_PATH`: optional, the directory holding OpenUpgrade 17.0's
  `openupgrade_framework` (the wheel's `site-packages/odoo/addons`), which the source (17)
  pass of a 17 -> 18 run loads too; 17's python must import `openupgradelib`.
- `PLANA_TEST_ODOO_PG_DSN`: the PostgreSQL role Odoo and the jobs connect as (Odoo refuses
  `postgres`). Default: the superuser DSN (`PLANA_TEST_PG_DSN`, or what `for_admin` is given)
  with user `odoo`, password `odoo` (the Odoo images' convention), a role `ensure_role` creates
  (LOGIN CREATEDB) when it is missing. Both modes use it.

The stand-in plays 17, 18 and 19; test mode has 17 and 18 (19 is skipped). Modules both worlds
have are the test addons under tests/support/addons (the stand-in finds them on the addons path of
`config`): `APPS` to install, `FAIL` (install fails), `FAIL_UPDATE` (update fails), `SLEEP`
(sleeps `PLANA_TEST_ODOO_SLEEP` seconds while loading), `LEAVE` (left `to install`).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SUPPORT = Path(__file__).resolve().parent  # tests/support: the stand-in and the test addons
STANDIN = SUPPORT / "standins" / "odoo"
TEST_ADDONS = SUPPORT / "addons"

REAL_VERSIONS = (17, 18)
STANDIN_VERSIONS = (17, 18, 19)

# The test addons (tests/support/addons/README.md): names both worlds know.
APP, APP2 = "plana_test_app", "plana_test_app2"
APPS = (APP, APP2)
FAIL = "plana_test_fail"
FAIL_UPDATE = "plana_test_fail_update"
SLEEP = "plana_test_sleep"
LEAVE = "plana_test_leave"
GONE = "plana_test_gone"  # LEAVE's dependency: on the addons path, not installable
SLEEP_VAR = "PLANA_TEST_ODOO_SLEEP"
SLEEP_LINE = "plana_test_sleep: sleeping"  # logged by SLEEP just before it sleeps

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ODOO_ROLE = ("odoo", "odoo")  # default user and password of PLANA_TEST_ODOO_PG_DSN
_LIBPQ_ENV = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "sslmode": "PGSSLMODE",
}


class TargetError(Exception):
    """Test mode is misconfigured (one line saying which variable)."""


@dataclass(frozen=True)
class OdooTarget:
    real: bool
    bins: Mapping[int, str] = field(default_factory=dict)  # real mode: version -> executable
    addons: Mapping[int, str] = field(default_factory=dict)  # real mode: version -> addons path
    openupgrade: str | None = None  # real mode: the OpenUpgrade 18.0 addons directory
    openupgrade17: str | None = None  # real mode: OpenUpgrade 17.0's framework's directory
    odoo_dsn: str | None = None  # PLANA_TEST_ODOO_PG_DSN
    admin_dsn: str = DEFAULT_ADMIN_DSN  # the superuser's: PLANA_TEST_PG_DSN, or the session's

    @property
    def dsn(self) -> str:
        """What Odoo and the jobs connect as: PLANA_TEST_ODOO_PG_DSN, else the admin's DSN with
        the `odoo` role (user and password) in place of the superuser."""
        if self.odoo_dsn:
            return self.odoo_dsn
        info = conninfo_to_dict(self.admin_dsn)
        info["user"], info["password"] = ODOO_ROLE
        return make_conninfo("", **{k: str(v) for k, v in info.items() if v is not None})

    def for_admin(self, admin_dsn: str) -> OdooTarget:
        """This target with the session's superuser DSN (pytest-docker's port, for one)."""
        return dataclasses.replace(self, admin_dsn=admin_dsn)

    # -- what this mode has ----------------------------------------------------------------
    @property
    def name(self) -> str:
        return "real Odoo" if self.real else "stand-in"

    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self.bins)) if self.real else STANDIN_VERSIONS

    def has(self, version: int) -> bool:
        return version in self.versions()

    def require(self, version: int) -> None:
        """Skip the calling test when this mode has no Odoo of `version`."""
        if not self.has(version):
            import pytest

            pytest.skip(f"no Odoo {version} in {self.name} mode")

    # -- the binary --------------------------------------------------------------------------
    def binary(
        self,
        tmpdir: Path,
        version: int,
        *,
        log_calls: Path | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        python: bool = False,
    ) -> Path:
        """An executable `odoo` of `version` in `tmpdir`, as an image has one.

        `log_calls`: a file the wrapper appends each call's arguments to (read them with
        `calls`). `env`: variables the wrapper sets for Odoo (e.g. PLANA_TEST_ODOO_SLEEP).
        `python`: the wrapper is a Python script, as the image's `/usr/bin/odoo` is, in its own
        directory `tmpdir/py{version}` beside the `odoo` package it stands for (`package`): the
        jobs' probe of the binary's interpreter then finds that package, as in the image.
        """
        self.require(version)
        sets = {**(env or {})}
        if self.real:
            exe = [self.bins[version]]
        else:
            sets["ODOO_STANDIN_VERSION"] = str(version)
            exe = [sys.executable, str(STANDIN)]  # the venv's python: psycopg is there
        if python:
            return self._python_binary(tmpdir / f"py{version}", version, exe, sets, log_calls,
                                       name)  # fmt: skip
        path = tmpdir / (name or f"odoo{version}")
        tmpdir.mkdir(parents=True, exist_ok=True)
        lines = ["#!/bin/sh"]
        if log_calls is not None:
            # One record per call: each argument NUL-terminated, then a newline.
            lines.append(f"printf '%s\\0' \"$@\" >> {shlex.quote(str(log_calls))}")
            lines.append(f"printf '\\n' >> {shlex.quote(str(log_calls))}")
        for key, value in sets.items():
            lines.append(f"{key}={shlex.quote(value)}; export {key}")
        lines.append("exec " + " ".join(map(shlex.quote, exe)) + ' "$@"')
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o755)
        return path

    def _python_binary(
        self, where: Path, version: int, exe: list[str], sets: Mapping[str, str],
        log_calls: Path | None, name: str | None,
    ) -> Path:  # fmt: skip
        where.mkdir(parents=True, exist_ok=True)
        package = where / "odoo"
        if not package.exists():
            if self.real:
                package.symlink_to(self.package(version), target_is_directory=True)
            else:
                _standin_package(package, version)
        path = where / (name or f"odoo{version}")
        # sys.executable: the shebang names a real interpreter, and the wrapper imports nothing
        # of Odoo (it execs the binary); the probe finds `odoo` beside it (sys.path[0]).
        body = [
            f"#!{sys.executable}",
            "import os, sys",
            f"log = {str(log_calls) if log_calls else None!r}",
            "if log:",
            "    with open(log, 'ab') as fh:",
            "        fh.write(b''.join(os.fsencode(a) + b'\\0' for a in sys.argv[1:]) + b'\\n')",
            f"os.environ.update({dict(sets)!r})",
            f"exe = {exe!r}",
            "os.execv(exe[0], exe + sys.argv[1:])",
        ]
        path.write_text("\n".join(body) + "\n")
        path.chmod(0o755)
        return path

    def package(self, version: int) -> Path:
        """Real mode: the `odoo` package of `version`'s binary (what its interpreter imports,
        else the one holding the `base` of its addons path)."""
        from jobs.adapters.odoo import addons_digest

        found = addons_digest.installation(self.bins[version]).release_package
        if found is None:
            for entry in self.addons[version].split(","):
                base = Path(entry.strip()) / "base" / "__manifest__.py"
                if entry.strip() and base.is_file():
                    found = addons_digest.server_package(str(base.parent))
                    break
        if found is None:
            raise TargetError(
                f"Odoo {version}'s odoo package not found: make PLANA_TEST_ODOO{version}_BIN a "
                f"Python odoo-bin, or list its odoo/addons in PLANA_TEST_ODOO{version}_ADDONS"
            )
        return Path(found)

    # -- the addons, the config ----------------------------------------------------------------
    def addons_path(self, version: int, *extra: str | Path, openupgrade: bool = False) -> str:
        """`version`'s addons path: `extra` first (they win), then Odoo's, then
        tests/support/addons."""
        self.require(version)
        parts = [str(p) for p in extra]
        if self.real:
            parts += [p.strip() for p in self.addons[version].split(",") if p.strip()]
        if openupgrade:
            parts.append(self._openupgrade(version))
        parts.append(str(TEST_ADDONS))
        return ",".join(parts)

    def config(
        self,
        tmpdir: Path,
        version: int,
        *,
        extra_addons: Sequence[str | Path] = (),
        openupgrade: bool = False,
        **options: str,
    ) -> Path:
        """An Odoo config file (`-c`, or the jobs' ODOO_RC / --odoo-config) for `version`:
        addons_path (see `addons_path`), data_dir `tmpdir/odoo-data` and `options`. No db_*
        options: the jobs add their own."""
        values = {
            "addons_path": self.addons_path(version, *extra_addons, openupgrade=openupgrade),
            "data_dir": str(tmpdir / "odoo-data"),
            **options,
        }
        tmpdir.mkdir(parents=True, exist_ok=True)
        path = tmpdir / f"odoo{version}.conf"
        path.write_text("[options]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
        return path

    def _openupgrade(self, version: int) -> str:
        if not self.real:
            return str(_standin_openupgrade())
        if version == 17 and self.openupgrade17:
            return self.openupgrade17
        if version == 17:
            raise TargetError(
                "no OpenUpgrade for Odoo 17: set PLANA_TEST_OPENUPGRADE17_PATH (the directory "
                "holding OpenUpgrade 17.0's openupgrade_framework)"
            )
        if version != 18 or not self.openupgrade:
            raise TargetError(
                f"no OpenUpgrade for Odoo {version}: set "
                "PLANA_TEST_OPENUPGRADE_PATH (an OpenUpgrade 18.0 checkout)"
            )
        return self.openupgrade

    def has_openupgrade(self, version: int) -> bool:
        mine = {17: self.openupgrade17, 18: self.openupgrade}.get(version)
        return self.has(version) and (not self.real or bool(mine))

    def upgrade_path(self, tmpdir: Path, version: int) -> Path:
        """An --upgrade-path for migrating to `version`: OpenUpgrade's scripts (test mode) or a
        directory the stand-in accepts (`*/*/pre-*.py`)."""
        scripts = Path(self._openupgrade(version)) / "openupgrade_scripts" / "scripts"
        if not self.real:
            (scripts / "base" / f"{version}.0.1.3").mkdir(parents=True, exist_ok=True)
            (scripts / "base" / f"{version}.0.1.3" / "pre-migration.py").write_text("# stand-in\n")
        return scripts

    # -- the connection ------------------------------------------------------------------------
    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment to run the binary in: `base` (default ours) without PG*, ODOO_*
        (ODOO_RC, the stand-in's knobs) and PLANA_TEST_ODOO_SLEEP, plus libpq's PG* for `dsn`."""
        src = os.environ if base is None else base
        env = {k: v for k, v in src.items() if not k.startswith(("PG", "ODOO_")) and k != SLEEP_VAR}
        info = conninfo_to_dict(self.dsn)
        env.update({_LIBPQ_ENV[k]: str(v) for k, v in info.items() if k in _LIBPQ_ENV and v})
        return env

    def connect(self, dbname: str, **kw: Any) -> psycopg.Connection[Any]:
        """A connection as Odoo's role (what Odoo itself could see)."""
        return psycopg.connect(self.dsn, dbname=dbname, **kw)


def calls(log: Path) -> list[list[str]]:
    """The argument lists `binary(..., log_calls=log)` recorded, one per call."""
    if not log.exists():
        return []
    return [rec.split("\0")[:-1] for rec in log.read_text().split("\n") if rec]


def from_env(environ: Mapping[str, str] | None = None) -> OdooTarget:
    """The target the environment describes; TargetError when test mode is half-configured."""
    environ = os.environ if environ is None else environ
    bins, addons = {}, {}
    for version in REAL_VERSIONS:
        exe = environ.get(f"PLANA_TEST_ODOO{version}_BIN")
        if not exe:
            continue
        path = environ.get(f"PLANA_TEST_ODOO{version}_ADDONS")
        if not path:
            raise TargetError(
                f"PLANA_TEST_ODOO{version}_BIN is set: PLANA_TEST_ODOO{version}"
                f"_ADDONS must give Odoo {version}'s addons path"
            )
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise TargetError(f"PLANA_TEST_ODOO{version}_BIN={exe} is not an executable")
        bins[version], addons[version] = exe, path
    real = bool(bins)
    openupgrade = environ.get("PLANA_TEST_OPENUPGRADE_PATH") or None
    if openupgrade and not (Path(openupgrade) / "openupgrade_scripts" / "scripts").is_dir():
        raise TargetError(
            f"PLANA_TEST_OPENUPGRADE_PATH={openupgrade} holds no "
            "openupgrade_scripts/scripts (an OpenUpgrade 18.0 checkout?)"
        )
    openupgrade17 = environ.get("PLANA_TEST_OPENUPGRADE17_PATH") or None
    if (
        openupgrade17
        and not (Path(openupgrade17) / "openupgrade_framework" / "__manifest__.py").is_file()
    ):
        raise TargetError(
            f"PLANA_TEST_OPENUPGRADE17_PATH={openupgrade17} holds no "
            "openupgrade_framework (OpenUpgrade 17.0's addons directory?)"
        )
    return OdooTarget(
        real=real,
        bins=bins,
        addons=addons,
        openupgrade=openupgrade if real else None,
        openupgrade17=openupgrade17 if real else None,
        odoo_dsn=environ.get("PLANA_TEST_ODOO_PG_DSN") or None,
        admin_dsn=environ.get("PLANA_TEST_PG_DSN") or DEFAULT_ADMIN_DSN,
    )


def _standin_package(package: Path, version: int) -> None:
    """For the stand-in: an `odoo` package as an image has one, with base's manifest and
    Odoo's own release.py (never imported: the jobs only find it and read its release.py)."""
    (package / "addons" / "base").mkdir(parents=True)
    (package / "__init__.py").write_text("raise SystemExit('the stand-in odoo is not imported')\n")
    (package / "addons" / "__init__.py").write_text("")
    (package / "addons" / "base" / "__manifest__.py").write_text("{'depends': []}\n")
    (package / "release.py").write_text(RELEASE_PY.format(version=version))


# Odoo 17/18's odoo/release.py, the part that makes `release.version` and `description`.
RELEASE_PY = """\
RELEASE_LEVELS = [ALPHA, BETA, RELEASE_CANDIDATE, FINAL] = ['alpha', 'beta', 'candidate', 'final']
RELEASE_LEVELS_DISPLAY = {{ALPHA: ALPHA, BETA: BETA, RELEASE_CANDIDATE: 'rc', FINAL: ''}}
version_info = ({version}, 0, 0, FINAL, 0, '')
version = '.'.join(str(s) for s in version_info[:2]) + RELEASE_LEVELS_DISPLAY[version_info[3]] \\
    + str(version_info[4] or '') + version_info[5]
series = serie = major_version = '.'.join(str(s) for s in version_info[:2])
product_name = 'Odoo'
description = 'Odoo Server'
"""


@functools.cache
def _standin_openupgrade() -> Path:
    """For the stand-in: an addons directory holding (empty) `openupgrade_framework` and
    `openupgrade_scripts` addons, which it wants on the addons path of an OpenUpgrade run, as
    real Odoo does (removed when the session ends)."""
    root = Path(tempfile.mkdtemp(prefix="plana-standin-openupgrade-"))
    atexit.register(shutil.rmtree, root, True)
    for name in ("openupgrade_framework", "openupgrade_scripts"):
        (root / name).mkdir()
        manifest = f"{{'name': '{name}', 'installable': False}}\n"
        (root / name / "__manifest__.py").write_text(manifest)
    (root / "openupgrade_scripts" / "scripts").mkdir()
    return root


def current() -> OdooTarget:
    """The target of this test run (from the environment, read once)."""
    return from_env()


def ensure_role(admin_dsn: str, target: OdooTarget) -> None:
    """Create the LOGIN CREATEDB role of `target.dsn` when it does not exist (as the admin)."""
    info = conninfo_to_dict(target.dsn)
    user, password = str(info.get("user") or ODOO_ROLE[0]), info.get("password")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone():
            return
        stmt = sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(user))
        if password:
            stmt = stmt + sql.SQL(" PASSWORD {}").format(sql.Literal(str(password)))
        try:
            conn.execute(stmt)
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass  # created meanwhile by a parallel run


def main(argv: Sequence[str]) -> int:
    """`python -m tests.support.odoo_target --check`: one line saying what test mode would run."""
    try:
        target = from_env()
    except TargetError as exc:
        print(f"test-odoo: {exc}", file=sys.stderr)
        return 2
    if "--require-real" in argv and not target.real:
        print(
            "test-odoo: set PLANA_TEST_ODOO17_BIN and/or PLANA_TEST_ODOO18_BIN (and their "
            "PLANA_TEST_ODOO{17,18}_ADDONS): see README, Real-Odoo test mode",
            file=sys.stderr,
        )
        return 2
    versions = ", ".join(str(v) for v in target.versions())
    print(
        f"test-odoo: {target.name} {versions}; Odoo connects as "
        f"{conninfo_to_dict(target.dsn).get('user')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
