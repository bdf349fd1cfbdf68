"""Running children and Odoo: signals, what Odoo's output says, and what the jobs report.

- children start with an empty signal mask, so the job's SIGTERM reaches them at once, and the
  job reports how a stopped child really ended (tests/support/drivers/child_job.py);
- Odoo's log lines keep their level in the job's log, and errors quote the line that says what
  went wrong (the exception of the last traceback), not Odoo's closing chatter;
- Odoo refusing the `postgres` database user is a configuration error (78);
- an Odoo run stopped by a signal is transient (75) unless it had finished;
- `build verified` lists the modules asked for; result keys such as `source-pass` are not
  mistaken for secrets.

The template-build tests drive the Odoo under test (tests/support/odoo_target): the stand-in in CI,
real Odoo 18 in test mode. Failures and pauses come from the test addons (FAIL, SLEEP), so both
worlds fail and sleep the same way; the tests wait for SLEEP_LINE, never for time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobs.adapters import odoo
from jobs.core import proc, redact
from jobs.core.errors import TransientError
from tests.support import odoo_target
from tests.support.harness import ROOT, JobRun, Runner, job_env
from tests.support.odoo_target import FAIL, SLEEP, SLEEP_LINE, SLEEP_VAR, OdooTarget
from tests.support.tenant_db import mine

TARGET = odoo_target.current()
VERSION = 18  # the builds' Odoo: the stand-in's 18 or real Odoo 18
# A real base install takes a minute or more on a loaded machine; the stand-in's a second.
RUN_TIMEOUT = 900.0 if TARGET.real else 120.0
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ ([A-Z]+) ")
pytestmark = pytest.mark.timeout(1800 if TARGET.real else 300)
LEVEL = {"DEBUG": "debug", "INFO": "info", "WARNING": "warning", "ERROR": "error",
         "CRITICAL": "critical"}  # fmt: skip
TERM_TRAP = textwrap.dedent(
    """
    import signal, sys
    def term(signum, frame):
        print("child got SIGTERM", file=sys.stderr, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    print("ready", file=sys.stderr, flush=True)
    while True:
        signal.pause()
    """
)


def driver(env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.drivers.child_job", *argv],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def events_until(stream: Any, predicate: Any) -> list[dict[str, Any]]:
    """JSON log lines read from `stream` up to the first one `predicate` accepts."""
    seen: list[dict[str, Any]] = []
    for line in stream:
        event = json.loads(line)
        seen.append(event)
        if predicate(event):
            return seen
    raise AssertionError(f"the awaited line never came; got {seen}")


def is_stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


@pytest.fixture
def env(pg_dsn: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    return job_env(pg_dsn, redis_url, tmp_path)


# --------------------------------------------------------------------------- signals


def test_child_starts_with_an_empty_signal_mask(env: dict[str, str]) -> None:
    job = driver(env, "grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status")
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0, out + err
    said = {
        e["event"].split(":")[0]: int(e["event"].split(":")[1], 16)
        for e in map(json.loads, out.splitlines()[:-1])
        if e.get("child") == "child" and e.get("stream") == "stdout"
    }
    assert said["SigBlk"] == 0  # nothing blocked: SIGTERM and SIGINT get through
    stop_bits = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
    assert said["SigIgn"] & stop_bits == 0  # and neither is ignored


def test_sigterm_reaches_the_child_at_once_and_the_job_says_how_it_ended(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A child that finishes within the grace after our SIGTERM: the job still exits 75 (it was
    stopped before it finished its own work) and says what the child really did."""
    job = driver(env, sys.executable, "-c", TERM_TRAP)
    assert job.stdout is not None
    try:
        events_until(job.stdout, lambda e: e.get("event") == "ready")
        job.send_signal(signal.SIGTERM)
        out, err = job.communicate(timeout=60)
    finally:
        job.kill()
        job.communicate()
    assert job.returncode == 75, out + err
    lines = [json.loads(line) for line in out.splitlines()]
    # The child saw the SIGTERM (blocked, it would have died by SIGKILL after the grace).
    assert any(e.get("event") == "child got SIGTERM" for e in lines[:-1]), out
    how = f"exited 0 within the {proc.GRACE_S:g}s grace after SIGTERM"
    assert any(e.get("event") == "stopped" and e.get("how") == how for e in lines[:-1]), out
    res = lines[-1]
    assert res["exit_code"] == 75 and res["outcome"] == "failed"
    assert res["error"] == f"terminated by signal 15; child {how}"
    assert res["stopped"] == {"child": how}


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_and_that_is_said() -> None:
    ignore = "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
             "print('ready', file=sys.stderr, flush=True); signal.pause()"  # fmt: skip
    with pytest.raises(TransientError) as caught:
        with proc.spawn([sys.executable, "-c", ignore], name="stubborn", grace=0.2) as child:
            until = time.monotonic() + 30
            while "ready" not in child.tail:
                assert time.monotonic() < until, "the child never became ready"
                time.sleep(0.01)
            raise TransientError("giving up")
    assert caught.value.message == "giving up; stubborn killed by SIGKILL after the 0.2s grace"
    assert caught.value.details["stopped"] == {"stubborn": "killed by SIGKILL after the 0.2s grace"}


def test_a_signal_while_a_child_starts_is_held_then_delivered() -> None:
    """What `spawn` does around Popen: the handler does not run in the window, but right after
    (where the child is already in hand to be stopped); the kernel's mask is never touched."""

    class Stop(Exception):
        pass

    def handler(signum: int, _frame: Any) -> None:
        raise Stop(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        held = proc._Held()
        signal.raise_signal(signal.SIGTERM)  # would raise Stop here without the hold
        assert held.pending == signal.SIGTERM
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == mask  # the kernel's is as was
        with pytest.raises(Stop):
            held.release()
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- Odoo's output


def record(level: str, logger: str, message: str, db: str = "tenant.example.com") -> str:
    """One line as Odoo logs it: trailing space included (its empty perf_info)."""
    return f"2026-11-30 11:00:00,123 4242 {level} {db} {logger}: {message} "


PARSE_ERROR_RUN = [
    record("INFO", "odoo", "Odoo version 18.0", db="?"),
    record("INFO", "odoo.modules.loading", "loading 12 modules..."),
    record("WARNING", "odoo.models", "a field is deprecated"),
    "Traceback (most recent call last):",
    '  File "/odoo/models.py", line 1, in x',
    "ValueError: a warning's own traceback, not the failure",
    record("ERROR", "odoo.modules.registry", "Failed to load registry"),
    "Traceback (most recent call last):",
    '  File "/odoo/tools/convert.py", line 623, in _tag_root',
    "    f(rec)",
    "    ^^^^^^",
    "odoo.tools.convert.ParseError: while parsing /addons/agreement/views/agreement_views.xml:4",
    'Field "signed_contract_filename" does not exist in model "agreement"',
    record("CRITICAL", "odoo.service.server", "Failed to initialize database `tenant`."),
    record("INFO", "odoo.service.server", "Initiating shutdown", db="?"),
    record("INFO", "odoo.sql_db", "ConnectionPool(used=0/count=0/max=64): Closed 1 connections"),
]


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (odoo_target.RELEASE_PY.format(version=17), "Odoo Server 17.0"),
        ("description = 'Odoo Server'\nversion = 'saas~18.2'\n", "Odoo Server saas~18.2"),
        ("description = 'Odoo Server'\n", None),  # no version: ask the binary
        ("description = 'Odoo Server'\nversion = 'dev'\n", None),  # no "NN.N" series in it
        ("import odoo\n", None),  # it runs alone: nothing to import
        ("raise SystemExit(3)\n", None),
        ("print('extra')\ndescription, version = 'Odoo Server', '18.0'\n", None),
    ],
)
def test_release_py_gives_the_version_line_or_none(
    tmp_path: Path, body: str, line: str | None
) -> None:
    (tmp_path / "release.py").write_text(body)
    assert odoo.release_version(str(tmp_path)) == line


def test_release_py_runs_alone_and_bounded(tmp_path: Path, monkeypatch: Any) -> None:
    assert odoo.release_version(None) is None
    assert odoo.release_version(str(tmp_path)) is None  # no release.py
    secret = "never-" + str(os.getpid())
    monkeypatch.setenv("PLANA_PG_DSN", f"postgresql://u:{secret}@h/db")
    (tmp_path / "release.py").write_text(
        "import os\ndescription = 'Odoo Server'\n"
        "version = '18.0' + ('!' if 'PLANA_PG_DSN' in os.environ else '')\n"
    )
    assert odoo.release_version(str(tmp_path)) == "Odoo Server 18.0"  # no environment at all
    monkeypatch.setattr(odoo, "RELEASE_TIMEOUT_S", 0.5)
    (tmp_path / "release.py").write_text("while True:\n    pass\n")
    started = time.monotonic()
    assert odoo.release_version(str(tmp_path)) is None
    assert time.monotonic() - started < 30  # bounded by the timeout, not by the file


def test_odoo_lines_keep_their_level_and_the_error_is_the_exception() -> None:
    out = odoo.Output()
    levels = [out.level(line) for line in PARSE_ERROR_RUN]
    assert levels == ["info", "info", "warning", "warning", "warning", "warning", "error",
                      "error", "error", "error", "error", "error", "error", "critical", "info",
                      "info"]  # fmt: skip
    assert out.error_line() == (
        "odoo.tools.convert.ParseError: while parsing /addons/agreement/views/agreement_views"
        '.xml:4 Field "signed_contract_filename" does not exist in model "agreement"'
    )
    assert out.stopped(255) is None


def test_without_a_traceback_the_error_is_the_last_error_record() -> None:
    out = odoo.Output()
    for line in (
        record("ERROR", "odoo.modules.loading", "Some modules are not loaded: ['crm']"),
        record("ERROR", "odoo.modules.loading", "Some modules have inconsistent states"),
        record("INFO", "odoo.sql_db", "ConnectionPool(used=0/count=0/max=64): Closed 1 connection"),
    ):
        out.level(line)
    assert out.error_line() == "odoo.modules.loading: Some modules have inconsistent states"
    bare = odoo.Output()
    bare.level("something went wrong")
    assert bare.error_line() == "something went wrong"


def test_how_an_odoo_run_was_stopped() -> None:
    interrupted = odoo.Output()
    for line in (record("INFO", "odoo.models", "computing"), "Traceback (most recent call last):",
                 '  File "/odoo/service/server.py", line 446, in signal_handler',
                 "KeyboardInterrupt"):  # fmt: skip
        interrupted.level(line)
    assert interrupted.stopped(-2) == "ended by signal 2"
    assert interrupted.stopped(130) == "interrupted (KeyboardInterrupt), exit 130"
    forced = odoo.Output()
    forced.level("Forced shutdown.")
    assert forced.stopped(0) == "forced shutdown after a second signal, exit 0"
    refused = odoo.Output()
    assert refused.level(odoo.POSTGRES_REFUSED) == "error" and refused.refused


# --------------------------------------------------------------------------- template-build


class Build:
    """template-build of Odoo 18 with the target's binary and config (its addons path holds the
    test addons)."""

    def __init__(self, run_job: Runner, uid: str, tmp: Path, target: OdooTarget) -> None:
        self.run_job, self.name, self.data_dir = run_job, f"template_{uid}", tmp / "data"
        self.target, self.tmp = target, tmp / "odoo"
        self.odoo = target.binary(self.tmp, VERSION)
        self.conf = target.config(self.tmp, VERSION)

    def sleeping(self, seconds: int) -> Path:
        """An Odoo whose SLEEP addon sleeps `seconds` (it logs SLEEP_LINE first)."""
        return self.target.binary(
            self.tmp, VERSION, env={SLEEP_VAR: str(seconds)}, name="odoo-sleeping"
        )

    def args(self, modules: str, odoo_bin: Path | None = None) -> list[str]:
        return ["template-build", "--template-code", "basic", "--odoo-version", str(VERSION),
                "--modules", modules, "--template-db", self.name,
                "--odoo-bin", str(odoo_bin or self.odoo), "--odoo-config", str(self.conf),
                "--data-dir", str(self.data_dir)]  # fmt: skip

    def __call__(self, modules: str, odoo_bin: Path | None = None, **env: str) -> JobRun:
        return self.run_job(self.args(modules, odoo_bin), timeout=RUN_TIMEOUT, **env)


@pytest.fixture
def build(
    run_job: Runner, uid: str, tmp_path: Path, drop_dbs: list[str], pg_dsn: str
) -> Iterator[Build]:
    TARGET.require(VERSION)
    drop_dbs.append(f"template_{uid}%")
    yield Build(run_job, uid, tmp_path, TARGET.for_admin(pg_dsn))


def odoo_lines(run: JobRun) -> list[dict[str, Any]]:
    return [e for e in run.logs if e.get("child") == "odoo" and "stream" in e]


def test_a_failed_build_quotes_the_exception_and_logs_odoo_levels(build: Build) -> None:
    res = build(f"base,web,{FAIL}")
    assert res.rc == 65, res.output
    # The ParseError of the FAIL addon's record (a model no module defines), with its
    # continuation line, not Odoo's closing chatter.
    error = res.result["error"]
    assert "odoo exited 255: odoo.tools.convert.ParseError: while parsing " in error, error
    assert f"{FAIL}/data/{FAIL}_data.xml:4, somewhere inside" in error, error
    assert 'model="plana.test.missing"' in error, error
    lines = odoo_lines(res)
    level = {e["event"].split(": ", 1)[-1].strip(): e["level"] for e in lines}
    assert level["Failed to load registry"] == "error"
    assert level[f"Failed to initialize database `{build.name}__build`."] == "critical"
    assert level["Initiating shutdown"] == "info"
    # A traceback is part of its record: each of its lines has the record's level.
    record, in_traceback, tracebacks = "", False, 0
    for e in lines:
        if m := RECORD.match(e["event"]):
            record, in_traceback = LEVEL[m[1]], False
        elif e["event"].strip() == "Traceback (most recent call last):":
            in_traceback, tracebacks = True, tracebacks + 1
            assert record in ("error", "critical"), e  # the failure's, not a warning's
        if in_traceback:
            assert e["level"] == record, e
    assert tracebacks


def test_the_postgres_user_refused_by_odoo_is_78_with_its_message(
    build: Build, pg_dsn: str, pg: psycopg.Connection[Any]
) -> None:
    res = build("base,web", PLANA_PG_DSN=pg_dsn)  # the superuser `postgres`
    assert res.rc == 78, res.output
    assert odoo.POSTGRES_REFUSED in res.result["error"]
    assert "PLANA_PG_DSN" in res.result["error"]
    assert mine(pg, build.name) == set()


def test_build_verified_lists_the_modules_asked_for(build: Build) -> None:
    res = build("base,web")
    assert res.rc == 0, res.output
    verified = [e for e in res.logs if e["event"] == "build verified"]
    assert len(verified) == 1
    assert verified[0]["modules"] == {"base": "installed", "web": "installed"}


def test_an_odoo_that_finished_then_was_stopped_is_not_a_failure(
    build: Build, tmp_path: Path
) -> None:
    """Killed by SIGINT after its work was committed (a signal during Odoo's shutdown): the
    module states show the build finished, so it is swapped in."""
    wrapper = tmp_path / "odoo-then-sigint"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        [ "$1" = --version ] && exec "{build.odoo}" "$@"
        "{build.odoo}" "$@" || exit $?
        kill -INT $$
        """))  # fmt: skip
    wrapper.chmod(0o755)
    res = build("base,web", odoo_bin=wrapper)
    assert res.rc == 0, res.output
    assert any(e.get("event") == "exited" and e.get("returncode") == -2 for e in res.logs)
    assert res.result["outcome"] == "created"


def test_an_odoo_stopped_before_it_finished_is_75_even_when_it_exits_0(
    build: Build, pg: psycopg.Connection[Any]
) -> None:
    """Two signals (someone stopping Odoo in the pod): "Forced shutdown.", exit 0, nothing done.
    Not a bad module list (65) but an interrupted run: 75, retried."""
    # SLEEP holds Odoo mid-install (inside its transaction) until the signals come.
    job = build.run_job.popen(build.args(f"base,web,{SLEEP}", build.sleeping(3600)))
    assert job.stdout is not None
    try:
        seen = events_until(job.stdout, lambda e: SLEEP_LINE in str(e.get("event")))
        pid = next(e["pid"] for e in seen if e.get("event") == "started")
        signal_odoo_twice(pid)
        out, err = job.communicate(timeout=RUN_TIMEOUT)
    finally:
        job.kill()
        job.communicate()
    assert job.returncode == 75, out + err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["error"].startswith(
        "odoo was stopped (forced shutdown after a second signal, exit 0) before the build"
    ), res["error"]
    assert mine(pg, build.name) == set()  # the half-built database is gone


def test_sigterm_to_a_build_reaches_odoo_at_once_and_the_job_says_how_it_ended(
    build: Build, pg: psycopg.Connection[Any]
) -> None:
    """The pod's SIGTERM reaches the job only; the job passes it on to Odoo at once (held by
    SLEEP for an hour, Odoo would otherwise be SIGKILLed after the grace), Odoo turns it into
    KeyboardInterrupt and ends by SIGINT, and the job (75: it did not finish) says so."""
    job = build.run_job.popen(build.args(f"base,web,{SLEEP}", build.sleeping(3600)))
    assert job.stdout is not None
    try:
        events_until(job.stdout, lambda e: SLEEP_LINE in str(e.get("event")))
        job.send_signal(signal.SIGTERM)
        out, err = job.communicate(timeout=RUN_TIMEOUT)
    finally:
        job.kill()
        job.communicate()
    assert job.returncode == 75, out + err
    res = json.loads(out.strip().splitlines()[-1])
    how = f"ended by signal 2 within the {proc.GRACE_S:g}s grace after SIGTERM"
    assert res["stopped"] == {"odoo": how}, res
    assert res["error"] == f"terminated by signal 15; odoo {how}", res["error"]
    # No template was published; the work copy may stay, for the next run to drop.
    assert mine(pg, build.name) <= {f"{build.name}__build"}


def signal_odoo_twice(pid: int) -> None:
    """SIGTERM and SIGINT delivered together: the second one lands while the first unwinds."""
    os.kill(pid, signal.SIGSTOP)
    until = time.monotonic() + 30
    while not is_stopped(pid):
        assert time.monotonic() < until, "odoo did not stop"
        time.sleep(0.01)
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGCONT)


# --------------------------------------------------------------------------- redaction


def test_phase_names_are_not_secrets_but_passwords_are() -> None:
    shown = {"source-pass": "updated", "target-pass": "unchanged", "passes": 2, "bypass": "x",
             "phases": ["snapshot", "source-pass"]}  # fmt: skip
    assert redact.value(shown) == shown
    for key in ("password", "db_password", "passwd", "pass", "PGPASSWORD", "api_pass",
                "DB_PASS", "smtp.pass", "apiPass", "passphrase", "admin_password"):  # fmt: skip
        assert redact.value({key: "hunter2"}) == {key: "***"}, key
