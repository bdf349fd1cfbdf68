"""A marker of ours in form, not in content: the right kind and subdomain, but a field of the
wrong type or a state no job writes, as anyone who may COMMENT on the database could write it.

Every job that would touch such a database refuses it (65), naming it, and leaves it as it was:
the catalog (its comment included), its tables, the filestores and backup sets, the events.
`inspect` reports it as a problem no job resolves alone (65). Real PostgreSQL, jobs run as
processes; the tenant is the one the backup and deprovision tests share (`setup`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.core import naming
from jobs.ops import marker
from tests.support import markers, odoo_target
from tests.support.harness import Runner
from tests.support.tenant_db import ensure_role
from tests.support.untouched import Snapshot

# What is changed in the marker tenant-db (or template-build) wrote, and why it no longer fits.
UNFIT = {
    "text-for-integer": ({"project_id": "7"}, None, "field 'project_id' is text, not an integer"),
    "bool-for-integer": ({"project_id": True}, None,
                         "field 'project_id' is a boolean, not an integer"),
    "unknown-state": ({}, "restored", "state 'restored' is not a tenant state"),
    # A frozen tenant's upgrade record with a forged attempt: read back by upgrade's re-run,
    # where int("x") was a crash (70), not a refusal.
    "forged-upgrade-record": (
        {"upgrading": {"from": 17, "to": 18, "base": "17.0.1.3", "attempt": "x"}}, None,
        "field 'upgrading' is not an upgrade record (field 'attempt' is text, not an integer)"),
}  # fmt: skip
TEMPLATE_UNFIT = {
    "text-for-integer": ({"odoo_version": "18"}, None,
                         "field 'odoo_version' is text, not an integer"),
    "unknown-state": ({}, "frozen", "state 'frozen' is not a template state"),
}  # fmt: skip


def comment(pg_dsn: str, db: str, text: str) -> None:
    """COMMENT ON DATABASE, as anyone who may would write it (`marker.write` refuses to)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(db), sql.Literal(text)))  # fmt: skip


def unfit(kind: str, state: str, data: dict[str, Any], case: tuple[Any, ...]) -> str:
    change, new_state, why = case
    mark = marker.Marker(kind, new_state or state, {**data, **change})
    assert marker.problem(mark) == why  # the case is what it says
    return mark.encode()


def tenant_jobs(s: dict[str, Any], odoo: Path) -> dict[str, list[str]]:
    """Each job that reads or changes a live tenant's database, as its pod runs it."""
    sub, data, dest = s["sub"], str(s["data_dir"]), str(s["dest"])
    place = ["--data-dir", data]
    return {
        "tenant-db": ["tenant-db", "--subdomain", sub, "--project-id", "7", "--tier", "starter",
                      "--owner-email", f"o@{sub}.example.com", "--owner-name", "Ada", *place],
        "backup": ["backup", "--subdomain", sub, "--dest", dest, *place],
        "restore": ["restore", "--subdomain", sub, "--dest", dest, "--replace", *place],
        "deprovision": ["deprovision", *s["args"]],
        "environment-db": ["environment-db", "--subdomain", sub, "--env", "stg",
                           "--copy-from-production", "--odoo-bin", str(odoo), *place],
        "upgrade snapshot": ["upgrade", "snapshot", "--subdomain", sub, "--from-version", "17",
                             "--to-version", "18", *place],
        "upgrade same-major": ["upgrade", "--strategy", "same-major", "--subdomain", sub,
                               "--to-version", "18", "--odoo-bin", str(odoo), *place],
    }  # fmt: skip


def snapshot(pg_dsn: str, redis_url: str, s: dict[str, Any]) -> Snapshot:
    return Snapshot.take(pg_dsn, databases=[s["db"]], only=(s["sub"],),
                         roots=[s["data_dir"], s["dest"]], redis_url=redis_url,
                         prefix=s["stream"])  # fmt: skip


@pytest.mark.parametrize("case", list(UNFIT), ids=list(UNFIT))
def test_a_tenant_marker_that_does_not_fit_its_schema_is_refused_by_every_job(
    setup: dict[str, Any], run_job: Runner, pg_dsn: str, redis_url: str, tmp_path: Path, case: str
) -> None:
    db = setup["db"]
    taken = run_job(["backup", "--subdomain", setup["sub"], "--dest", str(setup["dest"]),
                     "--data-dir", str(setup["data_dir"])])  # fmt: skip
    assert taken.rc == 0, taken.output  # a set restore --replace could bring back
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, "plana")
        written = marker.read(conn, db)
    assert written is not None and written.data["subdomain"] == setup["sub"]
    comment(pg_dsn, db, unfit("tenant", written.state, written.data, UNFIT[case]))
    why = UNFIT[case][2]
    odoo = odoo_target.current().for_admin(pg_dsn).binary(tmp_path / "bin", 18)
    found = f"(it carries a tenant marker that does not fit its schema ({why})): left untouched"
    before = snapshot(pg_dsn, redis_url, setup)
    for name, args in tenant_jobs(setup, odoo).items():
        done = run_job(args)
        assert done.rc == 65, (name, done.output)
        assert db in done.stderr and len(done.stderr.strip().splitlines()) == 1, (name, done.stderr)
        # Refused for what it carries (deprovision names the databases it found not ours;
        # restore holds back from any marker holding an upgrade record, fitting or not).
        held = name == "restore" and case == "forged-upgrade-record"
        assert held or name == "deprovision" or found in done.stderr, (name, done.stderr)
        assert not held or "is frozen for an upgrade" in done.stderr, done.stderr
        assert snapshot(pg_dsn, redis_url, setup).diff(before) == [], name

    seen = run_job(["inspect", "--subdomain", setup["sub"], "--data-dir",
                    str(setup["data_dir"]), "--format", "json"])  # fmt: skip
    assert seen.rc == 65, seen.output
    (live,) = [d for d in seen.result["databases"] if d["name"] == db]
    assert live["role"] == "not ours" and live["problem"] == (
        f"a tenant marker that does not fit its schema ({why})"
    )
    assert f"database {db} is not ours: a tenant marker that does not fit" in seen.stderr
    assert seen.result["problems"] == [f"database {db} is not ours: {live['problem']}"]
    assert snapshot(pg_dsn, redis_url, setup).diff(before) == []


@pytest.mark.parametrize("case", list(TEMPLATE_UNFIT), ids=list(TEMPLATE_UNFIT))
def test_a_template_marker_that_does_not_fit_its_schema_is_never_cloned_nor_rebuilt(
    run_job: Runner, pg_dsn: str, uid: str, tmp_path: Path, drop_dbs: list[str], case: str
) -> None:
    """Neither a template made by other means (cloned as it is) nor one still building (75):
    a template marker no job wrote is refused, by the jobs that clone it and the one that
    builds it."""
    drop_dbs.append(f"%{uid}%")
    template = f"template_{uid}"
    data_dir = tmp_path / "data"
    target = odoo_target.current().for_admin(pg_dsn)
    odoo_target.ensure_role(pg_dsn, target)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, "plana")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
    fingerprint = "f" * 64
    comment(pg_dsn, template, unfit("template", "complete", markers.template(fingerprint),
                                    TEMPLATE_UNFIT[case]))  # fmt: skip
    why = TEMPLATE_UNFIT[case][2]
    odoo = target.binary(tmp_path / "bin", 18)
    conf = target.config(tmp_path / "conf", 18)
    own = ["--template-db", template, "--data-dir", str(data_dir)]
    jobs = {
        "tenant-db": ["tenant-db", "--subdomain", uid, "--project-id", "7", "--tier", "starter",
                      "--owner-email", f"o@{uid}.example.com", "--owner-name", "Ada", *own],
        "environment-db": ["environment-db", "--subdomain", uid, "--env", "stg", "--tier",
                           "starter", "--owner-email", f"o@{uid}.example.com", "--owner-name",
                           "Ada", "--odoo-bin", str(odoo), *own],
        "template-build": ["template-build", "--template-code", "basic", "--odoo-version", "18",
                           "--modules", "base", "--odoo-bin", str(odoo), "--odoo-config",
                           str(conf), *own],
    }  # fmt: skip
    before = Snapshot.take(pg_dsn, only=(uid,), roots=[data_dir])
    for name, args in jobs.items():
        done = run_job(args)
        assert done.rc == 65, (name, done.output)
        assert template in done.stderr and "does not fit its schema" in done.stderr, done.stderr
        assert why in done.stderr, (name, done.stderr)
        assert Snapshot.take(pg_dsn, only=(uid,), roots=[data_dir]).diff(before) == [], name
    assert not any(naming.db_name(uid) in n for n in before.catalog)  # nothing was cloned
