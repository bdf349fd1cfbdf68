"""emit-event against a real Redis: exactly once, under re-runs and racing pods."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from tests.support import streams
from tests.support.harness import Runner
from tests.support.untouched import Snapshot

SPEC = ["--subdomain", "acme", "--project-id", "23", "--tier", "pro", "--odoo-version", "18"]


@pytest.fixture
def rds(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def stream(rds: redis.Redis, uid: str) -> Iterator[str]:
    name = f"{uid}:PLANA:events"
    yield name
    for key in rds.scan_iter(match=f"{uid}:*"):
        rds.delete(key)


def test_twice_gives_one_entry(run_job: Runner, rds: redis.Redis, stream: str) -> None:
    first = run_job(["emit-event", *SPEC, "--stream", stream, "--generation", "3"])
    assert first.rc == 0, first.output
    assert first.result["outcome"] == "created"
    entries = streams.xrange(rds, stream)
    assert len(entries) == 1
    entry_id, fields = entries[0]
    assert fields["type"] == "client.provisioned"
    assert fields["subdomain"] == "acme"
    assert fields["project_id"] == "23"
    assert fields["tier"] == "pro"
    assert fields["odoo_version"] == "18"
    assert fields["hostname"] == "acme.planapulse.app"
    assert fields["db_name"] == "acme.planapulse.app"
    assert fields["generation"] == "3"
    assert fields["occurred_at"].endswith("+00:00")
    assert fields["event_id"] == first.result["event_id"]
    assert first.result["entry_id"] == entry_id

    second = run_job(["emit-event", *SPEC, "--stream", stream, "--generation", "3"])
    assert second.rc == 0, second.output
    assert second.result["outcome"] == "unchanged"
    assert second.result["entry_id"] == entry_id
    assert second.result["event_id"] == first.result["event_id"]
    assert len(streams.xrange(rds, stream)) == 1


def test_new_generation_is_a_new_event(run_job: Runner, rds: redis.Redis, stream: str) -> None:
    one = run_job(["emit-event", *SPEC, "--stream", stream, "--generation", "1"])
    two = run_job(["emit-event", *SPEC, "--stream", stream, "--generation", "2"])
    assert (one.rc, two.rc) == (0, 0)
    assert one.result["event_id"] != two.result["event_id"]
    assert len(streams.xrange(rds, stream)) == 2


def test_eight_concurrent_runs_add_one_entry(
    run_job: Runner, rds: redis.Redis, stream: str
) -> None:
    procs = [run_job.popen(["emit-event", *SPEC, "--stream", stream]) for _ in range(8)]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        outcomes.append(json.loads(out.strip().splitlines()[-1])["outcome"])
    assert sorted(outcomes) == ["created"] + ["unchanged"] * 7
    assert len(streams.xrange(rds, stream)) == 1


def test_stream_is_trimmed_to_maxlen(run_job: Runner, rds: redis.Redis, stream: str) -> None:
    for i in range(300):
        rds.xadd(stream, {"filler": str(i)})
    run = run_job(["emit-event", *SPEC, "--stream", stream, "--maxlen", "100"])
    assert run.rc == 0, run.output
    # MAXLEN ~ trims whole macro nodes only: approximately 100, never the full 301.
    assert rds.xlen(stream) < 301
    assert streams.xrevrange(rds, stream, 1)[0][1]["subdomain"] == "acme"


def test_dedupe_key_expires(run_job: Runner, rds: redis.Redis, stream: str) -> None:
    run = run_job(["emit-event", *SPEC, "--stream", stream, "--dedupe-ttl", "3600"])
    assert run.rc == 0
    key = f"{stream}:dedupe:{run.result['event_id']}"
    assert 3500 < rds.ttl(key) <= 3600
    assert rds.get(key) == run.result["entry_id"]


def test_redis_down_exits_75_within_deadline(run_job: Runner, uid: str) -> None:
    started = time.monotonic()
    run = run_job(
        ["emit-event", *SPEC, "--stream", f"{uid}:s", "--redis-url", "redis://127.0.0.1:1/0"],
        PLANA_TIMEOUT="3",
    )
    elapsed = time.monotonic() - started
    assert run.rc == 75, run.output
    assert run.result["outcome"] == "failed"
    assert run.result["exit_code"] == 75
    assert "retry budget exhausted" in run.result["error"]
    assert elapsed < 3 + 10  # the deadline bounds the retries (plus process start-up)
    assert any(line.get("event") == "retrying" for line in run.logs)


def test_result_line_and_termination_file_agree(run_job: Runner, stream: str) -> None:
    run = run_job(["emit-event", *SPEC, "--stream", stream])
    assert run.rc == 0
    term = json.loads(run.termination)
    assert term == run.result
    assert term["job"] == "emit-event"
    assert term["outcome"] == "created"
    assert term["exit_code"] == 0
    assert term["tenant"] == "acme"
    assert isinstance(term["duration_s"], float)


def test_every_log_line_carries_job_tenant_and_step(run_job: Runner, stream: str) -> None:
    run = run_job(["emit-event", *SPEC, "--stream", stream])
    assert run.rc == 0
    assert run.logs
    for line in run.logs:
        assert line["job"] == "emit-event"
        assert line["tenant"] == "acme"
        assert "step" in line


def test_dry_run_plans_the_xadd_and_writes_nothing(
    run_job: Runner, rds: redis.Redis, stream: str, redis_url: str
) -> None:
    before = Snapshot.take(redis_url=redis_url, prefix=stream)
    run = run_job(["emit-event", *SPEC, "--stream", stream, "--dry-run"])
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "planned"
    assert run.result["dry_run"] is True
    assert [s["step"] for s in run.result["steps"]] == ["xadd"]
    assert Snapshot.take(redis_url=redis_url, prefix=stream).diff(before) == []
    assert rds.xlen(stream) == 0

    # Once the event is on the stream, the plan is empty: the job has nothing left to do.
    assert run_job(["emit-event", *SPEC, "--stream", stream]).rc == 0
    before = Snapshot.take(redis_url=redis_url, prefix=stream)
    again = run_job(["emit-event", *SPEC, "--stream", stream], PLANA_DRY_RUN="1")
    assert again.rc == 0, again.output
    assert again.result["outcome"] == "planned"
    assert again.result["steps"] == []
    assert again.result["entry_id"] == streams.xrange(rds, stream)[0][0]
    assert Snapshot.take(redis_url=redis_url, prefix=stream).diff(before) == []
