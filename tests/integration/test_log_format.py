"""PLANA_LOG_FORMAT and PLANA_TERMINATION_LOG: named in the top-level help, and a log format the
jobs do not know is refused (64, one line naming the variable) before anything is written."""

from __future__ import annotations

import subprocess

import pytest
import redis

from tests.support.harness import BIN, Runner

ARGS = ["--subdomain", "acme", "--project-id", "23", "--tier", "pro", "--odoo-version", "18"]


def test_top_level_help_names_the_variables_every_job_reads() -> None:
    done = subprocess.run(
        [str(BIN / "plana-job"), "--help"], capture_output=True, text=True, check=True
    )
    assert "PLANA_LOG_FORMAT" in done.stdout
    assert "PLANA_TERMINATION_LOG" in done.stdout
    assert "json" in done.stdout and "console" in done.stdout


@pytest.mark.parametrize("value", ["text", "JSON", "json ", "pretty"])
def test_unknown_log_format_is_refused_before_any_side_effect(
    run_job: Runner, redis_url: str, uid: str, value: str
) -> None:
    stream = f"{uid}:events"
    done = run_job(["emit-event", *ARGS], PLANA_LOG_FORMAT=value, PLANA_EVENTS_STREAM=stream)
    assert done.rc == 64, done.output
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"plana-job emit-event: error: PLANA_LOG_FORMAT: must be json or console, got {value!r}"
    ]
    assert done.result["exit_code"] == 64
    client = redis.Redis.from_url(redis_url)
    assert client.keys(f"{uid}*") == []


@pytest.mark.parametrize("value", ["json", "console", ""])
def test_known_log_formats_run_the_job(
    run_job: Runner, redis_url: str, uid: str, value: str
) -> None:
    stream = f"{uid}:events"
    done = run_job(["emit-event", *ARGS], PLANA_LOG_FORMAT=value, PLANA_EVENTS_STREAM=stream)
    assert done.rc == 0, done.output
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(stream) == 1
    client.delete(*client.keys(f"{uid}*"))
