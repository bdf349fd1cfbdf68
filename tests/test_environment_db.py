"""environment-db: a neutralised copy of production (production keeps serving), or fresh."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs import marker, naming
from tests.conftest import BIN, STANDINS, Runner
from tests.test_backup import config, make_tenant, table_digests, tree
from tests.test_kill_convergence import signal_tree
from tests.test_tenant_db import OWNER_ROLE, drop, ensure_role

ODOO = str(STANDINS / "odoo")
# What environment-db gives a copy of its own, besides neutralisation (Odoo's duplication resets).
IDENTITY = ("database.secret", "database.uuid", "database.create_date", "web.base.url")


def active(pg_dsn: str, db: str) -> dict[str, Any]:
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        crons = conn.execute("SELECT name FROM ir_cron WHERE active ORDER BY 1").fetchall()
        servers = conn.execute(
            "SELECT name, smtp_host FROM ir_mail_server WHERE active ORDER BY 1"
        ).fetchall()
    return {"crons": [r[0] for r in crons], "servers": servers}


def banner(pg_dsn: str, db: str) -> list[bool]:
    """`active` of web's "Database neutralized for testing" banner view(s)."""
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT active FROM ir_ui_view WHERE key = 'web.neutralize_banner'"
        ).fetchall()
    return [r[0] for r in rows]


def odoo_neutralize(pg_dsn: str, db: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`odoo neutralize -d db` run by hand, as an operator would, with libpq's environment."""
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "ODOO_"))}
    env.update(PGHOST=str(params.get("host", "127.0.0.1")), PGPORT=str(params.get("port", 5432)),
               PGUSER=str(params.get("user", "postgres")))  # fmt: skip
    return subprocess.run([sys.executable, ODOO, "neutralize", "-d", db, *extra], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip


def work_databases(pg_dsn: str, env_db: str) -> list[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname IN (%s, %s)", (env_db, env_db + "__env")
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def production(pg_dsn: str, uid: str, tmp_path: Path, drop_dbs: list[str]) -> dict[str, Any]:
    drop_dbs.append(f"{uid}%")
    data_dir = tmp_path / "data"
    db = make_tenant(pg_dsn, uid, data_dir, partners=20)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, OWNER_ROLE)
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        conn.execute("INSERT INTO ir_mail_server (name, smtp_host) VALUES ('live', 'smtp.x.test')")
    return {"sub": uid, "db": db, "data_dir": data_dir}


def test_copy_from_production_is_neutralised_and_production_keeps_serving(
    production: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    sub, db, data_dir = production["sub"], production["db"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    before = active(pg_dsn, db)
    prod_rows = table_digests(pg_dsn, db)
    # A production session connected throughout, mid-transaction: it must not be ended.
    session = psycopg.connect(pg_dsn, dbname=db)
    pid = session.execute("SELECT pg_backend_pid()").fetchone()
    args = ["environment-db", "--subdomain", sub, "--env", "staging", "--copy-from-production",
            "--data-dir", str(data_dir), "--generation", "1", "--odoo-bin", ODOO]  # fmt: skip
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
    assert env["crons"] == ["Base: Auto-vacuum internal data"]
    assert env["servers"] == [("neutralization - disable emails", "invalid")]
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
    refreshed = run_job([*args[:-3], "2", "--odoo-bin", ODOO, "--refresh"])
    assert refreshed.rc == 0 and refreshed.result["outcome"] == "updated", refreshed.output
    with psycopg.connect(pg_dsn, dbname=env_db, autocommit=True) as conn:
        assert conn.execute(
            "SELECT 1 FROM res_partner WHERE name = 'after the first copy'"
        ).fetchone()
    assert config(pg_dsn, env_db)["database.secret"] != old_secret
    assert active(pg_dsn, env_db)["crons"] == ["Base: Auto-vacuum internal data"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert env_db + "__old" not in names and env_db + "__env" not in names
    assert not list((data_dir / "filestore").glob(".*"))


def test_environment_over_a_database_that_is_not_ours_is_refused(
    production: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    env_db = naming.db_name(f"{production['sub']}--dev")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(env_db)))
    args = ["environment-db", "--subdomain", production["sub"], "--env", "dev",
            "--copy-from-production", "--data-dir", str(production["data_dir"]),
            "--odoo-bin", ODOO]  # fmt: skip
    done = run_job(args)
    assert done.rc == 65, done.output
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert marker.read(conn, env_db) is None


def test_bad_environment_names_are_refused(production: dict[str, Any], run_job: Runner) -> None:
    for env in ("", "Staging", "x" * 40, "st--g", "-stg", "stg-", "st_g"):
        done = run_job(["environment-db", "--subdomain", production["sub"], "--env", env,
                        "--copy-from-production"])  # fmt: skip
        assert done.rc == 64 and "env" in done.stderr, done.output


@pytest.fixture
def template(pg_dsn: str, run_job: Runner, tmp_path: Path) -> Iterator[dict[str, Any]]:
    name = "template_" + uuid.uuid4().hex[:10]
    data_dir = tmp_path / "tdata"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, OWNER_ROLE)
    built = run_job(
        ["template-build", "--template-code", "pro", "--odoo-version", "18",
         "--modules", "base,web,mail", "--template-db", name,
         "--odoo-bin", ODOO, "--data-dir", str(data_dir)],
        ODOO_STANDIN_VERSION="18",
    )  # fmt: skip
    assert built.rc == 0, built.output
    yield {"name": name, "data_dir": data_dir}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        drop(conn, name)


def test_fresh_environment_from_the_tier_template(
    template: dict[str, Any], run_job: Runner, pg_dsn: str, uid: str, drop_dbs: list[str]
) -> None:
    drop_dbs.append(f"{uid}%")
    env_db = naming.db_name(f"{uid}--test")
    done = run_job(["environment-db", "--subdomain", uid, "--env", "test", "--tier", "pro",
                    "--owner-email", "owner@x.test", "--owner-name", "Owner",
                    "--template-db", template["name"], "--odoo-bin", ODOO,
                    "--data-dir", str(template["data_dir"])])  # fmt: skip
    assert done.rc == 0, done.output
    assert done.result["source"] == "template"
    assert config(pg_dsn, env_db)["web.base.url"] == f"https://{uid}--test.planapulse.app"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        mark = marker.read(conn, env_db)
        assert mark is not None and mark.kind == "environment"
        assert mark.data["source"] == "template"
    assert active(pg_dsn, env_db)["crons"] == ["Base: Auto-vacuum internal data"]
    assert banner(pg_dsn, env_db) == [True]
    copied = tree(naming.filestore(template["name"], template["data_dir"]))
    content = {k: v for k, v in copied.items() if not k.startswith(".")}  # not the template's marks
    assert tree(naming.filestore(env_db, template["data_dir"])) == content


@pytest.mark.parametrize("killed_after", ["database-aside", "both-aside", "filestore-back"])
def test_a_refresh_killed_mid_swap_brings_the_old_pair_back(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, killed_after: str
) -> None:
    """The states a kill can leave inside the publish swap (and inside its own recovery)."""
    sub, data_dir = production["sub"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    args = ["environment-db", "--subdomain", sub, "--env", "staging", "--copy-from-production",
            "--data-dir", str(data_dir), "--generation", "1", "--odoo-bin", ODOO]  # fmt: skip
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


def copy_args(sub: str, data_dir: Path, *extra: str) -> list[str]:
    return ["environment-db", "--subdomain", sub, "--env", "staging", "--copy-from-production",
            "--data-dir", str(data_dir), "--generation", "1",
            "--odoo-bin", ODOO, *extra]  # fmt: skip


def test_the_environment_is_what_odoo_neutralize_makes_of_the_same_copy(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, tmp_path: Path
) -> None:
    """Neutralised by Odoo's own `odoo neutralize`: the environment equals a twin of production
    that an operator neutralised by hand, table for table (only the identity differs), custom
    addons' neutralize.sql included. Nothing here reads the stand-in: it holds for real Odoo."""
    sub, db, data_dir = production["sub"], production["db"], production["data_dir"]
    addons = tmp_path / "addons"
    (addons / "x_custom" / "data").mkdir(parents=True)
    (addons / "x_custom" / "data" / "neutralize.sql").write_text(
        "UPDATE res_partner SET email = NULL WHERE email LIKE '%@x.test';\n"
    )
    twin = db + "__twin"
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        conn.execute("INSERT INTO ir_module_module (name, state) VALUES ('x_custom', 'installed')")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(twin), sql.Identifier(db)))  # fmt: skip
    by_hand = odoo_neutralize(pg_dsn, twin, f"--addons-path={addons}")
    assert by_hand.returncode == 0, by_hand.stderr

    done = run_job(copy_args(sub, data_dir, "--addons-path", str(addons)))
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
    production: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    sub, data_dir = production["sub"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    failed = run_job(copy_args(sub, data_dir), ODOO_STANDIN_FAIL_AT="mail")
    assert failed.rc == 75, failed.output
    assert "odoo neutralize exited 1" in failed.result["error"], failed.output
    # No environment, and no un-neutralised copy of production left under the work name.
    assert work_databases(pg_dsn, env_db) == []
    again = run_job(copy_args(sub, data_dir))
    assert again.rc == 0 and again.result["outcome"] == "created", again.output
    assert banner(pg_dsn, env_db) == [True]
    assert active(pg_dsn, env_db)["servers"] == [("neutralization - disable emails", "invalid")]


def test_an_odoo_of_another_major_version_does_not_neutralise(
    production: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    """Its neutralize.sql files are written for another schema: 65, nothing published."""
    sub, data_dir = production["sub"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    done = run_job(copy_args(sub, data_dir), ODOO_STANDIN_VERSION="17")
    assert done.rc == 65, done.output
    assert "Odoo 18" in done.result["error"] and "17.0" in done.result["error"], done.output
    assert work_databases(pg_dsn, env_db) == []


def test_without_its_odoo_binary_nothing_is_copied(
    production: dict[str, Any], run_job: Runner, pg_dsn: str, tmp_path: Path
) -> None:
    sub, data_dir = production["sub"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    missing = str(tmp_path / "no-odoo")
    done = run_job([*copy_args(sub, data_dir)[:-2], "--odoo-bin", missing])
    assert done.rc == 78 and missing in done.result["error"], done.output
    assert work_databases(pg_dsn, env_db) == []
    assert not naming.filestore(env_db, data_dir).parent.joinpath(f".{env_db}.env").exists()


def test_killed_inside_odoo_neutralize_the_rerun_neutralises_a_new_copy_once(
    production: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    """SIGKILL while Odoo holds its neutralisation transaction open: the server rolls it back,
    the re-run starts from a new copy, and Odoo's non-idempotent SQL ran once on what is
    published (one dummy mail server, not two)."""
    sub, data_dir = production["sub"], production["data_dir"]
    env_db = naming.db_name(f"{sub}--staging")
    job = subprocess.Popen(
        [str(BIN / "plana-job"), *copy_args(sub, data_dir)],
        env={**run_job.env, "ODOO_STANDIN_SLEEP": "600"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert job.stdout is not None
        for line in job.stdout:  # until Odoo says it is inside its transaction
            if "standin: sleeping" in json.loads(line).get("event", ""):
                break
        else:
            raise AssertionError(f"the job ended (rc {job.wait()}) before odoo neutralize slept")
        signal_tree(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        job.kill()
        job.communicate()
    assert job.returncode == -signal.SIGKILL
    assert work_databases(pg_dsn, env_db) == [env_db + "__env"]  # killed before publication

    again = run_job(copy_args(sub, data_dir))
    assert again.rc == 0 and again.result["outcome"] == "created", again.output
    assert work_databases(pg_dsn, env_db) == [env_db]
    assert active(pg_dsn, env_db)["servers"] == [("neutralization - disable emails", "invalid")]
    assert banner(pg_dsn, env_db) == [True]
    with psycopg.connect(pg_dsn, dbname=env_db, autocommit=True) as conn:
        dummies = conn.execute(
            "SELECT count(*) FROM ir_mail_server WHERE smtp_host = 'invalid'"
        ).fetchone()
    assert dummies == (1,)
