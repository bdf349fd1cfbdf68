"""Odoo's behaviour that the jobs rely on, checked against the Odoo under test
(tests/support/odoo_target): the stand-in in CI, real Odoo 17 and 18 in test mode
(`make test-odoo`). Each fact here holds in both worlds; a test that fails only in one of them
is a divergence of the stand-in.

A real `-i base` takes a minute or more, so each version builds one base database per module
and the tests work on clones of it (CREATE DATABASE ... TEMPLATE, plus its filestore).
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.support import odoo_target
from tests.support.harness import ROOT
from tests.support.odoo_target import APP, APP2, FAIL, FAIL_UPDATE, GONE, LEAVE, SLEEP, OdooTarget

VERSIONS = (17, 18)
TARGET = odoo_target.current()
# A real base install is slow on a loaded machine; the stand-in's runs take a second.
RUN_TIMEOUT = 900.0 if TARGET.real else 60.0
pytestmark = pytest.mark.timeout(1800 if TARGET.real else 300)
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) "
    r"([\w.]+): "
)


@dataclass
class Odoo:
    """One version of the Odoo under test, with its config and data dir."""

    target: OdooTarget
    version: int
    exe: Path
    conf: Path
    data_dir: Path

    def argv(self, args: tuple[str, ...], config: bool | Path) -> list[str]:
        """`config`: True for this version's config, a path for another, False for none."""
        conf = self.conf if config is True else config
        return [str(self.exe), *(["-c", str(conf)] if conf else []), *args]

    def environ(self, env: dict[str, str]) -> dict[str, str]:
        return {**self.target.env(), **env}

    def run(
        self, *args: str, config: bool | Path = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args, config),
            env=self.environ(env or {}),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )

    def load(self, db: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The jobs' call: -d db, no demo, --stop-after-init --no-http."""
        return self.run(
            "-d", db, "--without-demo=all", *args, "--stop-after-init", "--no-http", env=env
        )

    def popen(self, db: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        argv = self.argv(
            ("-d", db, "--without-demo=all", *args, "--stop-after-init", "--no-http"), True
        )
        return subprocess.Popen(
            argv, env=self.environ(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )


@dataclass
class Base:
    """A base database built by this version (`-d <missing> -i base`) and how it went."""

    odoo: Odoo
    db: str
    built: subprocess.CompletedProcess[str]


def _drop(admin_dsn: str, db: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


@pytest.fixture(scope="module")
def target(pg_dsn: str) -> OdooTarget:
    """The Odoo under test, connecting as a role that exists."""
    target = TARGET.for_admin(pg_dsn)
    odoo_target.ensure_role(pg_dsn, target)
    return target


@pytest.fixture(scope="module")
def role(target: OdooTarget) -> str:
    return str(conninfo_to_dict(target.dsn).get("user"))


@pytest.fixture(scope="module", params=VERSIONS, ids=lambda v: f"odoo{v}")
def base(
    request: pytest.FixtureRequest,
    pg_dsn: str,
    target: OdooTarget,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Base]:
    version: int = request.param
    TARGET.require(version)
    tmp = tmp_path_factory.mktemp(f"fidelity{version}")
    odoo = Odoo(
        target, version, target.binary(tmp, version), target.config(tmp, version), tmp / "odoo-data"
    )
    db = f"fidelity_{os.urandom(5).hex()}_{version}"
    try:
        yield Base(odoo, db, odoo.load(db, "-i", "base"))
    finally:
        _drop(pg_dsn, db)


@pytest.fixture
def clone(base: Base, pg_dsn: str, role: str, drop_dbs: list[str]) -> Callable[[], str]:
    """A copy of the base database (and of its filestore), owned by Odoo's role."""
    assert base.built.returncode == 0, base.built.stderr[-3000:]

    def make() -> str:
        db = f"{base.db}_{os.urandom(4).hex()}"
        drop_dbs.append(db)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                    sql.Identifier(db), sql.Identifier(base.db), sql.Identifier(role)
                )
            )
        store = base.odoo.data_dir / "filestore"
        if (store / base.db).is_dir():
            shutil.copytree(store / base.db, store / db)
        return db

    return make


@pytest.fixture
def odoo(base: Base) -> Odoo:
    return base.odoo


def rows(dsn: str, db: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, dbname=db) as conn:
        return conn.execute(query, params).fetchall()


def states(dsn: str, db: str) -> dict[str, tuple[str, str | None]]:
    return {
        n: (s, v)
        for n, s, v in rows(dsn, db, "SELECT name, state, latest_version FROM ir_module_module")
    }


def log_lines(stderr: str) -> list[re.Match[str]]:
    return [m for line in stderr.splitlines() if (m := LOG_LINE.match(line))]


def wait_for_line(proc: subprocess.Popen[bytes], needle: str) -> str:
    """Read the child's stderr until a complete line holds `needle`; return that line.

    Unbuffered reads of the pipe itself (a buffered reader would hide lines from select), with
    a deadline, not a sleep."""
    assert proc.stderr is not None
    fd, seen, until = proc.stderr.fileno(), b"", time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen += chunk
        for line in seen.decode(errors="replace").splitlines(keepends=True):
            if needle in line and line.endswith("\n"):
                return line
    raise AssertionError(f"{needle!r} never logged; got:\n{seen[-3000:].decode(errors='replace')}")


# --------------------------------------------------------------------------- the harness


def test_test_mode_variables(tmp_path: Path) -> None:
    exe = tmp_path / "odoo"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    ok = {"PLANA_TEST_PG_DSN": "postgresql://postgres@db.example:6543/postgres"}
    standin = odoo_target.from_env(ok)
    assert not standin.real and standin.versions() == (17, 18, 19)
    assert conninfo_to_dict(standin.for_admin("host=elsewhere user=root").dsn) == {
        "host": "elsewhere",
        "user": "odoo",
        "password": "odoo",
    }
    assert conninfo_to_dict(standin.dsn) == {
        "host": "db.example",
        "port": "6543",
        "dbname": "postgres",
        "user": "odoo",
        "password": "odoo",
    }
    real = odoo_target.from_env(
        {**ok, "PLANA_TEST_ODOO18_BIN": str(exe), "PLANA_TEST_ODOO18_ADDONS": "/x/addons"}
    )
    assert real.real and real.versions() == (18,)
    assert real.addons_path(18).split(",") == ["/x/addons", str(odoo_target.TEST_ADDONS)]
    for env, word in (
        ({"PLANA_TEST_ODOO18_BIN": str(exe)}, "PLANA_TEST_ODOO18_ADDONS"),
        (
            {"PLANA_TEST_ODOO17_BIN": str(tmp_path), "PLANA_TEST_ODOO17_ADDONS": "/x"},
            "PLANA_TEST_ODOO17_BIN",
        ),
        (
            {
                "PLANA_TEST_ODOO18_BIN": str(exe),
                "PLANA_TEST_ODOO18_ADDONS": "/x",
                "PLANA_TEST_OPENUPGRADE_PATH": str(tmp_path),
            },
            "PLANA_TEST_OPENUPGRADE_PATH",
        ),
    ):
        with pytest.raises(odoo_target.TargetError, match=word):
            odoo_target.from_env({**ok, **env})


def test_make_test_odoo_without_an_odoo_says_so_in_one_line() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PLANA_TEST_ODOO") and k not in ("MAKELEVEL", "MAKEFLAGS")
    }
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "test-odoo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and done.stdout == ""  # nothing built, nothing run
    lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("make: ***")]
    assert len(lines) == 1 and lines[0].startswith("make test-odoo: needs PLANA_TEST_ODOO17_BIN")


def test_binary_records_its_calls(target: OdooTarget, tmp_path: Path) -> None:
    version = target.versions()[-1]
    log = tmp_path / "calls"
    exe = target.binary(tmp_path, version, log_calls=log)
    for args in (["--version"], ["--version", "--x=a b"]):
        subprocess.run(
            [str(exe), *args],
            env=target.env(),
            capture_output=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    assert odoo_target.calls(log) == [["--version"], ["--version", "--x=a b"]]


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("version", VERSIONS)
def test_version_prints_the_series(target: OdooTarget, version: int, tmp_path: Path) -> None:
    target.require(version)
    res = subprocess.run(
        [str(target.binary(tmp_path, version)), "--version"],
        env=target.env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"Odoo Server {version}.0\n"


@pytest.mark.parametrize("version", VERSIONS)
def test_release_py_gives_the_version_line(
    target: OdooTarget, version: int, tmp_path: Path
) -> None:
    """What template-build reads instead of running `odoo --version`
    (jobs.adapters.odoo.release_version) is what the binary prints: real Odoo's own release.py in
    test mode."""
    from jobs.adapters import odoo as odoo_mod
    from jobs.adapters.odoo import addons_digest

    target.require(version)
    exe = target.binary(tmp_path, version, python=True)
    package = addons_digest.installation(str(exe)).release_package
    assert package is not None and Path(package).name == "odoo"
    asked = subprocess.run(
        [str(exe), "--version"], env=target.env(), capture_output=True, text=True,
        timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    assert odoo_mod.release_version(package) == asked.stdout.strip() == f"Odoo Server {version}.0"


def test_unknown_option_is_a_usage_error(odoo: Odoo) -> None:
    res = odoo.run("--no-such-option", "--stop-after-init", config=False)
    assert res.returncode == 2 and res.stdout == ""
    usage = re.search(r"^Usage: (\S+) server \[options\]$", res.stderr, re.M)
    assert usage, res.stderr
    assert f"\n{usage[1]} server: error: no such option: --no-such-option\n" in res.stderr


def test_config_file_errors(odoo: Odoo, tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    res = odoo.run("-c", str(missing), "--stop-after-init", config=False)
    assert res.returncode == 2, res.stderr
    assert re.search(
        r"^\S+ server: error: The config file '"
        + re.escape(str(missing))
        + "' selected with -c/--config doesn't exist or is not readable",
        res.stderr,
        re.M,
    ), res.stderr
    # A malformed file is not a usage error: configparser's exception escapes, exit 1.
    for text, exc in (
        ("not an ini file\n[options\n", "configparser.MissingSectionHeaderError"),
        ("[options]\nno equals sign here\n", "configparser.ParsingError"),
    ):
        bad = tmp_path / "bad.conf"
        bad.write_text(text)
        res = odoo.run("-c", str(bad), "--stop-after-init", config=False)
        assert res.returncode == 1, res.stderr
        assert "Traceback (most recent call last):" in res.stderr
        assert re.search(rf"^{re.escape(exc)}: ", res.stderr, re.M), res.stderr
        assert not log_lines(res.stderr)  # it fails before logging is set up


# --------------------------------------------------------------------------- a new database


def test_missing_database_is_created_with_base_and_web(base: Base, pg_dsn: str, role: str) -> None:
    built, db, version = base.built, base.db, base.odoo.version
    assert built.returncode == 0, built.stderr[-3000:]
    owner = rows(
        pg_dsn,
        "postgres",
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
        (db,),
    )
    assert owner == [(role,)]  # created by Odoo itself, as its role
    installed = {n: v for n, (s, v) in states(pg_dsn, db).items() if s == "installed"}
    # `-i base` installs web too: web is auto_install and depends only on base.
    assert installed == {"base": f"{version}.0.1.3", "web": f"{version}.0.1.0"}
    assert states(pg_dsn, db)[GONE][0] == "uninstallable"  # tests/support/addons is on the path
    assert states(pg_dsn, db)[APP][0] == "uninstalled"


def test_addons_data_dir_is_created(base: Base) -> None:
    path = base.odoo.data_dir / "addons" / f"{base.odoo.version}.0"
    assert path.is_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o500  # Odoo's read-only placeholder
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_log_format(base: Base) -> None:
    built, db, version = base.built, base.db, base.odoo.version
    lines = log_lines(built.stderr)
    assert len(lines) > 5, built.stderr
    raw = [m.string for m in lines]
    assert all(line.endswith(" ") for line in raw), [ln for ln in raw if not ln.endswith(" ")]
    first = lines[0]
    assert (first[1], first[2], first[3]) == ("INFO", "?", "odoo"), first.string
    assert re.match(rf"Odoo version {version}\.0\b", first.string[first.end() :])
    assert all(m[2] in ("?", db) for m in lines)
    # Once the registry of the database is loaded, the lines carry its name (to the end).
    shutdown = [m for m in lines if m.string.endswith("Initiating shutdown ")]
    assert shutdown and shutdown[-1][2] == db


def test_uninitialised_database_is_left_alone(
    odoo: Odoo, pg_dsn: str, role: str, drop_dbs: list[str], uid: str
) -> None:
    db = f"fidelity_{uid}_empty"
    drop_dbs.append(db)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(role))
        )
    res = odoo.run("-d", db, "--stop-after-init", "--no-http")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        f"ERROR {db} odoo.modules.loading: Database {db} not initialized, you can force it "
        "with `-i base`"
    ) in res.stderr
    assert rows(pg_dsn, db, "SELECT to_regclass('ir_module_module')") == [(None,)]


# --------------------------------------------------------------------------- modules


def test_invalid_module_names_are_ignored_with_exit_0(
    odoo: Odoo, clone: Callable[[], str], pg_dsn: str
) -> None:
    db = clone()
    before = states(pg_dsn, db)
    res = odoo.load(db, "-i", "plana_no_such_module")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        f"WARNING {db} odoo.modules.loading: invalid module names, ignored: plana_no_such_module"
    ) in res.stderr
    assert states(pg_dsn, db) == before


def test_apps_install_and_update(odoo: Odoo, clone: Callable[[], str], pg_dsn: str) -> None:
    db, version = clone(), odoo.version
    res = odoo.load(db, "-i", APP2)
    assert res.returncode == 0, res.stderr[-3000:]
    st = states(pg_dsn, db)
    assert st[APP] == st[APP2] == ("installed", f"{version}.0.1.0")  # APP by dependency
    assert sorted(rows(pg_dsn, db, "SELECT name FROM plana_test_record")) == [
        ("plana_test_app record",),
        ("plana_test_app2 record",),
    ]
    files = rows(
        pg_dsn,
        db,
        "SELECT name, store_fname, checksum, file_size FROM ir_attachment "
        "WHERE name LIKE 'plana_test_app%%.txt' ORDER BY name",
    )
    assert [f[0] for f in files] == ["plana_test_app.txt", "plana_test_app2.txt"]
    for name, fname, checksum, size in files:
        content = (odoo.data_dir / "filestore" / db / fname).read_bytes()
        assert content == f"{name.removesuffix('.txt')} attachment\n".encode()
        assert fname == f"{checksum[:2]}/{checksum}" and len(content) == size
        assert hashlib.sha1(content).hexdigest() == checksum

    # -u APP updates APP and what depends on it (APP2): both data files are loaded again.
    res = odoo.load(db, "-u", APP)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"INFO {db} odoo.modules.loading: loading {APP2}/data/{APP2}_data.xml " in res.stderr
    st = states(pg_dsn, db)
    assert st[APP][0] == st[APP2][0] == "installed"
    assert len(rows(pg_dsn, db, "SELECT id FROM plana_test_record")) == 2  # by xmlid, not again


def test_failing_install_exits_255(odoo: Odoo, clone: Callable[[], str], pg_dsn: str) -> None:
    db = clone()
    res = odoo.load(db, "-i", FAIL)
    assert res.returncode == 255, res.stderr[-3000:]
    assert "KeyError: 'plana.test.missing'" in res.stderr
    assert re.search(
        r"^odoo\.tools\.convert\.ParseError: while parsing \S+/plana_test_fail/data/"
        r"plana_test_fail_data\.xml:\d+, somewhere inside$",
        res.stderr,
        re.M,
    )
    assert (
        f"CRITICAL {db} odoo.service.server: Failed to initialize database `{db}`. " in res.stderr
    )
    assert states(pg_dsn, db)[FAIL][0] == "uninstalled"
    assert rows(pg_dsn, db, "SELECT to_regclass('plana_test_missing')") == [(None,)]


def test_failing_update_exits_255(odoo: Odoo, clone: Callable[[], str], pg_dsn: str) -> None:
    db = clone()
    res = odoo.load(db, "-i", FAIL_UPDATE)
    assert res.returncode == 0, res.stderr[-3000:]  # installing it is fine
    assert states(pg_dsn, db)[FAIL_UPDATE][0] == "installed"
    res = odoo.load(db, "-u", FAIL_UPDATE)
    assert res.returncode == 255, res.stderr[-3000:]
    assert (
        "odoo.exceptions.UserError: plana_test_fail_update: updating this module fails (by design)"
    ) in res.stderr
    assert "odoo.tools.convert.ParseError: while parsing " in res.stderr
    assert f"Failed to initialize database `{db}`." in res.stderr
    assert states(pg_dsn, db)[FAIL_UPDATE][0] == "installed"


def test_sleep_happens_inside_the_transaction(
    odoo: Odoo, clone: Callable[[], str], pg_dsn: str
) -> None:
    db = clone()
    proc = odoo.popen(db, "-i", SLEEP, PLANA_TEST_ODOO_SLEEP="600")
    try:
        line = wait_for_line(proc, odoo_target.SLEEP_LINE)
        assert f"{odoo_target.SLEEP_LINE} 600s (PLANA_TEST_ODOO_SLEEP)" in line
        assert proc.poll() is None
        # Nothing of this run is committed while it sleeps, and its transaction is open.
        assert states(pg_dsn, db)[SLEEP][0] == "uninstalled"
        assert (
            rows(
                pg_dsn,
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE "
                "datname = %s AND state = 'idle in transaction'",
                (db,),
            )[0][0]
            >= 1
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=RUN_TIMEOUT)
    assert states(pg_dsn, db)[SLEEP][0] == "uninstalled"  # rolled back by PostgreSQL

    res = odoo.load(db, "-i", SLEEP, PLANA_TEST_ODOO_SLEEP="0")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{odoo_target.SLEEP_LINE} 0s" in res.stderr
    assert states(pg_dsn, db)[SLEEP][0] == "installed"
    res = odoo.load(db, "-u", SLEEP)  # an update sleeps too (PLANA_TEST_ODOO_SLEEP unset: 0)
    assert res.returncode == 0 and f"{odoo_target.SLEEP_LINE} 0s" in res.stderr, res.stderr


def test_unmet_dependency_is_left_to_install_with_exit_0(
    odoo: Odoo, clone: Callable[[], str], pg_dsn: str
) -> None:
    db = clone()
    res = odoo.load(db, "-i", LEAVE)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        f"INFO {db} odoo.modules.graph: module {LEAVE}: Unmet dependencies: {GONE} " in res.stderr
    )
    assert (
        f"ERROR {db} odoo.modules.loading: Some modules have inconsistent states, some "
        f"dependencies may be missing: ['{LEAVE}'] "
    ) in res.stderr
    assert "Some modules are not loaded" not in res.stderr  # only for installed modules
    st = states(pg_dsn, db)
    assert st[LEAVE][0] == "to install" and st[GONE][0] == "uninstallable"


def test_missing_dependency_fails_with_exit_255(
    odoo: Odoo, clone: Callable[[], str], pg_dsn: str, tmp_path: Path
) -> None:
    db, name = clone(), "plana_test_nodep"
    extra = tmp_path / "extra"
    (extra / name).mkdir(parents=True)
    (extra / name / "__init__.py").write_text("")
    (extra / name / "__manifest__.py").write_text(
        "{'name': 'x', 'version': '1.0', 'license': 'LGPL-3', 'depends': ['plana_test_absent']}\n"
    )
    conf = odoo.target.config(
        tmp_path, odoo.version, extra_addons=[extra], data_dir=str(odoo.data_dir)
    )
    res = odoo.run(
        "-d", db, "--without-demo=all", "-i", name, "--stop-after-init", "--no-http", config=conf
    )
    assert res.returncode == 255, res.stderr[-3000:]
    q = "'" if odoo.version == 17 else '"'  # 17 formats with %r, 18 with "%(module)s"
    assert (
        f"\nodoo.exceptions.UserError: You try to install module {q}{name}{q} that depends on "
        f"module {q}plana_test_absent{q}.\nBut the latter module is not available in your system."
    ) in res.stderr
    assert states(pg_dsn, db).get(name, ("uninstalled",))[0] == "uninstalled"


@pytest.mark.parametrize("base", [17], ids=["odoo17"], indirect=True)  # a 17 database only
def test_openupgrade_migrates_a_17_database_to_18(
    base: Base, clone: Callable[[], str], pg_dsn: str, tmp_path: Path
) -> None:
    assert base.odoo.version == 17
    target = base.odoo.target
    if not target.has_openupgrade(18):
        pytest.skip("no OpenUpgrade (PLANA_TEST_OPENUPGRADE_PATH)")
    db = clone()
    conf = target.config(tmp_path, 18, openupgrade=True, data_dir=str(base.odoo.data_dir))
    odoo18 = Odoo(target, 18, target.binary(tmp_path, 18), conf, base.odoo.data_dir)
    res = odoo18.load(
        db,
        "-u",
        "all",
        "--load=base,web,openupgrade_framework",
        f"--upgrade-path={target.upgrade_path(tmp_path, 18)}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    st = states(pg_dsn, db)
    assert st["base"] == ("installed", "18.0.1.3") and st["web"] == ("installed", "18.0.1.0")
