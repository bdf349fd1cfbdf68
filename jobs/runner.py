"""The frame every job runs in: logging, SIGTERM, deadline, exit code, result object."""

from __future__ import annotations

import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

import structlog

from jobs import log, redact, result
from jobs.errors import ExitCode, JobError, Terminated
from jobs.retry import Deadline


class Job:
    """Handed to a job body: its name, deadline and the context bound onto every log line."""

    def __init__(self, name: str, timeout: float | None = None) -> None:
        self.name = name
        self.deadline = Deadline(timeout)
        self.context: dict[str, Any] = {"job": name}
        self.log = structlog.get_logger()

    def bind(self, **context: Any) -> None:
        """Bind identity fields (tenant, template) onto the log and the result."""
        self.context.update(context)
        log.bind(**context)

    def step(self, name: str) -> None:
        log.step(name)
        self.log.info("step", step=name)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # Ignore repeats so the cleanup triggered by this one (stop child, release locks) can finish.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Terminated(signum)


def finish(job: str, started: float, code: int, outcome: str, extra: dict[str, Any]) -> NoReturn:
    obj: dict[str, Any] = {
        "job": job,
        "outcome": outcome,
        "exit_code": code,
        "duration_s": round(time.monotonic() - started, 3),
    }
    obj.update({k: v for k, v in extra.items() if k not in obj})
    result.emit(obj)
    sys.exit(code)


def run(name: str, body: Callable[[Job], result.Done], timeout: float | None = None) -> NoReturn:
    """Run `body` and exit with the code its outcome calls for; never returns."""
    started = time.monotonic()
    log.configure()
    structlog.contextvars.clear_contextvars()
    log.bind(job=name, step="start")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    job = Job(name, timeout)
    try:
        done = body(job)
    except JobError as exc:
        message = redact.text(exc.message)
        level = job.log.warning if exc.code == ExitCode.TEMPFAIL else job.log.error
        level("failed", error=message, exit_code=int(exc.code))
        print(f"plana-job {name}: error: {' '.join(message.split())}", file=sys.stderr)
        extra = {**job.context, **redact.value(exc.details), "error": message}
        finish(name, started, int(exc.code), "failed", extra)
    except Exception as exc:
        message = redact.text(f"{type(exc).__name__}: {exc}")
        job.log.error("unexpected error", error=message, traceback=traceback.format_exc())
        finish(name, started, int(ExitCode.SOFTWARE), "failed", {**job.context, "error": message})
    log.step("done")
    job.log.info("done", outcome=done.outcome)
    finish(name, started, 0, done.outcome, {**job.context, **done.details})
