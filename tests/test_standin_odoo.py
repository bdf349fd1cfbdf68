"""Contract tests for tests/standins/odoo, the TEST STAND-IN for the Odoo binary.

The jobs' tests rely on the stand-in keeping Odoo's command line, exit codes and effects; these
tests pin that contract against a real PostgreSQL (PLANA_TEST_PG_DSN).
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

STANDIN = Path(__file__).resolve().parent / "standins" / "odoo"
DSN = os.environ.get("PLANA_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ (INFO|WARNING|ERROR|CRITICAL) \S+ [\w.]+: "
)
PREFIX = """
DELETE FROM ir_ui_view WHERE id IN (SELECT res_id FROM ir_model_data
    WHERE module = 'agreement_legal' AND model = 'ir.ui.view');
DELETE FROM ir_model_data WHERE module = 'agreement_legal' AND model = 'ir.ui.view';
"""


def pg_env() -> dict[str, str]:
    """libpq variables for PLANA_TEST_PG_DSN."""
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
    info = conninfo_to_dict(DSN)
    return {names[k]: str(v) for k, v in info.items() if k in names}


class Odoo:
    """Runs the stand-in the way the jobs do: `odoo` found on PATH, venv first."""

    def __init__(self, tmp: Path) -> None:
        self.data_dir = tmp / "data"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "ODOO_"))}
        self.env.update(pg_env())
        self.env["PATH"] = os.pathsep.join(
            [os.path.dirname(sys.executable), self.env.get("PATH", "")]
        )

    def argv(self, args: tuple[str, ...]) -> list[str]:
        return [str(STANDIN), *args]

    def environ(self, version: int, env: dict[str, str]) -> dict[str, str]:
        return {**self.env, "ODOO_STANDIN_VERSION": str(version), **env}

    def __call__(
        self, *args: str, version: int = 18, timeout: float = 30, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args), env=self.environ(version, env), capture_output=True, text=True,
            timeout=timeout, check=False,
        )

    def popen(self, *args: str, version: int = 18, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(args), env=self.environ(version, env), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )

    def init(self, db: str, *args: str, version: int = 18, **env: str) -> (
            subprocess.CompletedProcess[str]):
        """The usual job call: -d db, data dir, --stop-after-init."""
        return self("-d", db, "-D", str(self.data_dir), "--stop-after-init", *args,
                    version=version, **env)


@pytest.fixture
def odoo(tmp_path: Path) -> Odoo:
    return Odoo(tmp_path)


@pytest.fixture
def new_db() -> Iterator[Callable[[], str]]:
    names: list[str] = []

    def make() -> str:
        names.append(f"standin_t_{uuid.uuid4().hex[:10]}")
        return names[-1]

    yield make
    with psycopg.connect(DSN, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@pytest.fixture
def upgrade_path(tmp_path: Path) -> Path:
    """A directory Odoo accepts as --upgrade-path (`*/*/pre-*.py`), like OpenUpgrade's scripts."""
    scripts = tmp_path / "openupgrade_scripts" / "scripts"
    (scripts / "base" / "18.0.1.3").mkdir(parents=True)
    (scripts / "base" / "18.0.1.3" / "pre-migration.py").write_text("# stand-in\n")
    return scripts


def rows(db: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(DSN, dbname=db) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def modules(db: str) -> dict[str, tuple[str, str | None, bool]]:
    return {n: (s, v, d) for n, s, v, d in rows(
        db, "SELECT name, state, latest_version, demo FROM ir_module_module")}


def db_exists(db: str) -> bool:
    return bool(rows("postgres", "SELECT 1 FROM pg_database WHERE datname = %s", (db,)))


def initialised(db: str) -> bool:
    return rows(db, "SELECT to_regclass('ir_module_module')")[0][0] is not None


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 15) -> str:
    """Read the child's stderr until a line holds `needle`; return what was read."""
    assert proc.stderr is not None
    seen, until = "", time.monotonic() + timeout
    while time.monotonic() < until:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline()
            seen += line
            if needle in line:
                return seen
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"{needle!r} never logged; got:\n{seen}")


# --------------------------------------------------------------------------- command line


def test_version_and_optparse_errors(odoo: Odoo, tmp_path: Path) -> None:
    for version in (17, 18, 19):
        res = odoo("--version", version=version)
        assert (res.returncode, res.stdout.strip()) == (0, f"Odoo Server {version}.0")
    res = odoo("--x")
    assert res.returncode == 2
    assert "odoo server: error: no such option: --x" in res.stderr
    res = odoo("--with-demo", version=17)
    assert res.returncode == 2 and "no such option: --with-demo" in res.stderr
    assert odoo("stray", "--stop-after-init").returncode == 2
    res = odoo("-c", str(tmp_path / "missing.conf"), "--stop-after-init")
    assert res.returncode == 2 and "doesn't exist or is not readable" in res.stderr
    res = odoo("--upgrade-path", str(tmp_path), "--stop-after-init", version=18)
    assert res.returncode == 2 and "not a valid upgrade directory" in res.stderr
    res = odoo("--stop-after-init", ODOO_STANDIN_EXIT="3")
    assert res.returncode == 3


# --------------------------------------------------------------------------- installation


def test_new_database_installs_with_dependencies(
    odoo: Odoo, new_db: Callable[[], str], tmp_path: Path
) -> None:
    db = new_db()
    info = conninfo_to_dict(DSN)
    conf = tmp_path / "odoo.conf"
    conf.write_text(
        "[options]\n"
        f"db_host = {info.get('host', '127.0.0.1')}\ndb_port = {info.get('port', 5432)}\n"
        f"db_user = {info.get('user', 'postgres')}\ndb_password = False\n"
        f"data_dir = {odoo.data_dir}\naddons_path = /mnt/extra-addons\n"
    )
    for var in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"):
        odoo.env.pop(var, None)  # the config file alone must lead to the server
    res = odoo("-c", str(conf), "-d", db, "-i", "sale,nosuch", "--without-demo=all",
               "--stop-after-init")
    assert res.returncode == 0, res.stderr
    assert "WARNING" in res.stderr and "invalid module names, ignored: nosuch" in res.stderr
    assert all(LOG_LINE.match(line) for line in res.stderr.splitlines()), res.stderr
    mods = modules(db)
    assert "nosuch" not in mods
    for name in ("base", "web", "mail", "sale"):
        assert mods[name][0] == "installed" and mods[name][2] is False
    assert mods["base"][1] == "18.0.1.3"
    assert mods["crm"][0] == "uninstalled"
    params = dict(rows(db, "SELECT key, value FROM ir_config_parameter"))
    assert {"database.secret", "database.uuid", "database.create_date"} <= params.keys()
    assert params["web.base.url"] == "http://localhost:8069"
    users = dict(rows(db, "SELECT d.name, u.login || ':' || u.active FROM ir_model_data d "
                      "JOIN res_users u ON u.id = d.res_id WHERE d.module = 'base' "
                      "AND d.model = 'res.users'"))
    assert users["user_admin"] == "admin:true" and users["user_root"] == "__system__:false"
    assert rows(db, "SELECT c.active FROM ir_cron c JOIN ir_model_data d ON d.res_id = c.id "
                "AND d.model = 'ir.cron' WHERE d.module = 'base' "
                "AND d.name = 'autovacuum_job'") == [(True,)]
    assert rows(db, "SELECT count(*) FROM ir_mail_server") == [(0,)]
    assert rows(db, "SELECT count(*) FROM sale_order") == [(3,)]  # no demo rows

    # the filestore is content-addressed: every attachment's file, named by its sha1
    store = odoo.data_dir / "filestore" / db
    attachments = rows(db, "SELECT store_fname, checksum, file_size FROM ir_attachment")
    assert len(attachments) >= 12
    for fname, checksum, size in attachments:
        content = (store / fname).read_bytes()
        assert hashlib.sha1(content).hexdigest() == checksum == fname.split("/")[1]
        assert fname.startswith(checksum[:2] + "/") and len(content) == size
    for path in store.rglob("*"):
        if path.is_file() and "checklist" not in path.parts:
            assert hashlib.sha1(path.read_bytes()).hexdigest() == path.name

    # a second identical run changes nothing but versions (idempotent data loading)
    before = rows(db, "SELECT count(*) FROM ir_model_data")
    res = odoo("-c", str(conf), "-d", db, "-i", "sale", "--stop-after-init")
    assert res.returncode == 0, res.stderr
    assert rows(db, "SELECT count(*) FROM ir_model_data") == before


def test_fail_at_rolls_back_and_exits_255(odoo: Odoo, new_db: Callable[[], str]) -> None:
    db = new_db()
    res = odoo.init(db, "-i", "sale", "--without-demo=all", ODOO_STANDIN_FAIL_AT="sale")
    assert res.returncode == 255
    assert "Traceback" in res.stderr
    assert f"CRITICAL {db} odoo.service.server: Failed to initialize database `{db}`." in res.stderr
    assert db_exists(db) and not initialised(db)  # created, then left empty

    assert odoo.init(db, "-i", "crm", "--without-demo=all").returncode == 0
    res = odoo.init(db, "-i", "sale", ODOO_STANDIN_FAIL_AT="sale")
    assert res.returncode == 255
    mods = modules(db)
    assert mods["sale"][0] == "uninstalled" and mods["crm"][0] == "installed"
    assert rows(db, "SELECT to_regclass('sale_order')") == [(None,)]
    assert odoo.init(db, "-i", "sale").returncode == 0
    assert modules(db)["sale"][0] == "installed"


def test_leave_knob_exits_0_with_module_not_installed(
    odoo: Odoo, new_db: Callable[[], str]
) -> None:
    db = new_db()
    res = odoo.init(db, "-i", "purchase", ODOO_STANDIN_LEAVE="stock")
    assert res.returncode == 0
    assert "Some modules have inconsistent states, some dependencies may be missing" in (
        res.stderr)
    mods = modules(db)
    assert mods["stock"][0] == mods["purchase"][0] == "to install"
    assert mods["account"][0] == "installed"
    assert mods["account"][2] is True  # 18 loads demo data unless --without-demo=...
    assert odoo.init(db, "-u", "base").returncode == 0  # pending installs are picked up
    assert modules(db)["purchase"][0] == "installed"


def test_sigterm_mid_run_leaves_nothing_half_done(odoo: Odoo, new_db: Callable[[], str]) -> None:
    db = new_db()
    proc = odoo.popen("-d", db, "-D", str(odoo.data_dir), "-i", "sale", "--stop-after-init",
                      ODOO_STANDIN_SLEEP="60")
    try:
        wait_for_line(proc, "standin: sleeping")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.communicate()
    assert db_exists(db) and not initialised(db)


# --------------------------------------------------------------------------- demo data


def test_19_demo_only_with_with_demo(odoo: Odoo, new_db: Callable[[], str]) -> None:
    db = new_db()
    assert odoo.init(db, "-i", "crm", "--with-demo", version=19).returncode == 0
    assert modules(db)["crm"][:3] == ("installed", "19.0.1.9", True)
    assert rows(db, "SELECT count(*) FROM crm_lead") == [(7,)]  # 3 data + 4 demo records
    # 19: a bare --without-demo takes no value, so --stop-after-init still stops
    res = odoo("--without-demo", "--stop-after-init", version=19, timeout=15)
    assert res.returncode == 0, res.stderr


def test_bare_without_demo_swallows_stop_after_init(
    odoo: Odoo, new_db: Callable[[], str]
) -> None:
    db = new_db()
    proc = odoo.popen("-d", db, "-D", str(odoo.data_dir), "--without-demo", "--stop-after-init")
    try:
        wait_for_line(proc, "serving until SIGTERM")
        time.sleep(0.5)
        assert proc.poll() is None  # it did not stop by itself
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.communicate()
    assert modules(db)["base"] == ("installed", "18.0.1.3", False)  # "--stop-after-init" is truthy


def test_19_reads_pgdatabase_and_18_does_not(odoo: Odoo, new_db: Callable[[], str]) -> None:
    db = new_db()
    assert odoo("--stop-after-init", "--without-demo=all", PGDATABASE=db).returncode == 0
    assert not db_exists(db)
    res = odoo("--stop-after-init", "-D", str(odoo.data_dir), version=19, PGDATABASE=db)
    assert res.returncode == 0, res.stderr
    assert modules(db)["base"] == ("installed", "19.0.1.3", False)  # 19: no demo by default


# --------------------------------------------------------------------------- major upgrade


def test_agreement_legal_major_upgrade(
    odoo: Odoo, new_db: Callable[[], str], upgrade_path: Path
) -> None:
    db = new_db()
    assert odoo.init(db, "-i", "agreement_legal", version=17).returncode == 0
    assert modules(db)["agreement_legal"] == ("installed", "17.0.2.0.0", True)  # 17: demo
    stale = rows(db, "SELECT d.name FROM ir_ui_view v JOIN ir_model_data d ON d.res_id = v.id "
                 "AND d.model = 'ir.ui.view' WHERE d.module = 'agreement_legal' "
                 "AND v.arch_db LIKE %s ORDER BY 1", ('%"signed_contract_filename"%',))
    assert stale == [("partner_agreement_form_view",), ("partner_agreement_list_view",)]
    openupgrade = ("--load=base,web,openupgrade_framework", f"--upgrade-path={upgrade_path}")

    # the source-version pass (same major, framework loaded) is an ordinary update
    assert odoo.init(db, *openupgrade, "-u", "all", version=17).returncode == 0

    res = odoo.init(db, "-u", "all", version=18)  # 18 without OpenUpgrade
    assert res.returncode == 255 and "Failed to initialize database" in res.stderr
    res = odoo.init(db, *openupgrade, "-u", "all", version=19)  # two majors at once
    assert res.returncode == 255
    res = odoo.init(db, *openupgrade, "-u", "all", version=18)  # stale 17 views
    assert res.returncode == 255
    assert "odoo.tools.convert.ParseError" in res.stderr
    assert 'Field "signed_contract_filename" does not exist in model "agreement"' in res.stderr
    assert modules(db)["base"][1] == "17.0.1.3"  # nothing changed

    with psycopg.connect(DSN, dbname=db) as conn:
        conn.execute(PREFIX)
    res = odoo.init(db, *openupgrade, "-u", "all", version=18)
    assert res.returncode == 0, res.stderr
    mods = modules(db)
    assert mods["base"][:2] == ("installed", "18.0.1.3")
    assert mods["agreement_legal"][:2] == ("installed", "18.0.1.3.0")
    views = rows(db, "SELECT d.name, v.arch_db FROM ir_ui_view v JOIN ir_model_data d ON "
                 "d.res_id = v.id AND d.model = 'ir.ui.view' WHERE d.module = 'agreement_legal' "
                 "ORDER BY 1")
    assert {"partner_agreement_form_view", "partner_agreement_list_view"} <= dict(views).keys()
    assert not any("signed_contract_filename" in arch for _, arch in views)

    assert odoo.init(db, "-u", "all", version=17).returncode == 255  # no downgrades
    assert odoo.init(db, "-u", "all", version=18).returncode == 0


def _python_without_psycopg(tmp: Path) -> dict[str, str]:
    """An environment whose `python3` (what the stand-in's `#!/usr/bin/env python3` finds) is
    the base interpreter without site-packages: no psycopg, as on a machine's own Python."""
    bin_dir = tmp / "bare-python"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.write_text(f'#!/bin/sh\nexec {sys._base_executable} -S "$@"\n')
    python3.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "ODOO_", "VIRTUAL"))}
    return {**env, **pg_env(), "PATH": os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])}


def test_run_by_hand_without_venv_on_path(new_db: Callable[[], str], tmp_path: Path) -> None:
    env = _python_without_psycopg(tmp_path)
    # In the repository: it re-executes itself with .venv/bin/python and does the work.
    db = new_db()
    done = subprocess.run(
        [str(STANDIN), "-d", db, "-D", str(tmp_path / "data"), "--stop-after-init"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "TEST STAND-IN" in done.stderr and "Traceback" not in done.stderr
    with psycopg.connect(DSN, dbname=db) as conn:
        assert conn.execute(
            "SELECT state FROM ir_module_module WHERE name = 'base'"
        ).fetchone() == ("installed",)
    # A copy with no .venv beside it: one line saying what is missing, nothing done.
    copy = tmp_path / "elsewhere" / "standins" / "odoo"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(STANDIN.read_bytes())
    copy.chmod(0o755)
    other = new_db()
    alone = subprocess.run(
        [str(copy), "-d", other, "--stop-after-init"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert alone.returncode == 1
    assert alone.stderr.count("\n") == 1 and "psycopg is not importable" in alone.stderr
    assert "virtualenv" in alone.stderr
    with psycopg.connect(DSN) as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (other,)).fetchone()
