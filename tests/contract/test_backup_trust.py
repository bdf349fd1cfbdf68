"""A backup set is untrusted input: signed, schema-checked, of its own tenant, safe to unpack.

Every test tampers with a real set written by `plana-job backup` (real PostgreSQL, tar and the
Odoo stand-in), re-signing it with the test key where the point is something the signature does
not catch (a set of another tenant is validly signed, and so is a hostile manifest written by
whoever holds the key, for the tests' sake).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import tarfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.core import naming
from jobs.ops import marker
from tests.support.backup import (
    add_attachment,
    make_tenant,
    seal,
    table_digests,
    tree,
    verify_args,
    write_manifest,
)
from tests.support.harness import BIN, JOB_ROLE, OWNER_ROLE, Runner


def backup(run_job: Runner, w: dict[str, Any]) -> Path:
    made = run_job(["backup", *w["args"]])
    assert made.rc == 0, made.output
    return Path(w["dest"]) / str(w["sub"]) / str(made.result["set"])


def manifest_of(set_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((set_dir / "manifest.json").read_text())
    return data


def marker_of(pg_dsn: str, db: str) -> marker.Marker | None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        return marker.read(conn, db)


def exists(pg_dsn: str, db: str) -> bool:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone()
    return row is not None


# --------------------------------------------------------------------------- the signature


def test_an_unsigned_or_missigned_set_is_refused_and_the_key_is_required(
    world: dict[str, Any], run_job: Runner, tmp_path: Path
) -> None:
    set_dir = backup(run_job, world)
    key = run_job.backup_key.read_text().strip()
    sig = (set_dir / "manifest.sig").read_text().strip()
    assert len(sig) == 64 and key not in sig

    ok = run_job(verify_args(world))
    assert ok.rc == 0, ok.output

    (set_dir / "manifest.sig").write_text("0" * 64 + "\n")
    wrong = run_job(verify_args(world))
    assert wrong.rc == 65 and "manifest.sig" in wrong.stderr, wrong.output
    (set_dir / "manifest.sig").unlink()
    unsigned = run_job(verify_args(world))
    assert unsigned.rc == 65 and "unsigned" in unsigned.stderr, unsigned.output
    restore = run_job(["restore", *world["args"], "--to-subdomain", world["sub"] + "-x",
                       "--as-copy"])  # fmt: skip
    assert restore.rc == 65 and "unsigned" in restore.stderr, restore.output
    assert not exists(run_job.env["PLANA_PG_DSN"], naming.db_name(world["sub"] + "-x"))

    # A set signed with another key is as good as unsigned.
    other = tmp_path / "other-key"
    other.write_text("another-key-of-32-characters-xyz\n")
    elsewhere = run_job(["backup", *world["args"]], PLANA_BACKUP_KEY_FILE=str(other))
    assert elsewhere.rc == 0, elsewhere.output
    foreign = run_job(verify_args(world))  # the newest set: signed with the other key
    assert foreign.rc == 65 and "manifest.sig" in foreign.stderr, foreign.output

    # A key file that is missing, unreadable or empty: configuration (78); none given at all:
    # bad input (64). Either before anything is written.
    before = sorted(p.name for p in (world["dest"] / world["sub"]).iterdir())
    for job in (["backup", *world["args"]], verify_args(world), ["restore", *world["args"]]):
        not_given = run_job(job, PLANA_BACKUP_KEY_FILE="")
        assert not_given.rc == 64, not_given.output
        assert "--backup-key-file / PLANA_BACKUP_KEY_FILE: is required" in not_given.stderr
    for bad in (str(tmp_path / "missing"), str(tmp_path)):
        refused = run_job(["backup", *world["args"]], PLANA_BACKUP_KEY_FILE=bad)
        assert refused.rc == 78 and "PLANA_BACKUP_KEY_FILE" in refused.stderr, refused.output
    empty = tmp_path / "empty-key"
    empty.write_text("\n")
    for job in (["backup", *world["args"]], verify_args(world)):
        refused = run_job(job, PLANA_BACKUP_KEY_FILE=str(empty))
        assert refused.rc == 78, refused.output
    assert sorted(p.name for p in (world["dest"] / world["sub"]).iterdir()) == before
    assert key not in ok.output and key not in wrong.output


# --------------------------------------------------------------------------- whose set it is


def test_a_set_of_another_tenant_copied_under_this_one_is_refused(
    world: dict[str, Any], run_job: Runner, pg_dsn: str, uid: str
) -> None:
    victim_sub = uid + "-v"
    victim_db = make_tenant(pg_dsn, victim_sub, world["data_dir"], partners=80)
    with psycopg.connect(pg_dsn, dbname=victim_db, autocommit=True) as conn:
        secret = conn.execute(
            "SELECT value FROM ir_config_parameter WHERE key = 'database.secret'"
        ).fetchone()
    v_set = backup(run_job, {**world, "sub": victim_sub,
                             "args": ["--subdomain", victim_sub, *world["args"][2:]]})  # fmt: skip
    own = world["dest"] / world["sub"]
    own.mkdir(exist_ok=True)
    shutil.copytree(v_set, own / v_set.name)  # validly signed: it is a real set, of V
    before = table_digests(pg_dsn, world["db"])

    verify = run_job(verify_args(world))
    assert verify.rc == 65 and victim_sub in verify.stderr, verify.output
    restore = run_job(["restore", *world["args"], "--replace"])
    assert restore.rc == 65 and "not to" in restore.stderr, restore.output
    assert table_digests(pg_dsn, world["db"]) == before
    with psycopg.connect(pg_dsn, dbname=world["db"], autocommit=True) as conn:
        mine = conn.execute(
            "SELECT value FROM ir_config_parameter WHERE key = 'database.secret'"
        ).fetchone()
    assert secret is not None and mine is not None and mine[0] != secret[0]
    assert not exists(pg_dsn, world["db"] + "__rst")


# --------------------------------------------------------------------------- the schema


@pytest.mark.parametrize(
    "damage",
    [
        "nested-subdomain", "files-list", "no-dump", "tables-list",
        "unknown-dump-format", "files-value-nested", "deep-nesting",
        "marker-kind", "marker-field-type", "marker-field-missing", "encoding",
    ],
)  # fmt: skip
def test_a_malformed_manifest_is_65(
    world: dict[str, Any], run_job: Runner, damage: str, pg_dsn: str
) -> None:
    set_dir = backup(run_job, world)
    data = manifest_of(set_dir)
    if damage == "nested-subdomain":
        data["subdomain"] = {"name": world["sub"]}
    elif damage == "files-list":
        data["files"] = list(data["files"])
    elif damage == "no-dump":
        del data["dump"]
    elif damage == "tables-list":
        data["tables"] = [data["tables"]]
    elif damage == "unknown-dump-format":
        data["dump"]["format"] = "tar"
    elif damage == "files-value-nested":
        data["files"]["db.dump"] = [data["files"]["db.dump"]]
    elif damage == "deep-nesting":
        data["odoo"] = "DEEP"
    elif damage == "marker-kind":
        data["marker"]["kind"] = "template"
    elif damage == "marker-field-type":  # what a restore would publish: no tenant marker
        data["marker"]["project_id"] = str(data["marker"]["project_id"])
    elif damage == "marker-field-missing":
        del data["marker"]["template"]
    elif damage == "encoding":
        data["database_settings"]["encoding"] = "UTF8' TEMPLATE template1 --"
    body = json.dumps(data).replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
    write_manifest(set_dir, body.encode())
    bad = run_job(verify_args(world))
    assert bad.rc == 65, bad.output
    if damage.startswith("marker-field"):
        assert "marker does not fit the tenant schema: field " in bad.stderr, bad.stderr
    copy = world["sub"] + "-m"
    refused = run_job(["restore", *world["args"], "--to-subdomain", copy, "--as-copy"])
    assert refused.rc == 65, refused.output
    assert not exists(pg_dsn, naming.db_name(copy)) and not exists(
        pg_dsn, naming.db_name(copy) + "__rst"
    )


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_manifest_paths_stay_inside_the_set(
    world: dict[str, Any], run_job: Runner, where: str, tmp_path: Path
) -> None:
    set_dir = backup(run_job, world)
    data = manifest_of(set_dir)
    outside = tmp_path / "planted"
    outside.mkdir()
    shutil.copy(set_dir / "db.dump", outside / "db.dump")
    if where == "symlink":
        (set_dir / "db.dump").unlink()
        (set_dir / "db.dump").symlink_to(outside / "db.dump")
    else:
        rel = (
            os.path.relpath(outside / "db.dump", set_dir)
            if where == "dotdot"
            else str(outside / "db.dump")
        )
        data["files"][rel] = data["files"].pop("db.dump")
        data["dump"]["path"] = rel
        write_manifest(set_dir, data)
    bad = run_job(verify_args(world))
    assert bad.rc == 65, bad.output
    copy = world["sub"] + "-p"
    refused = run_job(["restore", *world["args"], "--to-subdomain", copy, "--as-copy"])
    assert refused.rc == 65, refused.output


# --------------------------------------------------------------------------- the archive


def hostile_tar(set_dir: Path, data: dict[str, Any], member: str) -> None:
    """Rewrite filestore.tar with one hostile member beside a real file; counts kept honest."""
    content = b"a real attachment"
    sha = hashlib.sha1(content).hexdigest()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(f"{sha[:2]}/{sha}")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
        bad = tarfile.TarInfo(member if member.startswith(("/", "..")) else "ab/evil")
        body = None  # only the regular file has one
        if member == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif member == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, f"{sha[:2]}/{sha}"
        elif member == "fifo":
            bad.type = tarfile.FIFOTYPE
        else:
            bad.size = 4
            body = io.BytesIO(b"evil")
        tar.addfile(bad, body)
    if member == "not-a-tar":
        (set_dir / "filestore.tar").write_bytes(b"this is not a tar archive at all\n" * 40)
    elif member == "truncated":
        (set_dir / "filestore.tar").write_bytes(buf.getvalue()[:700])
    else:
        (set_dir / "filestore.tar").write_bytes(buf.getvalue())
    # The regular members, as a naive counter counts them (a path member is one of them).
    data["filestore"]["files"] = 2 if member.startswith(("/", "..")) else 1
    seal(set_dir, data, "filestore.tar")
    write_manifest(set_dir, data)


@pytest.mark.parametrize(
    "member", ["symlink", "hardlink", "fifo", "../../escape", "/abs/escape", "not-a-tar",
               "truncated"],
)  # fmt: skip
def test_a_hostile_filestore_archive_is_refused(
    world: dict[str, Any], run_job: Runner, member: str, pg_dsn: str, tmp_path: Path
) -> None:
    set_dir = backup(run_job, world)
    hostile_tar(set_dir, manifest_of(set_dir), member)
    bad = run_job(verify_args(world))
    assert bad.rc == 65 and bad.result.get("verified") is not True, bad.output
    copy = world["sub"] + "-t"
    restored = run_job(["restore", *world["args"], "--to-subdomain", copy, "--as-copy"])
    assert restored.rc == 65, restored.output
    fs_root = world["data_dir"] / "filestore"
    assert not (fs_root / naming.db_name(copy)).exists()
    # Nothing was created outside the stage, and no link anywhere under the filestore root.
    assert not (tmp_path / "escape").exists() and not Path("/abs/escape").exists()
    assert not [p for p in fs_root.rglob("*") if p.is_symlink()]
    assert not exists(pg_dsn, naming.db_name(copy))


# --------------------------------------------------------------------------- what is applied


def test_restore_applies_only_what_is_safe_and_only_the_owner_may_connect(
    world: dict[str, Any], run_job: Runner, pg_dsn: str, uid: str
) -> None:
    set_dir = backup(run_job, world)
    data = manifest_of(set_dir)
    data["database_settings"].update(owner="postgres", public_connect=True)
    data["marker"].update(upgrading={"from": 17, "to": 18}, odoo_version=19,
                          final_backup="20000101T000000Z", frozen=True)  # fmt: skip
    write_manifest(set_dir, data)
    copy = uid + "-c"
    done = run_job(["restore", *world["args"], "--to-subdomain", copy, "--as-copy"])
    assert done.rc == 0, done.output
    db = naming.db_name(copy)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba), has_database_privilege('public', oid, 'CONNECT')"
            " FROM pg_database WHERE datname = %s",
            (db,),
        ).fetchone()
        assert row == (OWNER_ROLE, False)
        mark = marker.read(conn, db)
        stranger = uid + "_stranger"
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(stranger)))
    try:
        assert mark is not None and mark.kind == "tenant" and mark.state == "complete"
        assert not {"upgrading", "odoo_version", "final_backup", "frozen"} & set(mark.data)
        assert mark.data["subdomain"] == copy and mark.data["project_id"] == 7
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(pg_dsn, dbname=db, user=stranger).close()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(stranger)))


def test_an_untampered_restore_as_copy_grants_connect_to_the_owner_only(
    world: dict[str, Any], run_job: Runner, pg_dsn: str, uid: str
) -> None:
    backup(run_job, world)
    copy = uid + "-k"
    done = run_job(["restore", *world["args"], "--to-subdomain", copy, "--as-copy"])
    assert done.rc == 0, done.output
    db = naming.db_name(copy)
    stranger = uid + "_nobody"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(stranger)))
        grantees = conn.execute(
            "SELECT DISTINCT coalesce(r.rolname, 'PUBLIC') FROM pg_database d,"
            " aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee"
            " WHERE d.datname = %s AND a.privilege_type = 'CONNECT'",
            (db,),
        ).fetchall()
    try:
        assert {g[0] for g in grantees} == {OWNER_ROLE}
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(pg_dsn, dbname=db, user=stranger).close()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(stranger)))


def test_restore_needs_an_existing_owner_role(
    world: dict[str, Any], run_job: Runner, pg_dsn: str, uid: str
) -> None:
    backup(run_job, world)
    copy = uid + "-r"
    done = run_job(["restore", *world["args"], "--to-subdomain", copy, "--as-copy",
                    "--owner-role", uid + "_no_such_role"])  # fmt: skip
    assert done.rc == 78 and "owner role" in done.stderr, done.output
    assert not exists(pg_dsn, naming.db_name(copy))


# --------------------------------------------------------------------------- upgrades, leftovers


def test_restore_is_refused_while_an_upgrade_is_under_way(
    world: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    backup(run_job, world)
    db = world["db"]
    snap = run_job(["upgrade", "snapshot", "--subdomain", world["sub"], "--from-version", "18",
                    "--to-version", "19", "--data-dir", str(world["data_dir"])])  # fmt: skip
    assert snap.rc == 0, snap.output
    frozen = marker_of(pg_dsn, db)
    before = table_digests(pg_dsn, db + "__up19")
    refused = run_job(["restore", *world["args"], "--replace"])
    assert refused.rc == 65 and "upgrade" in refused.stderr, refused.output
    assert marker_of(pg_dsn, db) == frozen
    assert exists(pg_dsn, db + "__up19") and not exists(pg_dsn, db + "__rst")
    assert table_digests(pg_dsn, db + "__up19") == before


def test_unmarked_work_databases_left_by_a_kill_are_dropped(
    world: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    backup(run_job, world)
    db = world["db"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for name in (db + "__rst", db + "__vfy"):  # what a SIGKILL during CREATE DATABASE leaves
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(JOB_ROLE)))  # made by the jobs' role
    verified = run_job(verify_args(world))
    assert verified.rc == 0, verified.output
    restored = run_job(["restore", *world["args"], "--replace"])
    assert restored.rc == 0, restored.output
    assert not exists(pg_dsn, db + "__rst") and not exists(pg_dsn, db + "__vfy")
    # A work name carrying someone else's comment is still not ours.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db + "__vfy")))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'theirs'").format(
            sql.Identifier(db + "__vfy")))  # fmt: skip
    refused = run_job(verify_args(world))
    assert refused.rc == 65 and exists(pg_dsn, db + "__vfy"), refused.output


# --------------------------------------------------------------------------- verify's exit codes


def test_backup_verify_classifies_pg_restore_failures(
    world: dict[str, Any], run_job: Runner, tmp_path: Path
) -> None:
    set_dir = backup(run_job, world)
    # pg_restore missing from the image: configuration, not a bad set.
    missing = run_job(verify_args(world), PATH=str(BIN))
    assert missing.rc == 78 and "pg_restore" in missing.stderr, missing.output

    # SIGTERM while pg_restore runs: 75 (retried), never a "problem" of the set.
    shims = tmp_path / "shims"
    shims.mkdir()
    started = tmp_path / "pg_restore.started"
    (shims / "pg_restore").write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 120\n")
    (shims / "pg_restore").chmod(0o755)
    proc = run_job.popen(verify_args(world), PATH=f"{shims}:{run_job.env['PATH']}")
    until = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < until, "pg_restore never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err

    # A dump whose checksum is right (re-sealed) but pg_restore cannot read: the set is bad.
    data = manifest_of(set_dir)
    dump = set_dir / "db.dump"
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 3])
    seal(set_dir, data, "db.dump")
    write_manifest(set_dir, data)
    corrupt = run_job(verify_args(world))
    assert corrupt.rc == 65 and "pg_restore" in corrupt.stderr, corrupt.output


# --------------------------------------------------------------------------- --dest


def test_an_unusable_dest_is_64_before_any_side_effect(
    world: dict[str, Any], run_job: Runner, tmp_path: Path
) -> None:
    long_name = str(tmp_path / ("d" * 300))
    long_path = str(tmp_path / "/".join(["p" * 200] * 25))
    before = sorted(p.name for p in tmp_path.iterdir() if p.name != "termination-log")
    for dest in (long_name, long_path):
        for job in (["backup", *world["args"][:2], "--data-dir", str(world["data_dir"])],
                    ["backup-verify", *world["args"][:2]],
                    ["restore", *world["args"][:2]]):  # fmt: skip
            refused = run_job([*job, "--dest", dest])
            assert refused.rc == 64, refused.output
            assert "dest" in refused.stderr and "PLANA_BACKUP_DEST" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "termination-log") == before
    assert not (world["dest"] / world["sub"]).exists()


# --------------------------------------------------------------------------- retention


def test_retention_believes_final_only_from_a_signed_manifest(
    world: dict[str, Any], run_job: Runner
) -> None:
    tdir = world["dest"] / world["sub"]
    forged, signed = tdir / "20240101T020000Z", tdir / "20240102T020000Z"
    for set_dir in (forged, signed):
        set_dir.mkdir(parents=True)
        write_manifest(set_dir, {"format": 1, "final": True}, sign=set_dir == signed)
    done = run_job(["backup", *world["args"], "--keep-daily", "0", "--keep-weekly", "0",
                    "--keep-monthly", "0"])  # fmt: skip
    assert done.rc == 0, done.output
    assert forged.name in done.result["retention_deleted"] and not forged.exists()
    assert signed.exists()


def test_pg_restore_reads_the_dump_that_was_checked_not_one_swapped_in_after(
    world: dict[str, Any], run_job: Runner, pg_dsn: str, tmp_path: Path
) -> None:
    """Whoever can write the volume swaps in another tenant's dump and archive once the checksums
    passed: what is restored is still what was checked."""
    set_dir = backup(run_job, world)
    other = world["sub"] + "v"
    make_tenant(pg_dsn, other, world["data_dir"], partners=3)
    add_attachment(world["data_dir"], naming.db_name(other), b"only the other tenant has this")
    made = run_job(["backup", "--subdomain", other, "--dest", str(world["dest"]),
                    "--data-dir", str(world["data_dir"])])  # fmt: skip
    assert made.rc == 0, made.output
    theirs = Path(world["dest"]) / other / made.result["set"]
    shims = tmp_path / "shims"
    shims.mkdir()
    real = shutil.which("pg_restore")
    assert real
    # The swap happens as pg_restore starts: after every checksum of the set was verified.
    swap = "".join(
        f'cp "{theirs}/{f}" "{set_dir}/{f}.swap" && mv "{set_dir}/{f}.swap" "{set_dir}/{f}"\n'
        for f in ("db.dump", "filestore.tar")
    )
    (shims / "pg_restore").write_text(f'#!/bin/sh\n{swap}exec "{real}" "$@"\n')
    (shims / "pg_restore").chmod(0o755)
    copy = world["sub"] + "-c"
    path = f"{shims}{os.pathsep}{run_job.env['PATH']}"
    restored = run_job(["restore", *world["args"], "--to-subdomain", copy, "--as-copy"], PATH=path)
    assert restored.rc == 0, restored.output
    for f in ("db.dump", "filestore.tar"):  # the swap did happen
        assert (set_dir / f).read_bytes() == (theirs / f).read_bytes()
    own = tree(naming.filestore(world["db"], world["data_dir"]))
    assert tree(naming.filestore(naming.db_name(copy), world["data_dir"])) == own
    with psycopg.connect(pg_dsn, dbname=naming.db_name(copy), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM res_partner WHERE name LIKE 'partner %'"
        ).fetchone()
    assert row is not None and row[0] == 50  # the tenant's own rows, not the swapped-in three
