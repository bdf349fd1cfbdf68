"""environment-db: a neutralised copy of production (production keeps serving), or fresh.

Every Odoo here is the Odoo under test (tests/support/odoo_target): the stand-in in CI, real Odoo
17/18 in test mode (`make test-odoo`). The tier's template is built once per module by
template-build (base, web, the test apps and `plana_test_neutralize`, whose neutralize.sql sleeps
or fails when a database parameter asks: tests/support/addons/README.md); each test's production
tenant is made from it by tenant-db, so a real Odoo installs once per module and otherwise only
neutralises.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.core import naming
from jobs.ops import marker
from tests.support import odoo_target
from tests.support.backup import add_attachment, config, table_digests, tree
from tests.support.harness import BIN, OWNER_ROLE, Runner, job_dsn
from tests.support.processes import signal_tree
from tests.support.tenant_db import drop, ensure_role
from tests.support.untouched import Snapshot

TARGET = odoo_target.current()
VERSION = 18  # the tenants' Odoo
OTHER = 17  # another major version, for the binary that must refuse them
NEUTRALIZE = "plana_test_neutralize"  # its neutralize.sql reads the two parameters below
SLEEP_PARAM, FAIL_PARAM = f"{NEUTRALIZE}.sleep", f"{NEUTRALIZE}.fail"
# A real Odoo takes seconds to start and a minute or more to install; the stand-in a second.
JOB_TIMEOUT = 900.0 if TARGET.real else 120.0
pytestmark = pytest.mark.timeout(2400 if TARGET.real else 300)
# What environment-db gives a copy of its own, besides neutralisation (Odoo's duplication resets).
IDENTITY = ("database.secret", "database.uuid", "database.create_date", "web.base.url")
DUMMY_SERVER = ("neutralization - disable emails", "invalid")  # base's neutralize.sql adds it


class SlowRunner(Runner):
    """The harness's Runner with room for a real Odoo (job deadline and wait)."""

    timeout = JOB_TIMEOUT

    def __init__(self, pg_dsn: str, redis_url: str, tmp: Path) -> None:
        super().__init__(pg_dsn, redis_url, tmp)
        self.env["PLANA_TIMEOUT"] = str(int(JOB_TIMEOUT) - 30)


@pytest.fixture
def run_job(pg_dsn: str, redis_url: str, tmp_path: Path) -> Runner:
    return SlowRunner(pg_dsn, redis_url, tmp_path)


@dataclass(frozen=True)
class Odoo:
    """One version of the Odoo under test: the executable and its config (addons path with
    tests/support/addons), as the jobs get them (--odoo-bin, --odoo-config)."""

    version: int
    exe: Path
    conf: Path

    def args(self) -> list[str]:
        return ["--odoo-bin", str(self.exe), "--odoo-config", str(self.conf)]


def make_odoo(tmp: Path, version: int) -> Odoo:
    return Odoo(version, TARGET.binary(tmp, version), TARGET.config(tmp, version))


@pytest.fixture(scope="module")
def odoo(tmp_path_factory: pytest.TempPathFactory) -> Odoo:
    return make_odoo(tmp_path_factory.mktemp("odoo"), VERSION)


@dataclass(frozen=True)
class Template:
    name: str
    data_dir: Path


@pytest.fixture(scope="module")
def template(
    pg_dsn: str, redis_url: str, odoo: Odoo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Template]:
    """The tier's template, built once by template-build with the Odoo under test."""
    tmp = tmp_path_factory.mktemp("template")
    name = "template_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, OWNER_ROLE)
    modules = ",".join(("base", "web", *odoo_target.APPS, NEUTRALIZE))
    try:
        built = SlowRunner(pg_dsn, redis_url, tmp)(
            ["template-build", "--template-code", "pro", "--odoo-version", str(VERSION),
             "--modules", modules, "--template-db", name, *odoo.args(),
             "--data-dir", str(tmp / "tdata")]
        )  # fmt: skip
        assert built.rc == 0, built.output
        yield Template(name, tmp / "tdata")
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            drop(conn, name)


def active(pg_dsn: str, db: str) -> dict[str, Any]:
    """The active crons (by XML id: real Odoo keeps their names in ir_act_server) and outgoing
    mail servers."""
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        crons = conn.execute(
            "SELECT coalesce(d.module || '.' || d.name, c.id::text) FROM ir_cron c"
            " LEFT JOIN ir_model_data d ON d.model = 'ir.cron' AND d.res_id = c.id"
            " WHERE c.active ORDER BY 1"
        ).fetchall()
        servers = conn.execute(
            "SELECT name, smtp_host FROM ir_mail_server WHERE active ORDER BY 1"
        ).fetchall()
    return {"crons": [r[0] for r in crons], "servers": servers}


ONLY_AUTOVACUUM = ["base.autovacuum_job"]


def banner(pg_dsn: str, db: str) -> list[bool]:
    """`active` of web's "Database neutralized for testing" banner view(s)."""
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT active FROM ir_ui_view WHERE key = 'web.neutralize_banner'"
        ).fetchall()
    return [r[0] for r in rows]


def add_mail_server(conn: psycopg.Connection[Any], name: str, host: str) -> None:
    """An outgoing mail server as Odoo's form creates one (with the defaults of the required
    columns this Odoo's table has: real Odoo's smtp_authentication and smtp_encryption)."""
    values: dict[str, Any] = {"name": name, "smtp_host": host, "smtp_port": 25}
    defaults = {"smtp_authentication": "login", "smtp_encryption": "none", "active": True}
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'ir_mail_server'"
        " AND table_schema = 'public'"
    ).fetchall()
    values.update({k: v for k, v in defaults.items() if (k,) in rows})
    conn.execute(
        sql.SQL("INSERT INTO ir_mail_server ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(sql.Placeholder() * len(values)),
        ),
        list(values.values()),
    )


def set_param(pg_dsn: str, db: str, key: str, value: str | None) -> None:
    """Set (or, with None, delete) an ir_config_parameter of `db`."""
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        conn.execute("DELETE FROM ir_config_parameter WHERE key = %s", (key,))
        if value is not None:
            conn.execute(
                "INSERT INTO ir_config_parameter (key, value) VALUES (%s, %s)", (key, value)
            )


def odoo_neutralize(
    pg_dsn: str, odoo: Odoo, db: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`odoo neutralize -c conf -d db` run by hand, as an operator would, connected as the
    jobs' role (libpq's environment; Odoo refuses `postgres`)."""
    params = psycopg.conninfo.conninfo_to_dict(job_dsn(pg_dsn))
    env = TARGET.env()
    env.update(PGHOST=str(params.get("host", "127.0.0.1")), PGPORT=str(params.get("port", 5432)),
               PGUSER=str(params["user"]))  # fmt: skip
    env.pop("PGPASSWORD", None)
    return subprocess.run([str(odoo.exe), "neutralize", "-c", str(odoo.conf), "-d", db, *extra],
                          env=env, capture_output=True, text=True, check=False,
                          timeout=JOB_TIMEOUT)  # fmt: skip


def work_databases(pg_dsn: str, env_db: str) -> list[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname IN (%s, %s)", (env_db, env_db + "__env")
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def production(
    pg_dsn: str,
    uid: str,
    tmp_path: Path,
    drop_dbs: list[str],
    template: Template,
    run_job: Runner,
) -> dict[str, Any]:
    """A tenant as tenant-db makes it from the template (its own data dir), with some data."""
    drop_dbs.append(f"{uid}%")
    data_dir = tmp_path / "data"
    shutil.copytree(
        naming.filestore(template.name, template.data_dir),
        naming.filestore(template.name, data_dir),
    )
    made = run_job(
        ["tenant-db", "--subdomain", uid, "--project-id", "7", "--tier", "pro",
         "--odoo-version", str(VERSION), "--owner-email", f"owner@{uid}.example.com",
         "--owner-name", "Owner", "--template-db", template.name, "--data-dir", str(data_dir)]
    )  # fmt: skip
    assert made.rc == 0, made.output
    db = made.result["database"]
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO res_partner (name, email) SELECT 'partner ' || i, 'p' || i || '@x.test'"
            " FROM generate_series(1, 20) i"
        )
        add_mail_server(conn, "live", "smtp.x.test")
    add_attachment(data_dir, db, b"an invoice, as a customer uploaded it")
    return {"sub": uid, "db": db, "data_dir": data_dir}


def copy_args(
    sub: str, data_dir: Path, odoo: Odoo, *extra: str, generation: str = "1"
) -> list[str]:
    return ["environment-db", "--subdomain", sub, "--env", "staging", "--copy-from-production",
            "--data-dir", str(data_dir), "--generation", generation, *odoo.args(),
            *extra]  # fmt: skip


def test_copy_from_production_is_neutralised_and_production_keeps_serving(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, odoo: Odoo
) -> None:
    sub, db, data_dir = production["sub"], production["db"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    before = active(pg_dsn, db)
    assert len(before["crons"]) > 1 and ("live", "smtp.x.test") in before["servers"]
    prod_rows = table_digests(pg_dsn, db)
    # A production session connected throughout, mid-transaction: it must not be ended.
    session = psycopg.connect(pg_dsn, dbname=db)
    pid = session.execute("SELECT pg_backend_pid()").fetchone()
    args = copy_args(sub, data_dir, odoo)
    try:
        done = run_job(args)
        assert done.rc == 0, done.output
        assert session.execute("SELECT pg_backend_pid()").fetchone() == pid
        session.execute("SELECT count(*) FROM res_partner").fetchone()
    finally:
        session.close()
    assert done.result["outcome"] == "created"

    # Neutralised as Odoo does it: only the autovacuum runs, mail goes to the dummy server.
    env = active(pg_dsn, env_db)
    assert env["crons"] == ONLY_AUTOVACUUM
    assert env["servers"] == [DUMMY_SERVER]
    assert config(pg_dsn, env_db)["database.is_neutralized"] == "true"
    # Its own identity.
    prod_cfg, env_cfg = config(pg_dsn, db), config(pg_dsn, env_db)
    assert env_cfg["database.secret"] != prod_cfg["database.secret"]
    assert env_cfg["database.uuid"] != prod_cfg["database.uuid"]
    assert env_cfg["web.base.url"] == f"https://{sub}--staging.{naming.DEFAULT_BASE_DOMAIN}"
    # The business data and the filestore are production's.
    skip = ("ir_config_parameter", "ir_cron", "ir_mail_server", "ir_ui_view", "fetchmail_server")
    assert table_digests(pg_dsn, env_db, skip) == table_digests(pg_dsn, db, skip)
    assert tree(naming.filestore(env_db, data_dir)) == tree(naming.filestore(db, data_dir))
    # Production itself is untouched.
    assert active(pg_dsn, db) == before and table_digests(pg_dsn, db) == prod_rows
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        mark = marker.read(conn, env_db)
        assert mark is not None and mark.kind == "environment" and mark.data["tenant"] == sub

    again = run_job(args)
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    same_gen = run_job([*args, "--refresh"])
    assert same_gen.rc == 0 and same_gen.result["outcome"] == "unchanged"

    # --refresh (new generation) swaps in a new copy that sees production's latest rows.
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        conn.execute("INSERT INTO res_partner (name) VALUES ('after the first copy')")
    old_secret = env_cfg["database.secret"]
    refreshed = run_job(copy_args(sub, data_dir, odoo, "--refresh", generation="2"))
    assert refreshed.rc == 0 and refreshed.result["outcome"] == "updated", refreshed.output
    with psycopg.connect(pg_dsn, dbname=env_db, autocommit=True) as conn:
        assert conn.execute(
            "SELECT 1 FROM res_partner WHERE name = 'after the first copy'"
        ).fetchone()
    assert config(pg_dsn, env_db)["database.secret"] != old_secret
    assert active(pg_dsn, env_db)["crons"] == ONLY_AUTOVACUUM
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert env_db + "__old" not in names and env_db + "__env" not in names
    assert not list((data_dir / "filestore").glob(".*"))


def test_environment_over_a_database_that_is_not_ours_is_refused(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, odoo: Odoo
) -> None:
    env_db = naming.db_name(f"{production['sub']}--dev")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(env_db)))
    args = ["environment-db", "--subdomain", production["sub"], "--env", "dev",
            "--copy-from-production", "--data-dir", str(production["data_dir"]),
            *odoo.args()]  # fmt: skip
    done = run_job(args)
    assert done.rc == 65, done.output
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert marker.read(conn, env_db) is None


def test_bad_environment_names_are_refused(run_job: Runner, uid: str) -> None:
    for env in ("", "Staging", "x" * 40, "st--g", "-stg", "stg-", "st_g"):
        done = run_job(["environment-db", "--subdomain", uid, "--env", env,
                        "--copy-from-production"])  # fmt: skip
        assert done.rc == 64 and "env" in done.stderr, done.output


def test_fresh_environment_from_the_tier_template(
    template: Template,
    run_job: Runner,
    pg_dsn: str,
    uid: str,
    drop_dbs: list[str],
    odoo: Odoo,
    tmp_path: Path,
) -> None:
    drop_dbs.append(f"{uid}%")
    env_db = naming.db_name(f"{uid}--test")
    data_dir = tmp_path / "data"
    source = naming.filestore(template.name, template.data_dir)
    shutil.copytree(source, naming.filestore(template.name, data_dir))
    done = run_job(["environment-db", "--subdomain", uid, "--env", "test", "--tier", "pro",
                    "--owner-email", "owner@x.test", "--owner-name", "Owner",
                    "--template-db", template.name, *odoo.args(),
                    "--data-dir", str(data_dir)])  # fmt: skip
    assert done.rc == 0, done.output
    assert done.result["source"] == "template"
    assert config(pg_dsn, env_db)["web.base.url"] == f"https://{uid}--test.planapulse.app"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        mark = marker.read(conn, env_db)
        assert mark is not None and mark.kind == "environment"
        assert mark.data["source"] == "template"
    assert active(pg_dsn, env_db)["crons"] == ONLY_AUTOVACUUM
    assert banner(pg_dsn, env_db) == [True]
    content = {k: v for k, v in tree(source).items() if not k.startswith(".")}  # not its marks
    assert content and tree(naming.filestore(env_db, data_dir)) == content


@pytest.mark.parametrize("killed_after", ["database-aside", "both-aside", "filestore-back"])
def test_a_refresh_killed_mid_swap_brings_the_old_pair_back(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, killed_after: str, odoo: Odoo
) -> None:
    """The states a kill can leave inside the publish swap (and inside its own recovery)."""
    sub, data_dir = production["sub"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    args = copy_args(sub, data_dir, odoo)
    assert run_job(args).rc == 0
    fs = naming.filestore(env_db, data_dir)
    fs_old = fs.parent / f".{fs.name}.old"
    files = tree(fs)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        if killed_after in ("database-aside", "both-aside"):
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(env_db), sql.Identifier(env_db + "__old")))  # fmt: skip
        if killed_after in ("both-aside", "filestore-back"):
            fs.rename(fs_old)
        if killed_after == "filestore-back":  # recovery killed after its first step
            fs_old.rename(fs)
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(env_db), sql.Identifier(env_db + "__old")))  # fmt: skip
    again = run_job(args)
    assert again.rc == 0, again.output
    assert again.result["outcome"] in ("unchanged", "updated")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        mark = marker.read(conn, env_db)
        assert mark is not None and mark.state == "complete"
        assert not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (env_db + "__old",)
        ).fetchone()
    assert tree(fs) == files  # the environment's own filestore, whole
    assert not fs_old.exists()


def test_the_environment_is_what_odoo_neutralize_makes_of_the_same_copy(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, tmp_path: Path, odoo: Odoo
) -> None:
    """Neutralised by Odoo's own `odoo neutralize`: the environment equals a twin of production
    that an operator neutralised by hand, table for table (only the identity differs), custom
    addons' neutralize.sql included (x_custom, on the job's --addons-path, marked installed).
    Nothing here reads the stand-in: it holds for real Odoo."""
    sub, db, data_dir = production["sub"], production["db"], production["data_dir"]
    addons = tmp_path / "addons"
    (addons / "x_custom" / "data").mkdir(parents=True)
    (addons / "x_custom" / "__manifest__.py").write_text(
        "{'name': 'x_custom', 'depends': ['base'], 'license': 'LGPL-3'}\n"
    )
    (addons / "x_custom" / "__init__.py").write_text("")
    (addons / "x_custom" / "data" / "neutralize.sql").write_text(
        "UPDATE res_partner SET email = NULL WHERE email LIKE '%@x.test';\n"
    )
    twin = db + "__twin"
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        conn.execute("INSERT INTO ir_module_module (name, state) VALUES ('x_custom', 'installed')")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
            sql.Identifier(twin), sql.Identifier(db), sql.Identifier(OWNER_ROLE)))  # fmt: skip
    addons_path = TARGET.addons_path(odoo.version, addons)
    by_hand = odoo_neutralize(pg_dsn, odoo, twin, f"--addons-path={addons_path}")
    assert by_hand.returncode == 0, by_hand.stderr

    done = run_job(copy_args(sub, data_dir, odoo, "--addons-path", addons_path))
    assert done.rc == 0, done.output
    env_db = done.result["database"]
    skip = ("ir_config_parameter",)
    assert table_digests(pg_dsn, env_db, skip) == table_digests(pg_dsn, twin, skip)
    env_cfg, twin_cfg = config(pg_dsn, env_db), config(pg_dsn, twin)
    assert {k: v for k, v in env_cfg.items() if k not in IDENTITY} == {
        k: v for k, v in twin_cfg.items() if k not in IDENTITY
    }
    # What that means: the banner on, Odoo's flag, the custom addon's own neutralisation.
    assert banner(pg_dsn, env_db) == [True]
    assert env_cfg["database.is_neutralized"] == "true"
    with psycopg.connect(pg_dsn, dbname=env_db, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM res_partner WHERE email LIKE '%@x.test'"
        ).fetchone() == (0,)
    assert table_digests(pg_dsn, db, skip) != table_digests(pg_dsn, env_db, skip)  # not a no-op


def test_a_failed_odoo_neutralize_publishes_nothing_and_the_rerun_converges(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, odoo: Odoo
) -> None:
    """An installed module's neutralize.sql fails (plana_test_neutralize, told so by a
    parameter of production): Odoo exits 1 and rolls back; nothing is published."""
    sub, db, data_dir = production["sub"], production["db"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    set_param(pg_dsn, db, FAIL_PARAM, "1")
    failed = run_job(copy_args(sub, data_dir, odoo))
    assert failed.rc == 75, failed.output
    assert "odoo neutralize exited 1" in failed.result["error"], failed.output
    # No environment, and no un-neutralised copy of production left under the work name.
    assert work_databases(pg_dsn, env_db) == []
    set_param(pg_dsn, db, FAIL_PARAM, None)
    again = run_job(copy_args(sub, data_dir, odoo))
    assert again.rc == 0 and again.result["outcome"] == "created", again.output
    assert banner(pg_dsn, env_db) == [True]
    assert active(pg_dsn, env_db)["servers"] == [DUMMY_SERVER]


def test_an_odoo_of_another_major_version_does_not_neutralise(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, tmp_path: Path
) -> None:
    """Its neutralize.sql files are written for another schema: 65, nothing published."""
    other = make_odoo(tmp_path / "other", OTHER)  # skips when this mode has no Odoo 17
    sub, data_dir = production["sub"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    done = run_job(copy_args(sub, data_dir, other))
    assert done.rc == 65, done.output
    assert "Odoo 18" in done.result["error"] and "17.0" in done.result["error"], done.output
    assert work_databases(pg_dsn, env_db) == []


def test_without_its_odoo_binary_nothing_is_copied(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, tmp_path: Path, odoo: Odoo
) -> None:
    sub, data_dir = production["sub"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    missing = Odoo(VERSION, tmp_path / "no-odoo", odoo.conf)
    done = run_job(copy_args(sub, data_dir, missing))
    assert done.rc == 78 and str(missing.exe) in done.result["error"], done.output
    assert work_databases(pg_dsn, env_db) == []
    assert not naming.filestore(env_db, data_dir).parent.joinpath(f".{env_db}.env").exists()


def sleeping_neutralize(pg_dsn: str, db: str, job: subprocess.Popen[str]) -> int:
    """Wait until Odoo's session on `db` is inside plana_test_neutralize's pg_sleep (its
    transaction open, base's neutralisation done but uncommitted); its backend pid."""
    until = time.monotonic() + JOB_TIMEOUT
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        while time.monotonic() < until:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND state = 'active'"
                " AND wait_event = 'PgSleep' AND query LIKE '%%pg_sleep%%'",
                (db,),
            ).fetchone()
            if row:
                return int(row[0])
            if job.poll() is not None:
                raise AssertionError(f"the job ended (rc {job.returncode}) before Odoo slept")
            time.sleep(0.2)  # polling pg_stat_activity, not a synchronisation by time
    raise AssertionError("odoo neutralize never reached plana_test_neutralize's pg_sleep")


def test_killed_inside_odoo_neutralize_the_rerun_neutralises_a_new_copy_once(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, odoo: Odoo
) -> None:
    """SIGKILL while Odoo holds its neutralisation transaction open (plana_test_neutralize's
    neutralize.sql sleeping, after base's ran): nothing of it commits, the re-run starts from a
    new copy, and Odoo's non-idempotent SQL ran once on what is published (one dummy mail
    server, not two)."""
    sub, db, data_dir = production["sub"], production["db"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    set_param(pg_dsn, db, SLEEP_PARAM, "600")
    job = subprocess.Popen(
        [str(BIN / "plana-job"), *copy_args(sub, data_dir, odoo)], env=run_job.env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        sleeping_neutralize(pg_dsn, env_db + "__env", job)
        signal_tree(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        job.kill()
        job.wait()
    assert job.returncode == -signal.SIGKILL
    assert work_databases(pg_dsn, env_db) == [env_db + "__env"]  # killed before publication

    set_param(pg_dsn, db, SLEEP_PARAM, None)
    again = run_job(copy_args(sub, data_dir, odoo))
    assert again.rc == 0 and again.result["outcome"] == "created", again.output
    assert work_databases(pg_dsn, env_db) == [env_db]
    assert active(pg_dsn, env_db)["servers"] == [DUMMY_SERVER]
    assert banner(pg_dsn, env_db) == [True]
    with psycopg.connect(pg_dsn, dbname=env_db, autocommit=True) as conn:
        dummies = conn.execute(
            "SELECT count(*) FROM ir_mail_server WHERE smtp_host = 'invalid'"
        ).fetchone()
    assert dummies == (1,)


def untouched(pg_dsn: str, sub: str, data_dir: Path) -> Snapshot:
    """What a dry run must leave as it is: the tenant's databases (production, environments and
    work copies, with their rows) and the data dir."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        dbs = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE strpos(datname, %s) > 0", (sub,)).fetchall()]
    return Snapshot.take(pg_dsn, databases=dbs, only=(sub,), roots=[data_dir])  # fmt: skip


def dry_run(run_job: Runner, args: list[str], pg_dsn: str, sub: str, data_dir: Path,
            rc: int = 0) -> dict[str, Any]:  # fmt: skip
    """`args` with --dry-run: exits `rc`, and changes nothing at all."""
    before = untouched(pg_dsn, sub, data_dir)
    res = run_job([*args, "--dry-run"])
    assert res.rc == rc, res.output
    assert untouched(pg_dsn, sub, data_dir).diff(before) == []
    if rc == 0:
        assert res.result["outcome"] == "planned" and res.result["dry_run"] is True
    else:
        assert res.result["outcome"] == "failed" and res.result["exit_code"] == rc
    return res.result


def planned(result: dict[str, Any]) -> list[str]:
    return [s["step"] for s in result["steps"]]


def test_dry_run_of_a_copy_plans_and_changes_nothing_fresh_converged_refreshed(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, odoo: Odoo
) -> None:
    sub, data_dir = production["sub"], production["data_dir"]
    args = copy_args(sub, data_dir, odoo)
    fresh = dry_run(run_job, args, pg_dsn, sub, data_dir)
    assert planned(fresh) == ["copy-database", "copy-filestore", "neutralise", "publish"]
    assert run_job(args).rc == 0
    assert planned(dry_run(run_job, args, pg_dsn, sub, data_dir)) == []
    refresh = copy_args(sub, data_dir, odoo, "--refresh", generation="2")
    again = dry_run(run_job, refresh, pg_dsn, sub, data_dir)
    assert planned(again) == ["copy-database", "copy-filestore", "neutralise", "publish"]


def test_dry_run_of_a_fresh_environment_plans_the_clone(
    template: Template, run_job: Runner, pg_dsn: str, uid: str, odoo: Odoo
) -> None:
    def args(name: str) -> list[str]:
        return ["environment-db", "--subdomain", uid, "--env", "test", "--tier", "pro",
                "--owner-email", "owner@x.test", "--owner-name", "Owner", "--template-db", name,
                *odoo.args(), "--data-dir", str(template.data_dir)]  # fmt: skip

    fresh = dry_run(run_job, args(template.name), pg_dsn, uid, template.data_dir)
    assert planned(fresh) == ["clone", "neutralise", "publish"]
    missing = args("template_missing_" + uid)
    waiting = dry_run(run_job, missing, pg_dsn, uid, template.data_dir, rc=75)  # as the run
    assert "does not exist" in waiting["error"]


def test_dry_run_refuses_what_the_run_refuses(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, odoo: Odoo, tmp_path: Path
) -> None:
    sub, data_dir = production["sub"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(env_db)))
    refused = dry_run(run_job, copy_args(sub, data_dir, odoo), pg_dsn, sub, data_dir, rc=65)
    assert "is not this tenant's environment" in refused["error"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(env_db)))
    missing = Odoo(VERSION, tmp_path / "no-odoo", odoo.conf)  # configuration: 78 as the run
    unusable = dry_run(run_job, copy_args(sub, data_dir, missing), pg_dsn, sub, data_dir, rc=78)
    assert str(missing.exe) in unusable["error"]
