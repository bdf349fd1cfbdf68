"""Child processes (odoo, tar, pg_dump, kubectl): streamed into the log, bounded, stoppable.

Every child runs in its own process group. Leaving the `spawn` block for any reason (success,
exception, SIGTERM turned into `Terminated`, timeout) stops the group: SIGTERM, a grace period,
then SIGKILL, so no child outlives the job.
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
from typing import IO, Any

import structlog

from jobs import redact, retry
from jobs.errors import ConfigError, TransientError

GRACE_S = 10.0
TAIL_LINES = 20


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
    watch: Callable[[str], None] | None = None,
) -> None:
    log = structlog.get_logger()
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            continue
        tail.append(redact.text(line))
        log.info(line, child=name, stream=channel)
        if watch is not None:
            watch(redact.text(line))
    stream.close()


def _stop(popen: subprocess.Popen[bytes], grace: float) -> None:
    if popen.poll() is not None:
        return
    try:
        os.killpg(popen.pid, signal.SIGTERM)
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
    except ProcessLookupError:
        pass


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
    watch: Callable[[str], None] | None = None,
) -> Iterator[Child]:
    """Start `argv`; log its stderr (and stdout, unless `stdout` is given) line by line.

    `watch` sees every line too (redacted), from the reader threads, all of them before
    `Child.wait` returns: for what a caller must know of the whole output, beyond `tail`. It
    must not raise (a reader that dies stops draining the pipe).
    """
    name = name or os.path.basename(argv[0])
    log_stdout = stdout is None
    # Hold SIGTERM/SIGINT until the try/finally below is armed, so no child can be started
    # without someone to stop it; a pending signal is delivered on unblocking.
    blocked = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
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
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        raise ConfigError(f"{name}: executable not found: {argv[0]}") from None
    except PermissionError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        raise ConfigError(f"{name}: not executable: {argv[0]}") from None
    # From here on a signal (Terminated) may arrive at any instruction: stop the child then.
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        child = Child(name=name, popen=popen)
        channels: list[tuple[IO[bytes] | None, str]] = [(popen.stderr, "stderr")]
        if log_stdout:
            channels.append((popen.stdout, "stdout"))
        for stream, channel in channels:
            if stream is None:
                continue
            ctx = contextvars.copy_context()  # keep job/tenant/step on the child's lines
            thread = threading.Thread(
                target=ctx.run,
                args=(_pump, stream, name, channel, child.tail, watch),
                daemon=True,
            )
            thread.start()
            child.readers.append(thread)
        structlog.get_logger().info("started", child=name, pid=popen.pid, argv=redact.value(argv))
        yield child
    finally:
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
    watch: Callable[[str], None] | None = None,
) -> Completed:
    """Run to completion (bounded by `timeout` and the deadline) and report how it ended."""
    started = time.monotonic()
    with spawn(
        argv, name=name, env=env, cwd=cwd, stdout=stdout, pass_fds=pass_fds, watch=watch
    ) as child:
        code = child.wait(timeout=timeout, deadline=deadline)
    duration = round(time.monotonic() - started, 3)
    structlog.get_logger().info("exited", child=child.name, returncode=code, duration_s=duration)
    return Completed(returncode=code, tail=list(child.tail), duration_s=duration)
