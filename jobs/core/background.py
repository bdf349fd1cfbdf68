"""Work done in threads beside the job's own step, stopped with it: the one way a job starts one.

`workers()` yields a `Workers` group; `group.start(fn, *args, **kwargs)` runs `fn` in a new
thread and returns its `Future` (its result, or the exception it raised, for the caller to
read when it needs it). Every thread of the group:

* runs in a copy of the starting thread's contextvars, so its log lines carry the job's
  structlog context (`job`, `tenant` / `template`, `step` as it was when started);
* can watch `group.stop`, a `threading.Event` (pass it: `start(fn, ..., stop=group.stop)`);
* is joined before the `with` is left. Leaving the body normally waits for every thread;
  leaving it by an exception (a failed step, SIGTERM's `Terminated`, also when it comes while
  waiting) sets `stop`, waits for the threads to notice it, and re-raises the body's
  exception: the job never exits with a thread still writing. A long `fn` must check `stop`
  often (between files, say) and raise `Stopped` when set, which only a caller that is itself
  unwinding ever sees.

`beside(fn, *args, **kwargs)` is the one-thread case: `fn(*args, stop=event, **kwargs)` while
the body runs, yielding its `Future`.

Not under this helper: the threads that pump a child process's pipes (jobs.core.proc's output
readers, jobs.adapters.remote_filestore's drainers and feeders). Their lifetime is the pipe's:
they block in a read or write a stop event cannot interrupt, and end when the child is stopped
(which `proc.spawn` does on every exit); see the comments there.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


# How long a signal may wait, at most, while the main thread waits for its workers (see join).
_SIGNAL_LATENCY = 0.2


class Stopped(Exception):
    """Raised by a worker that saw its group's `stop`: the job is unwinding, its work is moot."""


class Workers:
    """Threads started together beside one body; see the module docstring."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    def start(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run `fn(*args, **kwargs)` in a new thread, in a copy of this thread's context."""
        future: Future[T] = Future()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        finished = threading.Event()
        # Daemon only as a last resort: `workers()` always waits for it; should that wait
        # itself be cut short, a stuck thread must not keep the process alive past its exit.
        thread = threading.Thread(
            target=_run, args=(future, call, finished), name=f"beside-{_name(fn)}", daemon=True
        )
        thread.start()
        self._threads.append((thread, finished))
        return future

    def join(self) -> None:
        """Wait until every thread has finished.

        On `finished`, not `Thread.join` first: a join that a signal handler interrupts (SIGTERM
        raising `Terminated` while the job waits here) marks the thread as stopped on Python
        3.11-3.12, so the join after it would return at once with the thread still running.
        An interrupted `Event.wait` can simply be waited again.

        In short waits, not one: a signal that lands just before the thread blocks in the
        lock (after the interpreter last looked for pending signals) does not interrupt it, so
        an unbounded wait would act on SIGTERM only when the workers end on their own. A
        bounded wait returns to the interpreter, which then runs the handler.
        """
        for thread, finished in self._threads:
            while not finished.wait(_SIGNAL_LATENCY):
                pass
            thread.join()  # only its last instructions are left


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", type(fn).__name__))


def _run(future: Future[T], call: Callable[[], T], finished: threading.Event) -> None:
    try:
        if not future.set_running_or_notify_cancel():
            return
        try:
            value = call()
        except BaseException as exc:  # the caller reads it from the future, in its own thread
            future.set_exception(exc)
        else:
            future.set_result(value)
    finally:
        finished.set()


@contextmanager
def workers() -> Iterator[Workers]:
    group = Workers()
    try:
        yield group
        group.join()
    except BaseException:
        # Also reached when the exception (SIGTERM) comes during the join above.
        group.stop.set()
        group.join()
        raise


@contextmanager
def beside(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Iterator[Future[T]]:
    with workers() as group:
        yield group.start(fn, *args, stop=group.stop, **kwargs)
