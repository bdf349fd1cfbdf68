"""`make demo` end to end: the newcomer's first command must work on a machine without Docker.

It runs as `make demo` does (`python -m demo`), against the suite's PostgreSQL and Redis, a real
Synapse and the suite's local receivers, with the Odoo stand-in; the printed tables must show
the chain provisioning the tenant, then changing nothing on the second run; and the demo must
leave nothing behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.support.harness import ROOT

STEPS = ["template-build", "tenant-db", "matrix-room", "account-webhook", "erp-callback",
         "emit-event"]  # fmt: skip


def tables(output: str) -> list[list[dict[str, str]]]:
    """The demo's tables: one list of {job, outcome, exit} rows per `== …` title."""
    out: list[list[dict[str, str]]] = []
    for line in output.splitlines():
        if line.startswith("== "):
            out.append([])
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if out and len(cells) == 6 and cells[0].isdigit():
            out[-1].append({"job": cells[1], "outcome": cells[2], "exit": cells[3]})
    return out


def test_demo_provisions_then_changes_nothing(
    pg_dsn: str, redis_url: str, uid: str, pg: psycopg.Connection[Any]
) -> None:
    sub = f"demo-{uid}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANA_", "PG"))}
    env.update(
        PLANA_DEMO_PG_DSN=pg_dsn,
        PLANA_DEMO_REDIS_URL=redis_url,
        PLANA_DEMO_ODOO="standin",  # what a machine without Docker gets
        PYTHONUNBUFFERED="1",
    )
    if os.environ.get("PLANA_TEST_SYNAPSE_PYTHON"):
        env["PLANA_TEST_SYNAPSE_PYTHON"] = os.environ["PLANA_TEST_SYNAPSE_PYTHON"]
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--subdomain", sub],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "TEST STAND-IN" in done.stdout and "NOT Odoo" in done.stdout  # the visible notice

    first, second = tables(done.stdout)
    assert [r["job"] for r in first] == STEPS, output
    assert [r["job"] for r in second] == STEPS, output
    assert all(r["exit"] == "0" for r in first + second), output
    assert all(r["outcome"] in ("created", "updated") for r in first), output
    assert {r["job"]: r["outcome"] for r in first}["tenant-db"] == "created"
    assert all(r["outcome"] == "unchanged" for r in second), output
    assert "webhook messages delivered (distinct webhook-id): 1;" in done.stdout, output
    assert "demo OK" in done.stdout

    # Nothing left behind: databases (template, tenant, work copies), stream, work dir.
    names = [r[0] for r in pg.execute("SELECT datname FROM pg_database").fetchall()]
    assert not [n for n in names if sub in n or sub.replace("-", "_") in n], names
    client = redis.Redis.from_url(redis_url)
    try:
        assert not client.exists(f"PLANA:events:{sub}")
    finally:
        client.close()
    assert not list(Path("/tmp").glob(f"plana-{sub}-*"))


def _demo_env(pg_dsn: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANA_", "PG"))}
    env.update(PLANA_DEMO_PG_DSN=pg_dsn, PLANA_DEMO_REDIS_URL=redis_url,
               PLANA_DEMO_ODOO="standin", PYTHONUNBUFFERED="1", **extra)  # fmt: skip
    if os.environ.get("PLANA_TEST_SYNAPSE_PYTHON"):
        env["PLANA_TEST_SYNAPSE_PYTHON"] = os.environ["PLANA_TEST_SYNAPSE_PYTHON"]
    return env


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("down", ["postgres", "redis"])
def test_a_service_down_is_one_line_before_anything_starts(
    pg_dsn: str, redis_url: str, uid: str, down: str, tmp_path: Path
) -> None:
    port = _closed_port()
    env = _demo_env(pg_dsn, redis_url, TMPDIR=str(tmp_path))
    if down == "postgres":
        env["PLANA_DEMO_PG_DSN"] = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    else:
        env["PLANA_DEMO_REDIS_URL"] = f"redis://127.0.0.1:{port}/15"
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--subdomain", f"demo-{uid}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    said = done.stderr.strip().splitlines()
    name = "PostgreSQL" if down == "postgres" else "Redis"
    assert len(said) == 1 and said[0].startswith(f"demo: {name} at 127.0.0.1:{port}"), said
    assert list(tmp_path.iterdir()) == []  # no work directory made, nothing started


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_demo_stops_and_removes_everything_it_started(
    pg_dsn: str, redis_url: str, uid: str, pg: psycopg.Connection[Any], signum: int
) -> None:
    sub = f"demo-{uid}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo", "--subdomain", sub],
        cwd=ROOT, env=_demo_env(pg_dsn, redis_url), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # Synapse is up and the first job has run: mid-demo
            seen.append(line)
            if line.startswith("-> tenant-db"):
                break
        assert _processes_mentioning(f"plana-{sub}-"), "Synapse is not running"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    output = "".join(seen) + out + err
    assert proc.returncode == 128 + signum, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert f"demo: stopped by {signal.Signals(signum).name}" in output
    assert "-> template-build" in output and "   template-build: created (exit 0) in" in output
    assert _processes_mentioning(f"plana-{sub}-") == []  # Synapse, jobs, Odoo: all gone
    names = [r[0] for r in pg.execute("SELECT datname FROM pg_database").fetchall()]
    assert not [n for n in names if sub in n or sub.replace("-", "_") in n], names
    assert not list(Path("/tmp").glob(f"plana-{sub}-*"))
