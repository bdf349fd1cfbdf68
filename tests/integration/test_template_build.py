"""`plana-job template-build` against real PostgreSQL and the Odoo under test
(tests/support/odoo_target): the stand-in in CI, real Odoo 17/18 in test mode (`make test-odoo`).

Odoo is called through the target's wrapper, which records each command line, so the tests can
see what was (and was not) run. The modules built are the test addons (tests/support/addons), which
both worlds have.

A real `-i` takes a minute on a loaded machine, so tests whose subject is not the first build
start from a copy of one template the job built once per module (`shared`): the database
(CREATE DATABASE ... TEMPLATE, its ACL and marker) and its filestore with its mark file, i.e.
the state the job itself leaves. Its fingerprint is theirs: same modules, same binary, same
addons path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.adapters import filestore
from jobs.adapters.odoo import addons_digest
from jobs.adapters.pg import locks
from jobs.core import naming
from jobs.ops import clone, marker
from tests.support import odoo_target
from tests.support.harness import OWNER_ROLE, Runner, job_dsn
from tests.support.odoo_target import (
    APP,
    APP2,
    FAIL,
    LEAVE,
    SLEEP,
    SLEEP_LINE,
    SLEEP_VAR,
    OdooTarget,
)
from tests.support.tenant_db import ensure_role, mine
from tests.support.untouched import Snapshot

TARGET = odoo_target.current()
STANDIN = odoo_target.OdooTarget(real=False)  # for what real Odoo here lacks (19)
# A real install of base + web + the test addons takes a minute on a loaded machine.
JOB_TIMEOUT = 900 if TARGET.real else 60
pytestmark = pytest.mark.timeout(3600 if TARGET.real else 300)
MODULES = APP  # the shared template's


@pytest.fixture(scope="module")
def target(pg_dsn: str) -> OdooTarget:
    target = TARGET.for_admin(pg_dsn)
    odoo_target.ensure_role(pg_dsn, target)
    return target


def calls(log: Path) -> list[list[str]]:
    return odoo_target.calls(log)


def installs(log: Path) -> int:
    """How many times Odoo was asked to install modules."""
    return sum("-i" in c for c in calls(log))


class Build:
    def __init__(self, run_job: Runner, target: OdooTarget, uid: str, tmp: Path) -> None:
        self.run_job, self.target, self.tmp = run_job, target, tmp
        self.name = f"template_{uid}"
        self.data_dir = tmp / "data"
        self.log = tmp / "odoo-calls.log"
        self.python = False  # True: a Python-script odoo beside its package, as in the image

    def odoo(self, version: int) -> Path:
        return self.target.binary(self.tmp / "bin", version, log_calls=self.log,
                                  python=self.python)  # fmt: skip

    def conf(self, version: int) -> Path:
        return self.target.config(self.tmp / "conf", version)

    def args(
        self, modules: str = MODULES, version: int = 18, *, binary: int | None = None,
        config: Path | None = None,
    ) -> list[str]:  # fmt: skip
        conf = config or self.conf(version)
        return ["template-build", "--template-code", "basic", "--odoo-version", str(version),
                "--modules", modules, "--template-db", self.name,
                "--odoo-bin", str(self.odoo(binary or version)), "--odoo-config", str(conf),
                "--data-dir", str(self.data_dir)]  # fmt: skip

    def run(self, args: list[str], **env: str) -> Any:
        env.setdefault("PLANA_TIMEOUT", str(JOB_TIMEOUT))
        return self.run_job(args, timeout=JOB_TIMEOUT + 60, **env)

    def popen(self, args: list[str], **env: str) -> Any:
        env.setdefault("PLANA_TIMEOUT", str(JOB_TIMEOUT))
        return self.run_job.popen(args, **env)

    def __call__(self, modules: str = MODULES, version: int = 18, **env: str) -> Any:
        return self.run(self.args(modules, version), **env)

    def catalog(self, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        row = conn.execute(
            "SELECT oid, datistemplate, datallowconn, shobj_description(oid, 'pg_database')"
            " FROM pg_database WHERE datname = %s",
            (self.name,),
        ).fetchone()
        if row is None:
            return {}
        oid, is_template, allow, comment = row
        mark = json.loads(comment.removeprefix("plana-jobs "))
        return {"oid": oid, "frozen": is_template and not allow, "marker": mark}

    def fs(self, db: str | None = None) -> Path:
        return naming.filestore(db or self.name, self.data_dir)

    def fs_mark(self) -> dict[str, Any] | None:
        return filestore.read_mark(self.fs())

    def tenant(self, sub: str) -> Any:
        return self.run(["tenant-db", "--subdomain", sub, "--project-id", "7", "--tier", "starter",
                         "--owner-email", "o@example.com", "--owner-name", "Owner",
                         "--template-db", self.name, "--data-dir", str(self.data_dir)])  # fmt: skip

    def adopt(self, conn: psycopg.Connection[Any], built: Build) -> None:
        """Make this template a copy of `built` (database, ACL, marker, filestore): what the
        job would have left had it built it here with the same arguments."""
        live = marker.read(conn, built.name)
        assert live is not None and live.state == "complete", "the shared build failed"
        (owner,) = conn.execute(
            "SELECT datdba::regrole::text FROM pg_database WHERE datname = %s", (built.name,)
        ).fetchone() or ("",)
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                sql.Identifier(self.name), sql.Identifier(built.name), sql.Identifier(owner)
            )
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH is_template true ALLOW_CONNECTIONS false").format(
                sql.Identifier(self.name)
            )
        )
        clone.restrict_connect(conn, self.name, owner)
        marker.write(conn, self.name, live)
        self.fs().parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(built.fs(), self.fs(), symlinks=True)


@pytest.fixture
def build(
    run_job: Runner, target: OdooTarget, uid: str, tmp_path: Path, drop_dbs: list[str],
    pg: psycopg.Connection[Any],
) -> Build:  # fmt: skip
    ensure_role(pg, OWNER_ROLE)
    drop_dbs.extend([f"template_{uid}%", f"{uid}%"])
    return Build(run_job, target, uid, tmp_path)


@pytest.fixture(scope="module")
def shared(
    pg_dsn: str, redis_url: str, target: OdooTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Build]:
    """One template of MODULES for Odoo 18, built by the job once for this module."""
    tmp = tmp_path_factory.mktemp("shared-template")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, OWNER_ROLE)
    built = Build(Runner(pg_dsn, redis_url, tmp), target, "sh" + os.urandom(5).hex(), tmp)
    try:
        done = built()
        assert done.rc == 0 and done.result["outcome"] == "created", done.output[-3000:]
        yield built
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for db in (built.name, built.name + "__build", built.name + "__old"):
                ident = sql.Identifier(db)
                with contextlib.suppress(psycopg.errors.InvalidCatalogName):
                    conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def installed(pg_dsn: str, db: str) -> set[str]:
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        rows = conn.execute("SELECT name FROM ir_module_module WHERE state = 'installed'")
        return {r[0] for r in rows.fetchall()}


def test_build_then_same_fingerprint_is_a_noop_that_never_runs_odoo(
    build: Build, pg: psycopg.Connection[Any]
) -> None:
    first = build(f"{APP2},{APP}")
    assert first.rc == 0, first.output
    assert first.result["outcome"] == "created"
    cat = build.catalog(pg)
    assert cat["frozen"] and cat["marker"]["state"] == "complete"
    assert cat["marker"]["fingerprint"] == first.result["fingerprint"]
    assert build.fs_mark() == {"fingerprint": first.result["fingerprint"]}
    assert mine(pg, build.name) == {build.name}  # no __build / __old left
    ran = calls(build.log)
    assert any(
        c[c.index("-i") + 1] == f"{APP},{APP2}" and "--without-demo=all" in c
        for c in ran
        if "-i" in c
    ), ran

    again = build(f"{APP},{APP2}")
    assert again.rc == 0, again.output
    assert again.result["outcome"] == "unchanged"
    assert calls(build.log)[len(ran) :] == [["--version"]]  # nothing installed, nothing loaded
    assert build.catalog(pg)["oid"] == cat["oid"]

    forced = build.run([*build.args(f"{APP},{APP2}"), "--force"])
    assert forced.rc == 0 and forced.result["outcome"] == "updated", forced.output
    assert build.catalog(pg)["oid"] != cat["oid"]


def test_image_odoo_unchanged_rerun_starts_no_odoo(
    build: Build, pg: psycopg.Connection[Any]
) -> None:
    """The image's `odoo` is a Python script: its interpreter names the odoo package, whose
    release.py gives the version line, so an unchanged run starts no Odoo (whose import is
    most of `odoo --version`'s 1.5-2 s). The line is exactly what `odoo --version` prints."""
    build.python = True
    first = build()
    assert first.rc == 0 and first.result["outcome"] == "created", first.output
    ran = calls(build.log)
    assert ran and all(c != ["--version"] for c in ran), ran  # the build ran -i, no --version
    asked = subprocess.run([build.odoo(18), "--version"], capture_output=True, text=True)
    assert asked.returncode == 0
    assert build.catalog(pg)["marker"]["binary"] == asked.stdout.strip() == "Odoo Server 18.0"

    before = len(calls(build.log))
    # The dry run reads the same release.py: the fingerprint is the run's, nothing assumed.
    planned = build.run([*build.args(), "--dry-run"])
    assert planned.rc == 0 and planned.result["steps"] == [], planned.output
    assert planned.result["fingerprint"] == first.result["fingerprint"]
    assert "binary_source" not in planned.result
    again = build()
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    assert calls(build.log)[before:] == []  # not even --version
    said = [e for e in again.logs if e.get("event") == "odoo version"]
    assert [e["source"] for e in said] == [str(build.odoo(18).parent / "odoo" / "release.py")]
    assert build.catalog(pg)["marker"]["fingerprint"] == first.result["fingerprint"]

    # The binary must still be there to run: beside the same package, not executable, or gone.
    args = build.args()
    at = args.index("--odoo-bin") + 1
    noexec = build.odoo(18).with_name("odoo-noexec")
    shutil.copy(build.odoo(18), noexec)
    noexec.chmod(0o644)
    for binary, why in ((noexec, "not executable"), (noexec.with_name("gone"), "not found")):
        args[at] = str(binary)
        broken = build.run(args)
        assert broken.rc == 78 and why in broken.result["error"], broken.output


def test_image_odoo_of_another_major_is_a_conflict_without_running_it(
    build: Build, pg: psycopg.Connection[Any]
) -> None:
    build.target.require(17)
    build.python = True
    res = build.run(build.args(version=18, binary=17))
    assert res.rc == 65, res.output
    assert "is 'Odoo Server 17.0', not Odoo 18" in res.result["error"]
    assert mine(pg, build.name) == set()
    assert calls(build.log) == []


def copy_addons(where: Path) -> Path:
    """An addons directory holding copies of the test apps (ahead of tests/support/addons on the
    path, so Odoo and the digest read these)."""
    for name in (APP, APP2):
        shutil.copytree(odoo_target.TEST_ADDONS / name, where / name)
    return where


def test_code_change_in_a_dependency_rebuilds_and_unchanged_code_does_not(
    build: Build, target: OdooTarget, pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    addons = copy_addons(tmp_path / "addons")
    js = addons / APP / "static" / "src" / "plana.js"
    js.parent.mkdir(parents=True)
    js.write_text("plana(1);\n")
    conf = target.config(tmp_path / "conf-digest", 18, extra_addons=[addons])
    path = target.addons_path(18, addons).split(",")
    args = build.args(APP2, config=conf)

    first = build.run(args)
    assert first.rc == 0 and first.result["outcome"] == "created", first.output
    marker_ = build.catalog(pg)["marker"]
    expected = addons_digest.digest([APP2], path)
    assert expected.modules[APP] != addons_digest.MISSING  # the dependency is covered
    assert marker_["addons_digest"] == expected.value
    # The wrapper is a shell script: base is covered only when the addons path lists it.
    assert marker_["addons_missing"] == expected.missing
    logged = [e for e in first.logs if e.get("event") == "addons digest"]
    assert logged and logged[0]["template"] == build.name and logged[0]["step"] == "fingerprint"

    before = len(calls(build.log))
    (addons / APP / "__pycache__").mkdir(exist_ok=True)  # real Odoo made it already
    (addons / APP / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")  # a by-product
    again = build.run(args)
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    assert calls(build.log)[before:] == [["--version"]]

    # APP is not asked for: APP2 depends on it. Same --version line, same revision.
    js.write_text("plana(2);\n")
    before = len(calls(build.log))
    changed = build.run(args)
    assert changed.rc == 0 and changed.result["outcome"] == "updated", changed.output
    assert any("-i" in c and c[c.index("-i") + 1] == APP2 for c in calls(build.log)[before:])
    assert changed.result["fingerprint"] != first.result["fingerprint"]
    assert build.catalog(pg)["marker"]["addons_digest"] != marker_["addons_digest"]
    assert build.fs_mark() == {"fingerprint": changed.result["fingerprint"]}

    # --addons-path (PLANA_ODOO_ADDONS_PATH) beats the config's addons_path for the digest too.
    other = copy_addons(tmp_path / "other")
    (other / APP2 / "README.md").write_text("other\n")
    moved_path = target.addons_path(18, other)
    moved = build.run(args, PLANA_ODOO_ADDONS_PATH=moved_path)
    assert moved.rc == 0 and moved.result["outcome"] == "updated", moved.output
    expected = addons_digest.digest([APP2], moved_path.split(","))
    assert build.catalog(pg)["marker"]["addons_digest"] == expected.value


def test_changed_modules_rebuild_waits_for_clones_then_swaps(
    build: Build, shared: Build, pg: psycopg.Connection[Any], pg_dsn: str, uid: str
) -> None:
    build.adopt(pg, shared)
    unchanged = build()
    assert unchanged.rc == 0 and unchanged.result["outcome"] == "unchanged", unchanged.output
    old = build.catalog(pg)

    # A clone in progress holds the template's lock shared: the swap must wait for it.
    with psycopg.connect(pg_dsn, autocommit=True) as clone_session:
        clone_session.execute(
            "SELECT pg_advisory_lock_shared(%s)", (locks.key(f"template:{build.name}"),)
        )
        proc = build.popen(build.args(f"{APP},{APP2}"))
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"lock busy, waiting"' in line and f"template:{build.name}" in line:
                break
        during = build.catalog(pg)
        assert during["oid"] == old["oid"] and during["marker"] == old["marker"]
        assert build.fs_mark() == {"fingerprint": old["marker"]["fingerprint"]}
        # Meanwhile the old template still serves clones (a shared lock holder may clone).
        served = build.tenant(uid + "a")
        assert served.rc == 0, served.output
    out, err = proc.communicate(timeout=JOB_TIMEOUT + 60)
    assert proc.returncode == 0, out + err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["outcome"] == "updated"

    new = build.catalog(pg)
    assert new["frozen"] and new["oid"] != old["oid"]
    assert new["marker"]["fingerprint"] == result["fingerprint"] != old["marker"]["fingerprint"]
    assert build.fs_mark() == {"fingerprint": result["fingerprint"]}
    assert mine(pg, build.name) == {build.name}  # the old template was dropped
    assert not build.fs(build.name + "__old").exists()
    assert APP2 not in installed(pg_dsn, naming.db_name(uid + "a"))

    tenant = build.tenant(uid + "b")
    assert tenant.rc == 0, tenant.output
    assert APP2 in installed(pg_dsn, naming.db_name(uid + "b"))


@pytest.mark.parametrize(
    ("modules", "why"),
    [
        (f"{MODULES},no_such_module", "no_such_module: unknown module"),
        (f"{MODULES},{FAIL}", "odoo exited 255"),  # its data names a model that does not exist
        (f"{MODULES},{LEAVE}", f"{LEAVE}: to install"),  # it depends on an uninstallable module
    ],
    ids=["unknown", "install-fails", "left-to-install"],
)
def test_failed_build_is_65_and_old_template_still_serves(
    build: Build, shared: Build, pg: psycopg.Connection[Any], uid: str, modules: str, why: str,
) -> None:  # fmt: skip
    build.adopt(pg, shared)
    before = build.catalog(pg)
    failed = build(modules)
    assert failed.rc == 65, failed.output
    assert why in failed.result["error"]
    assert build.catalog(pg) == before
    assert build.fs_mark() == {"fingerprint": before["marker"]["fingerprint"]}
    assert mine(pg, build.name) == {build.name}
    assert not build.fs(build.name + "__build").exists()
    clone = build.tenant(uid)
    assert clone.rc == 0, clone.output


KILL_POINTS = [
    (SLEEP_LINE, None),  # inside Odoo's module work (plana_test_sleep sleeps there)
    ('"build verified"', "resuming a verified build"),
    ('"template database swapped in"', None),  # between the two halves of the swap
]


@pytest.mark.parametrize(("needle", "resume_event"), KILL_POINTS, ids=["odoo", "verified", "swap"])
def test_sigkill_then_rerun_converges(
    build: Build, pg: psycopg.Connection[Any], uid: str, needle: str, resume_event: str | None,
) -> None:  # fmt: skip
    modules = f"{MODULES},{SLEEP}"
    env = {SLEEP_VAR: str(JOB_TIMEOUT)} if needle == SLEEP_LINE else {}
    proc = build.popen(build.args(modules), **env)
    assert proc.stdout is not None
    children: list[int] = []
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "started" and event.get("child") == "odoo":
            children.append(event["pid"])
        if needle in line:
            # A pod kill takes every process of the pod: the job and its Odoo child.
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.send_signal(signal.SIGKILL)
            break
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = installs(build.log)

    rerun = build(modules)
    assert rerun.rc == 0, rerun.output
    # Killed just after the database swap, the run may already have moved the filestore too.
    assert rerun.result["outcome"] in ("created", "updated", "unchanged")
    cat = build.catalog(pg)
    assert cat["frozen"] and cat["marker"]["fingerprint"] == rerun.result["fingerprint"]
    assert build.fs_mark() == {"fingerprint": rerun.result["fingerprint"]}
    assert mine(pg, build.name) == {build.name}
    if resume_event:
        assert any(e.get("event") == resume_event for e in rerun.logs)
    if needle != SLEEP_LINE:
        assert installs(build.log) == before  # not built again
    clone = build.tenant(uid)
    assert clone.rc == 0, clone.output


def test_half_swapped_template_is_not_cloned_and_is_completed(
    build: Build, shared: Build, pg: psycopg.Connection[Any], pg_dsn: str, uid: str
) -> None:
    """The state a crash between the database swap and the filestore swap leaves behind."""
    build.adopt(pg, shared)
    os.rename(build.fs(), build.fs(build.name + "__build"))
    refused = build.tenant(uid)
    assert refused.rc == 75, refused.output
    assert "filestore does not belong" in refused.result["error"]
    before = snapshot(build, pg_dsn)
    planned = dry_run(build, build.args())
    assert planned.rc == 0, planned.output
    assert [s["step"] for s in planned.result["steps"]] == ["swap-filestore", "cleanup"]
    assert snapshot(build, pg_dsn).diff(before) == []

    rerun = build()
    assert rerun.rc == 0, rerun.output
    assert rerun.result["outcome"] == "updated" and rerun.result["resumed"] == "filestore swap"
    assert installs(build.log) == 0
    assert build.fs_mark() == {"fingerprint": rerun.result["fingerprint"]}
    assert build.tenant(uid).rc == 0


@pytest.mark.parametrize("version", [17, 19], ids=["odoo17", "odoo19-standin"])
def test_version_rules_and_no_password_on_argv(
    run_job: Runner, target: OdooTarget, tmp_path: Path, uid: str, drop_dbs: list[str],
    pg_dsn: str, pg: psycopg.Connection[Any], version: int,
) -> None:  # fmt: skip
    """17 (and 18) get `--without-demo=all`, 19 no demo flag. Odoo 19 runs on the stand-in
    in both modes: test mode has no real 19."""
    ensure_role(pg, OWNER_ROLE)
    drop_dbs.extend([f"template_{uid}%"])
    odoo = target if version != 19 else STANDIN.for_admin(pg_dsn)
    build = Build(run_job, odoo, uid, tmp_path)
    secret = "pw-" + uid
    dsn = psycopg.conninfo.make_conninfo(job_dsn(pg_dsn), password=secret)  # trust: ignored
    res = build(version=version, PLANA_PG_DSN=dsn)
    assert res.rc == 0, res.output
    assert build.name.endswith(uid) and build.catalog(pg)["marker"]["odoo_version"] == version
    ran = [c for c in calls(build.log) if "-i" in c]
    assert ran and all("--stop-after-init" in c and "--no-http" in c for c in ran)
    if version == 19:
        assert all(not any("demo" in a for a in c) for c in ran)
    else:
        assert all("--without-demo=all" in c for c in ran)
    assert all(secret not in a for c in calls(build.log) for a in c)
    assert secret not in res.output


def test_binary_of_another_major_is_a_conflict(build: Build, pg: psycopg.Connection[Any]) -> None:
    build.target.require(17)
    res = build.run(build.args(version=18, binary=17))
    assert res.rc == 65, res.output
    assert "not Odoo 18" in res.result["error"]
    assert mine(pg, build.name) == set()
    assert calls(build.log) == [["--version"]]


def test_template_not_ours_is_left_untouched(build: Build, pg: psycopg.Connection[Any]) -> None:
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(build.name)))
    res = build()
    assert res.rc == 65, res.output
    assert "not built by plana-jobs" in res.result["error"]
    row = pg.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (build.name,),
    ).fetchone()
    assert row == (None,)
    assert mine(pg, build.name) == {build.name}
    assert calls(build.log) == [["--version"]]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--template-code", "gold"], "--template-code / PLANA_TEMPLATE_CODE:"
         " must be one of basic, pro, enterprise, got 'gold'"),
        (["--odoo-version", "16"],
         "--odoo-version / PLANA_ODOO_VERSION: must be one of 17, 18, 19, got '16'"),
        (["--modules", "base,Bad-Name"],
         "--modules / PLANA_TEMPLATE_MODULES: 'Bad-Name' is not an Odoo module name ([a-z0-9_])"),
        (["--modules", ","], "--modules / PLANA_TEMPLATE_MODULES: is empty"),
        (["--template-db", "tenant_x"],
         "--template-db / PLANA_TEMPLATE_DB: must match template_[a-z0-9_]{1,48}, got 'tenant_x'"),
    ],
    ids=["code", "version", "module-name", "no-module", "template-db"],
)  # fmt: skip
def test_bad_input_is_64_before_anything(
    build: Build, pg: psycopg.Connection[Any], args: list[str], problem: str
) -> None:
    res = build.run([*build.args(), *args])
    assert res.rc == 64, res.output
    last = res.stderr.strip().splitlines()[-1]
    assert last == f"plana-job template-build: error: {problem}"
    assert calls(build.log) == []
    assert mine(pg, build.name) == set()


def test_missing_template_code_is_64(build: Build, pg: psycopg.Connection[Any]) -> None:
    args = build.args()
    at = args.index("--template-code")
    res = build.run([*args[:at], *args[at + 2 :]], PLANA_TEMPLATE_CODE="")
    assert res.rc == 64, res.output
    last = res.stderr.strip().splitlines()[-1]
    assert last == (
        "plana-job template-build: error: --template-code / PLANA_TEMPLATE_CODE: is required"
    )
    assert calls(build.log) == []
    assert mine(pg, build.name) == set()


# --------------------------------------------------------------------------- --dry-run

FULL_PLAN = ["prepare", "odoo", "verify", "freeze", "swap", "cleanup"]


def snapshot(build: Build, pg_dsn: str) -> Snapshot:
    """The template's databases in the catalog (a template accepts no connection: no tables)
    and the whole data dir, filestores and marks."""
    return Snapshot.take(pg_dsn, only=(build.name,), roots=(build.data_dir,))


def dry_run(build: Build, args: list[str], **env: str) -> Any:
    # Short: a dry run that waited for a lock would fail (75) rather than pass late.
    return build.run([*args, "--dry-run"], **{"PLANA_TIMEOUT": "30", **env})


def test_dry_run_plans_the_build_and_starts_no_odoo(
    build: Build, pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    build.data_dir.mkdir(parents=True)
    before = snapshot(build, pg_dsn)
    res = dry_run(build, build.args())
    assert res.rc == 0, res.output
    assert res.result["outcome"] == "planned" and res.result["dry_run"] is True
    assert [s["step"] for s in res.result["steps"]] == FULL_PLAN
    # The wrapper is a shell script: its version line only `odoo --version` tells, which a dry
    # run never runs; with nothing built yet there is no line to assume either.
    assert res.result["fingerprint"] is None
    assert res.result["binary_source"] == "unknown (a dry run starts no Odoo)"
    assert calls(build.log) == []  # not even --version
    assert snapshot(build, pg_dsn).diff(before) == []
    assert mine(pg, build.name) == set()


def test_dry_run_of_a_current_template_plans_nothing_and_takes_no_lock(
    build: Build, shared: Build, pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    build.adopt(pg, shared)
    fp = build.catalog(pg)["marker"]["fingerprint"]
    before = snapshot(build, pg_dsn)
    # A swap in progress (the template's lock held exclusively) and a build running: a dry run
    # waits for neither, it reads.
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        for name in (f"template:{build.name}", f"template-build:{build.name}"):
            holder.execute("SELECT pg_advisory_lock(%s)", (locks.key(name),))
        res = dry_run(build, build.args())
    assert res.rc == 0, res.output
    assert res.result["outcome"] == "planned" and res.result["dry_run"] is True
    assert res.result["steps"] == []
    assert res.result["fingerprint"] == fp
    assert res.result["binary_source"] == (
        f"assumed from the marker of {build.name} (a dry run starts no Odoo)"
    )
    assert calls(build.log) == []
    assert snapshot(build, pg_dsn).diff(before) == []

    # The run agrees: nothing to do.
    again = build()
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    assert again.result["fingerprint"] == fp

    # Other modules: the whole build is planned, the live template kept until the swap.
    changed = dry_run(build, build.args(f"{APP},{APP2}"))
    assert changed.rc == 0, changed.output
    assert [s["step"] for s in changed.result["steps"]] == FULL_PLAN
    swap = next(s for s in changed.result["steps"] if s["step"] == "swap")
    assert f"{build.name} → {build.name}__old" in swap["says"]
    assert snapshot(build, pg_dsn).diff(before) == []


def test_dry_run_on_a_template_not_ours_is_65_and_touches_nothing(
    build: Build, pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(build.name)))
    build.data_dir.mkdir(parents=True)
    before = snapshot(build, pg_dsn)
    res = dry_run(build, build.args())
    assert res.rc == 65, res.output
    assert res.result["error"] == (
        f"database {build.name} exists but was not built by plana-jobs (it has no comment):"
        " left untouched"
    )
    assert calls(build.log) == []
    assert snapshot(build, pg_dsn).diff(before) == []


def test_dry_run_on_a_build_with_someone_elses_comment_is_65(
    build: Build, pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    """A `__build` is dropped only when a killed run of ours left it (no comment yet, or our
    marker): one carrying another comment is someone's, for the run as for the dry run."""
    work = build.name + "__build"
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(work)))
    pg.execute(sql.SQL("COMMENT ON DATABASE {} IS 'made by hand'").format(sql.Identifier(work)))
    build.data_dir.mkdir(parents=True)
    before = snapshot(build, pg_dsn)
    for res in (dry_run(build, build.args()), build()):
        assert res.rc == 65, res.output
        assert f"database {work} exists but is not ours" in res.result["error"]
        assert snapshot(build, pg_dsn).diff(before) == []
    assert installs(build.log) == 0
