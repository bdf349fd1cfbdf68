"""account-webhook against a real local receiver that verifies with `standardwebhooks`."""

from __future__ import annotations

import base64
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import JobRun, Runner
from tests.support.servers import HangingServer
from tests.support.servers.webhook import Reply, WebhookReceiver
from tests.support.untouched import Snapshot

SPEC = [
    "--subdomain", "acme", "--project-id", "23", "--tier", "pro", "--odoo-version", "18",
    "--owner-email", "owner@example.com", "--owner-name", "Acme Owner",
]  # fmt: skip


@pytest.fixture
def secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@pytest.fixture
def secret_file(tmp_path: Path, secret: str) -> str:
    path = tmp_path / "webhook-secret"
    path.write_text(secret + "\n")
    return str(path)


@pytest.fixture
def receiver(secret: str) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret) as rcv:
        yield rcv


# The delivery ledger lives in the test Redis: each receiver (test) gets a prefix of its own.
_LEDGERS: dict[int, str] = {}


def hook(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str, *extra: str, **env: str
) -> JobRun:
    prefix = _LEDGERS.setdefault(id(receiver), f"test:{uuid.uuid4().hex}")
    env.setdefault("PLANA_WEBHOOK_LEDGER_PREFIX", prefix)
    env.setdefault("PLANA_ACCOUNT_WEBHOOK_URL", receiver.url)
    env.setdefault("PLANA_ACCOUNT_WEBHOOK_SECRET_FILE", secret_file)
    return run_job.run(["account-webhook", *SPEC, *extra], env)


def assert_no_secret(output: str, secret: str) -> None:
    assert secret not in output
    assert secret.removeprefix("whsec_") not in output


def test_delivers_a_verified_event(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str, secret: str
) -> None:
    run = hook(run_job, receiver, secret_file, "--generation", "4")
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "created"
    assert run.result["status"] == 204
    assert [a.verified for a in receiver.attempts] == [True]
    (payload,) = receiver.payloads()
    assert payload["type"] == "tenant.provisioned"
    assert payload["data"] == {
        "subdomain": "acme",
        "hostname": "acme.planapulse.app",
        "projectId": 23,
        "tier": "pro",
        "odooVersion": 18,
        "owner": {"email": "owner@example.com", "name": "Acme Owner"},
        "generation": 4,
    }
    assert receiver.attempts[0].webhook_id == run.result["webhook_id"]
    assert receiver.attempts[0].headers["webhook-signature"].startswith("v1,")
    assert_no_secret(run.output, secret)


def test_rerun_with_the_ledger_is_unchanged_and_sends_nothing(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str
) -> None:
    first = hook(run_job, receiver, secret_file, "--generation", "7")
    second = hook(run_job, receiver, secret_file, "--generation", "7")
    assert first.rc == second.rc == 0, first.output + second.output
    assert first.result["outcome"] == "created"
    assert second.result["outcome"] == "unchanged"
    assert second.result["webhook_id"] == first.result["webhook_id"]
    assert second.result["delivered_at"]
    assert len(receiver.attempts) == 1

    other = hook(run_job, receiver, secret_file, "--generation", "8")
    assert other.rc == 0, other.output
    assert other.result["outcome"] == "created"
    assert len(receiver.delivered) == 2


def test_a_refused_delivery_is_not_recorded(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str
) -> None:
    receiver.plan = [Reply(400)]
    refused = hook(run_job, receiver, secret_file, "--generation", "9")
    assert refused.rc == 65, refused.output
    again = hook(run_job, receiver, secret_file, "--generation", "9")
    assert again.rc == 0, again.output
    assert again.result["outcome"] == "created"
    assert len(receiver.delivered) == 1


def test_rerun_without_a_ledger_sends_the_same_id_and_the_receiver_dedupes(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str
) -> None:
    first = hook(run_job, receiver, secret_file, "--generation", "7", PLANA_REDIS_URL="")
    second = hook(run_job, receiver, secret_file, "--generation", "7", PLANA_REDIS_URL="")
    assert first.rc == second.rc == 0, first.output + second.output
    assert first.result["webhook_id"] == second.result["webhook_id"]
    assert len(receiver.attempts) == 2
    assert all(a.verified for a in receiver.attempts)
    assert len(receiver.delivered) == 1

    other = hook(run_job, receiver, secret_file, "--generation", "8", PLANA_REDIS_URL="")
    assert other.rc == 0, other.output
    assert other.result["webhook_id"] != first.result["webhook_id"]
    assert len(receiver.delivered) == 2


def test_fails_twice_then_succeeds(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str, secret: str
) -> None:
    receiver.plan = [Reply(500), Reply(503, body=b"maintenance")]
    run = hook(run_job, receiver, secret_file)
    assert run.rc == 0, run.output
    assert [a.status for a in receiver.attempts] == [500, 503, 204]
    assert all(a.verified for a in receiver.attempts)
    assert len({a.webhook_id for a in receiver.attempts}) == 1
    assert run.result["attempts"] == 3
    assert len([x for x in run.logs if x["event"] == "retrying"]) == 2
    assert_no_secret(run.output, secret)


def test_429_honours_retry_after(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str
) -> None:
    receiver.plan = [Reply(429, headers={"Retry-After": "1"})]
    run = hook(run_job, receiver, secret_file)
    assert run.rc == 0, run.output
    assert [a.status for a in receiver.attempts] == [429, 204]
    (waited,) = [x for x in run.logs if x["event"] == "retrying"]
    assert waited["wait_s"] == 1.0


def test_retry_after_beyond_the_deadline_is_75_at_once(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str
) -> None:
    receiver.plan = [Reply(429, headers={"Retry-After": "3600"})]
    run = hook(run_job, receiver, secret_file, PLANA_TIMEOUT="30")
    assert run.rc == 75, run.output
    assert len(receiver.attempts) == 1
    assert "retry budget exhausted" in run.stderr


@pytest.mark.parametrize("status", [400, 404, 409, 410, 422])
def test_other_4xx_is_a_conflict(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str, status: int
) -> None:
    receiver.plan = [Reply(status, body=b'{"error":"no such account"}')]
    run = hook(run_job, receiver, secret_file)
    assert run.rc == 65, run.output
    assert len(receiver.attempts) == 1
    assert f"HTTP {status}" in run.stderr
    assert run.result["outcome"] == "failed"
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_wrong_secret_is_refused_by_the_receiver(
    run_job: Runner, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong_secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    wrong.write_text(wrong_secret)
    run = hook(run_job, receiver, str(wrong))
    assert run.rc == 65, run.output
    assert [a.verified for a in receiver.attempts] == [False]
    assert receiver.delivered == {}
    assert_no_secret(run.output, wrong_secret)


def test_a_server_error_that_lasts_is_75(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str
) -> None:
    receiver.plan = [Reply(502)] * 100
    run = hook(run_job, receiver, secret_file, PLANA_TIMEOUT="2")
    assert run.rc == 75, run.output
    assert 2 <= len(receiver.attempts) < 100
    assert receiver.delivered == {}


def test_a_slow_receiver_times_out_and_is_retried(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str
) -> None:
    receiver.plan = [Reply(204, delay_s=3.0)]
    run = hook(run_job, receiver, secret_file, "--request-timeout", "0.5")
    assert run.rc == 0, run.output
    assert len(receiver.attempts) == 2
    (retried,) = [x for x in run.logs if x["event"] == "retrying"]
    assert "Timeout" in retried["error"]


def test_a_receiver_that_is_down_is_75(run_job: Runner, secret_file: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on `port` now: every attempt is refused.
    run = run_job(
        ["account-webhook", *SPEC],
        PLANA_ACCOUNT_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook",
        PLANA_ACCOUNT_WEBHOOK_SECRET_FILE=secret_file,
        PLANA_TIMEOUT="2",
    )
    assert run.rc == 75, run.output
    assert "ConnectError" in run.stderr


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        ([], {"PLANA_ACCOUNT_WEBHOOK_URL": ""}, "--url / PLANA_ACCOUNT_WEBHOOK_URL: is required"),
        ([], {"PLANA_ACCOUNT_WEBHOOK_URL": "ftp://portal.example/hook"},
         "--url / PLANA_ACCOUNT_WEBHOOK_URL: must be an http:// or https:// URL"),
        ([], {"PLANA_ACCOUNT_WEBHOOK_URL": "http://user:pw@portal.example/"},
         "--url / PLANA_ACCOUNT_WEBHOOK_URL: must not carry credentials"),
        (["--event", "tenant.exploded"], {}, "--event / PLANA_WEBHOOK_EVENT: 'tenant.exploded'"),
        (["--generation", "0"], {}, "--generation / PLANA_GENERATION:"),
        (["--owner-email", "nope"], {}, "--owner-email / PLANA_OWNER_EMAIL:"),
        # Refused by the shared params.Seconds type, whose line names the flag and variable.
        (["--request-timeout", "0"], {}, "--request-timeout / PLANA_HTTP_TIMEOUT: '0' is not"),
        (["--ledger-prefix", "a b"], {}, "--ledger-prefix / PLANA_WEBHOOK_LEDGER_PREFIX:"),
        # A secret file not given at all is bad input (64); given but absent is 78 (below).
        ([], {"PLANA_ACCOUNT_WEBHOOK_SECRET_FILE": ""},
         "--secret-file / PLANA_ACCOUNT_WEBHOOK_SECRET_FILE: is required"),
    ],
)
def test_bad_input_is_64_before_any_request(
    run_job: Runner,
    receiver: WebhookReceiver,
    secret_file: str,
    args: list[str],
    env: dict[str, str],
    field: str,
) -> None:
    run = hook(run_job, receiver, secret_file, *args, **env)
    assert run.rc == 64, run.output
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"plana-job account-webhook: error: {field}")
    assert receiver.attempts == []


@pytest.mark.parametrize(
    "content", [None, "", "not-a-whsec", "whsec_%%%notbase64", "whsec_c2hvcnQ="]
)
def test_missing_or_malformed_secret_is_78(
    run_job: Runner, receiver: WebhookReceiver, tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    run = hook(run_job, receiver, str(path))
    assert run.rc == 78, run.output
    assert "PLANA_ACCOUNT_WEBHOOK_SECRET_FILE" in run.stderr
    assert receiver.attempts == []
    if content:
        assert content not in run.output


def test_sigterm_while_waiting_on_the_portal_is_75(run_job: Runner, secret_file: str) -> None:
    with HangingServer() as hang:
        proc = run_job.popen(
            ["account-webhook", *SPEC],
            PLANA_ACCOUNT_WEBHOOK_URL=hang.url + "/hook",
            PLANA_ACCOUNT_WEBHOOK_SECRET_FILE=secret_file,
            PLANA_HTTP_TIMEOUT="60",
        )
        while not hang.hits and proc.poll() is None:  # wait until the job is in the request
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, out + err
    assert "terminated by signal" in err


def test_dry_run_plans_the_delivery_and_sends_nothing(
    run_job: Runner, receiver: WebhookReceiver, secret_file: str, redis_url: str, tmp_path: Path
) -> None:
    prefix = _LEDGERS.setdefault(id(receiver), f"test:{uuid.uuid4().hex}")
    before = Snapshot.take(redis_url=redis_url, prefix=prefix)
    run = hook(run_job, receiver, secret_file, "--generation", "3", "--dry-run")
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "planned"
    assert run.result["dry_run"] is True
    assert [s["step"] for s in run.result["steps"]] == ["deliver", "ledger"]
    assert receiver.attempts == []
    assert Snapshot.take(redis_url=redis_url, prefix=prefix).diff(before) == []

    # Without a ledger there is nothing to record: the plan is the POST alone.
    bare = hook(run_job, receiver, secret_file, "--generation", "3", "--dry-run",
                PLANA_REDIS_URL="")  # fmt: skip
    assert bare.rc == 0, bare.output
    assert [s["step"] for s in bare.result["steps"]] == ["deliver"]
    assert receiver.attempts == []

    # A secret the run could not use fails the dry run as it would fail the run (78).
    broken = tmp_path / "broken-secret"
    broken.write_text("not-a-whsec")
    bad = hook(run_job, receiver, str(broken), "--dry-run")
    assert bad.rc == 78, bad.output
    assert receiver.attempts == []

    # Once delivered and recorded, the plan is empty: nothing left to do, nothing sent.
    assert hook(run_job, receiver, secret_file, "--generation", "3").rc == 0
    assert len(receiver.attempts) == 1
    before = Snapshot.take(redis_url=redis_url, prefix=prefix)
    again = hook(run_job, receiver, secret_file, "--generation", "3", PLANA_DRY_RUN="1")
    assert again.rc == 0, again.output
    assert again.result["outcome"] == "planned"
    assert again.result["steps"] == []
    assert again.result["delivered_at"]
    assert len(receiver.attempts) == 1
    assert Snapshot.take(redis_url=redis_url, prefix=prefix).diff(before) == []
