"""Shared test harness: real PostgreSQL and Redis, and `plana-job` run as a real process.

Services come from PLANA_TEST_PG_DSN / PLANA_TEST_REDIS_URL; without them, from PostgreSQL and
Redis on loopback when they answer (postgres@127.0.0.1:5432, 127.0.0.1:6379 database 15); else
pytest-docker starts docker-compose.test.yml, and with no Docker engine the run stops with one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STANDINS = ROOT / "tests" / "support" / "standins"
BACKUP_KEY = "test-backup-key-7c0ffee5bd4e42d1"
# The role the jobs (and the Odoo they run) connect as: LOGIN CREATEDB, not a superuser, as in
# production, and a member of the tenants' owner role OWNER_ROLE (docs/tenant-db.md). Odoo
# refuses the `postgres` database user, and so does its stand-in.
JOB_ROLE = "plana_odoo"
OWNER_ROLE = "plana"
_roles_made: set[str] = set()


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(ROOT / "docker-compose.test.yml")


def _wait(check: Any, timeout: float = 60.0) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError("service did not become ready")


LOOPBACK_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
LOOPBACK_REDIS = "redis://127.0.0.1:6379/15"


def _answers(dsn: str) -> bool:
    psycopg.connect(dsn, connect_timeout=2).close()
    return True


def _answering_pg() -> str | None:
    """PostgreSQL on loopback (as .ci/run and the demo use it), when it answers."""
    try:
        psycopg.connect(LOOPBACK_PG, connect_timeout=2).close()
    except psycopg.Error:
        return None
    return LOOPBACK_PG


def _answering_redis() -> str | None:
    try:
        redis.Redis.from_url(LOOPBACK_REDIS, socket_connect_timeout=2).ping()
    except redis.RedisError:
        return None
    return LOOPBACK_REDIS


def _docker_services(request: pytest.FixtureRequest, what: str) -> Any:
    """pytest-docker's services, or one line saying what the suite needs when there is none."""
    if shutil.which("docker") is None or subprocess.run(
        ["docker", "info"], capture_output=True, check=False, timeout=30
    ).returncode != 0:
        pytest.exit(
            f"tests need PostgreSQL and Redis: {what}, and there is no Docker engine to start"
            " docker-compose.test.yml",
            returncode=2,
        )
    return request.getfixturevalue("docker_services")


@pytest.fixture(scope="session")
def pg_dsn(request: pytest.FixtureRequest) -> str:
    dsn = os.environ.get("PLANA_TEST_PG_DSN") or _answering_pg()
    if not dsn:
        services = _docker_services(
            request, "PLANA_TEST_PG_DSN is unset and nothing answers on 127.0.0.1:5432"
        )
        port = services.port_for("postgres", 5432)
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        _wait(lambda: _answers(dsn))
    return dsn


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("PLANA_TEST_REDIS_URL") or _answering_redis()
    if not url:
        services = _docker_services(
            request, "PLANA_TEST_REDIS_URL is unset and nothing answers on 127.0.0.1:6379"
        )
        port = services.port_for("redis", 6379)
        url = f"redis://127.0.0.1:{port}/15"
        _wait(lambda: redis.Redis.from_url(url).ping())
    return url


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


@pytest.fixture
def uid() -> str:
    """A short unique token for database names and key prefixes (runs never collide)."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def drop_dbs(pg_dsn: str) -> Iterator[list[str]]:
    """Append database names (or LIKE patterns with %) to drop at teardown."""
    names: list[str] = []
    yield names
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for name in names:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (name,)
            ).fetchall()
            for (db,) in rows:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} WITH is_template false").format(sql.Identifier(db))
                )
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
                )


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

    def __call__(self, args: Sequence[str], timeout: float = 120, **env: str) -> JobRun:
        term = Path(env.get("PLANA_TERMINATION_LOG", self.env["PLANA_TERMINATION_LOG"]))
        term.unlink(missing_ok=True)
        proc = subprocess.run(
            [str(BIN / "plana-job"), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        text = term.read_text() if term.exists() else ""
        return JobRun(proc.returncode, proc.stdout, proc.stderr, text)


@pytest.fixture
def run_job(pg_dsn: str, redis_url: str, tmp_path: Path) -> Runner:
    return Runner(pg_dsn, redis_url, tmp_path)


def local_ports(pids: list[int]) -> list[int]:
    """Local TCP ports of the sockets these processes hold: their PostgreSQL sessions."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return sorted(ports)
