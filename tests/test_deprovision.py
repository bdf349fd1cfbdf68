"""deprovision: final backup, drop, filestore removal, client.deprovisioned once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from jobs import naming
from tests.conftest import Runner
from tests.test_backup import make_tenant, table_digests, tree


@pytest.fixture
def setup(
    pg_dsn: str, redis_url: str, uid: str, tmp_path: Path, drop_dbs: list[str]
) -> Iterator[dict[str, Any]]:
    drop_dbs.append(f"{uid}%")
    data_dir, dest = tmp_path / "data", tmp_path / "backups"
    dest.mkdir()
    db = make_tenant(pg_dsn, uid, data_dir, partners=5)
    stream = f"test:{uid}:events"
    args = ["--subdomain", uid, "--project-id", "7", "--tier", "pro", "--generation", "3",
            "--dest", str(dest), "--data-dir", str(data_dir), "--stream", stream]  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    yield {"sub": uid, "db": db, "data_dir": data_dir, "dest": dest, "stream": stream,
           "args": args, "redis": client}  # fmt: skip
    client.delete(stream, *client.keys(f"{stream}:*"))
    client.close()


def exists(pg_dsn: str, db: str) -> bool:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone())


def test_deprovision_backs_up_drops_and_emits_once(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    db, fs = setup["db"], naming.filestore(setup["db"], setup["data_dir"])
    rows, files = table_digests(pg_dsn, db), tree(fs)

    first = run_job(["deprovision", *setup["args"]])
    assert first.rc == 0, first.output
    assert first.result["outcome"] == "updated"
    assert first.result["removed"] == ["database", "filestore", "event"]
    assert not exists(pg_dsn, db) and not fs.exists()
    final = setup["dest"] / setup["sub"] / first.result["final_backup"]
    assert json.loads((final / "manifest.json").read_text())["final"] is True

    entries = setup["redis"].xrange(setup["stream"])
    assert len(entries) == 1
    fields = {k.decode(): v.decode() for k, v in entries[0][1].items()}
    assert fields["type"] == "client.deprovisioned"
    assert fields["subdomain"] == setup["sub"] and fields["project_id"] == "7"
    assert fields["final_backup"] == first.result["final_backup"]

    second = run_job(["deprovision", *setup["args"]])
    assert second.rc == 0, second.output
    assert second.result["outcome"] == "unchanged"
    assert len(setup["redis"].xrange(setup["stream"])) == 1
    assert sorted(p.name for p in (setup["dest"] / setup["sub"]).iterdir()) == [final.name]

    # The final backup is a real backup: the tenant comes back from it whole.
    back = run_job(["restore", "--subdomain", setup["sub"], "--dest", str(setup["dest"]),
                    "--data-dir", str(setup["data_dir"])])  # fmt: skip
    assert back.rc == 0, back.output
    assert table_digests(pg_dsn, db) == rows and tree(fs) == files


def test_a_database_without_our_marker_is_never_dropped(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    db = setup["db"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(db)))
    files = tree(naming.filestore(db, setup["data_dir"]))
    done = run_job(["deprovision", *setup["args"]])
    assert done.rc == 65, done.output
    assert "marker" in done.stderr
    assert exists(pg_dsn, db)
    assert tree(naming.filestore(db, setup["data_dir"])) == files
    assert not any(setup["dest"].iterdir())
    assert setup["redis"].xlen(setup["stream"]) == 0


def test_a_failed_final_backup_stops_deprovisioning(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    # An upgrade holding a table lock: pg_dump cannot finish, so nothing may be dropped.
    blocker = psycopg.connect(pg_dsn, dbname=setup["db"])
    try:
        blocker.execute("LOCK TABLE res_partner IN ACCESS EXCLUSIVE MODE")
        done = run_job(["deprovision", *setup["args"], "--lock-wait", "0.5"])
    finally:
        blocker.close()
    assert done.rc == 75, done.output
    assert exists(pg_dsn, setup["db"])
    assert naming.filestore(setup["db"], setup["data_dir"]).is_dir()
    assert setup["redis"].xlen(setup["stream"]) == 0
    assert not [p for p in (setup["dest"] / setup["sub"]).iterdir() if "." not in p.name]

    retried = run_job(["deprovision", *setup["args"]])
    assert retried.rc == 0 and not exists(pg_dsn, setup["db"]), retried.output


def test_bad_input_touches_nothing(setup: dict[str, Any], run_job: Runner, pg_dsn: str) -> None:
    bad = run_job(["deprovision", *setup["args"], "--tier", "gold"])
    assert bad.rc == 64 and "tier" in bad.stderr
    no_dest = run_job(["deprovision", "--subdomain", setup["sub"]])
    assert no_dest.rc == 64 and "dest" in no_dest.stderr
    assert exists(pg_dsn, setup["db"])
