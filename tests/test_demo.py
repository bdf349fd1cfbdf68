"""`make demo` end to end: the newcomer's first command must work on a machine without Docker.

It runs as `make demo` does (`python -m demo`), against the suite's PostgreSQL and Redis, a real
Synapse and the suite's local receivers, with the Odoo stand-in; the printed tables must show
the chain provisioning the tenant, then changing nothing on the second run; and the demo must
leave nothing behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import redis

from tests.conftest import ROOT

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
