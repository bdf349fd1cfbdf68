"""deprovision: final backup, drop, filestore removal, client.deprovisioned once.

These tests stay on the Odoo stand-in in both modes (CI and real-Odoo test mode), explicitly.
deprovision runs no Odoo; its tenants are `make_tenant`'s (tests/support/backup.py: built by
the stand-in, then given partners and filestore files), and the one Odoo call here is the
neutralise of `environment`, which real Odoo can only do on a database it built itself. What
these tests prove (which databases and filestores go, the final set, the event) does not
depend on which Odoo made the tenant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.core import naming
from jobs.ops import marker
from tests.support import markers
from tests.support.backup import table_digests, tree
from tests.support.deprovision import files_in
from tests.support.harness import JOB_ROLE, OWNER_ROLE, STANDINS, Runner
from tests.support.tenant_db import ensure_role
from tests.support.untouched import Snapshot


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


# --------------------------------------------------------------------------- all of a tenant


def create_db(pg_dsn: str, name: str, mark: marker.Marker | None = None) -> None:
    """An empty database under `name`, made by the jobs' role and marked as the job that makes
    such a name marks it."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(JOB_ROLE)))  # fmt: skip
        if mark is not None:
            marker.write(conn, name, mark)


def databases(pg_dsn: str, pattern: str) -> set[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (pattern,))
        return {r[0] for r in rows.fetchall()}


def environment(run_job: Runner, pg_dsn: str, sub: str, data_dir: Path, env: str) -> str:
    """environment-db `env` of `sub`, copied from production: the real job, real names.

    The stand-in neutralises the copy in both modes: the tenant is the stand-in's (module
    docstring)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, OWNER_ROLE)
    made = run_job(["environment-db", "--subdomain", sub, "--env", env, "--copy-from-production",
                    "--data-dir", str(data_dir), "--odoo-bin", str(STANDINS / "odoo")])  # fmt: skip
    assert made.rc == 0, made.output
    return str(made.result["database"])


def test_deprovision_of_acme_stg_never_touches_the_environment_stg_of_acme(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    sub, data_dir = setup["sub"], setup["data_dir"]
    env_db = environment(run_job, pg_dsn, sub, data_dir, "stg")
    env_files = tree(naming.filestore(env_db, data_dir))
    assert env_files

    # The PLANAClient `{sub}-stg` (a valid subdomain) is deleted.
    other = ["--subdomain", f"{sub}-stg", "--dest", str(setup["dest"]),
             "--data-dir", str(data_dir), "--stream", setup["stream"]]  # fmt: skip
    done = run_job(["deprovision", *other])
    assert done.rc == 0, done.output
    assert exists(pg_dsn, env_db) and exists(pg_dsn, setup["db"])
    assert tree(naming.filestore(env_db, data_dir)) == env_files
    assert done.result["databases"] == [] and done.result["filestores"] == []
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        mark = marker.read(conn, env_db)
        assert mark is not None and mark.kind == "environment" and mark.state == "complete"
    assert env_db == naming.db_name(f"{sub}--stg")  # a name no subdomain can have

    # The tenant's own deprovision removes its environment with it.
    gone = run_job(["deprovision", *setup["args"]])
    assert gone.rc == 0, gone.output
    assert gone.result["databases"] == [setup["db"], env_db]
    assert not exists(pg_dsn, env_db) and not naming.filestore(env_db, data_dir).exists()


def test_deprovision_removes_every_leftover_of_the_tenant_and_nothing_of_anyone_else(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str, tmp_path: Path
) -> None:
    sub, db, data_dir = setup["sub"], setup["db"], setup["data_dir"]
    root = data_dir / "filestore"
    env_db = environment(run_job, pg_dsn, sub, data_dir, "stg")
    hop = {"subdomain": sub, "from": 17, "to": 18}
    # Work copies as each job leaves them after a kill (markers as their writers write them;
    # restore-work, verify-scratch and environment-work in the older form, without subdomain).
    ours = {
        f"{db}__rb17": marker.Marker("rollback", "complete",
                                     {**hop, "tenant": markers.tenant(sub)}),
        f"{db}__up18": marker.Marker("upgrade-work", "snapshot",
                                     {**hop, "attempt": 1, "phases": ["snapshot"]}),
        f"{db}__rst": marker.Marker("restore-work", "created", {"set": "20250101T000000Z"}),
        f"{db}__vfy": marker.Marker("verify-scratch", "created", {}),
        f"{db}__new": None,  # killed between CREATE DATABASE and the marker
        f"{env_db}__env": marker.Marker("environment-work", "created", {}),
    }  # fmt: skip
    for name, mark in ours.items():
        create_db(pg_dsn, name, mark)
    files_in(root / f"{db}__rb17", 5)
    files_in(root / f"{db}__up18", 5)
    for hidden in (f".{db}.partial", f".{db}.env.partial", f"..{env_db}.env.partial",
                   f".{db}.old", f".{env_db}.env"):  # fmt: skip
        files_in(root / hidden, 2)
    files_in(root / f".{db}.trash-0badc0de", 60)  # a removal killed half-way
    # A link planted under a trash name: removed, its target never followed.
    outside = files_in(tmp_path / "outside", 3)
    outside_files = tree(outside)
    (root / f".{db}.trash-5ca1ab1e").symlink_to(outside)

    # Other tenants: one whose name extends this one, one like an environment of old, and an
    # environment of the first.
    others = {f"{sub}x": None, f"{sub}-stg": None, f"{sub}x--stg": f"{sub}x"}
    for other, env_of in others.items():
        other_db = naming.db_name(other)
        body = markers.environment(env_of, "stg") if env_of else markers.tenant(other)
        create_db(pg_dsn, other_db, marker.Marker("environment" if env_of else "tenant",
                                                  "complete", body))  # fmt: skip
        create_db(pg_dsn, other_db + "__new")
        files_in(root / other_db, 3)
        files_in(root / f".{other_db}.partial", 1)
        files_in(root / f".{other_db}.trash-0badc0de", 1)
    theirs = databases(pg_dsn, f"{sub}x%") | databases(pg_dsn, f"{sub}-stg%")
    assert len(theirs) == 6
    their_files = {p.name: tree(p) for p in root.iterdir() if p.name.lstrip(".").startswith(
        (f"{sub}x", f"{sub}-stg"))}  # fmt: skip
    assert len(their_files) == 9

    first = run_job(["deprovision", *setup["args"]])
    assert first.rc == 0, first.output
    assert first.result["outcome"] == "updated"
    assert first.result["removed"] == ["database", "filestore", "event"]
    assert sorted(first.result["databases"]) == sorted([db, env_db, *ours])
    assert sorted(first.result["filestores"]) == sorted(
        [db, env_db, f"{db}__rb17", f"{db}__up18", f".{db}.partial", f".{db}.env.partial",
         f"..{env_db}.env.partial", f".{db}.old", f".{env_db}.env", f".{db}.trash-0badc0de",
         f".{db}.trash-5ca1ab1e"]
    )  # fmt: skip
    assert databases(pg_dsn, f"{sub}.%") == set()
    assert databases(pg_dsn, f"{sub}--%") == set()
    left = [p.name for p in root.iterdir() if p.name.lstrip(".").startswith((db, env_db))]
    assert left == []
    assert tree(outside) == outside_files

    # Everyone else's, untouched.
    assert databases(pg_dsn, f"{sub}x%") | databases(pg_dsn, f"{sub}-stg%") == theirs
    assert {p.name: tree(p) for p in root.iterdir()} == their_files

    second = run_job(["deprovision", *setup["args"]])
    assert second.rc == 0, second.output
    assert second.result["outcome"] == "unchanged"
    assert second.result["databases"] == [] and second.result["filestores"] == []
    assert setup["redis"].xlen(setup["stream"]) == 1


def test_a_removal_killed_half_way_is_finished_by_the_rerun(
    setup: dict[str, Any], run_job: Runner
) -> None:
    db, root = setup["db"], setup["data_dir"] / "filestore"
    assert run_job(["deprovision", *setup["args"]]).rc == 0
    # What a kill inside the removal leaves: the renamed-aside tree, part of it deleted.
    trash = files_in(root / f".{db}.trash-0badc0de", 120)
    rerun = run_job(["deprovision", *setup["args"]])
    assert rerun.rc == 0, rerun.output
    assert rerun.result["outcome"] == "updated"
    assert rerun.result["filestores"] == [trash.name] and rerun.result["removed"] == ["filestore"]
    assert not trash.exists()
    again = run_job(["deprovision", *setup["args"]])
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output


@pytest.mark.parametrize("planted", ["work-copy", "environment"])
def test_a_database_marked_for_another_tenant_is_never_dropped(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str, planted: str
) -> None:
    sub, db = setup["sub"], setup["db"]
    if planted == "work-copy":
        name = f"{db}__new"
        mark = marker.Marker("tenant", "cloned", markers.tenant(f"{sub}x"))
    else:
        name = naming.db_name(f"{sub}--stg")
        body = markers.environment(sub, "stg", tenant=f"{sub}x")
        mark = marker.Marker("environment", "complete", body)
    create_db(pg_dsn, name, mark)
    files = tree(naming.filestore(db, setup["data_dir"]))
    done = run_job(["deprovision", *setup["args"]])
    assert done.rc == 65, done.output
    assert name in done.stderr
    assert exists(pg_dsn, name) and exists(pg_dsn, db)
    assert tree(naming.filestore(db, setup["data_dir"])) == files
    assert not any(setup["dest"].iterdir())  # not even the final backup
    assert setup["redis"].xlen(setup["stream"]) == 0


def test_without_the_live_database_a_rollback_copy_is_kept_unless_a_final_backup_exists(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str, uid: str
) -> None:
    sub = f"{uid}r"  # a tenant with no live database, only its pre-upgrade copy
    rollback = naming.db_name(sub) + "__rb17"
    body = {"subdomain": sub, "from": 17, "to": 18, "tenant": markers.tenant(sub)}
    create_db(pg_dsn, rollback, marker.Marker("rollback", "complete", body))
    args = ["--subdomain", sub, "--dest", str(setup["dest"]), "--data-dir",
            str(setup["data_dir"]), "--stream", setup["stream"]]  # fmt: skip
    done = run_job(["deprovision", *args])
    assert done.rc == 65, done.output
    assert rollback in done.stderr
    assert exists(pg_dsn, rollback)
    assert setup["redis"].xlen(setup["stream"]) == 0


@pytest.mark.parametrize("stream", ["with space", "x" * 201, "tab\there"])
def test_a_bad_stream_is_refused_before_anything_is_touched(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str, stream: str
) -> None:
    args = [*setup["args"][:-1], stream]
    done = run_job(["deprovision", *args])
    assert done.rc == 64, done.output
    assert "stream" in done.stderr
    assert exists(pg_dsn, setup["db"]) and naming.filestore(setup["db"], setup["data_dir"]).is_dir()
    assert not any(setup["dest"].iterdir())


def test_a_deprovisioned_tenant_comes_back_only_from_its_final_set(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    """A restore of an earlier set, queued on the lock or retried after deprovision, is refused."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, OWNER_ROLE)
    earlier = run_job(["backup", *setup["args"][:2], *setup["args"][8:12]])
    assert earlier.rc == 0, earlier.output
    gone = run_job(["deprovision", *setup["args"]])
    assert gone.rc == 0, gone.output
    final = gone.result["final_backup"]
    restore = ["restore", "--subdomain", setup["sub"], "--dest", str(setup["dest"]),
               "--data-dir", str(setup["data_dir"]), "--replace"]  # fmt: skip
    refused = run_job([*restore, "--set", earlier.result["set"]])
    assert refused.rc == 65 and "deprovisioned" in refused.stderr, refused.output
    assert not exists(pg_dsn, setup["db"])
    back = run_job([*restore, "--set", final])
    assert back.rc == 0, back.output
    assert exists(pg_dsn, setup["db"])


# --------------------------------------------------------------------------- --dry-run


def untouched(setup: dict[str, Any], pg_dsn: str, redis_url: str) -> Snapshot:
    """The tenant's databases (catalog and rows), data dir, backup volume and stream keys."""
    return Snapshot.take(pg_dsn, databases=[setup["db"]], only=[setup["sub"]],
                         roots=[setup["data_dir"], setup["dest"]], redis_url=redis_url,
                         prefix=setup["stream"])  # fmt: skip


def test_dry_run_plans_backup_removal_and_event_and_changes_nothing(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str, redis_url: str
) -> None:
    db = setup["db"]
    before = untouched(setup, pg_dsn, redis_url)
    fresh = run_job(["deprovision", *setup["args"], "--dry-run"])
    assert fresh.rc == 0, fresh.output
    assert fresh.result["outcome"] == "planned" and fresh.result["dry_run"] is True
    assert [(s["step"], s.get("target")) for s in fresh.result["steps"]] == [
        ("final-backup", db), ("drop", db), ("filestore", db), ("event", None)
    ]  # fmt: skip
    assert fresh.result["databases"] == [db] and fresh.result["final_backup"] is None
    assert untouched(setup, pg_dsn, redis_url).diff(before) == []

    # Deprovisioned: nothing left to plan, and the final set it was taken as is named.
    gone = run_job(["deprovision", *setup["args"]])
    assert gone.rc == 0, gone.output
    before = untouched(setup, pg_dsn, redis_url)
    again = run_job(["deprovision", *setup["args"]], PLANA_DRY_RUN="1")
    assert again.rc == 0, again.output
    assert again.result["outcome"] == "planned" and again.result["dry_run"] is True
    assert again.result["steps"] == []
    assert again.result["final_backup"] == gone.result["final_backup"]
    assert again.result["entry_id"] == gone.result["entry_id"]
    assert untouched(setup, pg_dsn, redis_url).diff(before) == []


def test_dry_run_of_a_tenant_with_a_database_not_ours_is_blocked(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str, redis_url: str
) -> None:
    name = f"{setup['db']}__new"
    create_db(pg_dsn, name, marker.Marker("tenant", "cloned", markers.tenant(f"{setup['sub']}x")))
    before = untouched(setup, pg_dsn, redis_url)
    done = run_job(["deprovision", *setup["args"], "--dry-run"])
    assert done.rc == 65, done.output
    assert name in done.result["error"] and "marker" in done.result["error"]
    assert untouched(setup, pg_dsn, redis_url).diff(before) == []


def test_the_backup_key_is_required_only_to_take_or_read_a_final_set(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str, uid: str
) -> None:
    no_key = {"PLANA_BACKUP_KEY_FILE": ""}
    refused = run_job.run(["deprovision", *setup["args"]], no_key)
    assert refused.rc == 64, refused.output
    assert refused.result["error"] == (
        "--backup-key-file / PLANA_BACKUP_KEY_FILE: is required to take the final backup"
    )
    assert exists(pg_dsn, setup["db"]) and not any(setup["dest"].iterdir())
    # Given but unreadable: configuration (78), before anything is touched.
    unreadable = run_job(["deprovision", *setup["args"]],
                         PLANA_BACKUP_KEY_FILE=str(setup["dest"] / "no-such-key"))  # fmt: skip
    assert unreadable.rc == 78 and "PLANA_BACKUP_KEY_FILE" in unreadable.stderr, unreadable.output
    assert exists(pg_dsn, setup["db"]) and not any(setup["dest"].iterdir())
    # A tenant with nothing left and no set to read: no key needed.
    never = ["--subdomain", f"{uid}n", "--dest", str(setup["dest"]), "--data-dir",
             str(setup["data_dir"]), "--stream", setup["stream"]]  # fmt: skip
    done = run_job.run(["deprovision", *never], no_key)
    assert done.rc == 0 and done.result["databases"] == [], done.output
