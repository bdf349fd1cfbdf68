"""`make bench`: matrix-room, account-webhook and erp-callback against their real peers.

What matters for these jobs is that a re-run is cheap (the Composition re-runs them after every
TTL) and that a dead peer costs no more than the deadline. Every figure is the best wall clock
of N fresh `plana-job` processes (Python start-up included), as a ratio to a baseline measured
in the same run on the same machine:

* re-run → the same subcommand's `--help` (the process and its imports, no work): the work of an
  `unchanged` run on top of starting the process. Targets: webhook and ERP ≤ 1.6, Matrix ≤ 2.0
  (whoami, resolve, room state: three round trips to Synapse).
* peer down → `--help` + PLANA_TIMEOUT: how far past its deadline a job gives up (≤ 1.2).

Synapse comes from PLANA_TEST_SYNAPSE_PYTHON or .venv-synapse (`make synapse`); without it the
Matrix rows are reported as not measured.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.report import Measure, Row
from tests.support.servers.erp import Erp, ErpServer
from tests.support.servers.webhook import WebhookReceiver
from tests.support.synapse import Synapse, free_port

ROOT = Path(__file__).resolve().parent.parent
PLANA_JOB = Path(sys.executable).parent / "plana-job"
N = int(os.environ.get("BENCH_RUNS", "7"))
DEADLINE_S = 2.0
SPEC = ["--subdomain", "benchco", "--project-id", "7", "--tier", "pro",
        "--owner-email", "owner@example.com", "--owner-name", "Bench Owner"]  # fmt: skip


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANA_")}
    env.update(PLANA_LOG_FORMAT="json", PLANA_TERMINATION_LOG=str(tmp / "term"), **extra)
    return env


def _timed(args: list[str], env: dict[str, str], expect: int) -> float:
    started = time.perf_counter()
    proc = subprocess.run([str(PLANA_JOB), *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != expect:
        raise RuntimeError(f"{args[0]} exited {proc.returncode}, wanted {expect}: {proc.stderr}")
    return elapsed


def _pair(
    base_args: list[str], args: list[str], env: dict[str, str], expect: int = 0, n: int = N
) -> tuple[float, float]:
    """Best of `n` for baseline and job, run alternately so that both see the same machine
    load; the minimum is the least disturbed by other work on a shared machine."""
    base, job = [], []
    for _ in range(n):
        base.append(_timed(base_args, env, 0))
        job.append(_timed(args, env, expect))
    return min(base), min(job)


RERUN = "`unchanged` re-run vs its own `--help` (the process, no work)"
DOWN = "peer down vs `--help` + PLANA_TIMEOUT"
WEBHOOK_RERUN = Measure("account-webhook", RERUN.replace("`unchanged` re-run", "re-delivery"),
                        "<= 1.6")  # fmt: skip
WEBHOOK_DOWN = Measure("account-webhook", DOWN, "<= 1.2")
ERP_RERUN = {api: Measure("erp-callback", f"{RERUN} ({api})", "<= 1.6")
             for api in ("jsonrpc", "json2")}  # fmt: skip
MATRIX_RERUN = Measure("matrix-room", RERUN, "<= 2.0")
MATRIX_DOWN = Measure("matrix-room", DOWN, "<= 1.2")
MEASURES = [WEBHOOK_RERUN, WEBHOOK_DOWN, *ERP_RERUN.values(), MATRIX_RERUN, MATRIX_DOWN]


def _rows_http(tmp: Path) -> list[Row]:
    rows: list[Row] = []
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    (tmp / "whsec").write_text(secret)
    with WebhookReceiver(secret) as rcv:
        env = _env(tmp, PLANA_ACCOUNT_WEBHOOK_URL=rcv.url,
                   PLANA_ACCOUNT_WEBHOOK_SECRET_FILE=str(tmp / "whsec"))  # fmt: skip
        base, job = _pair(["account-webhook", "--help"], ["account-webhook", *SPEC], env)
        rows.append(Row(WEBHOOK_RERUN, base, job))
        down = _env(tmp, PLANA_ACCOUNT_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/",
                    PLANA_ACCOUNT_WEBHOOK_SECRET_FILE=str(tmp / "whsec"),
                    PLANA_TIMEOUT=str(DEADLINE_S))  # fmt: skip
        base, job = _pair(["account-webhook", "--help"], ["account-webhook", *SPEC], down, 75, 3)
        rows.append(Row(WEBHOOK_DOWN, base + DEADLINE_S, job))

    key = secrets.token_hex(20)
    (tmp / "erpkey").write_text(key)
    with ErpServer(Erp(db="erp", login="jobs", api_key=key)) as erp:
        for api in ("jsonrpc", "json2"):
            env = _env(tmp, PLANA_ERP_URL=erp.url, PLANA_ERP_DB="erp", PLANA_ERP_LOGIN="jobs",
                       PLANA_ERP_API_KEY_FILE=str(tmp / "erpkey"), PLANA_ERP_API=api)  # fmt: skip
            _timed(["erp-callback", *SPEC[:6]], env, 0)  # the create; then measure re-runs
            base, job = _pair(["erp-callback", "--help"], ["erp-callback", *SPEC[:6]], env)
            rows.append(Row(ERP_RERUN[api], base, job))
    return rows


def _rows_matrix(tmp: Path) -> list[Row]:
    hs = Synapse.from_env(tmp / "synapse").start()
    try:
        bot = hs.register(f"bench-bot-{secrets.token_hex(3)}")
        staff = hs.register(f"bench-staff-{secrets.token_hex(3)}")
        (tmp / "mxtoken").write_text(bot.access_token)
        env = _env(tmp, PLANA_MATRIX_HOMESERVER=hs.url, PLANA_MATRIX_SERVER_NAME=hs.server_name,
                   PLANA_MATRIX_TOKEN_FILE=str(tmp / "mxtoken"),
                   PLANA_MATRIX_INVITE=staff.user_id)  # fmt: skip
        args = ["matrix-room", *SPEC[:6], "--owner-name", "Bench Owner",
                "--subdomain", f"b{secrets.token_hex(4)}"]  # fmt: skip
        _timed(args, env, 0)  # the create; then measure re-runs
        base, job = _pair(["matrix-room", "--help"], args, env)
        rows = [Row(MATRIX_RERUN, base, job)]
        down = {**env, "PLANA_MATRIX_HOMESERVER": f"http://127.0.0.1:{free_port()}",
                "PLANA_TIMEOUT": str(DEADLINE_S)}  # fmt: skip
        base, job = _pair(["matrix-room", "--help"], args, down, 75, 3)
        rows.append(Row(MATRIX_DOWN, base + DEADLINE_S, job))
        return rows
    finally:
        hs.stop()


def measure() -> tuple[list[Row], list[str]]:
    notes = [f"side effects: best of {N} fresh processes each; peer-down deadline"
             f" {DEADLINE_S:g} s"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-side-") as tmpdir:
        tmp = Path(tmpdir)
        rows = _rows_http(tmp)
        try:
            rows += _rows_matrix(tmp)
        except RuntimeError as exc:
            notes.append(f"matrix-room: not measured ({str(exc).splitlines()[0]})")
    return rows, notes


def main() -> int:
    return report.run(measure)


if __name__ == "__main__":
    sys.exit(main())
