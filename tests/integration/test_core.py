"""The shared core, exercised as a real job process (tests/support/drivers/core_job.py)."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobs.adapters.pg import locks
from jobs.core import redact, result
from tests.support.harness import ROOT, job_env


def driver(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.drivers.core_job", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 20) -> list[str]:
    """Read stdout until a line contains `needle` (the driver logs JSON lines)."""
    assert proc.stdout is not None
    seen: list[str] = []
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not seen in {seen}")


def lock_is_free(pg: psycopg.Connection[Any], name: str) -> bool:
    key = locks.key(name)
    row = pg.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    if row and row[0]:
        pg.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return True
    return False


@pytest.fixture
def env(pg_dsn: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    return job_env(pg_dsn, redis_url, tmp_path)


def test_lock_key_is_stable_and_signed_64_bit() -> None:
    assert locks.key("tenant:acme.planapulse.app") == locks.key("tenant:acme.planapulse.app")
    assert locks.key("a") != locks.key("b")
    for name in ("a", "template:template_basic_18", "x" * 500):
        assert -(2**63) <= locks.key(name) < 2**63


# Lock names are held across a rollout by pods of the older image: their text (and the key made
# from it) may never change, only be added to.
LOCK_NAMES = {
    locks.tenant: "tenant:acme.planapulse.app",
    locks.verify: "verify:acme.planapulse.app",
    locks.backup: "backup:acme.planapulse.app",
    locks.template: "template:acme.planapulse.app",
    locks.template_build: "template-build:acme.planapulse.app",
}


def test_lock_names_are_pinned() -> None:
    for make, text in LOCK_NAMES.items():
        assert make("acme.planapulse.app") == text
    assert locks.key("tenant:acme.planapulse.app") == 8045504012383292443
    assert locks.key("template:template_basic_18") == 662319523552526034


def _lock_constructor(node: ast.expr) -> str | None:
    """The constructor `node` calls when it is `locks.<name>(...)` (or `<name>(...)` in locks)."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.attr if func.value.id == "locks" else None
    return func.id if isinstance(func, ast.Name) else None


def test_every_advisory_lock_name_comes_from_a_constructor() -> None:
    constructors = {make.__name__ for make in LOCK_NAMES}
    calls = 0
    for path in sorted((ROOT / "jobs").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name != "advisory":
                continue
            calls += 1
            args = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "name")]
            assert len(args) == 1, f"{path}:{node.lineno}: advisory() without a name"
            made = _lock_constructor(args[0])
            assert made in constructors, (
                f"{path}:{node.lineno}: the lock name must be one of locks.{sorted(constructors)}"
                f"(...), not {ast.unparse(args[0])}"
            )
    assert calls >= 10  # the scan saw the call sites (a broken walk would pass vacuously)


def test_second_holder_waits_then_times_out_with_75(
    env: dict[str, str], pg: psycopg.Connection[Any], uid: str
) -> None:
    name = f"test:{uid}"
    holder = driver(env, "hold-lock", name, "5", "30")
    try:
        wait_for_line(holder, "lock held")
        started = time.monotonic()
        second = driver(env, "hold-lock", name, "1.5")
        out, err = second.communicate(timeout=30)
        waited = time.monotonic() - started
        assert second.returncode == 75, out + err
        res = json.loads(out.strip().splitlines()[-1])
        assert res["outcome"] == "failed"
        assert "still held" in res["error"]
        assert any('"lock busy, waiting"' in line for line in out.splitlines())
        assert waited >= 1.5  # it did wait for the bounded time before giving up
    finally:
        holder.kill()
        holder.wait()


def test_killed_holders_lock_is_freed(
    env: dict[str, str], pg: psycopg.Connection[Any], uid: str
) -> None:
    name = f"test:{uid}"
    holder = driver(env, "hold-lock", name, "5", "30")
    wait_for_line(holder, "lock held")
    assert not lock_is_free(pg, name)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    until = time.monotonic() + 10
    while not lock_is_free(pg, name):
        assert time.monotonic() < until, "lock of a SIGKILLed holder was not released"
        time.sleep(0.1)
    follower = driver(env, "hold-lock", name, "5")
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, out + err


def test_sigterm_stops_child_releases_lock_and_exits_75(
    env: dict[str, str], pg: psycopg.Connection[Any], uid: str, tmp_path: Path
) -> None:
    name = f"test:{uid}"
    holder = driver(env, "hold-lock", name, "5", "300")
    seen = wait_for_line(holder, '"started"')
    child_pid = next(json.loads(line)["pid"] for line in seen if '"started"' in line)
    holder.send_signal(signal.SIGTERM)
    out, _ = holder.communicate(timeout=30)
    assert holder.returncode == 75
    res = json.loads(out.strip().splitlines()[-1])
    assert res["outcome"] == "failed"
    assert res["exit_code"] == 75
    assert "signal 15" in res["error"]
    assert json.loads((tmp_path / "termination-log").read_text()) == res
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)  # the sleep child was stopped with its parent
    assert lock_is_free(pg, name)


def test_redaction_across_logs_child_output_result_and_termination(
    pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    token = "tok-9f8e7d6c5b4a"
    password = "pg-Pa55-w0rd-xyz"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    dsn = f"host=127.0.0.1 port=5432 user=postgres password={password} dbname=postgres"
    env = job_env(pg_dsn, redis_url, tmp_path, PLANA_PG_DSN=dsn, PGPASSWORD="env-pw-1234")
    proc = driver(env, "leak", str(token_file))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 65
    termination = (tmp_path / "termination-log").read_text()
    everything = out + err + termination
    assert "child saw" in everything  # the child's line was logged...
    for secret in (token, password, "env-pw-1234"):
        assert secret not in everything  # ...but no secret reached any output
    assert "***" in everything


def test_redact_patterns() -> None:
    assert "hunter22" not in redact.text("postgresql://u:hunter22@db:5432/x")
    assert "hunter22" not in redact.text("host=db password=hunter22 user=u")
    assert "abcdefgh12345" not in redact.text("Authorization: Bearer abcdefgh12345")
    assert "whsec_" not in redact.text("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert redact.value({"api_key": "k", "nested": {"password": "p"}}) == {
        "api_key": "***",
        "nested": {"password": "***"},
    }
    assert redact.text("nothing secret here") == "nothing secret here"


def test_result_is_truncated_to_valid_json_within_4kib() -> None:
    obj = {
        "job": "x",
        "outcome": "failed",
        "exit_code": 70,
        "duration_s": 1.0,
        "error": "e" * 5000,
        "big": ["y" * 100] * 100,
        "small": 1,
    }
    text = result.encode(obj)
    assert len(text.encode()) <= 4096
    decoded = json.loads(text)
    assert decoded["truncated"] is True
    assert decoded["outcome"] == "failed" and decoded["exit_code"] == 70
    assert decoded["small"] == 1 and "big" not in decoded


def test_unwritable_termination_log_is_skipped_quietly(
    run_job: Any, uid: str, tmp_path: Path
) -> None:
    run = run_job(
        ["emit-event", "--subdomain", "acme", "--project-id", "1", "--tier", "pro",
         "--stream", f"{uid}:s"],
        PLANA_TERMINATION_LOG=str(tmp_path / "no" / "such" / "dir" / "log"),
    )  # fmt: skip
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "created"


def test_help_lists_commands_and_usage_errors_exit_64(run_job: Any) -> None:
    run = run_job(["--help"])
    assert run.rc == 0
    assert "emit-event" in run.stdout
    bad = run_job(["no-such-job"])
    assert bad.rc == 64
    assert len(bad.stderr.strip().splitlines()) == 1


def test_job_body_runs_with_the_collector_on_and_start_up_frozen() -> None:
    """main() pauses the cyclic collector while modules load (a CPU saving, see jobs/cli.py);
    loading the command must turn it back on, or a long job would never collect, and freeze
    what start-up allocated. Fails if either half is dropped."""
    probe = (
        "import gc, click\n"
        "from jobs import cli\n"
        "@click.command('probe')\n"
        "def probe():\n"
        "    print(gc.isenabled(), gc.get_freeze_count() > 0)\n"
        "cli.COMMANDS['probe'] = '__main__:probe'\n"
        "print(gc.isenabled())\n"
        "cli.main(['probe'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["True", "True True"]


def test_drivers_load_only_with_the_modules_that_use_them_and_register_their_hooks() -> None:
    """The runner reaches PostgreSQL, Redis and the locks only through hooks those modules
    register on import: emit-event must start without psycopg or matrix-nio, and once a
    PostgreSQL job's modules are loaded its classifier, lock check and SIGTERM cancel are in
    place (without them a lost lock would go unnoticed and a SIGTERM would leave its statement
    running, with no error)."""
    probe = (
        "import json, sys\n"
        "import jobs.cli, jobs.commands.emit_event\n"
        "print(json.dumps(sorted(m for m in ('psycopg', 'nio', 'httpx') if m in sys.modules)))\n"
        "from jobs.core import runner\n"
        "hooks = lambda: sorted(f'{f.__module__}.{f.__name__}' for f in"
        " runner._classifiers + runner._step_checks + runner._terminate_hooks)\n"
        "print(json.dumps(hooks()))\n"
        "import jobs.commands.tenant_db\n"
        "print(json.dumps(hooks()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded, before, after = (json.loads(line) for line in done.stdout.splitlines())
    assert loaded == []
    assert before == ["jobs.adapters.redis_client.classify"]
    assert after == [
        "jobs.adapters.pg.cancel_running",
        "jobs.adapters.pg.classify",
        "jobs.adapters.pg.locks.check_held",
        "jobs.adapters.redis_client.classify",
    ]
