"""Every job killed at each of its steps, or cut off from PostgreSQL mid-job, then run again.

A SIGKILL (node failure, grace period out) runs no handler: the job and its children (pg_dump,
pg_restore, Odoo, each in its own process group) die at once, while a statement the job had sent
may go on on the server. The re-run must converge to what an undisturbed run makes — the same
databases with the same markers and access, the same filestore tree, the same backup sets — and
a further run must answer `unchanged`. Never 65 for ever, never a half-published tenant.

A backend terminated mid-job (`pg_terminate_backend` of the job's own sessions) must exit 75,
the transient code, never 70; the re-run converges too.

Kills are placed on log lines (one JSON object per event on stdout: the job is killed right after
it announced a step), not at random instants, so the tests do not depend on the machine's speed.
Where a step is too short for that (it may be over before the kill lands), the job is held in it
by a lock the test holds, and killed once its statement waits on that lock (`HOLDS`).

The jobs that run Odoo (template-build, environment-db, upgrade same-major) drive the Odoo under
test (tests/support/odoo_target: the stand-in in CI, real Odoo 17/18 in test mode) with the test
addons (`odoo_target.APPS`). A real install is slow, so the module builds one template per version
and the cases clone it. `upgrade run` stays on the stand-in in both modes: see `_upgrade_run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from jobs.core import naming
from jobs.ops import clone, marker
from tests.support import markers, odoo_target
from tests.support.backup import make_tenant
from tests.support.harness import BIN, OWNER_ROLE, Runner
from tests.support.processes import descendants, local_ports, signal_tree
from tests.support.tenant_db import ensure_role, pg_database_comment

TARGET = odoo_target.current()
STANDIN = odoo_target.OdooTarget(real=False)  # upgrade run's Odoo in both modes (_upgrade_run)
MODULES = ",".join(("base", "web", *odoo_target.APPS))
# The stand-in's 17 -> 18 upgrade run migrates OCA's agreement_legal (its pre-fix).
MODULES_17_RUN = "base,web,mail,contacts,agreement,agreement_legal"
# A real install or -u all takes a minute or more on a loaded machine; the stand-in's a second.
RUN_TIMEOUT = 900.0 if TARGET.real else 120.0
pytestmark = pytest.mark.timeout(3600 if TARGET.real else 600)
# Marker fields that differ between two correct runs (times, digests, which set, attempts).
VOLATILE = re.compile(r"(_at$|time|date|fingerprint|^set$|restored_from|secret|uuid|attempt)")


# --------------------------------------------------------------------------- processes


def start(run_job: Runner, case: Case) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "plana-job"), *case.args],
        env={**run_job.env, **case.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], step: str) -> dict[str, Any]:
    """Read the job's log up to the first line logged in `step` (its "step" line, usually)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("step") == step:
            return dict(event)
    proc.wait()
    raise AssertionError(f"the job ended (rc {proc.returncode}) before step {step!r}")


def sigkill_at(run_job: Runner, case: Case, step: str, *, may_finish: bool = False) -> bool:
    """SIGKILL the job right after it announced `step`; True when the kill landed.

    `may_finish`: the job may have ended the step, and the job, before the signal arrived (a
    last step of a few renames): then False, and the caller tries again on a fresh case.
    """
    proc = start(run_job, case)
    try:
        read_until(proc, step)
        signal_tree(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    if may_finish and proc.returncode == 0:
        return False
    assert proc.returncode == -signal.SIGKILL
    return True


# How many fresh cases a kill on a step line may take: on a loaded machine the job can finish a
# short last step (and exit 0) before the signal lands, say one time in six. Held kills (HOLDS)
# never need this; the rest are tried again, so the test asserts a kill inside the step.
KILL_ATTEMPTS = 8


# --------------------------------------------------------------------------- state


def _norm(value: Any, tok: str) -> Any:
    if isinstance(value, str):
        return value.replace(tok, "TOK")
    if isinstance(value, dict):
        return {
            _norm(k, tok): "*" if VOLATILE.search(k) else _norm(v, tok)
            for k, v in sorted(value.items())
        }
    if isinstance(value, list):
        return [_norm(v, tok) for v in value]
    return value


def state(pg: psycopg.Connection[Any], case: Case) -> dict[str, Any]:
    """Databases (marker, access, flags), filestore tree and backup sets named after the case."""
    tok = case.tok
    rows = pg.execute(
        "SELECT datname, datallowconn, datistemplate, datacl::text,"
        " shobj_description(oid, 'pg_database') FROM pg_database WHERE strpos(datname, %s) > 0",
        (tok,),
    ).fetchall()
    dbs = {}
    for name, allow, is_template, acl, comment in rows:
        if f"{tok}--" in name:  # one of this tenant's environments: another case's
            continue
        mark = marker.Marker.decode(comment)
        body = None if mark is None else {"kind": mark.kind, "state": mark.state, **mark.data}
        dbs[_norm(name, tok)] = (allow, is_template, acl, _norm(body, tok) if body else comment)
    files = []
    root = Path(case.data_dir) / "filestore"
    if root.exists():
        for entry in root.iterdir():
            if tok in entry.name and f"{tok}--" not in entry.name:
                files.append(_norm(entry.name, tok) + "/")
                files += [_norm(str(p.relative_to(root)), tok) for p in entry.rglob("*")]
    sets: list[Any] = []
    if case.dest is not None and case.dest.exists():
        for tenant in sorted(case.dest.iterdir()):
            for index, item in enumerate(sorted(tenant.iterdir())):
                name = item.name if item.name.startswith(".") else f"set{index}"
                members = sorted(str(p.relative_to(item)) for p in item.rglob("*"))
                sets.append((_norm(tenant.name, tok), name, members))
    return {"databases": dbs, "files": sorted(files), "sets": sets}


# --------------------------------------------------------------------------- the jobs


@dataclass
class Case:
    tok: str  # every name this run makes contains it
    args: list[str]
    data_dir: Path
    dest: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    rerun_outcome: str = "unchanged"  # what a run after a complete one answers


class SlowRunner(Runner):
    """The Runner with a deadline that fits the Odoo under test."""

    timeout = RUN_TIMEOUT


class World:
    """What the cases share in this module: templates, a production tenant, a backup set."""

    def __init__(self, run: Runner, pg_dsn: str, tmp: Path) -> None:
        self.run, self.pg_dsn, self.tmp = run, pg_dsn, tmp
        self.prefix = "kc" + uuid.uuid4().hex[:6]
        self.count = 0
        self.references: dict[str, dict[str, Any]] = {}
        self.inspected: set[str] = set()  # the jobs whose killed state inspect has seen
        target = TARGET.for_admin(pg_dsn)
        self.bins = tmp / "bin"
        # The Odoo under test, with the test addons on its addons path.
        self.odoo17, self.odoo18 = (str(target.binary(self.bins, v)) for v in (17, 18))
        self.conf17, self.conf18 = (str(target.config(tmp / f"conf{v}", v)) for v in (17, 18))
        self.d18, self.d17, self.dp = tmp / "data18", tmp / "data17", tmp / "dataP"
        self.tpl18 = self._template("18", MODULES, self.odoo18, self.conf18, self.d18)
        # environment-db's Odoo: stops itself before a neutralise while the hold file exists.
        self.hold = tmp / "hold-neutralize"
        self.env_odoo18 = self._held(self.odoo18, self.hold)
        self.tpl17 = self._template("17", MODULES, self.odoo17, self.conf17, self.d17)
        # upgrade run's world, on the stand-in: its binaries, a 17 template with OCA's
        # agreement_legal, OpenUpgrade (the framework beside the scripts) and the 17 side's
        # config naming it.
        self.s17 = str(STANDIN.binary(self.bins, 17, name="standin17"))
        self.s18 = str(STANDIN.binary(self.bins, 18, name="standin18"))
        self.ds17 = tmp / "dataS17"
        openupgrade = tmp / "openupgrade"
        self.scripts = openupgrade / "openupgrade_scripts" / "scripts"
        (self.scripts / "base" / "18.0.1.3").mkdir(parents=True)
        (self.scripts / "base" / "18.0.1.3" / "pre-migration.py").write_text("# script\n")
        (openupgrade / "openupgrade_framework").mkdir()
        (openupgrade / "openupgrade_framework" / "__manifest__.py").write_text("{}\n")
        self.sconf17 = tmp / "standin17.conf"
        self.sconf17.write_text(f"[options]\naddons_path = {openupgrade}\n")
        self.tpls17 = self._template("17run", MODULES_17_RUN, self.s17, None, self.ds17, "17")
        # One production tenant from the template (environments hang off it, fresh or copied),
        # one with data (backups and restores), and one signed backup set of it.
        self.prod = self.token()
        done = run(self.tenant_args(self.prod, self.tpl18, self.d18, "18"))
        assert done.rc == 0, done.output
        self.src = self.token()
        make_tenant(pg_dsn, self.src, self.dp, partners=40)
        self.dest = self.backup(self.src)
        # backup and backup-verify get a tenant of their own: restores rewrite the source's.
        self.bsrc, self.vsrc = self.token(), self.token()
        make_tenant(pg_dsn, self.bsrc, self.dp, partners=40)
        make_tenant(pg_dsn, self.vsrc, self.dp, partners=40)
        self.vdest = self.backup(self.vsrc)

    def backup(self, sub: str) -> Path:
        dest = self.tmp / f"backups-{sub}"
        dest.mkdir()
        made = self.run(["backup", "--subdomain", sub, "--dest", str(dest),
                         "--data-dir", str(self.dp)])  # fmt: skip
        assert made.rc == 0, made.output
        return dest

    def token(self) -> str:
        self.count += 1
        return f"{self.prefix}x{self.count:03d}"  # none a prefix of another

    def _held(self, odoo: str, hold: Path) -> str:
        """`odoo`, but a `neutralize` call stops itself first (SIGSTOP) if it can remove `hold`:
        once, so the test can act while the job is inside its neutralise step."""
        path = self.bins / "held-odoo18"
        path.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = neutralize ] && rm {shlex.quote(str(hold))} 2>/dev/null; then\n'
            "    kill -STOP $$\n"
            "fi\n"
            f'exec {shlex.quote(odoo)} "$@"\n'
        )
        path.chmod(0o755)
        return str(path)

    def _template(
        self, tag: str, modules: str, odoo: str, conf: str | None, data_dir: Path, version: str = ""
    ) -> str:
        name = f"template_{self.prefix}_{tag}"
        config = ["--odoo-config", conf] if conf else []
        built = self.run(["template-build", "--template-code", "basic", "--odoo-version",
                          version or tag, "--modules", modules, "--template-db", name,
                          "--odoo-bin", odoo, *config, "--data-dir", str(data_dir)])  # fmt: skip
        assert built.rc == 0, built.output
        return name

    @staticmethod
    def tenant_args(sub: str, template: str, data_dir: Path, version: str) -> list[str]:
        return ["tenant-db", "--subdomain", sub, "--project-id", "23", "--tier", "starter",
                "--odoo-version", version, "--owner-email", f"o@{sub}.example.com",
                "--owner-name", "Ada", "--template-db", template,
                "--data-dir", str(data_dir)]  # fmt: skip

    def tenant17(self, template: str, data_dir: Path) -> str:
        sub = self.token()
        done = self.run(self.tenant_args(sub, template, data_dir, "17"))
        assert done.rc == 0, done.output
        return sub

    def drop_source(self) -> None:
        """The restored tenant gone, database and filestore, as before a disaster recovery."""
        db = naming.db_name(self.src)
        with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (db,)
            ).fetchall()
            for (name,) in rows:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        root = self.dp / "filestore"
        for entry in root.iterdir() if root.exists() else []:
            if db in entry.name:
                subprocess.run(["rm", "-rf", str(entry)], check=True)


def _tenant_db(w: World) -> Case:
    sub = w.token()
    return Case(sub, w.tenant_args(sub, w.tpl18, w.d18, "18"), w.d18)


def _template_build(w: World) -> Case:
    tok = w.token()
    args = ["template-build", "--template-code", "basic", "--odoo-version", "18", "--modules",
            MODULES, "--template-db", f"template_{tok}", "--odoo-bin", w.odoo18,
            "--odoo-config", w.conf18, "--data-dir", str(w.d18)]  # fmt: skip
    return Case(tok, args, w.d18)


def _env_fresh(w: World) -> Case:
    env = "e" + w.token()
    args = ["environment-db", "--subdomain", w.prod, "--env", env, "--tier", "starter",
            "--template-db", w.tpl18, "--owner-email", "o@x.example.com", "--owner-name", "Ada",
            "--data-dir", str(w.d18), "--generation", "1", "--odoo-bin", w.env_odoo18,
            "--odoo-config", w.conf18]  # fmt: skip
    return Case(env, args, w.d18)


def _env_copy(w: World) -> Case:
    env = "e" + w.token()
    # Production is the template's tenant: what Odoo built (and can neutralise a copy of).
    args = ["environment-db", "--subdomain", w.prod, "--env", env, "--copy-from-production",
            "--data-dir", str(w.d18), "--generation", "1", "--odoo-bin", w.env_odoo18,
            "--odoo-config", w.conf18]  # fmt: skip
    return Case(env, args, w.d18)


def _backup(w: World) -> Case:
    dest = w.tmp / f"backups-{w.token()}"
    dest.mkdir()
    # Every backup run makes a set: the re-run after a complete one makes a second.
    return Case(w.bsrc, ["backup", "--subdomain", w.bsrc, "--dest", str(dest),
                        "--data-dir", str(w.dp)], w.dp, dest, rerun_outcome="created")  # fmt: skip


def _verify(w: World) -> Case:
    args = ["backup-verify", "--subdomain", w.vsrc, "--dest", str(w.vdest)]
    return Case(w.vsrc, args, w.dp, w.vdest)


def _restore_new(w: World) -> Case:
    w.drop_source()
    args = ["restore", "--subdomain", w.src, "--dest", str(w.dest), "--data-dir", str(w.dp)]
    return Case(w.src, args, w.dp)


def _restore_replace(w: World) -> Case:
    db = naming.db_name(w.src)
    with psycopg.connect(w.pg_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is None:
            made = w.run(["restore", "--subdomain", w.src, "--dest", str(w.dest),
                          "--data-dir", str(w.dp)])  # fmt: skip
            assert made.rc == 0, made.output
        # A tenant that has moved on since the set: --replace must swap it.
        marker.write(conn, db, marker.Marker("tenant", "complete", markers.tenant(w.src)))
    args = ["restore", "--subdomain", w.src, "--dest", str(w.dest), "--data-dir", str(w.dp),
            "--replace"]  # fmt: skip
    return Case(w.src, args, w.dp)


def _restore_copy(w: World) -> Case:
    sub = w.token()
    args = ["restore", "--subdomain", w.src, "--to-subdomain", sub, "--as-copy",
            "--dest", str(w.dest), "--data-dir", str(w.dp)]  # fmt: skip
    return Case(sub, args, w.dp)


def _deprovision(w: World) -> Case:
    sub = w.token()
    make_tenant(w.pg_dsn, sub, w.dp, partners=5)
    dest = w.tmp / f"backups-{sub}"
    dest.mkdir()
    args = ["deprovision", "--subdomain", sub, "--project-id", "7", "--tier", "pro",
            "--generation", "3", "--dest", str(dest), "--data-dir", str(w.dp),
            "--stream", f"test:{sub}:events"]  # fmt: skip
    return Case(sub, args, w.dp, dest)


def _same_major(w: World) -> Case:
    sub = w.tenant17(w.tpl17, w.d17)
    args = ["upgrade", "--strategy", "same-major", "--subdomain", sub, "--to-version", "17",
            "--odoo-bin", w.odoo17, "--odoo-config", w.conf17,
            "--data-dir", str(w.d17)]  # fmt: skip
    return Case(sub, args, w.d17)


def _upgrade_run(w: World) -> Case:
    """17 -> 18 on the stand-in in both modes, explicitly.

    The source pass loads OpenUpgrade's framework into Odoo 17, which real-Odoo test mode does
    not have (PLANA_TEST_OPENUPGRADE_PATH is OpenUpgrade 18.0's), and each real OpenUpgrade
    migration of a whole database takes minutes: this file would run five of them (reference,
    two kills, a cut, the queued snapshot). The 17 -> 18 migration against real Odoo belongs to
    the upgrade tests; here the point is the job's convergence after a kill, which the
    stand-in's passes exercise the same way (per-phase markers, snapshot, cutover).
    """
    sub = w.tenant17(w.tpls17, w.ds17)
    args = ["upgrade", "run", "--subdomain", sub, "--from-version", "17", "--to-version", "18",
            "--data-dir", str(w.ds17), "--source-odoo-bin", w.s17,
            "--target-odoo-bin", w.s18, "--upgrade-path", str(w.scripts),
            "--source-odoo-config", str(w.sconf17)]  # fmt: skip
    return Case(sub, args, w.ds17)


JOBS: dict[str, Callable[[World], Case]] = {
    "tenant-db": _tenant_db,
    "template-build": _template_build,
    "environment-db": _env_fresh,
    "environment-db-copy": _env_copy,
    "backup": _backup,
    "backup-verify": _verify,
    "restore": _restore_new,
    "restore-replace": _restore_replace,
    "restore-as-copy": _restore_copy,
    "deprovision": _deprovision,
    "upgrade-same-major": _same_major,
    "upgrade-run": _upgrade_run,
}

# The steps each job is killed at: every step that changes state (tenant-db's own test,
# test_sigkill_anywhere_then_rerun_converges, covers it line by line).
KILLS = [
    ("template-build", "odoo"), ("template-build", "swap"),
    ("environment-db", "clone"), ("environment-db", "publish"),
    ("environment-db-copy", "copy-database"), ("environment-db-copy", "copy-filestore"),
    ("environment-db-copy", "publish"),
    ("backup", "dump"), ("backup", "publish"),
    ("backup-verify", "filestore"), ("backup-verify", "restore"),
    ("backup-verify", "compare"),
    ("restore", "pg_restore"), ("restore", "verify"), ("restore", "swap"),
    ("restore-replace", "swap"),
    ("restore-as-copy", "verify"), ("restore-as-copy", "swap"),
    ("deprovision", "dump"), ("deprovision", "drop"), ("deprovision", "filestore"),
    ("deprovision", "event"),
    ("upgrade-same-major", "same-major"), ("upgrade-same-major", "clone"),
    ("upgrade-same-major", "odoo"), ("upgrade-same-major", "swap"),
    ("upgrade-same-major", "filestore"),
    ("upgrade-run", "snapshot"), ("upgrade-run", "cutover"),
]  # fmt: skip

# Where each job's sessions are cut: a step in the middle, with work done and work left.
TERMINATE = {
    "tenant-db": "filestore",
    "template-build": "verify",
    "environment-db": "neutralise",
    "environment-db-copy": "copy-filestore",
    "backup": "dump",
    "backup-verify": "restore",
    "restore": "verify",
    "restore-replace": "filestore",
    "restore-as-copy": "pg_restore",
    "deprovision": "drop",
    "upgrade-same-major": "odoo",
    "upgrade-run": "prefix",
}


@pytest.fixture(scope="module")
def world(pg_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("kill")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, OWNER_ROLE)
    odoo_target.ensure_role(pg_dsn, TARGET.for_admin(pg_dsn))
    runner = SlowRunner(pg_dsn, redis_url, tmp)
    runner.env["PLANA_TIMEOUT"] = str(int(RUN_TIMEOUT))
    w = World(runner, pg_dsn, tmp)
    yield w
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE strpos(datname, %s) > 0", (w.prefix,)
        ).fetchall()
        for (name,) in rows:
            ident = sql.Identifier(name)
            conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))


def reference(w: World, pg: psycopg.Connection[Any], job: str) -> dict[str, Any]:
    """What an undisturbed run of `job` leaves (computed once per job)."""
    if job not in w.references:
        case = JOBS[job](w)
        done = w.run.run(case.args, case.env)
        assert done.rc == 0, done.output
        w.references[job] = state(pg, case)
    return w.references[job]


def settled(pg: psycopg.Connection[Any], case: Case) -> None:
    """Wait until no statement naming the case's databases still runs on the server: a killed
    job's CREATE DATABASE or pg_restore goes on after the kill, and what it makes meanwhile is
    not something a dry run or inspect did."""
    query = ("SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle'"
             " AND pid <> pg_backend_pid() AND strpos(query, %s) > 0")  # fmt: skip

    def quiet() -> bool:
        row = pg.execute(query, (case.tok,)).fetchone()
        return row is not None and row[0] == 0

    until(quiet, "the killed run's statements never ended")


def planned(w: World, pg: psycopg.Connection[Any], case: Case, why: str) -> list[str]:
    """The job's --dry-run on the state a kill left: planned, and nothing changed by it. Then
    `inspect` of the tenant on that state: read only, and nothing in it no job resolves."""
    settled(pg, case)
    before = state(pg, case)
    dry = w.run.run([*case.args, "--dry-run"], case.env)
    assert dry.rc == 0 and dry.result["outcome"] == "planned", (why, dry.output)
    assert state(pg, case) == before, (why, "the dry run changed something")
    sub = case.args[case.args.index("--subdomain") + 1] if "--subdomain" in case.args else None
    if sub is not None and case.args[0] not in w.inspected:
        # Once per job (the first of its kills): inspect starts every job's preview.
        w.inspected.add(case.args[0])
        where = ["--data-dir", str(case.data_dir)]
        where += ["--dest", str(case.dest)] if case.dest else []
        seen = w.run.run(["inspect", "--subdomain", sub, *where], case.env)
        assert seen.rc == 0, (why, seen.output)
        assert not [p for p in seen.result["plans"].values() if p.get("exit_code") == 70], why
        assert state(pg, case) == before, (why, "inspect changed something")
    return [str(step["step"]) for step in dry.result["steps"]]


def converges(w: World, pg: psycopg.Connection[Any], job: str, case: Case, why: str) -> None:
    want = reference(w, pg, job)
    steps = planned(w, pg, case, why)
    rerun = w.run.run(case.args, case.env)
    # A plan with nothing left means a run that changes nothing.
    assert steps or rerun.result.get("outcome") == "unchanged", (why, steps, rerun.output)
    assert rerun.rc == 0, (why, rerun.output)
    assert state(pg, case) == want, why
    again = w.run.run(case.args, case.env)
    assert again.rc == 0 and again.result["outcome"] == case.rerun_outcome, (why, again.output)


def environment_work(w: World, case: Case) -> str:
    """The work copy environment-db builds for `case`: `{db}__env`."""
    tenant = case.args[case.args.index("--subdomain") + 1]
    return naming.db_name(f"{tenant}--{case.tok}") + "__env"


def waits(pg: psycopg.Connection[Any], query: str, name: str) -> list[int]:
    """Backends whose `query…` naming `name` waits on a lock."""
    rows = pg.execute(
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND wait_event_type = 'Lock'"
        " AND query LIKE %s AND strpos(query, %s) > 0",
        (query + "%", name),
    ).fetchall()
    return sorted(r[0] for r in rows)


def stopped(pid: int) -> list[int]:
    """The processes under `pid` that are stopped (state T)."""
    out = []
    for p in descendants(pid):
        with contextlib.suppress(OSError, IndexError):
            if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                out.append(p)
    return out


def sigkill_in_publish(w: World, pg: psycopg.Connection[Any], pg_dsn: str, case: Case) -> None:
    """environment-db killed inside publish, for certain: its rename waits on our lock.

    publish is a few statements: killed right after its log line, the job could be done
    before the SIGKILL lands (seen under load). So its Odoo stops itself before neutralising
    (the work copy exists then, publish has not begun); the test takes COMMENT ON DATABASE's
    lock on the work copy (connections go through, ALTER DATABASE … RENAME waits for it), lets
    Odoo go on, and kills the job once its rename waits on that lock.
    """
    work = environment_work(w, case)
    w.hold.touch()
    proc = start(w.run, case)
    try:
        with psycopg.connect(pg_dsn) as blocker:
            until(lambda: bool(stopped(proc.pid)), "the neutralise never began")
            comment = pg_database_comment(blocker, work)
            blocker.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(work), sql.Literal(comment)))  # fmt: skip
            for pid in stopped(proc.pid):
                os.kill(pid, signal.SIGCONT)
            read_until(proc, "publish")
            until(lambda: bool(waits(pg, "ALTER DATABASE", work)),
                  "publish's rename never waited")  # fmt: skip
            signal_tree(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            blocker.rollback()
    finally:
        w.hold.unlink(missing_ok=True)
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def sigkill_in_event(w: World, pg: psycopg.Connection[Any], pg_dsn: str, case: Case) -> None:
    """deprovision killed in its `event` step, held there: the step is one XADD, which can be
    over before a kill sent on its step line lands. Redis holds every write for the time
    (`CLIENT PAUSE … WRITE`; reads go on), so the job is still in the step when it is killed."""
    client = redis.Redis.from_url({**w.run.env, **case.env}["PLANA_REDIS_URL"])
    client.client_pause(60_000, all=False)  # all=False: writes only
    try:
        sigkill_at(w.run, case, "event")
    finally:
        client.client_unpause()
        client.close()


# Kills that need the job held in their step (see sigkill_in_publish, sigkill_in_event).
HOLDS: dict[tuple[str, str], Callable[[World, psycopg.Connection[Any], str, Case], None]] = {
    ("environment-db", "publish"): sigkill_in_publish,
    ("environment-db-copy", "publish"): sigkill_in_publish,
    ("deprovision", "event"): sigkill_in_event,
}


@pytest.mark.parametrize(("job", "step"), KILLS, ids=[f"{j}@{s}" for j, s in KILLS])
def test_sigkill_at_a_step_then_rerun_converges(
    world: World, pg: psycopg.Connection[Any], pg_dsn: str, job: str, step: str
) -> None:
    reference(world, pg, job)
    case = JOBS[job](world)
    held = HOLDS.get((job, step))
    if held is not None:
        held(world, pg, pg_dsn, case)
    else:
        for _ in range(KILL_ATTEMPTS - 1):
            if sigkill_at(world.run, case, step, may_finish=True):
                break
            case = JOBS[job](world)  # it finished first: a fresh case, killed again
        else:
            sigkill_at(world.run, case, step)
    converges(world, pg, job, case, f"killed at {step}")


@pytest.mark.parametrize("job", sorted(TERMINATE))
def test_backends_terminated_mid_job_exit_75_then_rerun_converges(
    world: World, pg: psycopg.Connection[Any], job: str
) -> None:
    reference(world, pg, job)
    case = JOBS[job](world)
    step = TERMINATE[job]
    proc = start(world.run, case)
    try:
        read_until(proc, step)
        # Stopped, the job cannot race ahead: every session it (or a child) holds is cut while
        # it is mid-step, then it goes on and meets the lost connection.
        pids = signal_tree(proc.pid, signal.SIGSTOP)
        ports = local_ports(pids)
        # MATERIALIZED: the filter runs first, so no other session is ever terminated.
        cut = pg.execute(
            "WITH job AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
            " WHERE client_port = ANY(%s) AND pid <> pg_backend_pid())"
            " SELECT pid, pg_terminate_backend(pid) FROM job",
            (ports,),
        ).fetchall()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        assert cut, "the job held no PostgreSQL session"  # its lock session at least
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 75, (step, out[-3000:], err)
    name = case.args[0]
    assert err.strip().splitlines()[-1].startswith(f"plana-job {name}: error: "), err
    assert json.loads(out.strip().splitlines()[-1])["exit_code"] == 75
    converges(world, pg, job, case, f"sessions cut at {step}")


def queued_clones(pg: psycopg.Connection[Any], work: str) -> list[int]:
    """Backends whose CREATE DATABASE of `work` waits on a lock."""
    rows = pg.execute(
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND wait_event_type = 'Lock'"
        " AND query LIKE 'CREATE DATABASE%%' AND strpos(query, %s) > 0",
        (work,),
    ).fetchall()
    return sorted(r[0] for r in rows)


def until(check: Callable[[], bool], what: str) -> None:
    """Wait for server state (never for time): bounded, so a hang fails instead of stalling."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_environment_rerun_ends_the_killed_runs_clone_still_queued_on_the_server(
    world: World, pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    """SIGKILL while CREATE DATABASE `{db}__env` waits: the statement stays queued on the server.

    The re-run must end that orphan before it clones (else both create the same name: 70), and
    then converge.
    """
    reference(world, pg, "environment-db")
    case = _env_fresh(world)
    work = naming.db_name(f"{world.prod}--{case.tok}") + "__env"

    def clones() -> list[int]:
        return queued_clones(pg, work)

    with psycopg.connect(pg_dsn) as blocker:
        # COMMENT ON DATABASE holds the template's object lock until rollback; CREATE DATABASE
        # needs a ShareLock on it, so the job's clone waits.
        blocker.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(world.tpl18),
            sql.Literal(pg_database_comment(blocker, world.tpl18))))  # fmt: skip
        proc = start(world.run, case)
        try:
            until(lambda: len(clones()) == 1, "the clone never waited")
            (orphan,) = clones()
            signal_tree(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            proc.kill()
            proc.communicate()
        rerun = start(world.run, case)
        try:
            # The re-run ends the orphan, then queues its own clone behind the blocker.
            until(lambda: clones() not in ([], [orphan]) and orphan not in clones(),
                  "the killed run's CREATE DATABASE was left running")  # fmt: skip
        except AssertionError:
            rerun.kill()
            raise AssertionError(rerun.communicate()) from None
        finally:
            blocker.rollback()
        out, err = rerun.communicate(timeout=RUN_TIMEOUT)
    assert rerun.returncode == 0, out[-2000:] + err
    assert state(pg, case) == world.references["environment-db"]
    again = world.run(case.args)
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output


def test_upgrade_rerun_ends_the_killed_runs_snapshot_clone_still_queued_on_the_server(
    world: World, pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    """SIGKILL while snapshot's CREATE DATABASE `{db}__up18` waits: the re-run must end it first.

    The blocker holds pg_database in SHARE mode: CREATE DATABASE needs ROW EXCLUSIVE on it, while
    the job's marker writes (pg_shdescription) and reads go through, and the tenant is already
    frozen (its ALTER DATABASE done) when the blocker starts.
    """
    reference(world, pg, "upgrade-run")
    case = _upgrade_run(world)
    work = naming.db_name(case.tok) + "__up18"

    def clones() -> list[int]:
        return queued_clones(pg, work)

    def job_waits(query: str) -> list[int]:
        rows = pg.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE %s AND strpos(query, %s) > 0",
            (query + "%", naming.db_name(case.tok)),
        ).fetchall()
        return [r[0] for r in rows]

    def idle(pid: int) -> bool:
        row = pg.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        return row is not None and row[0] == "idle"

    lock = "LOCK TABLE pg_catalog.pg_database IN SHARE MODE"
    with psycopg.connect(pg_dsn) as blocker:
        blocker.execute(lock)
        proc = start(world.run, case)
        try:
            # The freeze (ALTER DATABASE … ALLOW_CONNECTIONS) waits first. With the job stopped,
            # let that statement finish on the server, lock again, and only then let the job go
            # on: its next statement that needs pg_database is the clone.
            until(lambda: len(job_waits("ALTER DATABASE")) == 1, "the freeze never waited")
            (freeze,) = job_waits("ALTER DATABASE")
            pids = signal_tree(proc.pid, signal.SIGSTOP)
            blocker.rollback()
            until(lambda: idle(freeze), "the freeze did not finish")
            blocker.execute(lock)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            until(lambda: len(clones()) == 1, "the clone never waited")
            (orphan,) = clones()
            signal_tree(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            proc.kill()
            proc.communicate()
        rerun = start(world.run, case)
        try:
            until(lambda: orphan not in clones() and len(clones()) == 1,
                  "the killed run's CREATE DATABASE was left running")  # fmt: skip
        except AssertionError:
            rerun.kill()
            raise AssertionError(rerun.communicate()) from None
        finally:
            blocker.rollback()
        out, err = rerun.communicate(timeout=RUN_TIMEOUT)
    assert rerun.returncode == 0, out[-2000:] + err
    assert state(pg, case) == world.references["upgrade-run"]
    again = world.run.run(case.args, case.env)
    assert again.rc == 0 and again.result["outcome"] == case.rerun_outcome, again.output


def test_session_names_fit_postgres() -> None:
    """The orphan search matches application_name exactly: it must survive the 63-byte cut."""
    long_db = naming.db_name("a" * 30 + "--" + "b" * 20)
    assert len(clone.session_name("environment", long_db).encode()) <= 63
