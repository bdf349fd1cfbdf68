"""backup, restore and backup-verify against real PostgreSQL and tar, on tenants initialised by
the Odoo under test (tests/support/odoo_target: the stand-in in CI, real Odoo 18 in test mode).

The jobs never run Odoo; the tenants they back up and restore are clones of one database per
module that Odoo built (one real install), each with its copy of Odoo's filestore.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.core import naming
from jobs.ops import marker
from tests.support import odoo_target
from tests.support.backup import (
    add_attachment,
    config,
    make_tenant,
    table_digests,
    tree,
    write_manifest,
)
from tests.support.harness import JOB_ROLE, Runner, job_dsn
from tests.support.untouched import Snapshot

DOMAIN = naming.DEFAULT_BASE_DOMAIN
TARGET = odoo_target.current()
VERSION = 18
# A real install of base+web and the test apps takes minutes on a loaded machine.
BUILD_TIMEOUT = 1800 if TARGET.real else 120
pytestmark = pytest.mark.timeout(3600 if TARGET.real else 300)


@pytest.fixture(scope="module")
def odoo_db(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One database Odoo initialised (base, web, the test apps: their attachments are filestore
    files), as the jobs' role, and its data dir; the tenants are clones of it."""
    TARGET.require(VERSION)
    target = TARGET.for_admin(pg_dsn)
    tmp = tmp_path_factory.mktemp("odoo")
    data_dir = tmp / "odoo-data"
    db = "backup_base_" + uuid.uuid4().hex[:10]
    info = psycopg.conninfo.conninfo_to_dict(job_dsn(pg_dsn))  # Odoo refuses `postgres`
    env = {**target.env(), "PGUSER": str(info["user"])}  # the jobs' role owns the tables
    env.pop("PGPASSWORD", None)  # trust: the job role has none
    modules = ",".join(("base", "web", *odoo_target.APPS))
    try:
        built = subprocess.run(
            [str(target.binary(tmp, VERSION)), "-c", str(target.config(tmp, VERSION)),
             "-d", db, "-i", modules, "--without-demo=all", "--stop-after-init", "--no-http",
             "-D", str(data_dir)],
            env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr[-4000:]
        yield db, naming.filestore(db, data_dir)
    finally:
        drop(pg_dsn, db)


def drop(pg_dsn: str, db: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def sets(dest: Path, sub: str) -> list[str]:
    return sorted(p.name for p in (dest / sub).iterdir())


@pytest.fixture
def tenant(
    pg_dsn: str, odoo_db: tuple[str, Path], uid: str, tmp_path: Path, drop_dbs: list[str]
) -> dict[str, Any]:
    data_dir = tmp_path / "data"
    dest = tmp_path / "backups"
    dest.mkdir()
    drop_dbs.append(f"{uid}%")
    db = make_tenant(pg_dsn, uid, data_dir, base=odoo_db)
    args = ["--subdomain", uid, "--dest", str(dest), "--data-dir", str(data_dir)]
    return {"sub": uid, "db": db, "data_dir": data_dir, "dest": dest, "args": args}


def test_backup_then_restore_gives_back_the_same_rows_and_filestore(
    tenant: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    db, data_dir, dest = tenant["db"], tenant["data_dir"], tenant["dest"]
    before_rows = table_digests(pg_dsn, db)
    before_files = tree(naming.filestore(db, data_dir))
    secret = config(pg_dsn, db)["database.secret"]

    made = run_job(["backup", *tenant["args"]])
    assert made.rc == 0, made.output
    assert made.result["outcome"] == "created"
    set_dir = dest / tenant["sub"] / made.result["set"]
    manifest = json.loads((set_dir / "manifest.json").read_text())
    assert manifest["odoo"]["base_version"] == "18.0.1.3"
    assert manifest["tables"]["public.res_partner"]["rows"] >= 50
    assert manifest["filestore"]["files"] == len(before_files)
    for rel, meta in manifest["files"].items():
        assert hashlib.sha256((set_dir / rel).read_bytes()).hexdigest() == meta["sha256"]
    started = sorted(line["child"] for line in made.logs if line.get("event") == "started")
    assert started == ["pg_dump"]  # in the job's log; the filestore is archived in-process

    # Lose the tenant entirely, then restore it from the set.
    drop(pg_dsn, db)
    subprocess.run(["rm", "-rf", str(naming.filestore(db, data_dir))], check=True)
    restored = run_job(["restore", *tenant["args"]])
    assert restored.rc == 0, restored.output
    assert restored.result["outcome"] == "created"
    assert table_digests(pg_dsn, db) == before_rows
    assert tree(naming.filestore(db, data_dir)) == before_files
    assert config(pg_dsn, db)["database.secret"] == secret  # the same tenant, not a copy
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        mark = marker.read(conn, db)
        assert mark is not None and mark.kind == "tenant"
        assert mark.data["restored_from"] == made.result["set"]
        leftovers = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (db + "\\_\\_%",)
        ).fetchall()
    assert leftovers == []

    again = run_job(["restore", *tenant["args"]])
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output


def test_restore_as_copy_gets_its_own_secret_and_uuid(
    tenant: dict[str, Any], run_job: Runner, pg_dsn: str, uid: str
) -> None:
    assert run_job(["backup", *tenant["args"]]).rc == 0
    copy_sub = uid + "-copy"
    refused = run_job(["restore", *tenant["args"], "--to-subdomain", copy_sub])
    assert refused.rc == 64 and "to-subdomain" in refused.stderr
    assert not (tenant["data_dir"] / "filestore" / naming.db_name(copy_sub)).exists()

    done = run_job(["restore", *tenant["args"], "--to-subdomain", copy_sub, "--as-copy"])
    assert done.rc == 0, done.output
    original, copy = config(pg_dsn, tenant["db"]), config(pg_dsn, naming.db_name(copy_sub))
    assert copy["database.secret"] != original["database.secret"]
    assert copy["database.uuid"] != original["database.uuid"]
    assert copy["web.base.url"] == f"https://{copy_sub}.{DOMAIN}"
    assert original["database.secret"] not in done.output
    skip = ("ir_config_parameter",)
    assert table_digests(pg_dsn, naming.db_name(copy_sub), skip) == table_digests(
        pg_dsn, tenant["db"], skip
    )


def test_restore_replace_swaps_and_drops_the_old_database(
    tenant: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    db = tenant["db"]
    assert run_job(["backup", *tenant["args"]]).rc == 0
    before = table_digests(pg_dsn, db)
    with psycopg.connect(pg_dsn, dbname=db, autocommit=True) as conn:
        conn.execute("DELETE FROM res_partner WHERE email LIKE '%%@x.test'")  # the accident
    stray = add_attachment(tenant["data_dir"], db, b"written after the backup")

    refused = run_job(["restore", *tenant["args"]])
    assert refused.rc == 65 and "--replace" in refused.stderr
    done = run_job(["restore", *tenant["args"], "--replace"])
    assert done.rc == 0 and done.result["outcome"] == "updated", done.output
    assert table_digests(pg_dsn, db) == before
    assert stray not in {Path(p).name for p in tree(naming.filestore(db, tenant["data_dir"]))}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert db in names and db + "__old" not in names and db + "__rst" not in names
    assert not list((tenant["data_dir"] / "filestore").glob(".*"))


def test_restore_refuses_a_database_that_is_not_ours(
    tenant: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    assert run_job(["backup", *tenant["args"]]).rc == 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'someone else'").format(
            sql.Identifier(tenant["db"])))  # fmt: skip
    before = table_digests(pg_dsn, tenant["db"])
    done = run_job(["restore", *tenant["args"], "--replace"])
    assert done.rc == 65, done.output
    assert table_digests(pg_dsn, tenant["db"]) == before
    refused = run_job(["backup", *tenant["args"]])
    assert refused.rc == 65 and "marker" in refused.stderr


def test_backup_verify_passes_a_good_set_and_fails_a_flipped_byte(
    tenant: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    made = run_job(["backup", *tenant["args"]])
    assert made.rc == 0, made.output
    ok = run_job(["backup-verify", *tenant["args"][:4]])
    assert ok.rc == 0 and ok.result["verified"] is True, ok.output
    assert any(line.get("child") == "pg_restore" for line in ok.logs)

    dump = tenant["dest"] / tenant["sub"] / made.result["set"] / "db.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    bad = run_job(["backup-verify", *tenant["args"][:4]])
    assert bad.rc == 65, bad.output
    assert "db.dump: sha256 mismatch" in bad.result["error"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (tenant["db"] + "__vfy",)
        ).fetchone()


def test_backup_verify_catches_a_manifest_that_promises_other_rows(
    tenant: dict[str, Any], run_job: Runner
) -> None:
    made = run_job(["backup", *tenant["args"]])
    set_dir = tenant["dest"] / tenant["sub"] / made.result["set"]
    manifest = json.loads((set_dir / "manifest.json").read_text())
    manifest["tables"]["public.res_partner"]["rows"] += 1
    manifest["odoo"]["base_version"] = "18.0.1.2"
    write_manifest(set_dir, manifest)  # signed with the key: only the restore can tell
    bad = run_job(["backup-verify", *tenant["args"][:4]])
    assert bad.rc == 65
    assert "res_partner" in bad.result["error"] and "18.0.1.2" in bad.result["error"]


def test_backup_with_parallel_jobs_writes_a_directory_dump_that_restores(
    tenant: dict[str, Any], run_job: Runner
) -> None:
    made = run_job(["backup", *tenant["args"], "--jobs", "2"])
    assert made.rc == 0, made.output
    manifest = json.loads(
        (tenant["dest"] / tenant["sub"] / made.result["set"] / "manifest.json").read_text()
    )
    assert manifest["dump"]["format"] == "directory"
    assert any(name.startswith("db.dir/") for name in manifest["files"])
    ok = run_job(["backup-verify", *tenant["args"][:4], "--jobs", "2"])
    assert ok.rc == 0, ok.output


def dump_waits(pg_dsn: str, db: str) -> bool:
    """pg_dump of `db` is waiting for a lock (the blocker's)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = 'pg_dump' AND wait_event_type = 'Lock'",
            (db,),
        ).fetchone()
    return bool(row and row[0])


def test_a_killed_backup_leaves_only_a_partial_that_the_next_run_removes(
    tenant: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    # An exclusive lock held elsewhere parks pg_dump midway; then the pod is SIGKILLed.
    blocker = psycopg.connect(pg_dsn, dbname=tenant["db"])
    blocker.execute("LOCK TABLE res_partner IN ACCESS EXCLUSIVE MODE")
    tdir = tenant["dest"] / tenant["sub"]
    proc = run_job.popen(["backup", *tenant["args"]])
    try:
        # Synchronise on the server, not on time: pg_dump waits for the blocker's lock.
        until = time.monotonic() + 60
        while not (dump_waits(pg_dsn, tenant["db"]) and tdir.is_dir()
                   and any(p.name.endswith(".partial") for p in tdir.iterdir())):  # fmt: skip
            assert time.monotonic() < until and proc.poll() is None, "pg_dump never waited"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        blocker.close()
    names = sets(tenant["dest"], tenant["sub"])
    assert len(names) == 1 and names[0].endswith(".partial")
    assert not (tdir / names[0] / "manifest.json").exists()

    done = run_job(["backup", *tenant["args"]])
    assert done.rc == 0, done.output
    assert sets(tenant["dest"], tenant["sub"]) == [done.result["set"]]


def test_bad_input_is_refused_before_any_side_effect(
    tenant: dict[str, Any], run_job: Runner, tmp_path: Path
) -> None:
    for job in ("backup", "backup-verify", "restore"):
        no_dest = run_job([job, "--subdomain", tenant["sub"]])
        assert no_dest.rc == 64, no_dest.output
        assert "--dest / PLANA_BACKUP_DEST: is required" in no_dest.stderr
    bad_sub = run_job(["backup", *tenant["args"][2:], "--subdomain", "Not_A_Label"])
    assert bad_sub.rc == 64 and "subdomain" in bad_sub.stderr
    missing = run_job(["backup", *tenant["args"][:2], "--dest", str(tmp_path / "nope")])
    assert missing.rc == 78
    bad_set = run_job(["restore", *tenant["args"], "--set", "yesterday"])
    assert bad_set.rc == 64 and "set" in bad_set.stderr
    assert not any((tenant["dest"]).iterdir())


def test_log_lines_from_the_archiver_and_the_counter_carry_the_jobs_context(
    tenant: dict[str, Any], run_job: Runner
) -> None:
    # Both run in threads beside pg_dump (jobs.core.background): their lines must say which
    # job, which tenant and which step they belong to, as the job's own lines do.
    made = run_job(["backup", *tenant["args"]])
    assert made.rc == 0, made.output
    for event in ("filestore archived", "rows counted"):
        lines = [line for line in made.logs if line.get("event") == event]
        assert len(lines) == 1, (event, made.output)
        assert lines[0]["job"] == "backup"
        assert lines[0]["tenant"] == tenant["sub"]
        assert lines[0]["step"] == "dump"
    archived = next(line for line in made.logs if line.get("event") == "filestore archived")
    assert archived["files"] == made.result["filestore_files"] >= 1


# Members of the large filestore below: each costs the archiver an open, an fstat, a header and
# a sendfile, so archiving them all takes seconds, while making them (hard links) is cheap.
BIG_FILES = 150_000


def big_filestore(data_dir: Path, db: str, files: int = BIG_FILES) -> int:
    """Add `files` small attachments (hard links of 256 distinct ones) to `db`'s filestore;
    returns the size `filestore.tar` will have with them and what was already there."""
    fs = naming.filestore(db, data_dir)
    blobs = fs.parent / f".{db}.blobs"  # outside the tenant's filestore: not archived
    blobs.mkdir()
    for i in range(files):
        sub = fs / f"{i % 256:02x}"
        blob = blobs / sub.name
        if i < 256:
            sub.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(os.urandom(100))
        os.link(blob, sub / f"{i:040x}")
    total = 0
    for p in fs.rglob("*"):
        if p.is_file():
            total += 512 + -(-p.stat().st_size // 512) * 512
    return total + 1024  # the end-of-archive blocks (padded further to a record)


def test_sigterm_during_a_backup_stops_the_archiver_and_exits_75_promptly(
    tenant: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    data_dir, tdir = tenant["data_dir"], tenant["dest"] / tenant["sub"]
    full_size = big_filestore(data_dir, tenant["db"])
    # pg_dump is held on a table lock, so the job is in its dump step (the archiver beside it)
    # when the SIGTERM comes, whatever the machine's speed.
    blocker = psycopg.connect(pg_dsn, dbname=tenant["db"])
    blocker.execute("LOCK TABLE res_partner IN ACCESS EXCLUSIVE MODE")
    proc = run_job.popen(["backup", *tenant["args"]])
    try:
        until = time.monotonic() + 120
        seen: list[int] = []
        # Synchronise on state: pg_dump waits, and the archive exists and has grown since.
        while len(seen) < 2 or seen[-1] <= seen[0] or not dump_waits(pg_dsn, tenant["db"]):
            assert time.monotonic() < until and proc.poll() is None, "the archive never grew"
            partial = [p for p in tdir.iterdir() if p.name.endswith(".partial")] \
                if tdir.is_dir() else []  # fmt: skip
            tar = partial[0] / "filestore.tar" if partial else None
            if tar is not None and tar.is_file() and tar.stat().st_size > 0:
                seen.append(tar.stat().st_size)
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
        stopped_s = time.monotonic() - sent
    finally:
        blocker.close()
    assert proc.returncode == 75, out + err
    assert json.loads(out.strip().splitlines()[-1])["outcome"] == "failed"
    # Nothing published: only the partial, without manifest, its archive cut short.
    names = sets(tenant["dest"], tenant["sub"])
    assert len(names) == 1 and names[0].endswith(".partial"), names
    assert not (tdir / names[0] / "manifest.json").exists()
    assert (tdir / names[0] / "filestore.tar").stat().st_size < full_size

    started = time.monotonic()
    done = run_job(["backup", *tenant["args"]], timeout=600)
    full_s = time.monotonic() - started
    assert done.rc == 0, done.output
    assert sets(tenant["dest"], tenant["sub"]) == [done.result["set"]]
    assert (tdir / done.result["set"] / "filestore.tar").stat().st_size >= full_size
    # That the stopped run's archive is cut short (above) is what shows the archiver stopped
    # between files instead of finishing the filestore; the times are reported, not asserted
    # (a loaded machine stretches both: timing belongs in `make bench`).
    print(f"SIGTERM to exit {stopped_s:.2f}s; full backup {full_s:.2f}s")


# --------------------------------------------------------------------------- --dry-run


def untouched(pg_dsn: str, tenant: dict[str, Any], *dbs: str) -> Snapshot:
    """The catalog of the tenant's names, the rows of `dbs`, the backup volume and data dir."""
    return Snapshot.take(
        pg_dsn, databases=dbs or (tenant["db"],), only=(tenant["sub"],),
        roots=(tenant["dest"], tenant["data_dir"]),
    )  # fmt: skip


def planned(run: Any) -> list[str]:
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "planned" and run.result["dry_run"] is True
    return [step["step"] for step in run.result["steps"]]


def test_dry_run_plans_a_backup_and_writes_nothing(
    tenant: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    # A backup never converges (every run takes a new set): fresh, with leftovers, blocked.
    before = untouched(pg_dsn, tenant)
    fresh = run_job(["backup", *tenant["args"], "--dry-run"])
    assert planned(fresh) == ["dump", "publish", "retention"]
    assert fresh.result["retention_deletes"] == [] and fresh.result["set"]
    assert untouched(pg_dsn, tenant).diff(before) == []
    assert not (tenant["dest"] / tenant["sub"]).exists()

    made = run_job(["backup", *tenant["args"]])
    assert made.rc == 0, made.output
    left = tenant["dest"] / tenant["sub"] / "20250101T000000Z.partial"  # a killed run's
    left.mkdir()
    before = untouched(pg_dsn, tenant)
    again = run_job(["backup", *tenant["args"], "--keep-daily", "0", "--keep-weekly", "0",
                     "--keep-monthly", "0"], PLANA_DRY_RUN="1")  # fmt: skip
    assert planned(again) == ["clean", "dump", "publish", "retention"]
    assert again.result["steps"][0]["target"] == left.name
    # The new set will be the newest: the one already there is what retention would delete.
    assert again.result["retention_deletes"] == [made.result["set"]]
    assert untouched(pg_dsn, tenant).diff(before) == [] and left.is_dir()

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'someone else'").format(
            sql.Identifier(tenant["db"])))  # fmt: skip
    before = untouched(pg_dsn, tenant)
    blocked = run_job(["backup", *tenant["args"], "--dry-run"])
    assert blocked.rc == 65 and "marker" in blocked.stderr, blocked.output
    assert untouched(pg_dsn, tenant).diff(before) == []


def test_dry_run_plans_a_verification_and_changes_nothing(
    tenant: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    # Verifying never converges either: every run checks again. Blocked while there is no set.
    args = ["backup-verify", *tenant["args"][:4], "--dry-run"]
    before = untouched(pg_dsn, tenant)
    none = run_job(args)
    assert none.rc == 65 and "no complete backup set" in none.stderr, none.output
    assert untouched(pg_dsn, tenant).diff(before) == []

    assert run_job(["backup", *tenant["args"]]).rc == 0
    scratch = tenant["db"] + "__vfy"
    before = untouched(pg_dsn, tenant)
    ok = run_job(args)
    assert planned(ok) == ["checksums", "filestore", "restore", "compare"]
    assert ok.result["scratch"] == scratch
    assert untouched(pg_dsn, tenant).diff(before) == []

    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # what a kill in CREATE DATABASE leaves
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(scratch), sql.Identifier(JOB_ROLE)))  # fmt: skip
    before = untouched(pg_dsn, tenant, tenant["db"], scratch)
    left = run_job(args)
    assert planned(left) == ["checksums", "filestore", "drop-scratch", "restore", "compare"]
    assert untouched(pg_dsn, tenant, tenant["db"], scratch).diff(before) == []


def test_dry_run_plans_a_restore_and_changes_nothing(
    tenant: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    made = run_job(["backup", *tenant["args"]])
    assert made.rc == 0, made.output
    before = untouched(pg_dsn, tenant)
    blocked = run_job(["restore", *tenant["args"], "--dry-run"])  # the tenant exists
    assert blocked.rc == 65 and "--replace" in blocked.stderr, blocked.output
    assert untouched(pg_dsn, tenant).diff(before) == []

    copy = tenant["sub"] + "-dry"  # a fresh target: nothing of it exists yet
    args = ["restore", *tenant["args"], "--to-subdomain", copy, "--as-copy"]
    before = untouched(pg_dsn, tenant)
    fresh = run_job([*args, "--dry-run"])
    assert planned(fresh) == ["check-set", "pg_restore", "verify", "filestore", "swap", "publish"]
    assert fresh.result["set"] == made.result["set"]
    assert fresh.result["database"] == naming.db_name(copy)
    assert untouched(pg_dsn, tenant).diff(before) == []

    assert run_job(args).rc == 0
    dbs = (tenant["db"], naming.db_name(copy))
    before = untouched(pg_dsn, tenant, *dbs)
    converged = run_job([*args, "--dry-run"])
    assert planned(converged) == []
    assert untouched(pg_dsn, tenant, *dbs).diff(before) == []
