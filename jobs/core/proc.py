"""Child processes (odoo, tar, pg_dump, kubectl): streamed into the log, bounded, stoppable.

Every child runs in its own process group. Leaving the `spawn` block for any reason (success,
exception, SIGTERM turned into `Terminated`, timeout) stops the group: SIGTERM, a grace period,
then SIGKILL, so no child outlives the job. When the block is left by an exception while the
child still runs, how the child then really ended (exited, or ended by a signal, within the
grace after our SIGTERM; or SIGKILLed after it) is logged and, for a `JobError` (`Terminated`
included: the job still exits 75, it did not finish), added to its message and to its details
under `stopped`.

A child starts with an empty signal mask and default dispositions for SIGTERM/SIGINT, so it
sees the SIGTERM we send it at once (see `_Held`).

`spawn`/`run` take an optional `level(line) -> str` that picks the log level of each output
line ("debug", "info", "warning", "error", "critical"; default "info"), so a child whose own
log format carries levels (Odoo, `jobs.adapters.odoo`) keeps them in the job's log.
"""

from __future__ import annotations

import contextvars
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any

import structlog

from jobs.core import redact, retry
from jobs.core.errors import ConfigError, JobError, TransientError

GRACE_S = 10.0
TAIL_LINES = 20
LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Level = Callable[[str], str]


@dataclass
class Child:
    """A running child process; `tail` keeps its last stderr (or merged) lines for errors."""

    name: str
    popen: subprocess.Popen[bytes]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    readers: list[threading.Thread] = field(default_factory=list)

    def wait(self, timeout: float | None = None, deadline: retry.Deadline | None = None) -> int:
        """Wait in short slices so a signal handler can interrupt; TransientError on timeout."""
        limit = timeout
        if deadline is not None:
            limit = deadline.remaining() if limit is None else min(limit, deadline.remaining())
        until = None if limit is None else time.monotonic() + limit
        while True:
            try:
                code = self.popen.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if until is not None and time.monotonic() >= until:
                    raise TransientError(
                        f"{self.name} still running after {limit:.0f}s: stopped", command=self.name
                    ) from None
        for reader in self.readers:
            reader.join()
        return code


def _pump(
    stream: IO[bytes],
    name: str,
    channel: str,
    tail: deque[str],
    level: Level | None = None,
    watch: Callable[[str], None] | None = None,
) -> None:
    log = structlog.get_logger()
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            continue
        tail.append(redact.text(line))
        method = level(line) if level is not None else "info"
        getattr(log, method if method in LEVELS else "info")(line, child=name, stream=channel)
        if watch is not None:
            watch(redact.text(line))
    stream.close()


def _ended(code: int) -> str:
    return f"ended by signal {-code}" if code < 0 else f"exited {code}"


def _stop(popen: subprocess.Popen[bytes], grace: float) -> str | None:
    """Stop the child's group; how the child ended, in words (None: it had ended already)."""
    if popen.poll() is not None:
        return None
    try:
        os.killpg(popen.pid, signal.SIGTERM)
        code = popen.wait(timeout=grace)
        return f"{_ended(code)} within the {grace:g}s grace after SIGTERM"
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        return f"killed by SIGKILL after the {grace:g}s grace"
    except ProcessLookupError:  # the group ended between poll and killpg
        return _ended(popen.wait())


class _Held:
    """Holds SIGTERM/SIGINT in Python, not in the kernel, while a child is being started.

    A signal turned into `Terminated` inside `Popen`, after the fork, would orphan the child:
    nobody would know its pid to stop it. Blocking the signals with `pthread_sigmask` around
    `Popen` would be wrong twice: the mask is inherited through fork and exec,
    so every child started with SIGTERM/SIGINT blocked, never saw our SIGTERM and died only by
    SIGKILL after the grace; and it did not even close the window once other threads run (the
    kernel hands a process-directed signal to any thread that does not block it, and CPython
    then runs the Python handler in the main thread, inside `Popen`). Popen has no option to
    reset the child's mask, and `preexec_fn` runs Python in a forked copy of a multi-threaded
    process (unsafe; documented as such), so the mask is left alone: instead the Python-level
    handlers are swapped for one that only records the signal, and `release` puts the real
    handlers back and re-raises a recorded signal, where the caller is ready to stop the child.
    The child inherits an empty mask and, as for any handled signal, default dispositions.

    Python runs signal handlers only in the main thread, so only there can a handler interrupt
    `Popen`; in another thread there is nothing to hold.
    """

    def __init__(self) -> None:
        self.saved: dict[int, Any] = {}
        self.pending: int | None = None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if handler is not None:  # None: installed outside Python, cannot be put back
                self.saved[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        if self.pending is None:
            self.pending = signum

    def release(self) -> None:
        """Put the real handlers back; a signal that came meanwhile is delivered now."""
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)
        self.saved.clear()
        if self.pending is not None:
            signal.raise_signal(self.pending)  # runs the real handler here (it may raise)


def _report_stop(exc: BaseException, name: str, how: str | None) -> None:
    """Say how the child ended when the job stopped it early (SIGTERM, timeout, an error)."""
    if how is None:
        return  # it had ended by itself: whoever raised knows how
    structlog.get_logger().info("stopped", child=name, how=how)
    if isinstance(exc, JobError):
        exc.message = f"{exc.message}; {name} {how}"
        stopped = exc.details.setdefault("stopped", {})
        if isinstance(stopped, dict):
            stopped[name] = how


@contextmanager
def spawn(
    argv: Sequence[str],
    *,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    grace: float = GRACE_S,
    pass_fds: Sequence[int] = (),
    level: Level | None = None,
    watch: Callable[[str], None] | None = None,
) -> Iterator[Child]:
    """Start `argv`; log its stderr (and stdout, unless `stdout` is given) line by line.

    `watch` sees every line too (redacted), from the reader threads, all of them before
    `Child.wait` returns: for what a caller must know of the whole output, beyond `tail`. It
    must not raise (a reader that dies stops draining the pipe).
    """
    name = name or os.path.basename(argv[0])
    log_stdout = stdout is None
    # Hold SIGTERM/SIGINT until the try below is armed, so no child can be started without
    # someone to stop it; a signal that came meanwhile is delivered on release.
    held = _Held()
    readers: list[threading.Thread] = []
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=subprocess.PIPE if log_stdout else stdout,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            pass_fds=tuple(pass_fds),  # e.g. a verified file handed on as /dev/fd/N
            start_new_session=True,  # own process group: we stop it and all its children
        )
    except FileNotFoundError:
        held.release()
        raise ConfigError(f"{name}: executable not found: {argv[0]}") from None
    except PermissionError:
        held.release()
        raise ConfigError(f"{name}: not executable: {argv[0]}") from None
    except BaseException:
        held.release()
        raise
    # From here on a signal (Terminated) may arrive at any instruction: stop the child then.
    try:
        held.release()
        child = Child(name=name, popen=popen, readers=readers)
        channels: list[tuple[IO[bytes] | None, str]] = [(popen.stderr, "stderr")]
        if log_stdout:
            channels.append((popen.stdout, "stdout"))
        for stream, channel in channels:
            if stream is None:
                continue
            ctx = contextvars.copy_context()  # keep job/tenant/step on the child's lines
            # A pump of the child's pipe, not a jobs.core.background worker: it blocks in a read
            # no stop event can interrupt and ends at the pipe's EOF, when the child (stopped on
            # every exit below) is gone; it is joined (bounded by the grace) for the last lines.
            thread = threading.Thread(
                target=ctx.run,
                args=(_pump, stream, name, channel, child.tail, level, watch),
                daemon=True,
            )
            thread.start()
            child.readers.append(thread)
        structlog.get_logger().info("started", child=name, pid=popen.pid, argv=redact.value(argv))
        yield child
    except BaseException as exc:
        how = _stop(popen, grace)
        for reader in readers:  # the child's last words (a traceback) belong in the log
            reader.join(timeout=grace)
        _report_stop(exc, name, how)
        raise
    else:
        _stop(popen, grace)


@dataclass(frozen=True)
class Completed:
    returncode: int
    tail: list[str]
    duration_s: float


def run(
    argv: Sequence[str],
    *,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    deadline: retry.Deadline | None = None,
    stdout: int | IO[Any] | None = None,
    pass_fds: Sequence[int] = (),
    level: Level | None = None,
    watch: Callable[[str], None] | None = None,
) -> Completed:
    """Run to completion (bounded by `timeout` and the deadline) and report how it ended."""
    started = time.monotonic()
    with spawn(
        argv,
        name=name,
        env=env,
        cwd=cwd,
        stdout=stdout,
        pass_fds=pass_fds,
        level=level,
        watch=watch,
    ) as child:
        code = child.wait(timeout=timeout, deadline=deadline)
    duration = round(time.monotonic() - started, 3)
    structlog.get_logger().info("exited", child=child.name, returncode=code, duration_s=duration)
    return Completed(returncode=code, tail=list(child.tail), duration_s=duration)
