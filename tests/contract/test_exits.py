"""Exit codes and validation: which code each failure gets, and the one line that says why.

Real processes against the real services; the failures are real ones (a stream key of another
type, a refused Redis password, a PostgreSQL backend terminated while the job waits on it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from tests.support import odoo_target, streams
from tests.support.harness import OWNER_ROLE, ROOT, Runner, job_env
from tests.support.odoo_target import SLEEP, SLEEP_LINE, SLEEP_VAR
from tests.support.processes import local_ports
from tests.support.servers.webhook import WebhookReceiver
from tests.support.tenant_db import ensure_role

TARGET = odoo_target.current()  # the stand-in, or real Odoo in test mode
# A real base install takes a minute or more on a loaded machine; the stand-in's a second.
ODOO_TIMEOUT = 900.0 if TARGET.real else 120.0
SPEC = ["--subdomain", "acme", "--project-id", "23", "--tier", "pro", "--odoo-version", "18"]


@pytest.fixture
def rds(redis_url: str, uid: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    for key in client.scan_iter(match=f"{uid}:*"):
        client.delete(key)
    client.close()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


# ----------------------------------------------------------------------------- exactly once


def test_a_failed_xadd_leaves_no_dedupe_key_and_the_rerun_writes_once(
    run_job: Runner, rds: redis.Redis, uid: str
) -> None:
    stream = f"{uid}:events"
    rds.set(stream, "a string, not a stream")
    failed = run_job(["emit-event", *SPEC, "--stream", stream, "--generation", "4"])
    assert failed.rc == 65, failed.output  # someone else's key: a conflict, not a bug
    assert error_lines(failed.stderr) == [line for line in failed.stderr.splitlines() if line]
    assert len(error_lines(failed.stderr)) == 1
    assert "WRONGTYPE" in failed.result["error"]
    assert not list(rds.scan_iter(match=f"{stream}:dedupe:*"))  # nothing stays "pending"

    rds.delete(stream)  # the operator fixes the key
    rerun = run_job(["emit-event", *SPEC, "--stream", stream, "--generation", "4"])
    assert rerun.rc == 0, rerun.output
    assert rerun.result["outcome"] == "created"
    entries = streams.xrange(rds, stream)
    assert [e[0] for e in entries] == [rerun.result["entry_id"]]
    again = run_job(["emit-event", *SPEC, "--stream", stream, "--generation", "4"])
    assert again.rc == 0 and again.result["outcome"] == "unchanged"
    assert again.result["entry_id"] == rerun.result["entry_id"]
    assert rds.xlen(stream) == 1


@pytest.mark.parametrize(
    ("flag", "value", "var"),
    [
        ("--maxlen", str(10**25), "PLANA_EVENTS_MAXLEN"),
        ("--maxlen", str(2**63), "PLANA_EVENTS_MAXLEN"),
        ("--dedupe-ttl", str(10**15), "PLANA_EVENTS_DEDUPE_TTL"),
        ("--dedupe-ttl", "59", "PLANA_EVENTS_DEDUPE_TTL"),
    ],
)
def test_redis_numbers_out_of_range_are_64_before_redis(
    run_job: Runner, rds: redis.Redis, uid: str, flag: str, value: str, var: str
) -> None:
    stream = f"{uid}:events"
    run = run_job(["emit-event", *SPEC, "--stream", stream, flag, value])
    assert run.rc == 64, run.output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and var in lines[0]
    assert lines[0].startswith("plana-job emit-event: error: ")
    assert not list(rds.scan_iter(match=f"{uid}:*"))
    ok = run_job(["emit-event", *SPEC, "--stream", stream])  # and a re-run with sane numbers
    assert ok.rc == 0 and ok.result["outcome"] == "created", ok.output


def test_account_webhook_ledger_with_a_wrong_password_is_78(
    run_job: Runner, redis_url: str, tmp_path: Path
) -> None:
    import base64

    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    path = tmp_path / "secret"
    path.write_text(secret)
    parts = urlsplit(redis_url)
    wrong = urlunsplit(parts._replace(netloc=f"nobody:wrong-pw-4c1d@{parts.hostname}:{parts.port}"))
    with WebhookReceiver(secret) as receiver:
        run = run_job(
            ["account-webhook", *SPEC, "--owner-email", "o@example.com", "--owner-name", "O"],
            PLANA_ACCOUNT_WEBHOOK_URL=receiver.url,
            PLANA_ACCOUNT_WEBHOOK_SECRET_FILE=str(path),
            PLANA_REDIS_URL=wrong,
        )
        assert receiver.attempts == []
    assert run.rc == 78, run.output
    assert len(error_lines(run.stderr)) == 1
    assert "authentication" in run.result["error"]
    assert "wrong-pw-4c1d" not in run.output


# ----------------------------------------------------------------------------- numbers


# backup's required options, given (click reports a missing one before a bad value from the
# environment); the volume is only looked at by the job body, which never starts.
BACKUP = ["--subdomain", "acme", "--dest", "/nonexistent-volume"]
FLOAT_CASES: list[tuple[str, list[str], str, str, str]] = [
    ("emit-event", ["--stream", "{uid}:events"], "--timeout", "nan", "PLANA_TIMEOUT"),
    ("emit-event", ["--stream", "{uid}:events"], "--timeout", "-1", "PLANA_TIMEOUT"),
    ("emit-event", ["--stream", "{uid}:events"], "--timeout", "inf", "PLANA_TIMEOUT"),
    ("emit-event", ["--stream", "{uid}:events"], "--timeout", "1e400", "PLANA_TIMEOUT"),
    # Given as a variable, --timeout is checked after the (required) options before it.
    ("template-build", ["--template-code", "basic"], "--timeout", "-1", "PLANA_TIMEOUT"),
    ("tenant-db", [], "--timeout", "nan", "PLANA_TIMEOUT"),
    # The required options given: click reports a missing one before a variable's bad value.
    ("deprovision", ["--subdomain", "{uid}", "--dest", "/nonexistent-{uid}"], "--timeout", "-inf",
     "PLANA_TIMEOUT"),
    ("backup", BACKUP, "--lock-wait", "inf", "PLANA_BACKUP_LOCK_WAIT"),
    ("backup", BACKUP, "--lock-wait", "nan", "PLANA_BACKUP_LOCK_WAIT"),
    ("filestore-copy", [], "--progress-interval", "nan", "PLANA_PROGRESS_INTERVAL"),
    # Every other required option given: a variable is read after the flags on the command
    # line, so a missing one would be reported first.
    ("matrix-room", [*SPEC, "--owner-name", "O", "--homeserver", "http://127.0.0.1:9",
                     "--server-name", "plana.test", "--token-file", "/nonexistent"],
     "--request-timeout", "nan", "PLANA_HTTP_TIMEOUT"),
    ("account-webhook", [*SPEC, "--owner-email", "o@example.com", "--owner-name", "O",
                         "--url", "http://127.0.0.1:9/hook", "--secret-file", "/nonexistent"],
     "--request-timeout", "inf", "PLANA_HTTP_TIMEOUT"),
    ("erp-callback", [*SPEC, "--erp-url", "http://127.0.0.1:9", "--erp-db", "erp",
                      "--erp-login", "jobs", "--erp-api-key-file", "/nonexistent"],
     "--request-timeout", "-1", "PLANA_HTTP_TIMEOUT"),
]  # fmt: skip


# The required options of jobs whose cases give none of their own: click reports a missing one
# before a variable's bad value (options not on the command line are read in declaration order).
OWNER = ["--owner-email", "o@example.com", "--owner-name", "O"]
REQUIRED = {"emit-event": SPEC, "tenant-db": [*SPEC, *OWNER]}


@pytest.mark.parametrize(
    ("job", "extra", "flag", "value", "var"),
    FLOAT_CASES,
    ids=[f"{c[0]}{c[2]}={c[3]}" for c in FLOAT_CASES],
)
@pytest.mark.parametrize("source", ["flag", "env"])
def test_non_finite_or_negative_seconds_are_64_naming_flag_and_variable(
    run_job: Runner, rds: redis.Redis, uid: str, job: str, extra: list[str], flag: str,
    value: str, var: str, source: str,
) -> None:  # fmt: skip
    args = [job, *REQUIRED.get(job, []), *(a.replace("{uid}", uid) for a in extra)]
    if source == "flag":
        run = run_job([*args, f"{flag}={value}"])
    else:
        run = run_job.run(args, {var: value})
    assert run.rc == 64, run.output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"plana-job {job}: error: ")
    assert flag in lines[0] and var in lines[0]
    assert run.result["exit_code"] == 64
    assert not list(rds.scan_iter(match=f"{uid}:*"))


def test_an_explicitly_empty_odoo_version_is_refused_and_absent_means_18(
    run_job: Runner, rds: redis.Redis, uid: str
) -> None:
    spec = ["--subdomain", "acme", "--project-id", "23", "--tier", "pro"]
    empty = run_job(["emit-event", *spec, "--odoo-version", "", "--stream", f"{uid}:a"])
    assert empty.rc == 64, empty.output
    assert "--odoo-version / PLANA_ODOO_VERSION:" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1
    assert not list(rds.scan_iter(match=f"{uid}:*"))
    # A spec field rendered empty reaches the job as an empty variable: refused the same way.
    rendered = run_job(["emit-event", *spec, "--stream", f"{uid}:a"], PLANA_ODOO_VERSION="")
    assert rendered.rc == 64, rendered.output
    assert "--odoo-version / PLANA_ODOO_VERSION:" in rendered.stderr, rendered.output
    assert not list(rds.scan_iter(match=f"{uid}:*"))
    absent = run_job(["emit-event", *spec, "--stream", f"{uid}:b"])
    assert absent.rc == 0, absent.output
    assert streams.xrange(rds, f"{uid}:b")[0][1]["odoo_version"] == "18"


# ----------------------------------------------------------------------------- the runner


def driver(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.drivers.exits_job", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_bug_exits_70_with_its_one_error_line(
    pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    proc = driver(job_env(pg_dsn, redis_url, tmp_path), "bug")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 70, out + err
    assert err.strip().splitlines() == [
        "plana-job exits-driver: error: RuntimeError: an unforeseen state in the job body"
    ]
    assert json.loads(out.strip().splitlines()[-1])["exit_code"] == 70


def _wait_for_session(pg: psycopg.Connection[Any], app: str, timeout: float = 60) -> list[int]:
    """Backends of `app` that are running a statement (the job is waiting on the server)."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        rows = pg.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
            (app,),
        ).fetchall()
        if rows:
            return [r[0] for r in rows]
        time.sleep(0.05)
    raise AssertionError(f"no active session of {app}")


def test_a_backend_terminated_while_a_thread_waits_on_it_is_75(
    pg_dsn: str, redis_url: str, tmp_path: Path, pg: psycopg.Connection[Any], uid: str
) -> None:
    app = f"plana-exits-{uid}"
    proc = driver(job_env(pg_dsn, redis_url, tmp_path), "pg-wait", app)
    try:
        for pid in _wait_for_session(pg, app):
            pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 75, out + err
    assert len(error_lines(err)) == 1 and err.startswith("plana-job exits-driver: error: ")
    res = json.loads(out.strip().splitlines()[-1])
    assert res["exit_code"] == 75 and "postgresql" in res["error"]


@pytest.mark.timeout(1800 if odoo_target.current().real else 300)  # a real install: minutes
def test_template_build_whose_sessions_are_terminated_mid_odoo_exits_75(
    run_job: Runner, pg: psycopg.Connection[Any], uid: str, tmp_path: Path, drop_dbs: list[str],
    pg_dsn: str,
) -> None:  # fmt: skip
    """The Odoo under test (odoo_target) installs SLEEP, which logs SLEEP_LINE and then sleeps
    inside its transaction: the job is waiting on Odoo, its own sessions idle, when they are
    terminated; it finds out when Odoo is done and uses them again."""
    TARGET.require(18)
    target = TARGET.for_admin(pg_dsn)
    ensure_role(pg, OWNER_ROLE)
    drop_dbs.append(f"template_{uid}%")
    # Long enough for the terminations below to land first (they follow SLEEP_LINE at once).
    odoo = target.binary(tmp_path / "odoo", 18, env={SLEEP_VAR: "15"})
    args = ["template-build", "--template-code", "basic", "--odoo-version", "18",
            "--modules", f"base,web,{SLEEP}", "--template-db", f"template_{uid}",
            "--odoo-bin", str(odoo), "--odoo-config", str(target.config(tmp_path / "odoo", 18)),
            "--data-dir", str(tmp_path / "data")]  # fmt: skip
    proc = run_job.popen(args)
    assert proc.stdout is not None
    try:
        printed = []
        for line in proc.stdout:  # the job is waiting on Odoo, its own sessions idle
            printed.append(line)
            if SLEEP_LINE in line:
                break
        else:
            raise AssertionError("SLEEP_LINE never came:\n" + "".join(printed[-40:]))
        ports = set(local_ports([proc.pid]))  # the job's sessions, not Odoo's (another process)
        killed = pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE client_port = ANY(%s) AND pid <> pg_backend_pid()",
            (sorted(ports),),
        ).fetchall()
        assert killed  # at least its main session and its lock session
        out, err = proc.communicate(timeout=ODOO_TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 75, out + err
    assert len(error_lines(err)) == 1
    assert err.strip().splitlines()[-1].startswith("plana-job template-build: error: ")
