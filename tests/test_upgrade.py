"""`plana-job upgrade` against real PostgreSQL with the Odoo stand-in at 17 and 18
(tests/standins/odoo): a 17 tenant built by template-build + tenant-db, upgraded to 18."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs import naming
from jobs.upgrade_phases import prefix_files
from tests.conftest import JOB_ROLE, STANDINS, Runner, database_names

ODOO = str(STANDINS / "odoo")
OWNER_ROLE = "plana"
MODULES = "base,web,mail,contacts,agreement,agreement_legal"


def _wrapper(path: Path, version: int, **env: str) -> str:
    """An `odoo` of one major version: the stand-in with its version fixed, as an image has."""
    extra = " ".join(f"{k}={v}" for k, v in env.items())
    path.write_text(f"#!/bin/sh\nODOO_STANDIN_VERSION={version} {extra} exec {ODOO} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    ident = sql.Identifier(name)
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@pytest.fixture(scope="module")
def env(pg_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One 17 template with agreement_legal, the two binaries and an upgrade path."""
    tmp = tmp_path_factory.mktemp("upgrade")
    bins = tmp / "bin"
    bins.mkdir()
    scripts = tmp / "openupgrade_scripts" / "scripts"
    (scripts / "base" / "18.0.1.3").mkdir(parents=True)
    (scripts / "base" / "18.0.1.3" / "pre-migration.py").write_text("# OpenUpgrade script\n")
    name = "template_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(OWNER_ROLE)))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass
    ns = type("Env", (), {})()
    ns.tmp, ns.template, ns.d17 = tmp, name, tmp / "data17"
    ns.odoo17 = _wrapper(bins / "odoo17", 17)
    ns.odoo18 = _wrapper(bins / "odoo18", 18)
    ns.odoo18_slow = _wrapper(bins / "odoo18-slow", 18, ODOO_STANDIN_SLEEP="60")
    ns.scripts = str(scripts)
    run = Runner(pg_dsn, redis_url, tmp)
    built = run(["template-build", "--template-code", "basic", "--odoo-version", "17",
                 "--modules", MODULES, "--template-db", name, "--odoo-bin", ns.odoo17,
                 "--data-dir", str(ns.d17)])  # fmt: skip
    assert built.rc == 0, built.output
    yield ns
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _drop(conn, name)


@pytest.fixture
def tenant(env: Any, run_job: Runner, uid: str, drop_dbs: list[str]) -> str:
    """A fresh 17 tenant made by tenant-db; its databases are dropped afterwards."""
    drop_dbs.append(naming.db_name(uid) + "%")
    made = run_job(["tenant-db", "--subdomain", uid, "--project-id", "7", "--tier", "starter",
                    "--odoo-version", "17", "--owner-email", f"o@{uid}.example.com",
                    "--owner-name", "Ada", "--template-db", env.template,
                    "--data-dir", str(env.d17)])  # fmt: skip
    assert made.rc == 0, made.output
    return uid


def hop(sub: str, data_dir: Path, *more: str) -> list[str]:
    return ["--subdomain", sub, "--from-version", "17", "--to-version", "18",
            "--data-dir", str(data_dir), *more]  # fmt: skip


def info(pg: psycopg.Connection[Any], db: str) -> tuple[bool, dict[str, Any]] | None:
    row = pg.execute(
        "SELECT datallowconn, shobj_description(oid, 'pg_database') FROM pg_database"
        " WHERE datname = %s",
        (db,),
    ).fetchone()
    if row is None:
        return None
    return bool(row[0]), json.loads(str(row[1]).removeprefix("plana-jobs "))


def base_of(pg_dsn: str, db: str) -> str:
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        row = conn.execute(
            "SELECT latest_version FROM ir_module_module WHERE name = 'base'"
        ).fetchone()
    assert row is not None
    return str(row[0])


def files_of(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_chain_17_to_18_with_filestore_rerun_and_rollback(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, tenant: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The init containers of one Job, in order, each re-run as a no-op; then rollback."""
    sub, db = tenant, naming.db_name(tenant)
    work, rb = f"{db}__up18", f"{db}__rb17"
    d17, d18 = env.d17, tmp_path / "data18"
    src_files = files_of(naming.filestore(db, d17))

    def phase(name: str, data_dir: Path, *more: str) -> dict[str, Any]:
        first = run_job(["upgrade", name, *hop(sub, data_dir, *more)])
        assert first.rc == 0, first.output
        again = run_job(["upgrade", name, *hop(sub, data_dir, *more)])
        assert again.rc == 0, again.output
        assert again.result["outcome"] == "unchanged", (name, again.result)
        return first.result

    assert phase("snapshot", d17)["outcome"] == "created"
    allow, live = info(pg, db) or (True, {})
    assert not allow and live["upgrading"]["from"] == 17  # frozen, the rollback point
    assert info(pg, work) is not None

    # Passes are ordered: the target pass refuses a copy that has not been pre-fixed.
    early = run_job(["upgrade", "target-pass", *hop(sub, d18, "--odoo-bin", env.odoo18,
                                                     "--upgrade-path", env.scripts)])
    assert early.rc == 65 and "prefix" in early.result["error"], early.output

    # The wrong image for a pass is a configuration error (78), found before the copy is touched.
    wrong = run_job(["upgrade", "source-pass", *hop(sub, d17, "--odoo-bin", env.odoo18)])
    assert wrong.rc == 78 and "not Odoo 17.0" in wrong.result["error"], wrong.output
    assert phase("source-pass", d17, "--odoo-bin", env.odoo17)["outcome"] == "updated"
    assert phase("prefix", d18)["prefixes"] == [n for n, _ in prefix_files(17, 18)]
    # The target volume has no filestore for the copy yet: refused, and the copy stays usable.
    bare = run_job(["upgrade", "target-pass", *hop(sub, d18, "--odoo-bin", env.odoo18,
                                                    "--upgrade-path", env.scripts)])
    assert bare.rc == 65 and "filestore-copy" in bare.result["error"], bare.output
    # Between the images: the work copy's filestore goes to the target volume.
    copied = run_job(["filestore-copy", "--transport", "local", "--db", work,
                      "--source-root", str(d17 / "filestore"),
                      "--target-root", str(d18 / "filestore")])  # fmt: skip
    assert copied.rc == 0 and copied.result["outcome"] == "created", copied.output
    status = run_job(["upgrade", "status", *hop(sub, d18)])
    assert status.result["next"] == "target-pass", status.output
    assert phase("target-pass", d18, "--odoo-bin", env.odoo18,
                 "--upgrade-path", env.scripts)["outcome"] == "updated"  # fmt: skip
    assert phase("cutover", d18)["rollback_db"] == rb

    allow, live = info(pg, db) or (False, {})
    assert allow and live["kind"] == "tenant" and live["state"] == "complete"
    assert live["odoo_version"] == 18 and "upgrading" not in live
    assert live["upgrade"]["phases"] == ["snapshot", "source-pass", "prefix", "target-pass",
                                         "cutover"]  # fmt: skip
    assert base_of(pg_dsn, db).startswith("18.0.")
    allow_rb, old = info(pg, rb) or (True, {})
    assert not allow_rb and old["kind"] == "rollback" and old["tenant"]["subdomain"] == sub
    assert work not in database_names(pg)
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        views = conn.execute(
            "SELECT v.arch_db FROM ir_ui_view v JOIN ir_model_data d ON d.res_id = v.id"
            " AND d.model = 'ir.ui.view' WHERE d.module = 'agreement_legal'"
                " AND v.model = 'agreement'"
        ).fetchall()
        stores = {r[0] for r in conn.execute(
            "SELECT store_fname FROM ir_attachment WHERE store_fname IS NOT NULL").fetchall()}
    # agreement_legal's views on `agreement`, recreated from the 18 XML without the stale field.
    assert len(views) == 2 and all("signed_on" in v[0] for v in views)
    # The 18 tenant's filestore holds every attachment it references: the 17 files + new ones.
    live_fs = naming.filestore(db, d18)
    assert stores <= files_of(live_fs) and src_files <= files_of(live_fs)
    assert not naming.filestore(work, d18).exists()
    assert files_of(naming.filestore(db, d17)) == src_files  # the source volume is untouched

    status = run_job(["upgrade", "status", *hop(sub, d18)])
    assert status.result["state"] == "upgraded" and status.result["rollback_available"]

    back = run_job(["upgrade", "rollback", *hop(sub, d18)])
    assert back.rc == 0 and back.result["outcome"] == "updated", back.output
    allow, live = info(pg, db) or (False, {})
    assert allow and "odoo_version" not in live and "upgrading" not in live
    assert base_of(pg_dsn, db).startswith("17.0.")
    assert rb not in database_names(pg)
    assert info(pg, work) is not None and (info(pg, work) or (0, {}))[1]["state"] == "rolled-back"
    again = run_job(["upgrade", "rollback", *hop(sub, d18)])
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output


def test_prefix_sql_is_what_lets_the_18_pass_through(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, tenant: str,
    drop_dbs: list[str],
) -> None:  # fmt: skip
    """On a copy past the 17 pass: 18 fails on agreement_legal's stale views, the fix cures it."""
    sub, db = tenant, naming.db_name(tenant)
    for args in (["snapshot"], ["source-pass", "--odoo-bin", env.odoo17]):
        done = run_job(["upgrade", *args, *hop(sub, env.d17)])
        assert done.rc == 0, done.output
    probe = f"{db}__probe"
    drop_dbs.append(probe)
    pg.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(probe), sql.Identifier(f"{db}__up18")))  # fmt: skip
    argv = [env.odoo18, "-d", probe, "--load=base,web,openupgrade_framework",
            f"--upgrade-path={env.scripts}", "-u", "all", "--stop-after-init", "--no-http",
            "--db_host", "127.0.0.1", "-r", JOB_ROLE, "-D", str(env.tmp / "probe")]  # fmt: skip
    failed = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=run_job.env)
    assert failed.returncode == 255 and "signed_contract_filename" in failed.stderr
    with psycopg.connect(pg_dsn, dbname=probe, autocommit=True) as conn:
        for _, text in prefix_files(17, 18):
            conn.execute(text)
            conn.execute(text)  # a second application changes nothing and does not fail
    passed = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=run_job.env)
    assert passed.returncode == 0, passed.stderr[-2000:]
    assert base_of(pg_dsn, probe).startswith("18.0.")


def test_target_pass_killed_midway_restarts_from_fresh_copy(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, tenant: str,
) -> None:  # fmt: skip
    sub, db = tenant, naming.db_name(tenant)
    args = ["upgrade", "run", *hop(sub, env.d17, "--source-odoo-bin", env.odoo17,
                                   "--target-odoo-bin", env.odoo18_slow,
                                   "--upgrade-path", env.scripts)]  # fmt: skip
    job = run_job.popen(args)
    odoo_pid = None
    assert job.stdout is not None
    for line in job.stdout:
        event = json.loads(line)
        if event.get("event") == "started" and event.get("child") == "odoo":
            odoo_pid = event["pid"]
        if "standin: sleeping" in str(event.get("event")) and event.get("step") == "target-pass":
            break
    assert odoo_pid is not None
    # SIGKILL: no handler runs (a node failure or the grace period running out).
    os.kill(job.pid, signal.SIGKILL)
    os.killpg(odoo_pid, signal.SIGKILL)
    job.wait()
    job.stdout.close()
    job.stderr.close() if job.stderr else None

    status = run_job(["upgrade", "status", *hop(sub, env.d17)])
    assert status.result["interrupted"] == "target-pass", status.output
    assert status.result["next"] == "snapshot"
    # The killed pass spoilt its copy: `run` starts again from a fresh clone of the frozen 17.
    args[args.index(env.odoo18_slow)] = env.odoo18
    done = run_job(args)
    assert done.rc == 0, done.output
    assert done.result["phases"]["snapshot"] == "created"
    assert done.result["phases"]["source-pass"] == "updated"  # a phase name, not a secret
    allow, live = info(pg, db) or (False, {})
    assert allow and live["odoo_version"] == 18 and live["upgrade"]["attempt"] == 2
    assert base_of(pg_dsn, db).startswith("18.0.")
    again = run_job(args)
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output


def test_same_major_twice_and_verified(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], tenant: str,
) -> None:  # fmt: skip
    sub, db = tenant, naming.db_name(tenant)
    args = ["upgrade", "--strategy", "same-major", "--subdomain", sub, "--to-version", "17",
            "--odoo-bin", env.odoo17, "--data-dir", str(env.d17)]  # fmt: skip
    first = run_job(args)
    assert first.rc == 0 and first.result["outcome"] == "updated", first.output
    assert any(e.get("child") == "odoo" for e in first.logs)  # Odoo's lines are in the log
    again = run_job(args)
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    assert not any(e.get("child") == "odoo" and e.get("event") == "started" for e in again.logs)
    _, live = info(pg, db) or (False, {})
    assert live["odoo_version"] == 17 and live["addons_revision"] == "Odoo Server 17.0"
    # A new addons revision: updated again. Odoo exiting 0 with a module left `to upgrade` is
    # a failure all the same (module states are read back, never the exit code alone).
    left = run_job(["upgrade", "same-major", *args[3:], "--addons-revision", "r2"],
                   ODOO_STANDIN_LEAVE="contacts")  # fmt: skip
    assert left.rc == 65 and "contacts" in left.result["error"], left.output
    ok = run_job(["upgrade", "same-major", *args[3:], "--addons-revision", "r2"])
    assert ok.rc == 0 and ok.result["outcome"] == "updated", ok.output


def test_refused_with_nothing_changed(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], tenant: str, uid: str,
    drop_dbs: list[str],
) -> None:  # fmt: skip
    sub, db = tenant, naming.db_name(tenant)
    before = info(pg, db)

    def refused(code: int, *args: str) -> str:
        done = run_job(["upgrade", *args])
        assert done.rc == code, done.output
        assert info(pg, db) == before
        assert not {n for n in database_names(pg) if n.startswith(db + "__")}
        return str(done.result.get("error", ""))

    wrong = refused(65, "snapshot", "--subdomain", sub, "--from-version", "18",
                    "--to-version", "19", "--data-dir", str(env.d17))  # fmt: skip
    assert "not 18.0" in wrong
    assert "one major" in refused(65, "snapshot", *hop(sub, env.d17)[:2], "--from-version",
                                  "17", "--to-version", "19")  # fmt: skip
    assert "fromVersion" in refused(64, "snapshot", "--subdomain", sub, "--from-version",
                                    "banana", "--to-version", "18")  # fmt: skip
    assert "upgrade-path" in refused(64, "target-pass", *hop(sub, env.d17))
    # A database under the tenant's name that plana-jobs did not make: not ours.
    other = uid + "x"
    drop_dbs.append(naming.db_name(other))
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(naming.db_name(other))))
    stranger = run_job(["upgrade", "snapshot", *hop(other, env.d17)])
    assert stranger.rc == 65 and "not a plana-jobs tenant" in stranger.result["error"]


def test_options_before_the_phase_are_taken_or_refused(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], tenant: str
) -> None:
    """`upgrade --subdomain x status` is `upgrade status --subdomain x`, never the options
    silently dropped; one the phase does not take, or a second different value, is refused."""
    sub, db = tenant, naming.db_name(tenant)
    after = run_job(["upgrade", "status", *hop(sub, env.d17)])
    assert after.rc == 0, after.output
    before = run_job(["upgrade", *hop(sub, env.d17), "status"])
    assert before.rc == 0, before.output
    assert before.result == {**after.result, "duration_s": before.result["duration_s"]}
    # Split across both sides: still the same tenant and hop.
    split = run_job(["upgrade", *hop(sub, env.d17)[:2], "status", *hop(sub, env.d17)[2:]])
    assert split.rc == 0 and split.result["state"] == after.result["state"], split.output

    state = info(pg, db)
    wrong = run_job(["upgrade", "--upgrade-path", env.scripts, "snapshot", *hop(sub, env.d17)])
    assert wrong.rc == 64, wrong.output
    assert wrong.stderr.splitlines()[-1] == (
        "plana-job upgrade: error: --upgrade-path (PLANA_UPGRADE_PATH): "
        "not an option of `upgrade snapshot`"
    )
    twice = run_job(["upgrade", "--subdomain", sub + "x", "snapshot", *hop(sub, env.d17)])
    assert twice.rc == 64 and "--subdomain (PLANA_SUBDOMAIN)" in twice.result["error"]
    assert info(pg, db) == state  # nothing snapshotted
    assert not {n for n in database_names(pg) if n.startswith(db + "__")}
