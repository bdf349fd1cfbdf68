"""`plana-job tenant-db` against real PostgreSQL, from a template built by `template-build`
with the Odoo under test (tests/support/odoo_target: the stand-in in CI, real Odoo 18 in test mode).

The job itself never runs Odoo: it clones the template and personalises it in SQL, so one
template per module (one real install) serves every test. The stored derived fields it writes
are checked, in test mode, against what real Odoo computes for the same rows (`odoo shell`).
mail's email_normalized is checked on a stand-in template with mail (real Odoo here has no mail).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.adapters import filestore
from jobs.adapters.pg import locks
from jobs.commands import tenant_db
from jobs.core import naming
from jobs.core.retry import Deadline
from jobs.ops import identity, marker
from jobs.ops.clone import create_clone
from tests.support import odoo_target
from tests.support.harness import BIN, JOB_ROLE, OWNER_ROLE, Runner, job_dsn
from tests.support.tenant_db import (
    BUILD_TIMEOUT,
    TARGET,
    VERSION,
    active_sessions,
    build_template,
    db_of,
    ensure_role,
    mine,
    pg_database_comment,
    tenant_args,
    wait_until,
    waiting_clones,
)
from tests.support.untouched import Snapshot

pytestmark = pytest.mark.timeout(3600 if TARGET.real else 300)


@pytest.fixture(scope="module")
def mail_template(
    pg_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A template with mail, built by the stand-in in both modes: the real Odoo of test mode
    has no mail, whose stored email_normalized the job must keep right."""
    tmp = tmp_path_factory.mktemp("mailtpl")
    odoo = odoo_target.OdooTarget(real=False).binary(tmp, VERSION)
    yield from build_template(pg_dsn, redis_url, tmp, odoo, None, "base,web,mail,contacts")


def params(pg_dsn: str, db: str) -> dict[str, str]:
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        rows = conn.execute("SELECT key, value FROM ir_config_parameter").fetchall()
    return dict(rows)


def attachment_files(pg_dsn: str, db: str) -> list[str]:
    """The filestore files Odoo's attachments of `db` reference (store_fname), sorted."""
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        rows = conn.execute(
            "SELECT DISTINCT store_fname FROM ir_attachment WHERE store_fname IS NOT NULL"
        ).fetchall()
    return sorted(r[0] for r in rows)


def snapshot(pg_dsn: str, db: str, data_dir: Path) -> dict[str, Any]:
    """What a finished tenant looks like, minus what is new by design (secret, uuid, date)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        cat = conn.execute(
            "SELECT pg_get_userbyid(datdba), datistemplate, datallowconn, datacl::text[],"
            " shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (db,),
        ).fetchone()
        leftovers = sorted(
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (db + "%",)
            ).fetchall()
            if r[0] != db
        )
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        admin = conn.execute(
            "SELECT u.login, u.password, p.name, p.email FROM res_users u"
            " JOIN res_partner p ON p.id = u.partner_id JOIN ir_model_data d"
            " ON d.res_id = u.id AND d.model = 'res.users'"
            " WHERE d.module = 'base' AND d.name = 'user_admin'"
        ).fetchone()
        company = conn.execute("SELECT name FROM res_company ORDER BY id").fetchall()
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    conf = params(pg_dsn, db)
    fs = naming.filestore(db, data_dir)
    return {
        "catalog": cat,
        "leftovers": leftovers,
        "admin": admin,
        "company": company,
        "tables": tables,
        "keys": sorted(conf),
        "web.base.url": conf["web.base.url"],
        "files": sorted(str(p.relative_to(fs)) for p in fs.rglob("*") if p.is_file()),
        "staging": filestore.staging_path(fs).exists(),
    }


def test_tenant_created_personalised_and_locked_down(
    run_job: Runner, pg_dsn: str, pg: psycopg.Connection[Any], template: dict[str, Any],
    uid: str, drop_dbs: list[str],
) -> None:  # fmt: skip
    a, b = uid + "a", uid + "b"
    drop_dbs.extend([db_of(a) + "%", db_of(b) + "%"])
    first = run_job(tenant_args(a, template))
    assert first.rc == 0, first.output
    assert first.result["outcome"] == "created"
    second = run_job(tenant_args(b, template))
    assert second.rc == 0, second.output

    pa, pb = params(pg_dsn, db_of(a)), params(pg_dsn, db_of(b))
    assert pa["database.secret"] != pb["database.secret"]
    assert pa["database.uuid"] != pb["database.uuid"]
    assert pa["web.base.url"] == f"https://{a}.planapulse.app"
    assert pa["web.base.url.freeze"] == "True"
    # The secret never reaches the result or the logs.
    assert pa["database.secret"] not in first.output

    snap = snapshot(pg_dsn, db_of(a), template["data_dir"])
    owner, is_template, allow, acl, comment = snap["catalog"]
    assert owner == OWNER_ROLE and not is_template and allow
    assert not any(entry.startswith("=") for entry in acl), acl  # nothing granted to PUBLIC
    assert any(entry.startswith(f"{OWNER_ROLE}=") and "c" in entry.split("/")[0] for entry in acl)
    assert json.loads(comment.removeprefix("plana-jobs "))["state"] == "complete"
    email = f"owner@{a}.example.com"
    assert snap["admin"] == (email, None, "Ada Lovelace", email)
    assert ("Ada Lovelace",) in snap["company"]
    assert snap["leftovers"] == [] and not snap["staging"]

    # The filestore is a verified copy of the template's (its mark file is not copied).
    tpl_fs = naming.filestore(template["name"], template["data_dir"])
    tpl_files = sorted(str(p.relative_to(tpl_fs)) for p in tpl_fs.rglob("*") if p.is_file()
                       and not p.name.startswith("."))  # fmt: skip
    assert snap["files"] == tpl_files
    stored = attachment_files(pg_dsn, db_of(a))  # every file an attachment references is there
    assert stored and set(stored) <= set(tpl_files), (stored, tpl_files)
    report = filestore.verify(naming.filestore(db_of(a), template["data_dir"]))
    assert report.ok and report.files == len(tpl_files)

    # A login role that is not the owner cannot connect: CONNECT is revoked from PUBLIC.
    probe = "probe_" + uid
    ensure_role(pg, probe, login=True)
    try:
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(pg_dsn, dbname=db_of(b), user=probe).close()
    finally:
        pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(probe)))


def partner_by_xmlid(conn: psycopg.Connection[Any], xmlid: str) -> tuple[Any, ...]:
    """name, complete_name, commercial_company_name, email (base's stored fields)."""
    row = conn.execute(
        "SELECT p.name, p.complete_name, p.commercial_company_name, p.email"
        " FROM res_partner p JOIN ir_model_data d ON d.res_id = p.id"
        " AND d.model = 'res.partner' WHERE d.module = 'base' AND d.name = %s",
        (xmlid,),
    ).fetchone()
    assert row is not None, xmlid
    return tuple(row)


def email_normalized(conn: psycopg.Connection[Any], xmlid: str) -> str | None:
    """mail's stored email_normalized of a base partner."""
    row = conn.execute(
        "SELECT p.email_normalized FROM res_partner p JOIN ir_model_data d ON d.res_id = p.id"
        " AND d.model = 'res.partner' WHERE d.module = 'base' AND d.name = %s",
        (xmlid,),
    ).fetchone()
    assert row is not None, xmlid
    return None if row[0] is None else str(row[0])


def has_email_normalized(conn: psycopg.Connection[Any]) -> bool:
    return conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'res_partner'"
        " AND column_name = 'email_normalized'"
    ).fetchone() is not None


def name_search(conn: psycopg.Connection[Any], text: str) -> set[str]:
    """What res.partner's name_search matches on (`_rec_names_search` starts at complete_name)."""
    rows = conn.execute(
        "SELECT complete_name FROM res_partner WHERE complete_name ILIKE %s AND active",
        (f"%{text}%",),
    ).fetchall()
    return {r[0] for r in rows}


# Run in `odoo shell` (real Odoo): the stored derived fields of IDS, then what Odoo computes
# for them (the compute methods run again on the stored inputs), and name_search's matches.
_RECOMPUTE = """
import json
P = env['res.partner'].browse(IDS)
def fields(recs):
    return {str(p.id): [p.complete_name or None, p.commercial_company_name or None] for p in recs}
stored = fields(P)
P.invalidate_recordset()
P._compute_commercial_partner()
P._compute_commercial_company_name()
P._compute_complete_name()
computed = fields(P)
found = {t: sorted(n for _, n in env['res.partner'].name_search(t, limit=1000)) for t in TERMS}
print('PLANA-RECOMPUTE ' + json.dumps({'stored': stored, 'computed': computed, 'found': found}))
"""


def odoo_recompute(
    pg_dsn: str, tpl: dict[str, Any], db: str, ids: list[int], terms: list[str]
) -> dict[str, Any]:
    """Real Odoo's view of `db`'s partners `ids` and of name_search(`terms`) (rolled back)."""
    info = psycopg.conninfo.conninfo_to_dict(job_dsn(pg_dsn))  # the role that owns the tables
    env = {**TARGET.env(), "PGUSER": str(info["user"])}
    env.pop("PGPASSWORD", None)  # trust: the job role has none
    script = f"IDS = {ids!r}\nTERMS = {terms!r}\n" + _RECOMPUTE
    proc = subprocess.run(
        [str(tpl["odoo"]), "shell", "-c", str(tpl["conf"]), "-d", db, "--no-http"],
        input=script, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PLANA-RECOMPUTE ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    out: dict[str, Any] = json.loads(lines[-1].removeprefix("PLANA-RECOMPUTE "))
    return out


def assert_odoo_agrees(
    pg_dsn: str, tpl: dict[str, Any], db: str, ids: list[int], terms: list[str]
) -> None:
    """In test mode: real Odoo computes the same stored values and name_search finds what our
    SQL reading of it does. (The stand-in has no shell; its values are the assertions above.)"""
    if not TARGET.real:
        return
    seen = odoo_recompute(pg_dsn, tpl, db, ids, terms)
    assert seen["computed"] == seen["stored"], seen
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        for term in terms:
            assert set(seen["found"][term]) == name_search(conn, term), (term, seen)


def partner_ids(conn: psycopg.Connection[Any], *xmlids: str) -> list[int]:
    rows = conn.execute(
        "SELECT res_id FROM ir_model_data WHERE module = 'base' AND model = 'res.partner'"
        " AND name = ANY(%s) ORDER BY name", (list(xmlids),)
    ).fetchall()  # fmt: skip
    return [int(r[0]) for r in rows]


def test_personalised_partners_carry_what_odoo_derives(
    run_job: Runner, pg_dsn: str, template: dict[str, Any], uid: str, drop_dbs: list[str]
) -> None:
    """The renamed partners' stored derived fields are recomputed: the company is found by its
    new name, no longer by "My Company" (and real Odoo computes the same values)."""
    drop_dbs.append(db_of(uid) + "%")
    email = f"Ada.Lovelace@{uid}.Example.COM"
    res = run_job(tenant_args(uid, template, **{"--owner-email": email}))
    assert res.rc == 0, res.output
    with psycopg.connect(pg_dsn, dbname=db_of(uid)) as conn:
        company = partner_by_xmlid(conn, "main_partner")
        admin = partner_by_xmlid(conn, "partner_admin")
        assert company == ("Ada Lovelace", "Ada Lovelace", "Ada Lovelace", None)
        assert admin == ("Ada Lovelace", "Ada Lovelace", None, email)
        assert name_search(conn, "lovelace") == {"Ada Lovelace"}
        assert name_search(conn, "My Company") == set()
        assert name_search(conn, "Administrator") == set()
        ids = partner_ids(conn, "main_partner", "partner_admin")
    assert_odoo_agrees(
        pg_dsn, template, db_of(uid), ids, ["lovelace", "My Company", "Administrator"]
    )


def test_personalised_admin_gets_mails_email_normalized(
    run_job: Runner, pg_dsn: str, mail_template: dict[str, Any], uid: str, drop_dbs: list[str]
) -> None:
    """mail's stored email_normalized follows the admin's new email (a stand-in template with
    mail in both modes: test mode's real Odoo has no mail)."""
    drop_dbs.append(db_of(uid) + "%")
    email = f"Ada.Lovelace@{uid}.Example.COM"
    res = run_job(tenant_args(uid, mail_template, **{"--owner-email": email}))
    assert res.rc == 0, res.output
    with psycopg.connect(pg_dsn, dbname=db_of(uid)) as conn:
        assert partner_by_xmlid(conn, "partner_admin")[3] == email
        assert email_normalized(conn, "partner_admin") == f"ada.lovelace@{uid}.example.com"
        assert email_normalized(conn, "main_partner") is None


def make_clone(pg: psycopg.Connection[Any], tpl: dict[str, Any], name: str) -> str:
    create_clone(pg, tpl["name"], name, owner=OWNER_ROLE, deadline=Deadline(60))
    return name


@pytest.fixture
def clone(pg: psycopg.Connection[Any], template: dict[str, Any], uid: str,
          drop_dbs: list[str]) -> str:  # fmt: skip
    """A bare clone of the template (no job), to personalise directly."""
    drop_dbs.append(f"{uid}_clone")
    return make_clone(pg, template, f"{uid}_clone")


@pytest.fixture
def mail_clone(pg: psycopg.Connection[Any], mail_template: dict[str, Any], uid: str,
               drop_dbs: list[str]) -> str:  # fmt: skip
    """A bare clone of the stand-in template with mail."""
    drop_dbs.append(f"{uid}_mclone")
    return make_clone(pg, mail_template, f"{uid}_mclone")


def add_partner(conn: psycopg.Connection[Any], **values: Any) -> int:
    """A partner written as Odoo's ORM writes it (its stored derived fields given)."""
    values = {"active": True, "type": "contact", **values}
    row = conn.execute(
        sql.SQL("INSERT INTO res_partner ({}) VALUES ({}) RETURNING id").format(
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(sql.Placeholder() for _ in values),
        ),
        tuple(values.values()),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_personalise_recomputes_the_contacts_of_renamed_partners(
    pg_dsn: str, template: dict[str, Any], clone: str
) -> None:
    """Contacts and addresses under the renamed company (at any depth) and under the renamed
    admin get the complete_name / commercial_company_name Odoo 17/18 would compute (in test
    mode, real Odoo recomputes them from the same rows and must agree)."""
    owner = " Ada Lovelace\u2003"  # complete_name is stripped as Python's str.strip() strips
    with psycopg.connect(pg_dsn, dbname=clone, autocommit=True) as conn:
        ids: dict[str, int] = dict(conn.execute(
            "SELECT d.name, d.res_id FROM ir_model_data d WHERE d.module = 'base'"
            " AND d.name IN ('main_partner', 'partner_admin')").fetchall())  # fmt: skip
        company, admin = ids["main_partner"], ids["partner_admin"]
        bob = add_partner(conn, name="Bob", parent_id=company, commercial_partner_id=company,
                          complete_name="My Company, Bob", commercial_company_name="My Company")
        invoice = add_partner(conn, name=None, type="invoice", parent_id=bob,
                              commercial_partner_id=company, commercial_company_name="My Company",
                              complete_name="My Company, Invoice Address")  # fmt: skip
        home = add_partner(conn, name="Home", type="other", parent_id=admin,
                           commercial_partner_id=admin, complete_name="Administrator, Home")
        other = add_partner(conn, name="Zed", complete_name="Zed")
        conn.execute("UPDATE res_partner SET commercial_partner_id = id WHERE id = %s", (other,))

        facts = identity.personalise(
            conn, identity.Identity("x.example.com", "Ada@Example.COM", owner, "Acme")
        )
        assert facts["admin_login"] == "Ada@Example.COM"
        rows = conn.execute(
            "SELECT id, complete_name, commercial_company_name FROM res_partner"
            " WHERE id = ANY(%s)", ([company, admin, bob, invoice, home, other],)
        ).fetchall()
        got = {r[0]: r[1:] for r in rows}
        assert got == {
            company: ("Acme", "Acme"),
            admin: ("Ada Lovelace", None),
            bob: ("Acme, Bob", "Acme"),
            invoice: ("Acme, Invoice Address", "Acme"),
            home: ("Ada Lovelace\u2003, Home", None),
            other: ("Zed", None),
        }
        assert partner_by_xmlid(conn, "partner_admin")[3] == "Ada@Example.COM"
        assert not has_email_normalized(conn)  # base only: nothing of mail's to update
        assert conn.execute("SELECT name FROM res_company").fetchall() == [("Acme",)]
        assert name_search(conn, "Acme") == {"Acme", "Acme, Bob", "Acme, Invoice Address"}
        assert name_search(conn, "My Company") == set()
    assert_odoo_agrees(
        pg_dsn, template, clone, [company, admin, bob, invoice, home, other],
        ["Acme", "My Company", "Lovelace", "Home"],
    )  # fmt: skip


def test_personalise_updates_mails_email_normalized(pg_dsn: str, mail_clone: str) -> None:
    """With mail installed (stand-in template, see mail_template) the admin's stored
    email_normalized is the normalised new email."""
    with psycopg.connect(pg_dsn, dbname=mail_clone, autocommit=True) as conn:
        assert has_email_normalized(conn)
        identity.personalise(
            conn, identity.Identity("x.example.com", "Ada@Example.COM", "Ada", "Acme")
        )
        assert partner_by_xmlid(conn, "partner_admin")[3] == "Ada@Example.COM"
        assert email_normalized(conn, "partner_admin") == "ada@example.com"


def test_personalise_without_mail_has_no_email_normalized_to_update(
    pg_dsn: str, clone: str
) -> None:
    with psycopg.connect(pg_dsn, dbname=clone, autocommit=True) as conn:
        assert not has_email_normalized(conn)  # base only: mail's column is not there
        identity.personalise(conn, identity.Identity("x.example.com", "a@b.example", "Acme"))
        assert name_search(conn, "Acme") == {"Acme"}


def test_odoo_normalisations() -> None:
    assert identity.PY_WHITESPACE == "".join(
        c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()
    )
    assert identity.email_normalized("Ada.L+x@Example.COM") == "ada.l+x@example.com"
    assert identity.email_normalized("Ädä@Example.COM") == "Ädä@example.com"  # SMTPUTF8: kept


def test_second_run_is_unchanged(
    run_job: Runner, pg_dsn: str, template: dict[str, Any], uid: str, drop_dbs: list[str]
) -> None:
    drop_dbs.append(db_of(uid) + "%")
    assert run_job(tenant_args(uid, template)).rc == 0
    before = params(pg_dsn, db_of(uid))
    again = run_job(tenant_args(uid, template))
    assert again.rc == 0, again.output
    assert again.result["outcome"] == "unchanged"
    assert params(pg_dsn, db_of(uid)) == before  # no new secret on a re-run


def test_lost_filestore_is_restored(
    run_job: Runner, pg_dsn: str, template: dict[str, Any], uid: str, drop_dbs: list[str]
) -> None:
    drop_dbs.append(db_of(uid) + "%")
    assert run_job(tenant_args(uid, template)).rc == 0
    fs = naming.filestore(db_of(uid), template["data_dir"])
    filestore.discard(fs)
    again = run_job(tenant_args(uid, template))
    assert again.rc == 0, again.output
    assert again.result["outcome"] == "updated" and again.result["repaired"] == ["filestore"]
    want = filestore.verify(naming.filestore(template["name"], template["data_dir"])).files
    assert filestore.verify(fs).files == want
    assert set(attachment_files(pg_dsn, db_of(uid))) <= {
        str(p.relative_to(fs)) for p in fs.rglob("*") if p.is_file()
    }


def _kill_at(run_job: Runner, args: list[str], needle: dict[str, str]) -> int:
    """Start the job, SIGKILL it on the first log line carrying all of `needle`."""
    proc = run_job.popen(args)
    assert proc.stdout is not None
    seen = False
    for line in proc.stdout:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if all(obj.get(k) == v for k, v in needle.items()):
            proc.send_signal(signal.SIGKILL)
            seen = True
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()
    assert seen, f"never saw {needle}"
    return proc.returncode


KILL_POINTS = [
    {"event": "step", "step": "clone"},  # during CREATE DATABASE
    {"event": "marker", "state": "cloned"},
    {"event": "step", "step": "filestore"},
    {"event": "marker", "state": "filestore"},
    {"event": "marker", "state": "personalised"},
]


def test_sigkill_anywhere_then_rerun_converges(
    run_job: Runner, pg_dsn: str, pg: psycopg.Connection[Any], template: dict[str, Any],
    uid: str, drop_dbs: list[str],
) -> None:  # fmt: skip
    ref = uid + "ref"
    drop_dbs.extend([db_of(uid) + "%", db_of(ref) + "%"])
    assert run_job(tenant_args(ref, template)).rc == 0
    expected = snapshot(pg_dsn, db_of(ref), template["data_dir"])

    for index, needle in enumerate(KILL_POINTS):
        sub = f"{uid}k{index}"
        drop_dbs.append(db_of(sub) + "%")
        rc = _kill_at(run_job, tenant_args(sub, template), needle)
        assert rc == -signal.SIGKILL
        # Never published half done. After the last marker only the atomic publish is left,
        # and the job may finish it before the kill arrives (the test reads the log line
        # while the job runs on): then the tenant is whole and marked complete.
        published = db_of(sub) in mine(pg, sub)
        if published:
            assert needle == KILL_POINTS[-1], needle
            done = marker.read(pg, db_of(sub))
            assert done is not None and done.state == "complete", done
        rerun = run_job(tenant_args(sub, template))
        assert rerun.rc == 0, (needle, rerun.output)
        assert rerun.result["outcome"] == ("unchanged" if published else "created")
        if "state" in needle and not published:  # the rerun resumes from the marked step
            resumed = [e["state"] for e in rerun.logs if e.get("event") == "resuming"]
            assert resumed == [needle["state"]], rerun.stdout
        got = snapshot(pg_dsn, db_of(sub), template["data_dir"])
        for key in ("leftovers", "company", "tables", "keys", "files", "staging"):
            assert got[key] == expected[key], (needle, key)
        assert got["catalog"][:4] == expected["catalog"][:4], needle
        assert got["web.base.url"] == f"https://{sub}.planapulse.app"
        assert got["admin"][1:3] == expected["admin"][1:3]


def test_five_concurrent_runs_make_one_database(
    run_job: Runner, pg: psycopg.Connection[Any], template: dict[str, Any], uid: str,
    drop_dbs: list[str],
) -> None:  # fmt: skip
    drop_dbs.append(db_of(uid) + "%")
    procs = [run_job.popen(tenant_args(uid, template)) for _ in range(5)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0] * 5, outs
    outcomes = sorted(json.loads(o[0].strip().splitlines()[-1])["outcome"] for o in outs)
    assert outcomes == ["created"] + ["unchanged"] * 4
    assert mine(pg, uid) == {db_of(uid)}


def test_missing_template_is_transient_and_touches_nothing(
    run_job: Runner, pg: psycopg.Connection[Any], template: dict[str, Any], uid: str,
    drop_dbs: list[str],
) -> None:  # fmt: skip
    drop_dbs.append(db_of(uid) + "%")
    before = mine(pg, uid, template["name"])
    res = run_job(tenant_args(uid, template, **{"--template-db": "template_missing_" + uid}))
    assert res.rc == 75, res.output
    assert "does not exist" in res.result["error"]
    assert mine(pg, uid, template["name"]) == before
    assert not naming.filestore(db_of(uid), template["data_dir"]).exists()


def test_database_not_ours_is_a_conflict_and_untouched(
    run_job: Runner, pg: psycopg.Connection[Any], template: dict[str, Any], uid: str,
    drop_dbs: list[str],
) -> None:  # fmt: skip
    db = db_of(uid)
    drop_dbs.append(db + "%")
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    before = mine(pg, uid, template["name"])
    res = run_job(tenant_args(uid, template))
    assert res.rc == 65, res.output
    assert "not created by plana-jobs" in res.result["error"]
    assert mine(pg, uid, template["name"]) == before
    row = pg.execute(
        "SELECT shobj_description(oid, 'pg_database'), datacl FROM pg_database WHERE datname = %s",
        (db,),
    ).fetchone()
    assert row == (None, None)


@pytest.mark.parametrize(
    ("over", "field", "code"),
    [
        ({"--subdomain": "Bad_Name"}, "--subdomain / PLANA_SUBDOMAIN:", 64),
        ({"--owner-email": "not-an-address"}, "--owner-email / PLANA_OWNER_EMAIL:", 64),
        ({"--tier": "gold"}, "--tier / PLANA_TIER:", 64),
        ({"--template-db": "postgres"}, "--template-db / PLANA_TEMPLATE_DB:", 64),
        ({"--owner-role": "no_such_role_plana_test"}, "no_such_role_plana_test", 78),
    ],
)
def test_bad_input_and_config_leave_catalog_unchanged(
    run_job: Runner, pg: psycopg.Connection[Any], template: dict[str, Any], uid: str,
    drop_dbs: list[str], over: dict[str, str], field: str, code: int,
) -> None:  # fmt: skip
    drop_dbs.append(db_of(uid) + "%")
    before = mine(pg, uid, template["name"])
    res = run_job(tenant_args(uid, template, **over))
    assert res.rc == code, res.output
    assert field in res.stderr.strip().splitlines()[-1]
    assert mine(pg, uid, template["name"]) == before
    assert not naming.filestore(db_of(uid), template["data_dir"]).exists()


def test_clone_waits_for_a_template_swap(
    run_job: Runner, pg_dsn: str, template: dict[str, Any], uid: str, drop_dbs: list[str]
) -> None:
    """A clone needs the template's lock shared: it waits while a swap holds it exclusively."""
    drop_dbs.append(db_of(uid) + "%")
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (locks.key(f"template:{template['name']}"),))
        proc = run_job.popen(tenant_args(uid, template))
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"lock busy, waiting"' in line and "template:" in line:
                break
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT count(*) FROM pg_database WHERE datname LIKE %s", (db_of(uid) + "%",)
            ).fetchone()
        assert exists == (0,)  # nothing cloned while the swap holds the lock
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert json.loads(out.strip().splitlines()[-1])["outcome"] == "created"


def test_password_in_dsn_never_logged(
    run_job: Runner, pg_dsn: str, template: dict[str, Any], uid: str, drop_dbs: list[str]
) -> None:
    drop_dbs.append(db_of(uid) + "%")
    secret = "pw-" + uid
    dsn = psycopg.conninfo.make_conninfo(job_dsn(pg_dsn), password=secret)  # trust: ignored
    res = run_job(tenant_args(uid, template), PLANA_PG_DSN=dsn)
    assert res.rc == 0, res.output
    assert secret not in res.output


def test_help_lists_environment() -> None:
    out = subprocess.run(
        [str(BIN / "plana-job"), "tenant-db", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for var in ("PLANA_SUBDOMAIN", "PLANA_OWNER_ROLE", "PLANA_DATA_DIR", "PLANA_TEMPLATE_DB"):
        assert var in out


def _put(root: Path, content: bytes) -> str:
    digest = hashlib.sha1(content).hexdigest()
    (root / digest[:2]).mkdir(parents=True, exist_ok=True)
    (root / digest[:2] / digest).write_bytes(content)
    (root / "checklist" / digest[:2]).mkdir(parents=True, exist_ok=True)
    (root / "checklist" / digest[:2] / digest).write_bytes(b"")  # Odoo's GC marker: empty
    return f"{digest[:2]}/{digest}"


def test_filestore_copy_is_staged_incremental_and_verified(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "filestore" / "db"
    names = [_put(src, f"attachment {i}\n".encode() * (i + 1)) for i in range(30)]
    filestore.write_mark(src, {"fingerprint": "x"})
    # A run killed mid-write left a short file in the staging tree.
    staging = filestore.staging_path(dst)
    (staging / names[0]).parent.mkdir(parents=True)
    (staging / names[0]).write_bytes(b"att")

    first = filestore.copy_tree(src, dst)
    assert first.published and not staging.exists()
    assert (first.files, first.copied, first.skipped) == (60, 60, 0)
    assert filestore.verify(dst).ok and filestore.verify(dst).files == 60
    assert filestore.read_mark(dst) is None  # dot files (marks) are never copied

    again = filestore.copy_tree(src, dst)
    assert (again.copied, again.skipped, again.published) == (0, 60, False)

    (dst / names[1]).unlink()
    bad = src / "ab" / ("ab" + "0" * 38)
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(b"content that is not what its name says")
    with pytest.raises(filestore.FilestoreError):
        filestore.copy_tree(src, dst)
    assert not (dst / "ab" / bad.name).exists()
    bad.unlink()
    healed = filestore.copy_tree(src, dst)  # the good file may have landed before the error
    assert healed.copied <= 1 and (dst / names[1]).exists()
    assert filestore.verify(dst).ok and filestore.verify(dst).files == 60

    assert filestore.discard(dst) and not dst.exists()
    assert [p.name for p in dst.parent.iterdir()] == []


def test_filestore_staging_waits_to_publish_and_stops_between_files(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "filestore" / "db"
    for i in range(20):
        _put(src, f"attachment {i}\n".encode() * (i + 1))
    staging = filestore.staging_path(dst)

    stopped = threading.Event()
    stopped.set()
    none = filestore.copy_tree(src, dst, stop=stopped)
    assert none.stopped and none.copied == 0 and not dst.exists()

    staged = filestore.copy_tree(src, dst, publish=False)
    assert (staged.copied, staged.published) == (40, False)
    assert not dst.exists() and filestore.verify(staging).files == 40

    published = filestore.copy_tree(src, dst)  # finds every staged file and renames the tree
    assert (published.copied, published.skipped, published.published) == (0, 40, True)
    assert not staging.exists() and filestore.verify(dst).ok


def test_filestore_staged_beside_a_blocked_clone_is_never_published(
    run_job: Runner, pg_dsn: str, pg: psycopg.Connection[Any], template: dict[str, Any],
    uid: str, drop_dbs: list[str],
) -> None:  # fmt: skip
    """The clone waits on a lock: the staged filestore must wait too, then SIGTERM → 75.

    The stopped job leaves no statement of its own running (its CREATE DATABASE would
    otherwise finish after it exited, leaving an unmarked work database), and the re-run
    reuses every staged file.
    """
    drop_dbs.append(db_of(uid) + "%")
    fs = naming.filestore(db_of(uid), template["data_dir"])
    staging = filestore.staging_path(fs)
    app = tenant_db.session_name(db_of(uid))
    want = filestore.verify(naming.filestore(template["name"], template["data_dir"])).files
    with psycopg.connect(pg_dsn) as blocker:
        # COMMENT ON DATABASE holds the template's object lock until rollback; CREATE DATABASE
        # needs a ShareLock on it, so the clone waits while the staging thread runs on.
        blocker.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(template["name"]),
            sql.Literal(pg_database_comment(blocker, template["name"]))))  # fmt: skip
        proc = run_job.popen(tenant_args(uid, template))
        # Synchronise on the server: the job's CREATE DATABASE is queued behind the blocker...
        wait_until(lambda: waiting_clones(pg, app) == 1, proc, "the clone never waited")
        # ... and the whole filestore is staged beside it, still unpublished.
        wait_until(
            lambda: staging.is_dir() and filestore.verify(staging).files == want,
            proc, "the filestore was not staged beside the clone",
        )  # fmt: skip
        assert not fs.exists() and db_of(uid) + "__new" not in mine(pg, uid)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        # The job is gone and so is its statement, while the blocker still holds the lock.
        assert active_sessions(pg, app) == 0
        blocker.rollback()
    result = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 75 and result["outcome"] == "failed", out
    assert not fs.exists() and db_of(uid) not in mine(pg, uid)
    assert db_of(uid) + "__new" not in mine(pg, uid)

    rerun = run_job(tenant_args(uid, template))
    assert rerun.rc == 0 and rerun.result["outcome"] == "created", rerun.output
    assert rerun.result["filestore"]["skipped"] == want  # the staged files were kept and reused
    assert filestore.verify(fs).ok and filestore.verify(fs).files == want
    assert not staging.exists()


@pytest.mark.parametrize(
    "comment",
    [
        "a note someone wrote",
        'plana-jobs {"kind": "tenant", "state": "cloned", "subdomain": "someone-else"}',
        'plana-jobs {"kind": "environment", "state": "cloned"}',
    ],
)
def test_work_copy_with_someone_elses_comment_is_refused_not_dropped(
    run_job: Runner, pg: psycopg.Connection[Any], template: dict[str, Any], uid: str,
    drop_dbs: list[str], comment: str,
) -> None:  # fmt: skip
    """`{db}__new` unmarked is a killed run's (dropped, started over); with another comment it
    was written by someone else: 65, and the database stays as it was."""
    drop_dbs.append(db_of(uid) + "%")
    work = db_of(uid) + "__new"
    # Owned by the jobs' role, as a killed run's work copy is (the drop needs ownership).
    pg.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
        sql.Identifier(work), sql.Identifier(JOB_ROLE)))  # fmt: skip
    pg.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(work), sql.Literal(comment)))  # fmt: skip
    refused = run_job(tenant_args(uid, template))
    assert refused.rc == 65, refused.output
    assert "is not this tenant's work copy" in refused.result["error"]
    assert pg_database_comment(pg, work) == comment and db_of(uid) not in mine(pg, uid)

    pg.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(work)))
    rerun = run_job(tenant_args(uid, template))  # unmarked: a killed run's, started over
    assert rerun.rc == 0 and rerun.result["outcome"] == "created", rerun.output
    assert work not in mine(pg, uid)


def untouched(pg_dsn: str, tpl: dict[str, Any], uid: str) -> Snapshot:
    """What a dry run must leave as it is: this test's databases (their rows too) and the data
    dir (the template's filestore and the tenant's, staging trees included)."""
    db = db_of(uid)
    return Snapshot.take(pg_dsn, databases=[db, tenant_db.work_db(db)], only=(uid,),
                         roots=[tpl["data_dir"]])  # fmt: skip


def dry_run(run_job: Runner, args: list[str], pg_dsn: str, tpl: dict[str, Any], uid: str,
            rc: int = 0) -> dict[str, Any]:  # fmt: skip
    """`args` with --dry-run: exits `rc`, and changes nothing at all."""
    before = untouched(pg_dsn, tpl, uid)
    res = run_job([*args, "--dry-run"])
    assert res.rc == rc, res.output
    assert untouched(pg_dsn, tpl, uid).diff(before) == []
    if rc == 0:
        assert res.result["outcome"] == "planned" and res.result["dry_run"] is True
    else:
        assert res.result["outcome"] == "failed" and res.result["exit_code"] == rc
    return res.result


def test_dry_run_plans_and_changes_nothing_fresh_converged_and_drifted(
    run_job: Runner, pg_dsn: str, template: dict[str, Any], uid: str, drop_dbs: list[str]
) -> None:
    drop_dbs.append(db_of(uid) + "%")
    args = tenant_args(uid, template)
    fresh = dry_run(run_job, args, pg_dsn, template, uid)
    assert [s["step"] for s in fresh["steps"]] == ["clone", "filestore", "personalise", "publish"]
    assert fresh["template_fingerprint"] == template["fingerprint"]

    assert run_job(args).rc == 0
    converged = dry_run(run_job, args, pg_dsn, template, uid)
    assert converged["steps"] == []

    filestore.discard(naming.filestore(db_of(uid), template["data_dir"]))
    drifted = dry_run(run_job, args, pg_dsn, template, uid)
    assert [s["step"] for s in drifted["steps"]] == ["repair-filestore"]
    repaired = run_job(args)  # the run takes exactly the planned step
    assert repaired.rc == 0 and repaired.result["repaired"] == ["filestore"], repaired.output


def test_dry_run_of_a_killed_runs_work_copy_plans_its_drop(
    run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, template: dict[str, Any],
    uid: str, drop_dbs: list[str],
) -> None:  # fmt: skip
    drop_dbs.append(db_of(uid) + "%")
    work = tenant_db.work_db(db_of(uid))
    pg.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
        sql.Identifier(work), sql.Identifier(JOB_ROLE)))  # fmt: skip
    planned = dry_run(run_job, tenant_args(uid, template), pg_dsn, template, uid)
    assert [s["step"] for s in planned["steps"]] == [
        "drop-unmarked", "clone", "filestore", "personalise", "publish"
    ]
    # Someone else's comment on it: 65 in the dry run as in the real run, nothing touched.
    pg.execute(sql.SQL("COMMENT ON DATABASE {} IS 'a note'").format(sql.Identifier(work)))
    refused = dry_run(run_job, tenant_args(uid, template), pg_dsn, template, uid, rc=65)
    assert "is not this tenant's work copy" in refused["error"]


def test_dry_run_exits_as_the_run_would_for_a_missing_template_or_a_foreign_database(
    run_job: Runner, pg: psycopg.Connection[Any], pg_dsn: str, template: dict[str, Any],
    uid: str, drop_dbs: list[str],
) -> None:  # fmt: skip
    drop_dbs.append(db_of(uid) + "%")
    missing = tenant_args(uid, template, **{"--template-db": "template_missing_" + uid})
    waiting = dry_run(run_job, missing, pg_dsn, template, uid, rc=75)
    assert "does not exist" in waiting["error"]
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db_of(uid))))
    refused = dry_run(run_job, tenant_args(uid, template), pg_dsn, template, uid, rc=65)
    assert "not created by plana-jobs" in refused["error"]
