"""Contract tests for tests/support/standins/odoo, the TEST STAND-IN for the Odoo binary.

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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.support.harness import JOB_ROLE, ensure_job_role

STANDIN = Path(__file__).resolve().parents[1] / "support" / "standins" / "odoo"
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
    """libpq variables for PLANA_TEST_PG_DSN, as the jobs' role (Odoo refuses `postgres`)."""
    ensure_job_role(DSN)
    names = {"host": "PGHOST", "port": "PGPORT", "password": "PGPASSWORD"}
    info = conninfo_to_dict(DSN)
    return {**{names[k]: str(v) for k, v in info.items() if k in names}, "PGUSER": JOB_ROLE}


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

    def environ(self, version: int, env: Mapping[str, str]) -> dict[str, str]:
        return {**self.env, "ODOO_STANDIN_VERSION": str(version), **env}

    def __call__(
        self, *args: str, version: int = 18, timeout: float = 30, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return self.run(args, env, version=version, timeout=timeout)

    def run(
        self, args: tuple[str, ...], env: Mapping[str, str], *, version: int = 18,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """The form for an environment held in a dict (whose keys `**env` would let fill
        `version` and `timeout` as well)."""
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
        return self.run(self.init_args(db, *args), env, version=version)

    def init_args(self, db: str, *args: str) -> tuple[str, ...]:
        return ("-d", db, "-D", str(self.data_dir), "--stop-after-init", *args)


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
    """OpenUpgrade's scripts, a directory Odoo accepts as --upgrade-path (`*/*/pre-*.py`), in
    an addons directory that also holds openupgrade_framework (as OpenUpgrade's checkout does)."""
    addons = tmp_path / "openupgrade"
    scripts = addons / "openupgrade_scripts" / "scripts"
    (scripts / "base" / "18.0.1.3").mkdir(parents=True)
    (scripts / "base" / "18.0.1.3" / "pre-migration.py").write_text("# stand-in\n")
    framework(addons)
    return scripts


def framework(addons: Path) -> Path:
    """An openupgrade_framework addon (its manifest) in the addons directory `addons`."""
    (addons / "openupgrade_framework").mkdir(parents=True)
    (addons / "openupgrade_framework" / "__manifest__.py").write_text("{'name': 'stand-in'}\n")
    return addons


def openupgrade(scripts: Path, addons: Path | None = None) -> tuple[str, ...]:
    """OpenUpgrade's command line: the framework loaded, the scripts, their addons path."""
    path = addons if addons is not None else scripts.parent.parent
    return ("--load=base,web,openupgrade_framework", f"--upgrade-path={scripts}",
            f"--addons-path={path}")


def rows(db: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(DSN, dbname=db) as conn:
        return conn.execute(query, params).fetchall()


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
        f"db_user = {JOB_ROLE}\ndb_password = False\n"
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


def test_fail_at_keeps_the_modules_before_and_resets_states_exits_255(
    odoo: Odoo, new_db: Callable[[], str]
) -> None:
    """As Odoo 17/18: a module's work commits, then its state is written (committed with the next
    one); a failure rolls back the module under way and resets the transient states
    (`to install` -> `uninstalled`, `to upgrade` -> `installed`)."""
    db = new_db()
    res = odoo.init(db, "-i", "sale", "--without-demo=all", ODOO_STANDIN_FAIL_AT="sale")
    assert res.returncode == 255
    assert "Traceback" in res.stderr
    assert f"WARNING {db} odoo.modules.loading: Transient module states were reset" in res.stderr
    assert f"CRITICAL {db} odoo.service.server: Failed to initialize database `{db}`." in res.stderr
    mods = modules(db)  # order base, web, mail, sale: base and web installed for good
    assert {n: m[:2] for n, m in mods.items() if m[0] != "uninstalled"} == {
        "base": ("installed", "18.0.1.3"), "web": ("installed", "18.0.1.0")}  # fmt: skip
    # mail's tables and data were committed, its state write was not: reset to `uninstalled`.
    assert rows(db, "SELECT to_regclass('sale_order'), to_regclass('mail_message') IS NOT NULL"
                ) == [(None, True)]  # fmt: skip

    # -u all failing at a later module: the modules before it are updated for good.
    assert odoo.init(db, "-i", "sale").returncode == 0
    before = dict(rows(db, "SELECT name, write_date FROM ir_module_module"))
    res = odoo.init(db, "-u", "all", ODOO_STANDIN_FAIL_AT="sale")
    assert res.returncode == 255 and "Transient module states were reset" in res.stderr
    after = dict(rows(db, "SELECT name, write_date FROM ir_module_module"))
    assert after["base"] > before["base"] and after["web"] > before["web"]
    assert {m[0] for m in modules(db).values()} == {"installed", "uninstalled"}  # all settled


def test_fail_at_base_leaves_a_new_database_empty(
    odoo: Odoo, new_db: Callable[[], str]
) -> None:
    db = new_db()
    res = odoo.init(db, "-i", "sale", ODOO_STANDIN_FAIL_AT="base")
    assert res.returncode == 255
    assert "skipping reset_modules_state, ir_module_module table does not exists" in res.stderr
    assert db_exists(db) and not initialised(db)  # created, then left empty
    assert odoo.init(db, "-i", "sale").returncode == 0  # what a rerun initialises again
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


def test_sigterm_mid_run_keeps_what_was_committed(
    odoo: Odoo, new_db: Callable[[], str]
) -> None:
    """Odoo's handler turns the first SIGTERM into KeyboardInterrupt: the module under way rolls
    back, those before stay committed and no state is reset (KeyboardInterrupt is no Exception),
    the traceback is printed and the process ends by SIGINT; so only module states read back
    tell a half-done run from a finished one."""
    db = new_db()
    proc = odoo.popen("-d", db, "-D", str(odoo.data_dir), "-i", "sale", "--stop-after-init",
                      ODOO_STANDIN_SLEEP="60")
    try:
        wait_for_line(proc, "standin: sleeping")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGINT
    lines = err.strip().splitlines()
    assert "Traceback (most recent call last):" in lines and lines[-1] == "KeyboardInterrupt"
    assert "Failed to initialize database" not in err  # not an error Odoo logs: it just stops
    assert "Transient module states were reset" not in err
    mods = modules(db)  # order base, web, mail, sale: the sleep comes before the third
    assert mods["base"][0] == "installed"  # web's data committed, its state write not
    assert {mods[n][0] for n in ("web", "mail", "sale")} == {"to install"}
    assert rows(db, "SELECT to_regclass('web_tour_tour') IS NOT NULL") == [(True,)]


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_a_second_signal_forces_exit_0_with_nothing_done(
    odoo: Odoo, new_db: Callable[[], str]
) -> None:
    """The second SIGTERM/SIGINT does os._exit(0): exit 0 although the work is not done.

    Both signals are made pending at once (the process stopped meanwhile), so the second one is
    handled while the first one's KeyboardInterrupt unwinds, whatever the machine's load.
    """
    db = new_db()
    proc = odoo.popen("-d", db, "-D", str(odoo.data_dir), "-i", "sale", "--stop-after-init",
                      ODOO_STANDIN_SLEEP="60")
    try:
        wait_for_line(proc, "standin: sleeping")
        proc.send_signal(signal.SIGSTOP)
        until = time.monotonic() + 30
        while not _stopped(proc.pid):
            assert time.monotonic() < until, "the stand-in did not stop"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0
    assert err.rstrip().endswith("Forced shutdown.")
    mods = modules(db)  # exit 0, and yet: the module under way rolled back, the rest pending
    assert {mods[n][0] for n in ("web", "mail", "sale")} == {"to install"}


def test_refuses_the_postgres_database_user(
    odoo: Odoo, new_db: Callable[[], str], tmp_path: Path
) -> None:
    """check_postgres_user: db_user (command line, config file), else PGUSER; nothing done."""
    db = new_db()
    refusal = "Using the database user 'postgres' is a security risk, aborting."
    conf = tmp_path / "odoo.conf"
    conf.write_text("[options]\ndb_user = postgres\n")
    for args, env in ((("-r", "postgres"), {}), (("-c", str(conf)), {}),
                      ((), {"PGUSER": "postgres"})):  # fmt: skip
        res = odoo.run(odoo.init_args(db, *args), env)
        assert (res.returncode, res.stderr) == (1, refusal), (args, env)
        assert not db_exists(db)
    # The configured db_user wins over PGUSER, and --version does not check.
    assert odoo.init(db, "-r", JOB_ROLE, PGUSER="postgres").returncode == 0
    assert odoo("--version", PGUSER="postgres").returncode == 0


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
    ou = openupgrade(upgrade_path)

    # the source-version pass (same major, framework loaded) is an ordinary update
    assert odoo.init(db, *ou, "-u", "all", version=17).returncode == 0

    res = odoo.init(db, "-u", "all", version=18)  # 18 without OpenUpgrade
    assert res.returncode == 255 and "Failed to initialize database" in res.stderr
    res = odoo.init(db, *ou, "-u", "all", version=19)  # two majors at once
    assert res.returncode == 255
    assert modules(db)["base"][1] == "17.0.1.3"  # refused before any module work
    fresh = new_db()  # the copy a job would start again from
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(fresh), sql.Identifier(db)))  # fmt: skip
    res = odoo.init(db, *ou, "-u", "all", version=18)  # stale 17 views
    assert res.returncode == 255
    assert "odoo.tools.convert.ParseError" in res.stderr
    assert 'Field "signed_contract_filename" does not exist in model "agreement"' in res.stderr
    mods = modules(db)  # the modules before `agreement` committed: migrated halfway, for good
    assert (mods["base"][1], mods["agreement"][1]) == ("18.0.1.3", "17.0.1.0.0")

    db = fresh
    with psycopg.connect(DSN, dbname=db) as conn:
        conn.execute(PREFIX)
    res = odoo.init(db, *ou, "-u", "all", version=18)
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


def test_another_major_loads_without_update_and_fails_on_data_with_it(
    odoo: Odoo, new_db: Callable[[], str]
) -> None:
    """No version check in Odoo: 18 loads a 17 database (and 17 an 18 one) as it is; `-u all`
    without OpenUpgrade fails on base's data (real 18 on a 17 base: res.lang.csv), exit 255."""
    old, new = new_db(), new_db()
    assert odoo.init(old, "-i", "contacts", version=17).returncode == 0
    assert odoo.init(new, "-i", "contacts", version=18).returncode == 0
    for db, version, base in ((old, 18, "17.0.1.3"), (new, 17, "18.0.1.3")):
        res = odoo.init(db, version=version)
        assert res.returncode == 0, res.stderr
        assert "Registry loaded" in res.stderr and "is at Odoo" not in res.stderr
        res = odoo.init(db, "-u", "all", version=version)
        assert res.returncode == 255, res.stderr
        assert "Module loading base failed: file base/data/res.lang.csv could not be processed" \
            in res.stderr
        assert f"Failed to initialize database `{db}`." in res.stderr
        assert "cannot load" not in res.stderr and "migration" not in res.stderr
        assert modules(db)["base"][:2] == ("installed", base)  # rolled back


def test_load_module_not_on_the_addons_path_is_logged_and_skipped(
    odoo: Odoo, new_db: Callable[[], str], tmp_path: Path
) -> None:
    db = new_db()
    res = odoo.init(db, "--load=base,web,openupgrade_framework", "-i", "contacts")
    assert res.returncode == 0, res.stderr
    assert "CRITICAL ? odoo.modules.module: Couldn't load module openupgrade_framework \n" in (
        res.stderr)
    assert ("ERROR ? odoo.service.server: Failed to load server-wide module "
            "`openupgrade_framework`. \n") in res.stderr
    assert "ModuleNotFoundError: No module named 'odoo.addons.openupgrade_framework'" in res.stderr
    assert modules(db)["contacts"][0] == "installed"  # the run went on without it
    # A bare directory is no addon; one with its manifest on an --addons-path entry loads.
    (tmp_path / "bare" / "openupgrade_framework").mkdir(parents=True)
    res = odoo.init(db, "--load=base,web,openupgrade_framework", f"--addons-path={tmp_path}/bare")
    assert res.returncode == 0 and "Couldn't load module" in res.stderr, res.stderr
    res = odoo.init(db, "--load=base,web,openupgrade_framework",
                    f"--addons-path={tmp_path}/bare,{framework(tmp_path / 'addons')}")
    assert res.returncode == 0, res.stderr
    assert "Couldn't load" not in res.stderr and "Failed to load" not in res.stderr
    assert "loading server-wide module `openupgrade_framework`" in res.stderr


def test_openupgrade_needs_its_addons_on_the_addons_path(
    odoo: Odoo, new_db: Callable[[], str], upgrade_path: Path, tmp_path: Path
) -> None:
    db = new_db()
    assert odoo.init(db, "-i", "contacts", version=17).returncode == 0
    # The framework alone on the addons path: the scripts cannot import openupgrade_scripts.
    alone = framework(tmp_path / "framework-only")
    res = odoo.init(db, *openupgrade(upgrade_path, alone), "-u", "all", version=18)
    assert res.returncode == 255, res.stderr
    assert f"ImportError: module base: Unable to load pre-upgrade file {upgrade_path}/base/" \
        "18.0.1.3/pre-migration.py" in res.stderr
    assert "ModuleNotFoundError: No module named 'odoo.addons.openupgrade_scripts'" in res.stderr
    assert modules(db)["base"][1] == "17.0.1.3"
    # The scripts without the framework: no migration, a plain -u all failing on the data.
    (tmp_path / "scripts-only" / "openupgrade_scripts").mkdir(parents=True)
    res = odoo.init(db, *openupgrade(upgrade_path, tmp_path / "scripts-only"), "-u", "all",
                    version=18)
    assert res.returncode == 255, res.stderr
    assert "Couldn't load module openupgrade_framework" in res.stderr
    assert "res.lang.csv could not be processed" in res.stderr
    assert modules(db)["base"][1] == "17.0.1.3"
    # Both (OpenUpgrade's own directory): migrated.
    res = odoo.init(db, *openupgrade(upgrade_path), "-u", "all", version=18)
    assert res.returncode == 0, res.stderr
    assert modules(db)["base"][:2] == ("installed", "18.0.1.3")


def _python_without_psycopg(tmp: Path) -> dict[str, str]:
    """An environment whose `python3` (what the stand-in's `#!/usr/bin/env python3` finds) is
    the base interpreter without site-packages: no psycopg, as on a machine's own Python."""
    bin_dir = tmp / "bare-python"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    # The interpreter the venv was made from: CPython's, private, so typeshed does not list it.
    base = sys._base_executable  # type: ignore[attr-defined]
    python3.write_text(f'#!/bin/sh\nexec {base} -S "$@"\n')
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


# --------------------------------------------------------------------------- neutralize


def neutralised_state(db: str) -> dict[str, Any]:
    """What Odoo's neutralize.sql of base, web and mail change."""
    return {
        "crons": rows(db, "SELECT name, active FROM ir_cron ORDER BY id"),
        "mail_servers": rows(db, "SELECT name, smtp_host, smtp_port, active FROM ir_mail_server "
                             "ORDER BY id"),
        "flag": rows(db, "SELECT value FROM ir_config_parameter "
                     "WHERE key = 'database.is_neutralized'"),
        "banner": rows(db, "SELECT active FROM ir_ui_view WHERE key = 'web.neutralize_banner'"),
        "fetchmail": rows(db, "SELECT DISTINCT active FROM fetchmail_server"),
        "push_keys": rows(db, "SELECT key FROM ir_config_parameter WHERE key LIKE 'mail.%%key'"),
    }


def test_neutralize_runs_every_installed_modules_sql_in_one_go(
    odoo: Odoo, new_db: Callable[[], str], tmp_path: Path
) -> None:
    db = new_db()
    assert odoo.init(db, "-i", "mail", "--without-demo=all").returncode == 0
    with psycopg.connect(DSN, dbname=db, autocommit=True) as conn:
        conn.execute("INSERT INTO ir_mail_server (name, smtp_host) VALUES ('live', 'smtp.x')")
        conn.execute("INSERT INTO ir_config_parameter (key, value) "
                     "VALUES ('mail.web_push_vapid_private_key', 'k')")
        conn.execute("INSERT INTO ir_module_module (name, state) VALUES ('x_custom', 'installed'),"
                     " ('x_gone', 'uninstalled')")
    addons = tmp_path / "addons"
    for name in ("x_custom", "x_gone"):  # each module's file sets its own flag
        (addons / name / "data").mkdir(parents=True)
        (addons / name / "data" / "neutralize.sql").write_text(
            "INSERT INTO ir_config_parameter (key, value) VALUES ('NAME.done', 'yes');\n"
            .replace("NAME", name))
    before = neutralised_state(db)
    assert before["banner"] == [(False,)]  # web installs it off
    assert before["fetchmail"] == [(True,)]

    printed = odoo("neutralize", "-d", db, f"--addons-path={addons}", "--stdout")
    assert printed.returncode == 0, printed.stderr
    out = printed.stdout.strip().splitlines()
    assert out[0] == "BEGIN;" and out[-1] == "COMMIT;"
    assert "web.neutralize_banner" in printed.stdout and "x_custom.done" in printed.stdout
    assert "x_gone" not in printed.stdout  # not installed
    assert neutralised_state(db) == before  # --stdout changes nothing

    done = odoo("neutralize", "-d", db, f"--addons-path={addons}")
    assert done.returncode == 0, done.stderr
    assert all(LOG_LINE.match(line) for line in done.stderr.splitlines()), done.stderr
    assert f"odoo.cli.neutralize: Starting {db} database neutralization" in done.stderr
    assert "odoo.modules.neutralize: Neutralization finished" in done.stderr
    after = neutralised_state(db)
    assert [a for _, a in after["crons"]] == [n == "Base: Auto-vacuum internal data"
                                              for n, _ in before["crons"]]
    assert after["mail_servers"] == [("live", "smtp.x", 25, False),
                                     ("neutralization - disable emails", "invalid", 1025, True)]
    assert after["flag"] == [("true",)] and after["banner"] == [(True,)]
    assert after["fetchmail"] == [(False,)] and after["push_keys"] == []
    params = dict(rows(db, "SELECT key, value FROM ir_config_parameter"))
    assert params.get("x_custom.done") == "yes" and "x_gone.done" not in params
    # Odoo's SQL is not idempotent: a second run adds a second dummy server.
    assert odoo("neutralize", "-d", db).returncode == 0
    assert rows(db, "SELECT count(*) FROM ir_mail_server WHERE smtp_host = 'invalid'") == [(2,)]


def test_neutralize_failures_exit_1_and_change_nothing(
    odoo: Odoo, new_db: Callable[[], str]
) -> None:
    db = new_db()
    assert odoo.init(db, "-i", "mail", "--without-demo=all").returncode == 0
    before = neutralised_state(db)
    failed = odoo("neutralize", "-d", db, ODOO_STANDIN_FAIL_AT="mail")
    assert failed.returncode == 1
    assert "ERROR ? odoo.sql_db: bad query:" in failed.stderr
    assert "THE DATABASE IS NOT NEUTRALIZED!" in failed.stderr.splitlines()[-1]
    assert neutralised_state(db) == before  # one transaction: base's and web's rolled back

    missing = odoo("neutralize", "-d", db + "_nosuch")
    assert missing.returncode == 1
    assert "CRITICAL ? odoo.cli.neutralize: An error occurred" in missing.stderr
    assert not db_exists(db + "_nosuch")  # never created, unlike the server's -d
    nodb = odoo("neutralize")
    assert nodb.returncode == 1 and 'needs a database name. Use "-d"' in nodb.stderr
    several = odoo("neutralize", "-d", f"{db},{db}", version=19)
    assert several.returncode == 1 and "multiple database" in several.stderr
    assert odoo("neutralize", "-d", db, "--nosuch").returncode == 2  # optparse, as the server
    assert neutralised_state(db) == before
