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

from jobs.core import log, redact, result
from jobs.core.errors import ExitCode, JobError, Terminated, UsageError
from jobs.core.retry import Deadline


class Job:
    """Handed to a job body: its name, deadline and the context bound onto every log line."""

    def __init__(self, name: str, timeout: float | None = None, *, dry_run: bool = False) -> None:
        self.name = name
        self.deadline = Deadline(timeout)
        # A dry run observes and plans only: entering a step (which changes state) is a bug.
        self.dry_run = dry_run
        self.context: dict[str, Any] = {"job": name}
        self.log = structlog.get_logger()

    def bind(self, **context: Any) -> None:
        """Bind identity fields (tenant, template) onto the log and the result."""
        self.context.update(context)
        log.bind(**context)

    def step(self, name: str) -> None:
        """Enter step `name`; 75 first if a lock this job holds was lost (`locks.check_held`).

        Called before every step that changes state: a job whose lock session was ended
        (terminated, timed out, cut off) must not act, because another run may already hold
        the lock and be acting on the same tenant.
        """
        if self.dry_run:
            raise JobError(f"a dry run reached step {name!r}: it must change nothing")
        log.step(name)
        _check_locks()
        self.log.info("step", step=name)

    def check_locks(self) -> None:
        """75 if a lock this job holds was lost: for a mutation inside a step, after a long wait
        (a clone, an Odoo pass, a copy) during which the lock session may have been ended."""
        _check_locks()


# Hooks the dependency modules register when they are imported, never imported from here:
# a job that never touches PostgreSQL does not pay for the driver at start-up, and a module
# that is not loaded holds no lock, no connection and no exception of its types.
Classifier = Callable[[BaseException], JobError | None]
_classifiers: list[Classifier] = []
_step_checks: list[Callable[[], None]] = []
_terminate_hooks: list[Callable[[], object]] = []


def add_classifier(fn: Classifier) -> None:
    """Have `classify` ask `fn` what an unhandled exception stands for (pg, redis_client)."""
    if fn not in _classifiers:
        _classifiers.append(fn)


def on_step(fn: Callable[[], None]) -> None:
    """Run `fn` before every step; it raises to stop the job (locks: a lost lock is 75)."""
    if fn not in _step_checks:
        _step_checks.append(fn)


def on_terminate(fn: Callable[[], object]) -> None:
    """Run `fn` on SIGTERM/SIGINT before unwinding (pg: cancel the statements in flight)."""
    if fn not in _terminate_hooks:
        _terminate_hooks.append(fn)


def _check_locks() -> None:
    for check in list(_step_checks):
        check()


def _cancel_statements() -> None:
    for hook in list(_terminate_hooks):
        hook()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # Ignore repeats so the cleanup triggered by this one (stop child, release locks) can finish.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Before unwinding (which closes the lock sessions): a statement still running on the server
    # (CREATE DATABASE waiting for a lock, a row count in a thread) would go on after we exit
    # and after our locks are released. psycopg cancels only on KeyboardInterrupt/SystemExit,
    # and Terminated is neither.
    _cancel_statements()
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


def classify(exc: BaseException) -> JobError | None:
    """The JobError an unhandled driver exception stands for (None: a bug, exit 70).

    Each dependency decides what its own failures mean, in one place (`pg.classify`,
    `redis_client.classify`): a PostgreSQL connection lost mid-job is transient (75) whichever
    step, job or thread it hit, not a bug. A dependency is asked only if its module is loaded
    (it registers with `add_classifier` on import): an exception of its driver's types cannot
    exist otherwise, and a job should not import drivers it never uses. Each one names only
    its own driver's exceptions, so the order they are asked in does not matter.
    """
    for fn in list(_classifiers):
        known = fn(exc)
        if known is not None:
            return known
    return None


def _fail(name: str, job: Job, started: float, exc: JobError) -> NoReturn:
    message = redact.text(exc.message)
    level = job.log.warning if exc.code == ExitCode.TEMPFAIL else job.log.error
    level("failed", error=message, exit_code=int(exc.code))
    print(f"plana-job {name}: error: {' '.join(message.split())}", file=sys.stderr)
    extra = {**job.context, **redact.value(exc.details), "error": message}
    finish(name, started, int(exc.code), "failed", extra)


def run(
    name: str,
    body: Callable[[Job], result.Done],
    timeout: float | None = None,
    *,
    dry_run: bool = False,
) -> NoReturn:
    """Run `body` and exit with the code its outcome calls for; never returns.

    Every failure, a bug (70) included, ends with one `plana-job {name}: error: …` line on
    stderr, the log line and the result object.
    """
    started = time.monotonic()
    try:
        log.configure()
    except UsageError as exc:  # PLANA_LOG_FORMAT: refused before the body runs
        print(f"plana-job {name}: error: {exc.message}", file=sys.stderr)
        finish(name, started, int(exc.code), "failed", {"error": exc.message})
    structlog.contextvars.clear_contextvars()
    log.bind(job=name, step="start")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    job = Job(name, timeout, dry_run=dry_run)
    try:
        done = body(job)
    except JobError as exc:
        _fail(name, job, started, exc)
    except Exception as exc:
        known = classify(exc)
        if known is not None:
            _fail(name, job, started, known)
        message = redact.text(f"{type(exc).__name__}: {exc}")
        job.log.error(
            "unexpected error", error=message, traceback=redact.text(traceback.format_exc())
        )
        print(f"plana-job {name}: error: {' '.join(message.split())}", file=sys.stderr)
        finish(name, started, int(ExitCode.SOFTWARE), "failed", {**job.context, "error": message})
    log.step("done")
    job.log.info("done", outcome=done.outcome)
    finish(name, started, 0, done.outcome, {**job.context, **done.details})
