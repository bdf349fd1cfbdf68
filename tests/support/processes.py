"""The processes a job leaves behind: its whole tree (to stop and signal at once) and the local
ports of its sockets (to find its PostgreSQL sessions)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (children run in their own process groups)."""
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


def local_ports(pids: list[int]) -> list[int]:
    """Local TCP ports of the sockets these processes hold: their PostgreSQL sessions."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return sorted(ports)
