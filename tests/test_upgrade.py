"""`plana-job upgrade` against real PostgreSQL with the Odoo stand-in at 17 and 18
(tests/standins/odoo): a 17 tenant built by template-build + tenant-db, upgraded to 18."""

from __future__ import annotations

import ast
import json
import os
import shutil
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
from tests.conftest import JOB_ROLE, STANDINS, JobRun, Runner, database_names

ODOO = str(STANDINS / "odoo")
OWNER_ROLE = "plana"
MODULES = "base,web,mail,contacts,agreement,agreement_legal"


def _wrapper(path: Path, version: int, **env: str) -> str:
    """An `odoo` of one major version: the stand-in with its version fixed, as an image has."""
    extra = " ".join(f"{k}={v}" for k, v in env.items())
    path.write_text(f"#!/bin/sh\nODOO_STANDIN_VERSION={version} {extra} exec {ODOO} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def _addons(path: Path, *names: str) -> Path:
    """An addons directory holding (empty) addons `names`, each with its manifest."""
    for name in names:
        (path / name).mkdir(parents=True)
        (path / name / "__manifest__.py").write_text(f"{{'name': '{name}'}}\n")
    return path


def _config(path: Path, *addons: Path) -> str:
    path.write_text(f"[options]\naddons_path = {','.join(map(str, addons))}\n")
    return str(path)


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    ident = sql.Identifier(name)
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@pytest.fixture(scope="module")
def env(pg_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One 17 template with agreement_legal, the two binaries, each with its Odoo config as
    its image has (17: OpenUpgrade 17's framework on its addons path; 18: an addons directory
    without OpenUpgrade), and OpenUpgrade 18 (framework and scripts) for the upgrade path."""
    tmp = tmp_path_factory.mktemp("upgrade")
    bins = tmp / "bin"
    bins.mkdir()
    ou18 = _addons(tmp / "openupgrade18", "openupgrade_framework")
    scripts = ou18 / "openupgrade_scripts" / "scripts"
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
    ns.scripts, ns.ou18 = str(scripts), str(ou18)
    ns.addons17 = _addons(tmp / "addons17", "openupgrade_framework", "plana_theme")
    ns.addons18 = _addons(tmp / "addons18", "plana_theme")
    ns.conf17 = _config(tmp / "odoo17.conf", ns.addons17)
    ns.conf18 = _config(tmp / "odoo18.conf", ns.addons18)
    ns.odoo17_slow = _wrapper(bins / "odoo17-slow", 17, ODOO_STANDIN_SLEEP="60")
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


def modules_of(pg_dsn: str, db: str) -> list[tuple[Any, ...]]:
    """Every module's state, latest_version and write_date: what an update touches.

    A frozen database (a rollback copy) is opened for the read and frozen again.
    """
    ident = sql.Identifier(db)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        row = admin.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (db,))
        frozen = not (row.fetchone() or (True,))[0]
        if frozen:
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident))
        try:
            with psycopg.connect(pg_dsn, dbname=db) as conn:
                return conn.execute(
                    "SELECT name, state, latest_version, write_date FROM ir_module_module"
                    " ORDER BY name"
                ).fetchall()
        finally:
            if frozen:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident)
                )


def kill_when(run_job: Runner, args: list[str], line: str, step: str) -> None:
    """Start the job, SIGKILL it and its Odoo (no handler runs) once `line` is logged in `step`."""
    job = run_job.popen(args)
    odoo_pid = None
    assert job.stdout is not None
    for raw in job.stdout:
        event = json.loads(raw)
        if event.get("event") == "started" and event.get("child") == "odoo":
            odoo_pid = event["pid"]
        if line in str(event.get("event")) and event.get("step") == step:
            break
    assert odoo_pid is not None
    os.kill(job.pid, signal.SIGKILL)
    os.killpg(odoo_pid, signal.SIGKILL)
    job.wait()
    job.stdout.close()
    job.stderr.close() if job.stderr else None


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
                                                     "--odoo-config", env.conf18,
                                                     "--upgrade-path", env.scripts)])
    assert early.rc == 65 and "prefix" in early.result["error"], early.output

    # The wrong image for a pass is a configuration error (78), found before the copy is touched.
    wrong = run_job(["upgrade", "source-pass", *hop(sub, d17, "--odoo-bin", env.odoo18)])
    assert wrong.rc == 78 and "not Odoo 17.0" in wrong.result["error"], wrong.output
    assert phase("source-pass", d17, "--odoo-bin", env.odoo17,
                 "--odoo-config", env.conf17)["outcome"] == "updated"  # fmt: skip
    assert phase("prefix", d18)["prefixes"] == [n for n, _ in prefix_files(17, 18)]
    # The target volume has no filestore for the copy yet: refused, and the copy stays usable.
    bare = run_job(["upgrade", "target-pass", *hop(sub, d18, "--odoo-bin", env.odoo18,
                                                    "--odoo-config", env.conf18,
                                                    "--upgrade-path", env.scripts)])
    assert bare.rc == 65 and "filestore-copy" in bare.result["error"], bare.output
    # Between the images: the work copy's filestore goes to the target volume.
    copied = run_job(["filestore-copy", "--transport", "local", "--db", work,
                      "--source-root", str(d17 / "filestore"),
                      "--target-root", str(d18 / "filestore")])  # fmt: skip
    assert copied.rc == 0 and copied.result["outcome"] == "created", copied.output
    status = run_job(["upgrade", "status", *hop(sub, d18)])
    assert status.result["next"] == "target-pass", status.output
    assert phase("target-pass", d18, "--odoo-bin", env.odoo18, "--odoo-config", env.conf18,
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
    for args in (["snapshot"], ["source-pass", "--odoo-bin", env.odoo17,
                                "--odoo-config", env.conf17]):
        done = run_job(["upgrade", *args, *hop(sub, env.d17)])
        assert done.rc == 0, done.output
    probe = f"{db}__probe"
    drop_dbs.append(probe)
    pg.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(probe), sql.Identifier(f"{db}__up18")))  # fmt: skip
    argv = [env.odoo18, "-d", probe, "--load=base,web,openupgrade_framework",
            f"--upgrade-path={env.scripts}", f"--addons-path={env.ou18}", "-u", "all",
            "--stop-after-init", "--no-http",
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
                                   "--source-odoo-config", env.conf17,
                                   "--target-odoo-config", env.conf18,
                                   "--upgrade-path", env.scripts)]  # fmt: skip
    # SIGKILL: no handler runs (a node failure or the grace period running out).
    kill_when(run_job, args, "standin: sleeping", "target-pass")

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


def addons_paths(done: JobRun, step: str) -> list[list[str]]:
    """The addons paths each Odoo run of `step` started with (the stand-in logs them)."""
    return [
        ast.literal_eval(str(e["event"]).split(" odoo: addons paths: ", 1)[1])
        for e in done.logs
        if e.get("child") == "odoo" and e.get("step") == step
        and " odoo: addons paths: " in str(e.get("event"))
    ]  # fmt: skip


def run_args(env: Any, sub: str, *more: str) -> list[str]:
    return ["upgrade", "run", *hop(sub, env.d17, "--source-odoo-bin", env.odoo17,
                                   "--target-odoo-bin", env.odoo18, *more)]  # fmt: skip


def test_run_gives_each_side_its_own_odoo_config(
    env: Any, run_job: Runner, pg_dsn: str, tenant: str, tmp_path: Path
) -> None:
    """`upgrade run` drives two binaries: each pass starts from its own side's config, never
    the other's nor $ODOO_RC's, and the target pass also gets the directory of OpenUpgrade's
    openupgrade_scripts addon (its scripts import it) added to its config's addons path."""
    sub, db = tenant, naming.db_name(tenant)
    stray = _config(tmp_path / "stray.conf", _addons(tmp_path / "stray", "plana_theme"))
    done = run_job(run_args(env, sub, "--source-odoo-config", env.conf17,
                            "--target-odoo-config", env.conf18, "--upgrade-path", env.scripts),
                   ODOO_RC=stray)  # fmt: skip
    assert done.rc == 0, done.output
    assert addons_paths(done, "source-pass") == [[str(env.addons17)]]
    assert addons_paths(done, "target-pass") == [[str(env.addons18), str(Path(env.ou18).resolve())]]
    assert base_of(pg_dsn, db).startswith("18.0.")


def test_pass_without_openupgrade_framework_is_a_configuration_error(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], tenant: str, tmp_path: Path
) -> None:
    """Odoo only logs a --load module it cannot import and goes on (exit 0): a pass without
    the framework is a plain `-u all`, no migration. Seen in Odoo's output: 78 naming the
    addons path; the copy is spoilt, so the next attempt starts from a fresh one."""
    sub, db = tenant, naming.db_name(tenant)
    bare17 = _config(tmp_path / "bare17.conf", env.addons18)  # no openupgrade_framework
    source = run_job(run_args(env, sub, "--source-odoo-config", bare17,
                              "--target-odoo-config", env.conf18, "--upgrade-path", env.scripts))
    assert source.rc == 78, source.output
    error = source.result["error"]
    assert error.startswith("source-pass: ") and "could not load openupgrade_framework" in error
    assert f"addons_path = {env.addons18} in {bare17}" in error, error
    status = run_job(["upgrade", "status", *hop(sub, env.d17)])
    assert status.result["state"] == "failed" and status.result["next"] == "snapshot"

    # The target side: OpenUpgrade's scripts without its framework beside them.
    alone = tmp_path / "scripts-only" / "openupgrade_scripts" / "scripts"
    shutil.copytree(env.scripts, alone)
    target = run_job(run_args(env, sub, "--source-odoo-config", env.conf17,
                              "--target-odoo-config", env.conf18, "--upgrade-path", str(alone)))
    assert target.rc == 78, target.output
    error = target.result["error"]
    assert error.startswith("target-pass: ") and "could not load openupgrade_framework" in error
    assert f"--addons-path={env.addons18},{alone.parent.parent.resolve()}" in error, error
    status = run_job(["upgrade", "status", *hop(sub, env.d17)])
    assert status.result["state"] == "failed" and status.result["phases"] == [
        "snapshot", "source-pass", "prefix"]  # fmt: skip
    assert status.result["upgrading"]["attempt"] == 2
    allow, live = info(pg, db) or (True, {})
    assert not allow and "odoo_version" not in live  # still the frozen 17 tenant


def same_major_args(env: Any, sub: str, *more: str) -> list[str]:
    return ["upgrade", "--strategy", "same-major", "--subdomain", sub, "--to-version", "17",
            "--odoo-bin", env.odoo17, "--data-dir", str(env.d17), *more]  # fmt: skip


def work_names(pg: psycopg.Connection[Any], db: str) -> set[str]:
    return {n for n in database_names(pg) if n.startswith(db + "__")}


def test_same_major_swaps_in_keeps_the_rollback_copy_and_rolls_back(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, tenant: str,
) -> None:  # fmt: skip
    sub, db = tenant, naming.db_name(tenant)
    rb = f"{db}__rb17"
    args = same_major_args(env, sub)
    _, tenant_mark = info(pg, db) or (False, {})
    original = modules_of(pg_dsn, db)
    original_files = files_of(naming.filestore(db, env.d17))

    first = run_job(args)
    assert first.rc == 0 and first.result["outcome"] == "updated", first.output
    assert first.result["rollback_db"] == rb
    assert any(e.get("child") == "odoo" for e in first.logs)  # Odoo's lines are in the log
    allow, live = info(pg, db) or (False, {})
    assert allow and "upgrading" not in live and live["rollback_db"] == rb
    assert live["odoo_version"] == 17
    assert live["addons_revision"].startswith("Odoo Server 17.0; code ")  # + the code digest
    updated = modules_of(pg_dsn, db)
    assert updated != original  # the work copy, updated, is the live database now
    # The old database, untouched, is the rollback copy (frozen), with the tenant's old marker.
    allow_rb, old = info(pg, rb) or (True, {})
    assert not allow_rb and old["kind"] == "rollback" and (old["from"], old["to"]) == (17, 17)
    assert old["tenant"] == {k: v for k, v in tenant_mark.items() if k not in ("kind", "state")}
    assert modules_of(pg_dsn, rb) == original
    assert work_names(pg, db) == {rb}
    assert files_of(naming.filestore(rb, env.d17)) == original_files
    assert original_files <= files_of(naming.filestore(db, env.d17))
    assert not naming.filestore(f"{db}__up17", env.d17).exists()

    # Killed between the swap and the filestore renames: the next run does them first.
    live_fs, rb_fs = naming.filestore(db, env.d17), naming.filestore(rb, env.d17)
    work_fs = naming.filestore(f"{db}__up17", env.d17)
    (live_fs / "probe").write_bytes(b"the updated database's filestore")
    updated_files = files_of(live_fs)
    os.rename(live_fs, work_fs)
    os.rename(rb_fs, live_fs)
    resumed = run_job(args)
    assert resumed.rc == 0 and resumed.result["outcome"] == "updated", resumed.output
    assert files_of(live_fs) == updated_files and files_of(rb_fs) == original_files
    assert not work_fs.exists()
    (live_fs / "probe").unlink()

    again = run_job(args)
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    assert not any(e.get("child") == "odoo" and e.get("event") == "started" for e in again.logs)

    # A new addons revision: updated again. Odoo exiting 0 with a module left `to upgrade` is
    # a failure all the same (module states are read back, never the exit code alone).
    state = info(pg, db)
    left = run_job(same_major_args(env, sub, "--addons-revision", "r2"),
                   ODOO_STANDIN_LEAVE="contacts")  # fmt: skip
    assert left.rc == 65 and "contacts" in left.result["error"], left.output
    assert info(pg, db) == state and modules_of(pg_dsn, db) == updated
    ok = run_job(same_major_args(env, sub, "--addons-revision", "r2"))
    assert ok.rc == 0 and ok.result["outcome"] == "updated", ok.output
    assert modules_of(pg_dsn, rb) == updated  # one rollback copy: the database before this run

    back = run_job(["upgrade", "rollback", "--subdomain", sub, "--from-version", "17",
                    "--to-version", "17", "--data-dir", str(env.d17)])  # fmt: skip
    assert back.rc == 0 and back.result["outcome"] == "updated", back.output
    allow, live = info(pg, db) or (False, {})
    assert allow and live["addons_revision"].startswith("Odoo Server 17.0; code ")
    assert modules_of(pg_dsn, db) == updated
    assert rb not in database_names(pg)
    assert (info(pg, f"{db}__up17") or (0, {}))[1]["state"] == "rolled-back"
    again = run_job(["upgrade", "rollback", "--subdomain", sub, "--from-version", "17",
                     "--to-version", "17", "--data-dir", str(env.d17)])  # fmt: skip
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output


def test_same_major_failing_at_a_later_module_leaves_the_tenant_untouched(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, tenant: str,
) -> None:  # fmt: skip
    """Odoo commits each module: a -u all failing after base, web, mail and contacts has
    updated those for good, so it must run on a copy, never on the live database."""
    sub, db = tenant, naming.db_name(tenant)
    before, modules = info(pg, db), modules_of(pg_dsn, db)
    fs = naming.filestore(db, env.d17)
    files = files_of(fs)
    failed = run_job(same_major_args(env, sub), ODOO_STANDIN_FAIL_AT="agreement")
    assert failed.rc == 65 and "odoo exited 255" in failed.result["error"], failed.output
    assert any("Transient module states were reset" in str(e.get("event")) for e in failed.logs)
    assert modules_of(pg_dsn, db) == modules
    assert info(pg, db) == before  # same marker, connections allowed: unfrozen
    assert files_of(fs) == files
    assert not work_names(pg, db)
    assert not naming.filestore(f"{db}__up17", env.d17).exists()
    ok = run_job(same_major_args(env, sub))
    assert ok.rc == 0 and ok.result["outcome"] == "updated", ok.output


def test_same_major_killed_in_odoo_then_rerun_converges(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, tenant: str,
) -> None:  # fmt: skip
    sub, db = tenant, naming.db_name(tenant)
    work, rb = f"{db}__up17", f"{db}__rb17"
    modules = modules_of(pg_dsn, db)
    slow = same_major_args(env, sub)
    slow[slow.index(env.odoo17)] = env.odoo17_slow
    kill_when(run_job, slow, "standin: sleeping", "odoo")
    allow, live = info(pg, db) or (True, {})
    assert not allow and live["upgrading"]["strategy"] == "same-major"  # frozen, untouched
    assert (info(pg, work) or (0, {}))[1]["running"] == "same-major"  # the copy Odoo was on
    status = run_job(["upgrade", "status", "--subdomain", sub, "--from-version", "17",
                      "--to-version", "17"])  # fmt: skip
    assert status.result["interrupted"] == "same-major", status.output
    assert status.result["next"] == "same-major"

    # The killed Odoo half-updated its copy: the re-run never trusts it, it clones afresh.
    done = run_job(same_major_args(env, sub))
    assert done.rc == 0 and done.result["outcome"] == "updated", done.output
    assert done.result["attempt"] == 2
    allow, live = info(pg, db) or (False, {})
    assert allow and "upgrading" not in live and live["update"]["attempt"] == 2
    assert modules_of(pg_dsn, rb) == modules
    assert work_names(pg, db) == {rb}
    again = run_job(same_major_args(env, sub))
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output


def test_major_upgrade_after_same_major_supersedes_its_rollback_copy(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, tenant: str,
) -> None:  # fmt: skip
    """Both name their rollback copy `{db}__rb17`: the major upgrade's frozen live database is
    the newer restore point, so the same-major copy goes when the upgrade starts."""
    sub, db = tenant, naming.db_name(tenant)
    rb = f"{db}__rb17"
    done = run_job(same_major_args(env, sub))
    assert done.rc == 0, done.output
    before = modules_of(pg_dsn, db)
    run = run_job(run_args(env, sub, "--source-odoo-config", env.conf17,
                           "--target-odoo-config", env.conf18,
                           "--upgrade-path", env.scripts))  # fmt: skip
    assert run.rc == 0 and run.result["outcome"] == "updated", run.output
    _, old = info(pg, rb) or (True, {})
    assert old["kind"] == "rollback" and (old["from"], old["to"]) == (17, 18)
    assert modules_of(pg_dsn, rb) == before
    assert base_of(pg_dsn, db).startswith("18.0.")


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
    # Not an openupgrade_scripts/scripts: its addon could not be put on the addons path.
    assert "openupgrade_scripts addon" in refused(
        64, "target-pass", *hop(sub, env.d17), "--upgrade-path", env.ou18)
    missing = str(env.tmp / "missing.conf")  # read before anything is touched: 78
    assert missing in refused(78, "source-pass", *hop(sub, env.d17), "--odoo-bin", env.odoo17,
                              "--odoo-config", missing)  # fmt: skip
    assert missing in refused(78, "run", *hop(sub, env.d17), "--upgrade-path", env.scripts,
                              "--target-odoo-config", missing)  # fmt: skip
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


def test_same_major_reruns_when_the_code_of_an_installed_module_changes(
    env: Any, run_job: Runner, tenant: str, tmp_path: Path
) -> None:
    """Every 17 build prints `Odoo Server 17.0`: without --addons-revision, the revision is that
    line plus the digest of the installed modules' code on the image's addons path, so a new
    image with changed module code runs `-u all` again, and the same code does not."""
    addons = _addons(tmp_path / "addons", "web", "mail")  # installed in the tenant (MODULES)
    conf = _config(tmp_path / "odoo.conf", addons)
    args = same_major_args(env, tenant, "--odoo-config", conf)
    first = run_job(args)
    assert first.rc == 0 and first.result["outcome"] == "updated", first.output
    again = run_job(args)
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    (addons / "mail" / "models.py").write_text("# a new image's mail\n")
    changed = run_job(args)
    assert changed.rc == 0 and changed.result["outcome"] == "updated", changed.output
    assert changed.result["revision"] != first.result["revision"]
    assert changed.result["revision"].startswith("Odoo Server 17.0; code ")
