"""jobs.core.background.beside: a thread beside a step, stopped and joined when the step fails."""

from __future__ import annotations

import threading
import time

import pytest

from jobs.core import background


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
