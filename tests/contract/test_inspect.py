"""`plana-job inspect`: every state a test can make, reported, and nothing touched.

Each case builds a tenant's state by hand in the real PostgreSQL, a data dir and Redis (the
markers a job would have written, leftovers of a killed run, someone else's database, a tampered
backup set), runs the real `plana-job inspect` and checks the report, the exit code and that a
snapshot of the catalog, the files and the Redis keys is the same after as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.ops import marker
from tests.support import markers
from tests.support.harness import Runner
from tests.support.untouched import Snapshot


@pytest.fixture
def domain(uid: str) -> str:
    return f"{uid}.test"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """Where a case's files live (the harness writes its termination log beside it)."""
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def made(pg_dsn: str, drop_dbs: list[str], domain: str) -> Any:
    drop_dbs.append(f"%{domain}%")

    def make(name: str, comment: str | None) -> str:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            if comment is not None:
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(name), sql.Literal(comment)
                    )
                )
        return name

    return make


def _inspect(run_job: Runner, domain: str, *extra: str, **env: str) -> Any:
    return run_job.run(["inspect", "--subdomain", "acme", "--base-domain", domain, "--format",
                        "json", *extra], env)  # fmt: skip


def _snapshot(pg_dsn: str, domain: str, roots: list[Path], redis_url: str, uid: str) -> Snapshot:
    return Snapshot.take(pg_dsn, only=(domain,), roots=roots, redis_url=redis_url, prefix=uid)


def test_a_tenant_with_nothing_yet(
    run_job: Runner, pg_dsn: str, redis_url: str, uid: str, domain: str, state: Path
) -> None:
    data = state / "data"
    before = _snapshot(pg_dsn, domain, [state], redis_url, uid)
    run = _inspect(run_job, domain, "--data-dir", str(data))
    assert run.rc == 0, run.output
    report = run.result
    assert report["outcome"] == "unchanged"
    assert report["databases"] == [] and report["filestores"] == []
    assert report["upgrade"] == {"status": "none"}
    assert report["problems"] == []
    # Every job is planned or says what it needs; none failed to plan on an empty tenant.
    assert set(report["plans"]) >= {"emit-event"}
    for name, planned in report["plans"].items():
        assert "error" not in planned, (name, planned)
    assert report["plans"]["emit-event"] == {
        "needs": "--project-id / PLANA_PROJECT_ID, --tier / PLANA_TIER"
    }
    assert _snapshot(pg_dsn, domain, [state], redis_url, uid).diff(before) == []


def test_a_job_is_planned_from_the_environment_as_in_its_pod(
    run_job: Runner, redis_url: str, uid: str, domain: str, state: Path
) -> None:
    stream = f"{uid}:events"
    env = {"PLANA_PROJECT_ID": "23", "PLANA_TIER": "pro", "PLANA_EVENTS_STREAM": stream}
    before = _inspect(run_job, domain, "--data-dir", str(state), "--redis-url", redis_url,
                      **env)  # fmt: skip
    assert before.rc == 0, before.output
    assert [s["step"] for s in before.result["plans"]["emit-event"]["steps"]] == ["xadd"]
    assert before.result["events"] == []

    emitted = run_job.run(["emit-event", "--subdomain", "acme", "--base-domain", domain], env)
    assert emitted.rc == 0, emitted.output
    after = _inspect(run_job, domain, "--data-dir", str(state), "--redis-url", redis_url,
                     **env)  # fmt: skip
    assert after.rc == 0, after.output
    assert after.result["plans"]["emit-event"]["steps"] == []
    (event,) = after.result["events"]
    assert event["type"] == "client.provisioned"
    assert event["entry_id"] == emitted.result["entry_id"]


def test_databases_with_their_markers_and_leftovers(
    run_job: Runner, pg_dsn: str, redis_url: str, uid: str, domain: str, state: Path, made: Any
) -> None:
    live = made(f"acme.{domain}", marker.Marker(marker.Kind.TENANT, "complete",
                                                 markers.tenant("acme")).encode())  # fmt: skip
    hop = {"subdomain": "acme", "from": 17, "to": 18, "phases": ["snapshot", "source-pass"]}
    work = made(f"acme.{domain}__up18", marker.Marker(marker.Kind.UPGRADE_WORK, "source-pass",
                                                      hop).encode())  # fmt: skip
    env = made(f"acme--staging.{domain}__env", None)
    made(f"acmex.{domain}", None)  # not acme's: never listed
    data = state / "data"
    fs = data / "filestore"
    (fs / live / "ab").mkdir(parents=True)
    (fs / live / "ab" / "abcdef").write_bytes(b"x" * 10)
    (fs / f".{live}.clone.partial").mkdir()
    (fs / f"acmex.{domain}").mkdir()
    before = _snapshot(pg_dsn, domain, [state], redis_url, uid)
    run = _inspect(run_job, domain, "--data-dir", str(data))
    assert run.rc == 0, run.output
    by_name = {d["name"]: d for d in run.result["databases"]}
    assert sorted(by_name) == sorted([live, work, env])
    assert (by_name[live]["role"], by_name[live]["state"]) == ("live", "complete")
    assert (by_name[work]["role"], by_name[work]["state"]) == ("upgrade work copy", "source-pass")
    assert (by_name[env]["role"], by_name[env]["environment"]) == ("unmarked", "staging")
    assert run.result["upgrade"]["status"] == "in progress"
    assert run.result["upgrade"]["work"]["phase"] == "source-pass"
    stores = {f["name"]: f for f in run.result["filestores"]}
    assert sorted(stores) == sorted([live, f".{live}.clone.partial"])
    assert (stores[live]["files"], stores[live]["bytes"]) == (1, 10)
    assert stores[f".{live}.clone.partial"]["leftover"] == "clone.partial"
    assert _snapshot(pg_dsn, domain, [state], redis_url, uid).diff(before) == []


OTHERS = marker.Marker(marker.Kind.TENANT, "cloned", markers.tenant("victim")).encode()
# This tenant's kind and subdomain, but not as tenant-db writes it.
UNFIT = marker.Marker(marker.Kind.TENANT, "cloned", markers.tenant("acme", project_id="7")).encode()


@pytest.mark.parametrize("comment", ["hand-made by an operator: do not drop", OTHERS, UNFIT],
                         ids=["foreign-comment", "another-tenants-marker",
                              "a-marker-unfit-for-its-schema"])  # fmt: skip
def test_someone_elses_database_in_the_namespace_is_65_naming_it(
    run_job: Runner,
    pg_dsn: str,
    redis_url: str,
    uid: str,
    domain: str,
    state: Path,
    made: Any,
    comment: str,
) -> None:
    foreign = made(f"acme.{domain}__new", comment)
    before = _snapshot(pg_dsn, domain, [state], redis_url, uid)
    run = _inspect(run_job, domain, "--data-dir", str(state))
    assert run.rc == 65, run.output
    assert foreign in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert any(foreign in p for p in run.result["problems"])
    (db,) = run.result["databases"]
    assert db["role"] == "not ours" and db["problem"]
    assert _snapshot(pg_dsn, domain, [state], redis_url, uid).diff(before) == []


def test_a_marker_unfit_for_its_schema_is_named_and_is_no_upgrade_of_the_tenant(
    run_job: Runner, pg_dsn: str, redis_url: str, uid: str, domain: str, state: Path, made: Any
) -> None:
    made(f"acme.{domain}", marker.Marker(marker.Kind.TENANT, "complete",
                                         markers.tenant("acme")).encode())  # fmt: skip
    body = {"subdomain": "acme", "from": "17", "to": 18}  # this tenant's hop, `from` as text
    work = made(f"acme.{domain}__up18",
                marker.Marker(marker.Kind.UPGRADE_WORK, "source-pass", body).encode())
    before = _snapshot(pg_dsn, domain, [state], redis_url, uid)
    run = _inspect(run_job, domain, "--data-dir", str(state))
    assert run.rc == 65, run.output
    why = ("an upgrade-work marker that does not fit its schema"
           " (field 'from' is text, not an integer)")
    assert run.result["problems"] == [f"database {work} is not ours: {why}"]
    assert f"database {work} is not ours: {why}" in run.stderr
    by_name = {d["name"]: d for d in run.result["databases"]}
    assert by_name[work]["role"] == "not ours" and by_name[work]["problem"] == why
    assert by_name[f"acme.{domain}"]["role"] == "live"
    assert run.result["upgrade"] == {"status": "none"}  # not this tenant's upgrade
    assert _snapshot(pg_dsn, domain, [state], redis_url, uid).diff(before) == []


def test_a_symlinked_filestore_is_reported_and_not_followed(
    run_job: Runner, pg_dsn: str, redis_url: str, uid: str, domain: str, state: Path
) -> None:
    secret = state / "elsewhere"
    (secret / "sub").mkdir(parents=True)
    (secret / "sub" / "file").write_bytes(b"y" * 99)
    fs = state / "data" / "filestore"
    fs.mkdir(parents=True)
    (fs / f"acme.{domain}").symlink_to(secret)
    run = _inspect(run_job, domain, "--data-dir", str(state / "data"))
    assert run.rc == 65, run.output
    (store,) = run.result["filestores"]
    assert (store["kind"], store["files"], store["bytes"]) == ("symlink", 0, 0)


def test_backup_sets_are_checked_not_trusted(
    run_job: Runner, pg_dsn: str, redis_url: str, uid: str, domain: str, state: Path
) -> None:
    dest = state / "backups"
    tdir = dest / "acme"
    (tdir / "20260101T000000Z").mkdir(parents=True)
    (tdir / "20260101T000000Z" / "manifest.json").write_text(json.dumps({"format": 1}))
    (tdir / "20260101T000000Z" / "manifest.sig").write_text("0" * 64 + "\n")
    (tdir / "20260102T000000Z.partial").mkdir()
    before = _snapshot(pg_dsn, domain, [state], redis_url, uid)
    unkeyed = _inspect(run_job, domain, "--data-dir", str(state), "--dest", str(dest),
                       PLANA_BACKUP_KEY_FILE="")  # fmt: skip
    assert unkeyed.rc == 0, unkeyed.output
    backups = unkeyed.result["backups"]
    assert [(s["name"], s["status"]) for s in backups["sets"]] == [
        ("20260101T000000Z", "unverified")
    ]
    assert backups["leftovers"] == ["20260102T000000Z.partial"]
    assert backups["newest_valid"] is None
    # With the key (the harness's PLANA_BACKUP_KEY_FILE), the forged signature is found.
    keyed = _inspect(run_job, domain, "--data-dir", str(state), "--dest", str(dest))
    (checked,) = keyed.result["backups"]["sets"]
    assert checked["status"] not in ("valid", "unverified")
    assert keyed.rc == 65, keyed.output
    assert _snapshot(pg_dsn, domain, [state], redis_url, uid).diff(before) == []


def test_an_unreachable_database_is_reported_and_the_rest_still_shown(
    run_job: Runner, uid: str, domain: str, state: Path
) -> None:
    fs = state / "data" / "filestore" / f"acme.{domain}"
    fs.mkdir(parents=True)
    run = _inspect(run_job, domain, "--data-dir", str(state / "data"), "--timeout", "2",
                   "--pg-dsn", "postgresql://nobody@127.0.0.1:1/x")  # fmt: skip
    assert run.rc == 75, run.output
    assert "databases" in run.result["errors"]
    assert [f["name"] for f in run.result["filestores"]] == [f"acme.{domain}"]
