"""The suite's harness: `plana-job` run as a real process (connected as the jobs' own role), its
result, and the roles and paths every kind of test shares. The root conftest's fixtures build on
it; test modules import it from here (never from one another).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STANDINS = ROOT / "tests" / "support" / "standins"
BACKUP_KEY = "test-backup-key-7c0ffee5bd4e42d1"
# The role the jobs (and the Odoo they run) connect as: LOGIN CREATEDB, not a superuser, as in
# production, and a member of the tenants' owner role OWNER_ROLE (docs/tenant-db.md). Odoo
# refuses the `postgres` database user, and so does its stand-in.
JOB_ROLE = "plana_odoo"
OWNER_ROLE = "plana"
_roles_made: set[str] = set()


def _make_role(conn: psycopg.Connection[Any], role: str, options: str) -> None:
    try:
        conn.execute(sql.SQL("CREATE ROLE {} " + options).format(sql.Identifier(role)))
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        pass  # another test run (other suites share the cluster) made it first


def ensure_job_role(pg_dsn: str) -> None:
    """Create JOB_ROLE, a member of OWNER_ROLE, once per cluster (left for other runs)."""
    if pg_dsn in _roles_made:
        return
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _make_role(conn, OWNER_ROLE, "NOLOGIN")
        _make_role(conn, JOB_ROLE, "LOGIN CREATEDB")
        member = conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (JOB_ROLE, OWNER_ROLE))
        if not member.fetchone() == (True,):
            try:
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(
                        sql.Identifier(OWNER_ROLE), sql.Identifier(JOB_ROLE)
                    )
                )
            except (psycopg.errors.UniqueViolation, psycopg.errors.InternalError):
                pass  # granted by a concurrent run ("tuple concurrently updated")
    _roles_made.add(pg_dsn)


def job_dsn(pg_dsn: str) -> str:
    """`pg_dsn` (the tests' superuser) as the jobs' own role, JOB_ROLE."""
    ensure_job_role(pg_dsn)
    return psycopg.conninfo.make_conninfo(pg_dsn, user=JOB_ROLE)


def database_names(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


@dataclass
class JobRun:
    rc: int
    stdout: str
    stderr: str
    termination: str

    @property
    def result(self) -> dict[str, Any]:
        """The result object: the last stdout line."""
        lines = self.stdout.strip().splitlines()
        assert lines, f"no stdout; stderr: {self.stderr}"
        obj: dict[str, Any] = json.loads(lines[-1])
        return obj

    @property
    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.strip().splitlines()[:-1]]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr + self.termination


def job_env(pg_dsn: str, redis_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANA_", "PG"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PLANA_PG_DSN=pg_dsn,
        PLANA_REDIS_URL=redis_url,
        PLANA_LOG_FORMAT="json",
        PLANA_TERMINATION_LOG=str(tmp / "termination-log"),
        PLANA_TIMEOUT="60",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Runner:
    """Runs `plana-job` as a subprocess, the way a pod does: connected as JOB_ROLE."""

    def __init__(self, pg_dsn: str, redis_url: str, tmp: Path) -> None:
        self.tmp = tmp
        self.env = job_env(job_dsn(pg_dsn), redis_url, tmp)
        # Backup sets are signed: every job that writes or reads one gets a key by default.
        self.backup_key = tmp / "backup-key"
        self.backup_key.write_text(BACKUP_KEY + "\n")
        self.env["PLANA_BACKUP_KEY_FILE"] = str(self.backup_key)

    def popen(self, args: Sequence[str], **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(BIN / "plana-job"), *args],
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # How long a test waits for one job, in seconds (a subclass for real Odoo waits longer).
    timeout: float = 120

    def __call__(self, args: Sequence[str], timeout: float | None = None, **env: str) -> JobRun:
        return self.run(args, env, timeout)

    def run(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> JobRun:
        """The job with `env` over the runner's environment. The form for an environment held
        in a dict: `run_job(args, **env)` would let its keys fill `timeout` as well."""
        env = dict(env or {})
        term = Path(env.get("PLANA_TERMINATION_LOG", self.env["PLANA_TERMINATION_LOG"]))
        term.unlink(missing_ok=True)
        proc = subprocess.run(
            [str(BIN / "plana-job"), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=self.timeout if timeout is None else timeout,
        )
        text = term.read_text() if term.exists() else ""
        return JobRun(proc.returncode, proc.stdout, proc.stderr, text)
