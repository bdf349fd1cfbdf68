"""jobs.core.background: threads beside a step, in its log context, stopped and joined when it
fails (SIGTERM included)."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import structlog

from jobs.core import background
from jobs.core.errors import Terminated


def _until_stopped(log: list[str], started: threading.Event, *, stop: threading.Event) -> str:
    started.set()
    while not stop.wait(0.01):
        pass
    time.sleep(0.05)  # work after noticing: the caller must still wait for it
    log.append("stopped")
    return "stopped"


def test_body_error_stops_and_joins_the_thread_before_raising() -> None:
    log: list[str] = []
    started = threading.Event()
    with pytest.raises(KeyError):
        with background.beside(_until_stopped, log, started):
            assert started.wait(5)
            raise KeyError("step failed")
    assert log == ["stopped"]  # joined: nothing of it runs after the exception surfaced


def _count(n: int, *, stop: threading.Event) -> int:
    return sum(range(n)) if not stop.is_set() else -1


def test_normal_exit_waits_for_the_result() -> None:
    with background.beside(_count, 1000) as future:
        pass
    assert future.done() and future.result() == sum(range(1000))


def _fails(*, stop: threading.Event) -> None:
    raise OSError("disk full")


def test_thread_error_surfaces_from_its_result() -> None:
    with background.beside(_fails) as future:
        pass
    with pytest.raises(OSError, match="disk full"):
        future.result()


# ---------------------------------------------------------------------------- workers()


def _context(*, stop: threading.Event) -> dict[str, object]:
    structlog.contextvars.bind_contextvars(step="inside")  # the worker's copy only
    return dict(structlog.contextvars.get_contextvars())


def test_workers_run_in_a_copy_of_the_log_context() -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(job="backup", tenant="acme", step="dump")
    try:
        with background.workers() as side:
            seen = [side.start(_context, stop=side.stop) for _ in range(3)]
        for future in seen:
            assert future.result() == {"job": "backup", "tenant": "acme", "step": "inside"}
        # What a worker binds stays in its copy.
        assert structlog.contextvars.get_contextvars()["step"] == "dump"
    finally:
        structlog.contextvars.clear_contextvars()


def _stoppable(log: list[str], started: threading.Barrier, *, stop: threading.Event) -> None:
    started.wait(5)
    while not stop.wait(0.01):
        pass
    time.sleep(0.05)  # work after noticing: the caller must still wait for it
    log.append("stopped")
    raise background.Stopped("moot")


def test_a_body_exception_stops_and_joins_every_worker_before_it_propagates() -> None:
    log: list[str] = []
    started = threading.Barrier(3)
    with pytest.raises(Terminated):
        with background.workers() as side:
            futures = [side.start(_stoppable, log, started, stop=side.stop) for _ in range(2)]
            started.wait(5)
            raise Terminated(signal.SIGTERM)
    assert side.stop.is_set()
    assert log == ["stopped", "stopped"]  # both joined before Terminated surfaced
    for future in futures:
        assert isinstance(future.exception(), background.Stopped)


def _signal_then_wait(body_done: threading.Event, *, stop: threading.Event) -> str:
    assert body_done.wait(5)
    # To the main thread itself, waiting in the join: a signal sent to the process may land on
    # another thread (a test runner's own, under pytest-xdist), which a lock wait never notices.
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
    while not stop.wait(0.01):
        pass
    return "stopped"


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def test_a_signal_that_comes_while_waiting_for_the_workers_stops_them_too() -> None:
    # As the runner's SIGTERM handler does, on the main thread, while the body is already done.
    # The signal may come just before the join blocks in its lock, where it interrupts nothing:
    # the join's bounded waits must still act on it (this hung, under load, before they did).
    previous = signal.signal(signal.SIGUSR1, _raise_terminated)
    # Unblocked on this thread for the test: a runner (an xdist worker) may have it masked.
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    body_done = threading.Event()
    try:
        with pytest.raises(Terminated):
            with background.workers() as side:
                future = side.start(_signal_then_wait, body_done, stop=side.stop)
                body_done.set()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGUSR1, previous)
    assert future.done() and future.result() == "stopped"


def _fails_with(exc: BaseException) -> None:
    raise exc


def test_a_workers_exception_reaches_the_caller_from_its_future() -> None:
    with background.workers() as side:
        failed = side.start(_fails_with, OSError(5, "Input/output error"))
        fine = side.start(sum, range(10))
    assert not side.stop.is_set()  # the body ended normally: nothing was stopped
    assert fine.result() == 45
    with pytest.raises(OSError, match="Input/output error"):
        failed.result()
