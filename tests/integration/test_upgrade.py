"""`plana-job upgrade` against real PostgreSQL and the Odoo under test (tests/support/odoo_target:
the stand-in in CI, real Odoo 17 and 18 in test mode): a 17 tenant built by template-build +
tenant-db, updated within 17 (same-major) and upgraded to 18 (OpenUpgrade, in phases or `run`).

Real Odoo is slow, so one 17 template with the test apps is built per module and every test
works on a tenant cloned from it. Its modules: APPS (data and attachments), SLEEP (what the
kill tests synchronise on: it logs SLEEP_LINE, then sleeps PLANA_TEST_ODOO_SLEEP seconds,
which only the `*_slow` binaries set) and FAIL_UPDATE, whose update fails: the images of these
tests carry a fixed build of it (`fixed`, first on their addons path, as a new image would), the
broken one in tests/support/addons is what `broken17` runs.

Two kinds of test stay on the stand-in in both modes (the `legal` fixture), each saying why:
the agreement_legal pre-fix (OCA's agreement_legal, which real Odoo here lacks) and a target
pass whose Odoo cannot import openupgrade_framework (real 18 here has OpenUpgrade's wheels in
its own python, where Odoo finds the framework whatever its addons path says).
"""

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

from jobs.adapters.pg import locks
from jobs.commands.upgrade.phases import PHASES, prefix_files
from jobs.core import naming
from tests.support import odoo_target
from tests.support.harness import JOB_ROLE, JobRun, Runner, database_names
from tests.support.odoo_target import (
    APP,
    APPS,
    FAIL_UPDATE,
    LEAVE,
    SLEEP,
    SLEEP_LINE,
    SLEEP_VAR,
    OdooTarget,
)
from tests.support.untouched import Snapshot

TARGET = odoo_target.current()
OWNER_ROLE = "plana"
MODULES = ",".join(("base", "web", *APPS, SLEEP, FAIL_UPDATE))
LEGAL_MODULES = "base,web,mail,contacts,agreement,agreement_legal"  # the stand-in's catalog
# A real -u all of base, web and the test addons takes a minute or more on a loaded machine.
RUN_TIMEOUT = 1500.0 if TARGET.real else 120.0
pytestmark = pytest.mark.timeout(3600 if TARGET.real else 600)


class SlowRunner(Runner):
    """The suite's Runner with a job deadline (PLANA_TIMEOUT) and a wait fit for real Odoo."""

    timeout = RUN_TIMEOUT

    def __init__(self, pg_dsn: str, redis_url: str, tmp: Path) -> None:
        super().__init__(pg_dsn, redis_url, tmp)
        self.env["PLANA_TIMEOUT"] = str(int(RUN_TIMEOUT))


@pytest.fixture
def run_job(pg_dsn: str, redis_url: str, tmp_path: Path) -> Runner:
    return SlowRunner(pg_dsn, redis_url, tmp_path)


def _addons(path: Path, *names: str) -> Path:
    """An addons directory holding (empty) addons `names`, each with its manifest."""
    for name in names:
        (path / name).mkdir(parents=True)
        (path / name / "__manifest__.py").write_text(f"{{'name': '{name}'}}\n")
    return path


def _fixed(path: Path) -> Path:
    """An addons directory holding FAIL_UPDATE as a fixed image has it: its update works."""
    fixed = path / FAIL_UPDATE
    shutil.copytree(odoo_target.TEST_ADDONS / FAIL_UPDATE, fixed,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (fixed / "data" / f"{FAIL_UPDATE}_data.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<odoo/>\n'
    )
    return path


def _config(path: Path, *addons: Path) -> str:
    path.write_text(f"[options]\naddons_path = {','.join(map(str, addons))}\n")
    return str(path)


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    ident = sql.Identifier(name)
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def _build(
    target: OdooTarget, pg_dsn: str, redis_url: str, tmp: Path, modules: str
) -> Iterator[Any]:
    """One 17 template of `modules`, the binaries and each side's config, as its image has it:
    17 with OpenUpgrade 17's framework on its addons path, 18 without OpenUpgrade (the job adds
    the --upgrade-path's addons), plus OpenUpgrade 18's scripts for the upgrade path."""
    target.require(17)
    target.require(18)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(OWNER_ROLE)))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass
    bins, slow = tmp / "bin", {SLEEP_VAR: str(int(RUN_TIMEOUT))}
    ns = type("Env", (), {})()
    ns.target, ns.tmp, ns.d17 = target, tmp, tmp / "data17"
    ns.template = "template_" + uuid.uuid4().hex[:10]
    ns.odoo17 = str(target.binary(bins, 17))
    ns.odoo18 = str(target.binary(bins, 18))
    ns.odoo17_slow = str(target.binary(bins, 17, env=slow, name="odoo17-slow"))
    ns.odoo18_slow = str(target.binary(bins, 18, env=slow, name="odoo18-slow"))
    scripts = target.upgrade_path(tmp, 18)
    ns.scripts, ns.ou18 = str(scripts), str(scripts.parent.parent)
    ns.fixed = _fixed(tmp / "fixed")
    ns.extra = [ns.fixed] if FAIL_UPDATE in modules else []
    ns.addons17 = target.addons_path(17, *ns.extra, openupgrade=True)
    ns.addons18 = target.addons_path(18, *ns.extra)
    ns.conf17 = str(target.config(tmp / "c17", 17, extra_addons=ns.extra, openupgrade=True))
    ns.conf18 = str(target.config(tmp / "c18", 18, extra_addons=ns.extra))
    ns.plain17 = str(target.config(tmp / "p17", 17, extra_addons=ns.extra))  # same-major
    ns.broken17 = str(target.config(tmp / "b17", 17))  # FAIL_UPDATE as in tests/support/addons
    run = SlowRunner(pg_dsn, redis_url, tmp)
    built = run(["template-build", "--template-code", "basic", "--odoo-version", "17",
                 "--modules", modules, "--template-db", ns.template, "--odoo-bin", ns.odoo17,
                 "--odoo-config", ns.plain17, "--data-dir", str(ns.d17)])  # fmt: skip
    try:
        assert built.rc == 0, built.output
        yield ns
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            _drop(conn, ns.template)


@pytest.fixture(scope="module")
def env(pg_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The Odoo under test: a 17 template of the test addons (MODULES)."""
    target = TARGET.for_admin(pg_dsn)
    yield from _build(target, pg_dsn, redis_url, tmp_path_factory.mktemp("upgrade"), MODULES)


@pytest.fixture(scope="module")
def legal(pg_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The stand-in in both modes: a 17 template with OCA's agreement_legal (LEGAL_MODULES)."""
    standin = odoo_target.OdooTarget(real=False).for_admin(pg_dsn)
    tmp = tmp_path_factory.mktemp("upgrade-legal")
    yield from _build(standin, pg_dsn, redis_url, tmp, LEGAL_MODULES)


def _tenant(env: Any, run_job: Runner, uid: str, drop_dbs: list[str]) -> str:
    """A fresh 17 tenant made by tenant-db from `env`'s template; dropped afterwards."""
    drop_dbs.append(naming.db_name(uid) + "%")
    made = run_job(["tenant-db", "--subdomain", uid, "--project-id", "7", "--tier", "starter",
                    "--odoo-version", "17", "--owner-email", f"o@{uid}.example.com",
                    "--owner-name", "Ada", "--template-db", env.template,
                    "--data-dir", str(env.d17)])  # fmt: skip
    assert made.rc == 0, made.output
    return uid


@pytest.fixture
def tenant(env: Any, run_job: Runner, uid: str, drop_dbs: list[str]) -> str:
    return _tenant(env, run_job, uid, drop_dbs)


@pytest.fixture
def legal_tenant(legal: Any, run_job: Runner, uid: str, drop_dbs: list[str]) -> str:
    return _tenant(legal, run_job, uid, drop_dbs)


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


def app_rows(pg_dsn: str, db: str) -> list[tuple[Any, ...]]:
    """The test apps' records and their modules' states: the tenant's own data."""
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        records = conn.execute("SELECT id, name FROM plana_test_record ORDER BY id").fetchall()
        states = conn.execute(
            "SELECT name, state FROM ir_module_module WHERE name = ANY(%s) ORDER BY name",
            (list(APPS),),
        ).fetchall()
    return [*records, *states]


def test_chain_17_to_18_with_filestore_rerun_and_rollback(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, tenant: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The init containers of one Job, in order, each re-run as a no-op; then rollback."""
    sub, db = tenant, naming.db_name(tenant)
    work, rb = f"{db}__up18", f"{db}__rb17"
    d17, d18 = env.d17, tmp_path / "data18"
    src_files = files_of(naming.filestore(db, d17))
    apps = app_rows(pg_dsn, db)
    assert src_files and apps  # the apps' attachments and records: something to carry over

    def phase(name: str, data_dir: Path, *more: str) -> dict[str, Any]:
        first = run_job(["upgrade", name, *hop(sub, data_dir, *more)])
        assert first.rc == 0, first.output
        again = run_job(["upgrade", name, *hop(sub, data_dir, *more)])
        assert again.rc == 0, again.output
        assert again.result["outcome"] == "unchanged", (name, again.result)
        return first.result

    target18 = ("--odoo-bin", env.odoo18, "--odoo-config", env.conf18,
                "--upgrade-path", env.scripts)  # fmt: skip
    assert phase("snapshot", d17)["outcome"] == "created"
    allow, live = info(pg, db) or (True, {})
    assert not allow and live["upgrading"]["from"] == 17  # frozen, the rollback point
    assert info(pg, work) is not None

    # Passes are ordered: the target pass refuses a copy that has not been pre-fixed.
    early = run_job(["upgrade", "target-pass", *hop(sub, d18, *target18)])
    assert early.rc == 65 and "prefix" in early.result["error"], early.output

    # The wrong image for a pass is a configuration error (78), found before the copy is touched.
    wrong = run_job(["upgrade", "source-pass", *hop(sub, d17, "--odoo-bin", env.odoo18)])
    assert wrong.rc == 78 and "not Odoo 17.0" in wrong.result["error"], wrong.output
    assert phase("source-pass", d17, "--odoo-bin", env.odoo17,
                 "--odoo-config", env.conf17)["outcome"] == "updated"  # fmt: skip
    assert phase("prefix", d18)["prefixes"] == [n for n, _ in prefix_files(17, 18)]
    # The target volume has no filestore for the copy yet: refused, and the copy stays usable.
    bare = run_job(["upgrade", "target-pass", *hop(sub, d18, *target18)])
    assert bare.rc == 65 and "filestore-copy" in bare.result["error"], bare.output
    # Between the images: the work copy's filestore goes to the target volume.
    copied = run_job(["filestore-copy", "--transport", "local", "--db", work,
                      "--source-root", str(d17 / "filestore"),
                      "--target-root", str(d18 / "filestore")])  # fmt: skip
    assert copied.rc == 0 and copied.result["outcome"] == "created", copied.output
    status = run_job(["upgrade", "status", *hop(sub, d18)])
    assert status.result["next"] == "target-pass", status.output
    assert phase("target-pass", d18, *target18)["outcome"] == "updated"
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
    assert app_rows(pg_dsn, db) == apps  # the tenant's records came through, apps installed
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        stores = {r[0] for r in conn.execute(
            "SELECT store_fname FROM ir_attachment WHERE store_fname IS NOT NULL").fetchall()}
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
    legal: Any, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, legal_tenant: str,
    drop_dbs: list[str],
) -> None:  # fmt: skip
    """On a copy past the 17 pass: 18 fails on agreement_legal's stale views, the fix cures it,
    and the views are recreated from the 18 XML without the stale field.

    On the stand-in in both modes: it is about OCA's agreement_legal (its 17 views name a field
    its 18 code dropped), which the stand-in imitates and real Odoo here does not have."""
    sub, db = legal_tenant, naming.db_name(legal_tenant)
    for args in (["snapshot"], ["source-pass", "--odoo-bin", legal.odoo17,
                                "--odoo-config", legal.conf17]):
        done = run_job(["upgrade", *args, *hop(sub, legal.d17)])
        assert done.rc == 0, done.output
    probe = f"{db}__probe"
    drop_dbs.append(probe)
    pg.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(probe), sql.Identifier(f"{db}__up18")))  # fmt: skip
    argv = [legal.odoo18, "-d", probe, "--load=base,web,openupgrade_framework",
            f"--upgrade-path={legal.scripts}", f"--addons-path={legal.ou18}", "-u", "all",
            "--stop-after-init", "--no-http",
            "--db_host", "127.0.0.1", "-r", JOB_ROLE, "-D", str(legal.tmp / "probe")]  # fmt: skip
    failed = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=run_job.env)
    assert failed.returncode == 255 and "signed_contract_filename" in failed.stderr
    with psycopg.connect(pg_dsn, dbname=probe, autocommit=True) as conn:
        for _, text in prefix_files(17, 18):
            conn.execute(text)
            conn.execute(text)  # a second application changes nothing and does not fail
    passed = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=run_job.env)
    assert passed.returncode == 0, passed.stderr[-2000:]
    assert base_of(pg_dsn, probe).startswith("18.0.")
    with psycopg.connect(pg_dsn, dbname=probe) as conn:
        views = conn.execute(
            "SELECT v.arch_db FROM ir_ui_view v JOIN ir_model_data d ON d.res_id = v.id"
            " AND d.model = 'ir.ui.view' WHERE d.module = 'agreement_legal'"
            " AND v.model = 'agreement'"
        ).fetchall()
    assert len(views) == 2 and all("signed_on" in v[0] for v in views)


def test_target_pass_killed_midway_restarts_from_fresh_copy(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, tenant: str,
) -> None:  # fmt: skip
    sub, db = tenant, naming.db_name(tenant)
    args = ["upgrade", "run", *hop(sub, env.d17, "--source-odoo-bin", env.odoo17,
                                   "--target-odoo-bin", env.odoo18_slow,
                                   "--source-odoo-config", env.conf17,
                                   "--target-odoo-config", env.conf18,
                                   "--upgrade-path", env.scripts)]  # fmt: skip
    # SIGKILL: no handler runs (a node failure or the grace period running out), while SLEEP
    # sleeps inside the target pass's update.
    kill_when(run_job, args, SLEEP_LINE, "target-pass")

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
    """The addons paths each Odoo run of `step` started with (Odoo logs them at start-up)."""
    return [
        ast.literal_eval(str(e["event"]).split(" odoo: addons paths: ", 1)[1].strip())
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
    stray_dir = _addons(tmp_path / "stray", "plana_theme")
    stray = _config(tmp_path / "stray.conf", stray_dir)
    # Each side's image has an addons directory of its own.
    mine17, mine18 = _addons(tmp_path / "mine17", "plana_theme"), _addons(tmp_path / "mine18",
                                                                          "plana_theme")
    extra17, extra18 = [mine17, *env.extra], [mine18, *env.extra]
    conf17 = env.target.config(tmp_path / "c17", 17, extra_addons=extra17, openupgrade=True)
    conf18 = env.target.config(tmp_path / "c18", 18, extra_addons=extra18)
    done = run_job(run_args(env, sub, "--source-odoo-config", str(conf17),
                            "--target-odoo-config", str(conf18), "--upgrade-path", env.scripts),
                   ODOO_RC=stray)  # fmt: skip
    assert done.rc == 0, done.output
    # Odoo adds its own directories (base's, the data dir's) to what the config gives.
    source, target = addons_paths(done, "source-pass"), addons_paths(done, "target-pass")
    assert len(source) == 1 and len(target) == 1, done.output
    ours17 = env.target.addons_path(17, *extra17, openupgrade=True).split(",")
    ours18 = env.target.addons_path(18, *extra18).split(",")
    assert set(ours17) <= set(source[0]) and str(mine18) not in source[0]
    assert set(ours18) <= set(target[0]) and str(mine17) not in target[0]
    assert str(Path(env.ou18).resolve()) in target[0]  # added by the job for the scripts
    assert str(stray_dir) not in source[0] + target[0]
    assert base_of(pg_dsn, db).startswith("18.0.")


def test_source_pass_without_openupgrade_framework_is_a_configuration_error(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], tenant: str, tmp_path: Path
) -> None:
    """Odoo only logs a --load module it cannot import and goes on (exit 0): a pass without
    the framework is a plain `-u all`, no migration. Seen in Odoo's output: 78 naming the
    addons path; the copy is spoilt, so the next attempt starts from a fresh one."""
    sub, db = tenant, naming.db_name(tenant)
    bare17 = str(env.target.config(tmp_path / "bare", 17, extra_addons=env.extra))
    source = run_job(run_args(env, sub, "--source-odoo-config", bare17,
                              "--target-odoo-config", env.conf18, "--upgrade-path", env.scripts))
    assert source.rc == 78, source.output
    error = source.result["error"]
    assert error.startswith("source-pass: ") and "could not load openupgrade_framework" in error
    addons = env.target.addons_path(17, *env.extra)
    assert f"addons_path = {addons} in {bare17}" in error, error
    status = run_job(["upgrade", "status", *hop(sub, env.d17)])
    assert status.result["state"] == "failed" and status.result["next"] == "snapshot"
    allow, live = info(pg, db) or (True, {})
    assert not allow and "odoo_version" not in live  # still the frozen 17 tenant


def test_target_pass_without_openupgrade_framework_is_a_configuration_error(
    legal: Any, run_job: Runner, pg: psycopg.Connection[Any], legal_tenant: str, tmp_path: Path
) -> None:
    """The target side: OpenUpgrade's scripts without its framework beside them: 78 naming the
    --addons-path the pass ran with, the copy spoilt.

    On the stand-in in both modes: real Odoo 18 here has OpenUpgrade's wheels installed in its
    own python, which makes Odoo find openupgrade_framework whatever its addons path says, so
    the case cannot be made with it."""
    sub, db = legal_tenant, naming.db_name(legal_tenant)
    alone = tmp_path / "scripts-only" / "openupgrade_scripts" / "scripts"
    shutil.copytree(legal.scripts, alone)
    target = run_job(run_args(legal, sub, "--source-odoo-config", legal.conf17,
                              "--target-odoo-config", legal.conf18, "--upgrade-path", str(alone)))
    assert target.rc == 78, target.output
    error = target.result["error"]
    assert error.startswith("target-pass: ") and "could not load openupgrade_framework" in error
    assert f"--addons-path={legal.addons18},{alone.parent.parent.resolve()}" in error, error
    status = run_job(["upgrade", "status", *hop(sub, legal.d17)])
    assert status.result["state"] == "failed" and status.result["phases"] == [
        "snapshot", "source-pass", "prefix"]  # fmt: skip
    assert status.result["next"] == "snapshot"
    allow, live = info(pg, db) or (True, {})
    assert not allow and "odoo_version" not in live  # still the frozen 17 tenant


def same_major_args(env: Any, sub: str, *more: str, config: str | None = None) -> list[str]:
    return ["upgrade", "--strategy", "same-major", "--subdomain", sub, "--to-version", "17",
            "--odoo-bin", env.odoo17, "--odoo-config", config or env.plain17,
            "--data-dir", str(env.d17), *more]  # fmt: skip


def work_names(pg: psycopg.Connection[Any], db: str) -> set[str]:
    return {n for n in database_names(pg) if n.startswith(db + "__")}


def set_state(pg_dsn: str, db: str, module: str, state: str) -> None:
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        done = conn.execute(
            "UPDATE ir_module_module SET state = %s WHERE name = %s", (state, module)
        )
        assert done.rowcount == 1


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

    # A new addons revision: updated again. Odoo exiting 0 with a module left pending is a
    # failure all the same (module states are read back, never the exit code alone): LEAVE,
    # marked `to install` in the tenant, stays so (its dependency is not installable).
    state = info(pg, db)
    set_state(pg_dsn, db, LEAVE, "to install")
    pending = modules_of(pg_dsn, db)
    left = run_job(same_major_args(env, sub, "--addons-revision", "r2"))
    assert left.rc == 65 and LEAVE in left.result["error"], left.output
    assert info(pg, db) == state and modules_of(pg_dsn, db) == pending
    set_state(pg_dsn, db, LEAVE, "uninstalled")
    assert modules_of(pg_dsn, db) == updated
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
    """Odoo commits each module: a -u all failing at FAIL_UPDATE (tests/support/addons' build, whose
    update raises) after base and the apps before it has updated those for good, so it must run
    on a copy, never on the live database. The fixed build then updates it."""
    sub, db = tenant, naming.db_name(tenant)
    before, modules = info(pg, db), modules_of(pg_dsn, db)
    fs = naming.filestore(db, env.d17)
    files = files_of(fs)
    failed = run_job(same_major_args(env, sub, config=env.broken17))
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
    kill_when(run_job, slow, SLEEP_LINE, "odoo")  # SLEEP sleeping inside the update
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
    assert "--from-version / PLANA_FROM_VERSION: " in refused(
        64, "snapshot", "--subdomain", sub, "--from-version", "banana", "--to-version", "18")
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
        "plana-job upgrade: error: --upgrade-path / PLANA_UPGRADE_PATH: "
        "not an option of `upgrade snapshot`"
    )
    twice = run_job(["upgrade", "--subdomain", sub + "x", "snapshot", *hop(sub, env.d17)])
    assert twice.rc == 64 and "--subdomain / PLANA_SUBDOMAIN: " in twice.result["error"]
    assert info(pg, db) == state  # nothing snapshotted
    assert not {n for n in database_names(pg) if n.startswith(db + "__")}


def test_same_major_reruns_when_the_code_of_an_installed_module_changes(
    env: Any, run_job: Runner, tenant: str, tmp_path: Path
) -> None:
    """Every 17 build prints `Odoo Server 17.0`: without --addons-revision, the revision is that
    line plus the digest of the installed modules' code on the image's addons path, so a new
    image with changed module code runs `-u all` again, and the same code does not."""
    image = tmp_path / "addons"  # a new image's build of APP, first on its addons path
    shutil.copytree(odoo_target.TEST_ADDONS / APP, image / APP,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    conf = str(env.target.config(tmp_path, 17, extra_addons=[image, *env.extra]))
    args = same_major_args(env, tenant, config=conf)
    first = run_job(args)
    assert first.rc == 0 and first.result["outcome"] == "updated", first.output
    again = run_job(args)
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    (image / APP / "models" / "notes.py").write_text("# a new image's build of the app\n")
    changed = run_job(args)
    assert changed.rc == 0 and changed.result["outcome"] == "updated", changed.output
    assert changed.result["revision"] != first.result["revision"]
    assert changed.result["revision"].startswith("Odoo Server 17.0; code ")


def test_a_work_filestore_that_came_after_the_cutover_is_never_published(
    env: Any, run_job: Runner, tenant: str
) -> None:
    """After a cutover both renames are done ({db} is the upgraded files, {db}__rb17 the old
    ones). A `{db}__up18` filestore appearing later (a re-run filestore-copy of the work name,
    say) is stale: a re-run cutover must not move it into place nor over the rollback copy."""
    sub, db = tenant, naming.db_name(tenant)
    done = run_job(run_args(env, sub, "--source-odoo-config", env.conf17,
                            "--target-odoo-config", env.conf18,
                            "--upgrade-path", env.scripts))  # fmt: skip
    assert done.rc == 0 and done.result["outcome"] == "updated", done.output
    fs = env.d17 / "filestore"
    live, rollback = files_of(fs / db), files_of(fs / f"{db}__rb17")
    assert live and rollback
    stale = fs / f"{db}__up18" / "ab"
    stale.mkdir(parents=True)
    (stale / ("ab" + "0" * 38)).write_bytes(b"stale pre-upgrade file")
    again = run_job(["upgrade", "cutover", *hop(sub, env.d17)])
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    assert files_of(fs / db) == live and files_of(fs / f"{db}__rb17") == rollback
    assert (stale / ("ab" + "0" * 38)).exists()  # left alone, with a warning
    assert any(e.get("event") == "stale work filestore left alone" for e in again.logs)


def test_dry_run_plans_the_phases_left_and_changes_nothing(
    env: Any, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, tenant: str, uid: str,
    drop_dbs: list[str],
) -> None:  # fmt: skip
    """--dry-run observes and plans: no lock taken (it runs while another session holds the
    tenant's), no Odoo started, nothing of the catalog, the tables or the files changed."""
    sub, db = tenant, naming.db_name(tenant)
    fs_root = naming.filestore(db, env.d17).parent

    def snap(tables: bool) -> Snapshot:
        # A frozen tenant takes no connection, so no table can change: its catalog row is read.
        return Snapshot.take(pg_dsn, databases=[db] if tables else [], only=(db,),
                             roots=[fs_root])  # fmt: skip

    def dry(*args: str, tables: bool = True) -> JobRun:
        before = snap(tables)
        done = run_job(["upgrade", *args, "--dry-run"])
        assert snap(tables).diff(before) == []
        assert not any(e.get("child") == "odoo" for e in done.logs), done.output
        if done.rc == 0:
            assert done.result["outcome"] == "planned" and done.result["dry_run"] is True
        return done

    whole = run_args(env, sub, "--upgrade-path", env.scripts)[1:]
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (locks.key(locks.tenant(db)),))
        fresh = dry(*whole)
        assert fresh.rc == 0, fresh.output
        assert [s["step"] for s in fresh.result["steps"]] == list(PHASES)
        assert fresh.result["prefixes_pending"] == [n for n, _ in prefix_files(17, 18)]
        one = dry("snapshot", *hop(sub, env.d17))  # a phase plans the whole chain left
        assert [s["step"] for s in one.result["steps"]] == list(PHASES)
        same = dry(*same_major_args(env, sub, "--addons-revision", "r1")[1:])
        assert [s["step"] for s in same.result["steps"]] == ["same-major", "clone", "odoo",
                                                             "swap", "filestore"]  # fmt: skip
        # inspect's call: only the tenant, no upgrade under way.
        idle = dry("--subdomain", sub)
        assert idle.rc == 0 and idle.result["steps"] == [], idle.output

    # Part of the chain done: the plan is the rest.
    assert run_job(["upgrade", "snapshot", *hop(sub, env.d17)]).rc == 0
    part = dry(*whole, tables=False)
    assert [s["step"] for s in part.result["steps"]] == list(PHASES[1:]), part.output
    inferred = dry("--subdomain", sub, tables=False)  # the hop under way, from the live marker
    assert [s["step"] for s in inferred.result["steps"]] == list(PHASES[1:]), inferred.output

    # Converged: nothing left to plan.
    done = run_job(run_args(env, sub, "--source-odoo-config", env.conf17,
                            "--target-odoo-config", env.conf18, "--upgrade-path", env.scripts))
    assert done.rc == 0, done.output
    converged = dry(*whole)
    assert converged.rc == 0 and converged.result["steps"] == [], converged.output
    assert converged.result["state"] == "upgraded"

    # Blocked: a database under the tenant's name that plana-jobs did not make (65).
    other = uid + "x"
    drop_dbs.append(naming.db_name(other))
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(naming.db_name(other))))
    stranger = dry(*run_args(env, other, "--upgrade-path", env.scripts)[1:])
    assert stranger.rc == 65 and "not a plana-jobs tenant" in stranger.result["error"]
