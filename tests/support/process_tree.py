"""A job's whole process tree (its children run in their own process groups), to signal at once."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def signal_tree(pid: int, signum: int) -> list[int]:
    """Stop the whole tree first (no child may start another meanwhile), then signal it."""
    pids = descendants(pid)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    pids = sorted(set(pids) | set(descendants(pid)))
    if signum != signal.SIGSTOP:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signum)
    return pids
