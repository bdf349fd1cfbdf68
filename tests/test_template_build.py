"""`plana-job template-build` against real PostgreSQL with the Odoo stand-in.

Odoo is called through a small wrapper that records each command line, so the tests can see
what was (and was not) run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs import addons_digest, filestore, locks, naming
from tests.conftest import STANDINS, Runner, job_dsn
from tests.test_tenant_db import OWNER_ROLE, ensure_role, mine

ODOO = STANDINS / "odoo"


@pytest.fixture
def odoo_bin(tmp_path: Path) -> Path:
    """The stand-in behind a wrapper that appends its argv to `odoo-calls.log`."""
    log = tmp_path / "odoo-calls.log"
    wrapper = tmp_path / "odoo"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{ODOO}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def calls(odoo_bin: Path) -> list[str]:
    log = odoo_bin.parent / "odoo-calls.log"
    return log.read_text().splitlines() if log.exists() else []


class Build:
    def __init__(self, run_job: Runner, odoo_bin: Path, uid: str, tmp: Path) -> None:
        self.run_job, self.odoo_bin = run_job, odoo_bin
        self.name = f"template_{uid}"
        self.data_dir = tmp / "data"

    def args(self, modules: str = "base,web,mail,contacts", version: str = "18") -> list[str]:
        return ["template-build", "--template-code", "basic", "--odoo-version", version,
                "--modules", modules, "--template-db", self.name,
                "--odoo-bin", str(self.odoo_bin), "--data-dir", str(self.data_dir)]  # fmt: skip

    def __call__(self, modules: str = "base,web,mail,contacts", version: str = "18",
                 **env: str) -> Any:  # fmt: skip
        env.setdefault("ODOO_STANDIN_VERSION", version)
        return self.run_job(self.args(modules, version), **env)

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

    def fs_mark(self) -> dict[str, Any] | None:
        return filestore.read_mark(naming.filestore(self.name, self.data_dir))

    def tenant(self, run_job: Runner, sub: str) -> Any:
        return run_job(["tenant-db", "--subdomain", sub, "--project-id", "7", "--tier", "starter",
                        "--owner-email", "o@example.com", "--owner-name", "Owner",
                        "--template-db", self.name, "--data-dir", str(self.data_dir)])  # fmt: skip


@pytest.fixture
def build(
    run_job: Runner, odoo_bin: Path, uid: str, tmp_path: Path, drop_dbs: list[str],
    pg: psycopg.Connection[Any],
) -> Build:  # fmt: skip
    ensure_role(pg, OWNER_ROLE)
    drop_dbs.extend([f"template_{uid}%", f"{uid}%"])
    return Build(run_job, odoo_bin, uid, tmp_path)


def installed(pg_dsn: str, db: str) -> set[str]:
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        rows = conn.execute("SELECT name FROM ir_module_module WHERE state = 'installed'")
        return {r[0] for r in rows.fetchall()}


def test_build_then_same_fingerprint_is_a_noop_that_never_runs_odoo(
    build: Build, odoo_bin: Path, pg: psycopg.Connection[Any]
) -> None:
    first = build()
    assert first.rc == 0, first.output
    assert first.result["outcome"] == "created"
    cat = build.catalog(pg)
    assert cat["frozen"] and cat["marker"]["state"] == "complete"
    assert cat["marker"]["fingerprint"] == first.result["fingerprint"]
    assert build.fs_mark() == {"fingerprint": first.result["fingerprint"]}
    assert mine(pg, build.name) == {build.name}  # no __build / __old left
    ran = calls(odoo_bin)
    assert any("-i base,contacts,mail,web" in c and "--without-demo=all" in c for c in ran)

    again = build(ODOO_STANDIN_FAIL_AT="base")  # would fail if Odoo installed anything
    assert again.rc == 0, again.output
    assert again.result["outcome"] == "unchanged"
    assert calls(odoo_bin)[len(ran) :] == ["--version"]
    assert build.catalog(pg)["oid"] == cat["oid"]

    forced = build.run_job([*build.args(), "--force"], ODOO_STANDIN_VERSION="18")
    assert forced.rc == 0 and forced.result["outcome"] == "updated", forced.output
    assert build.catalog(pg)["oid"] != cat["oid"]


def fake_module(addons: Path, name: str, depends: list[str], files: dict[str, str]) -> None:
    """A module directory for the digest to read. The stand-in reads no addons: it installs
    its catalog's `name` whatever is on disk, so catalog names are used."""
    where = addons / name
    where.mkdir(parents=True)
    (where / "__manifest__.py").write_text(repr({"name": name, "depends": depends}))
    for rel, text in files.items():
        (where / rel).parent.mkdir(parents=True, exist_ok=True)
        (where / rel).write_text(text)


def test_code_change_in_a_dependency_rebuilds_and_unchanged_code_does_not(
    build: Build, odoo_bin: Path, pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    addons = tmp_path / "addons"
    fake_module(addons, "web", ["base"], {"static/src/web.js": "web(1);\n"})
    fake_module(addons, "mail", ["web"], {"models/mail.py": "mail = 1\n"})
    conf = tmp_path / "odoo.conf"
    conf.write_text(f"[options]\naddons_path = {addons}\n")
    args = [*build.args("base,mail"), "--odoo-config", str(conf)]

    first = build.run_job(args, ODOO_STANDIN_VERSION="18")
    assert first.rc == 0 and first.result["outcome"] == "created", first.output
    marker = build.catalog(pg)["marker"]
    # base is not on this path (the wrapper is a shell script: no Odoo's own addons dir).
    assert marker["addons_digest"] == addons_digest.digest(["base", "mail"], [str(addons)]).value
    assert marker["addons_missing"] == ["base"]
    logged = [e for e in first.logs if e.get("event") == "addons digest"]
    assert logged and logged[0]["template"] == build.name and logged[0]["step"] == "fingerprint"

    before = len(calls(odoo_bin))
    (addons / "web" / "__pycache__").mkdir()
    (addons / "web" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")  # a by-product
    again = build.run_job(args, ODOO_STANDIN_VERSION="18", ODOO_STANDIN_FAIL_AT="base")
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    assert calls(odoo_bin)[before:] == ["--version"]

    # web is not asked for: mail depends on it. Same --version line, same revision.
    (addons / "web" / "static" / "src" / "web.js").write_text("web(2);\n")
    before = len(calls(odoo_bin))
    changed = build.run_job(args, ODOO_STANDIN_VERSION="18")
    assert changed.rc == 0 and changed.result["outcome"] == "updated", changed.output
    assert any("-i base,mail" in c for c in calls(odoo_bin)[before:])
    assert changed.result["fingerprint"] != first.result["fingerprint"]
    assert build.catalog(pg)["marker"]["addons_digest"] != marker["addons_digest"]
    assert build.fs_mark() == {"fingerprint": changed.result["fingerprint"]}

    # --addons-path (PLANA_ODOO_ADDONS_PATH) beats the config's addons_path for the digest too.
    other = tmp_path / "other"
    fake_module(other, "mail", ["base"], {"models/mail.py": "mail = 2\n"})
    moved = build.run_job(args, ODOO_STANDIN_VERSION="18", PLANA_ODOO_ADDONS_PATH=str(other))
    assert moved.rc == 0 and moved.result["outcome"] == "updated", moved.output
    assert build.catalog(pg)["marker"]["addons_missing"] == ["base"]  # web no longer covered


def test_changed_modules_rebuild_waits_for_clones_then_swaps(
    build: Build, run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, uid: str
) -> None:
    assert build().rc == 0
    old = build.catalog(pg)

    # A clone in progress holds the template's lock shared: the swap must wait for it.
    with psycopg.connect(pg_dsn, autocommit=True) as clone_session:
        clone_session.execute(
            "SELECT pg_advisory_lock_shared(%s)", (locks.key(f"template:{build.name}"),)
        )
        proc = run_job.popen(build.args("base,web,mail,crm"), ODOO_STANDIN_VERSION="18")
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"lock busy, waiting"' in line and f"template:{build.name}" in line:
                break
        during = build.catalog(pg)
        assert during["oid"] == old["oid"] and during["marker"] == old["marker"]
        assert build.fs_mark() == {"fingerprint": old["marker"]["fingerprint"]}
        # Meanwhile the old template still serves clones (a shared lock holder may clone).
        served = build.tenant(run_job, uid + "a")
        assert served.rc == 0, served.output
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["outcome"] == "updated"

    new = build.catalog(pg)
    assert new["frozen"] and new["oid"] != old["oid"]
    assert new["marker"]["fingerprint"] == result["fingerprint"] != old["marker"]["fingerprint"]
    assert build.fs_mark() == {"fingerprint": result["fingerprint"]}
    assert mine(pg, build.name) == {build.name}  # the old template was dropped
    assert not naming.filestore(build.name + "__old", build.data_dir).exists()
    assert "crm" not in installed(pg_dsn, naming.db_name(uid + "a"))

    tenant = build.tenant(run_job, uid + "b")
    assert tenant.rc == 0, tenant.output
    assert "crm" in installed(pg_dsn, naming.db_name(uid + "b"))


@pytest.mark.parametrize(
    ("modules", "env", "why"),
    [
        ("base,web,no_such_module", {}, "no_such_module: unknown module"),
        ("base,web,mail,crm", {"ODOO_STANDIN_FAIL_AT": "crm"}, "odoo exited 255"),
        ("base,web,mail,crm", {"ODOO_STANDIN_LEAVE": "crm"}, "crm: to install"),
    ],
)
def test_failed_build_is_65_and_old_template_still_serves(
    build: Build, run_job: Runner, pg: psycopg.Connection[Any], uid: str,
    modules: str, env: dict[str, str], why: str,
) -> None:  # fmt: skip
    assert build().rc == 0
    before = build.catalog(pg)
    failed = build(modules, **env)
    assert failed.rc == 65, failed.output
    assert why in failed.result["error"]
    assert build.catalog(pg) == before
    assert build.fs_mark() == {"fingerprint": before["marker"]["fingerprint"]}
    assert mine(pg, build.name) == {build.name}
    assert not naming.filestore(build.name + "__build", build.data_dir).exists()
    clone = build.tenant(run_job, uid)
    assert clone.rc == 0, clone.output


KILL_POINTS = [
    ("standin: sleeping", None),  # inside Odoo's module work
    ('"build verified"', "resuming a verified build"),
    ('"template database swapped in"', None),  # between the two halves of the swap
]


@pytest.mark.parametrize(("needle", "resume_event"), KILL_POINTS)
def test_sigkill_then_rerun_converges(
    build: Build, run_job: Runner, odoo_bin: Path, pg: psycopg.Connection[Any], uid: str,
    needle: str, resume_event: str | None,
) -> None:  # fmt: skip
    env = {"ODOO_STANDIN_VERSION": "18"}
    if "standin" in needle:
        env["ODOO_STANDIN_SLEEP"] = "30"
    proc = run_job.popen(build.args(), **env)
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
    installs = sum(" -i " in c for c in calls(odoo_bin))

    rerun = build()
    assert rerun.rc == 0, rerun.output
    # Killed just after the database swap, the run may already have moved the filestore too.
    assert rerun.result["outcome"] in ("created", "updated", "unchanged")
    cat = build.catalog(pg)
    assert cat["frozen"] and cat["marker"]["fingerprint"] == rerun.result["fingerprint"]
    assert build.fs_mark() == {"fingerprint": rerun.result["fingerprint"]}
    assert mine(pg, build.name) == {build.name}
    if resume_event:
        assert any(e.get("event") == resume_event for e in rerun.logs)
    if "standin" not in needle:
        assert sum(" -i " in c for c in calls(odoo_bin)) == installs  # not built again
    clone = build.tenant(run_job, uid)
    assert clone.rc == 0, clone.output


def test_half_swapped_template_is_not_cloned_and_is_completed(
    build: Build, run_job: Runner, odoo_bin: Path, uid: str
) -> None:
    """The state a crash between the database swap and the filestore swap leaves behind."""
    assert build().rc == 0
    live = naming.filestore(build.name, build.data_dir)
    os.rename(live, naming.filestore(build.name + "__build", build.data_dir))
    refused = build.tenant(run_job, uid)
    assert refused.rc == 75, refused.output
    assert "filestore does not belong" in refused.result["error"]

    installs = sum(" -i " in c for c in calls(odoo_bin))
    rerun = build()
    assert rerun.rc == 0, rerun.output
    assert rerun.result["outcome"] == "updated" and rerun.result["resumed"] == "filestore swap"
    assert sum(" -i " in c for c in calls(odoo_bin)) == installs
    assert build.fs_mark() == {"fingerprint": rerun.result["fingerprint"]}
    assert build.tenant(run_job, uid).rc == 0


def test_version_rules_and_no_password_on_argv(
    build: Build, odoo_bin: Path, pg_dsn: str, pg: psycopg.Connection[Any], uid: str
) -> None:
    secret = "pw-" + uid
    dsn = psycopg.conninfo.make_conninfo(job_dsn(pg_dsn), password=secret)  # trust: ignored
    res = build(version="19", PLANA_PG_DSN=dsn)
    assert res.rc == 0, res.output
    assert build.name.endswith(uid) and build.catalog(pg)["marker"]["odoo_version"] == 19
    ran = [c for c in calls(odoo_bin) if " -i " in c]
    assert ran and all("demo" not in c and "--stop-after-init --no-http" in c for c in ran)
    assert all(secret not in c for c in calls(odoo_bin))
    assert secret not in res.output


def test_binary_of_another_major_is_a_conflict(
    build: Build, pg: psycopg.Connection[Any], odoo_bin: Path
) -> None:
    res = build(ODOO_STANDIN_VERSION="17")  # asked for 18
    assert res.rc == 65, res.output
    assert "not Odoo 18" in res.result["error"]
    assert mine(pg, build.name) == set()
    assert calls(odoo_bin) == ["--version"]


def test_template_not_ours_is_left_untouched(
    build: Build, pg: psycopg.Connection[Any], odoo_bin: Path
) -> None:
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
    assert calls(odoo_bin) == ["--version"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--template-code", "gold"], "templateCode"),
        (["--odoo-version", "16"], "odooVersion"),
        (["--modules", "base,Bad-Name"], "modules"),
        (["--template-db", "tenant_x"], "templateDb"),
    ],
)
def test_bad_input_is_64_before_anything(
    build: Build, pg: psycopg.Connection[Any], odoo_bin: Path, args: list[str], field: str
) -> None:
    res = build.run_job([*build.args(), *args])
    assert res.rc == 64, res.output
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"plana-job template-build: error: {field}")
    assert calls(odoo_bin) == []
    assert mine(pg, build.name) == set()
