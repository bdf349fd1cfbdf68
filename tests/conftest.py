"""The suite's fixtures: real PostgreSQL and Redis, and `plana-job` run as a real process.

Services come from PLANA_TEST_PG_DSN / PLANA_TEST_REDIS_URL; without them, from PostgreSQL and
Redis on loopback when they answer (postgres@127.0.0.1:5432, 127.0.0.1:6379 database 15); else
pytest-docker starts docker-compose.test.yml, and with no Docker engine the run stops with one line.
The harness they build on (Runner, the roles, the paths) is tests/support/harness.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

# The helpers under tests/support assert as the tests do: rewritten by pytest, so a failing
# helper reports its values (registered before the first of them is imported, just below).
pytest.register_assert_rewrite("tests.support")

from tests.support.harness import ROOT, Runner  # noqa: E402

# Fixtures several kinds of test share, defined beside the helpers of their topic.
pytest_plugins = ["tests.support.backup", "tests.support.deprovision", "tests.support.tenant_db"]


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


@pytest.fixture
def run_job(pg_dsn: str, redis_url: str, tmp_path: Path) -> Runner:
    return Runner(pg_dsn, redis_url, tmp_path)


