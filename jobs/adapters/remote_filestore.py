"""One side of a filestore copy: a directory reached directly (`local`) or through `kubectl exec`.

Through kubectl every operation is an ordinary command (find, tar, sha1sum, mkdir, mv, cp, rm)
run in the holder pod (the Odoo images: Debian/Ubuntu, so GNU find, tar and coreutils are
there). A local side is walked by file descriptor instead (jobs.core.fstree), never by a path the
tenant could have swapped: the listing, the hashing, the source half of the tar pipe (a tar
stream written from descriptors, fed to the target's `tar -x`), the merge of the staging into
an existing target (hard links made relative to opened directories) and the removal of the
staging. `{root}/{db}` that is a symlink is refused (`FilestoreError`, 65) on either side.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
import posixpath
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import IO

from jobs.core import fstree, proc, retry
from jobs.core.errors import TransientError

Listing = dict[str, int]  # relative file name → size in bytes
PIPE_SIZE = 1 << 20


@dataclass(frozen=True)
class Side:
    label: str  # "source" | "target": names the side in logs and errors
    root: str  # the filestore root as the side sees it
    prefix: tuple[str, ...] = ()  # () runs locally; the kubectl exec argv otherwise

    @classmethod
    def kubectl(
        cls,
        label: str,
        root: str,
        *,
        namespace: str,
        pod: str,
        container: str | None,
        kubectl: str = "kubectl",
    ) -> Side:
        prefix = [kubectl, "exec", "-i", "-n", namespace, pod]
        if container:
            prefix += ["-c", container]
        return cls(label, root, (*prefix, "--"))

    @property
    def local(self) -> bool:
        return not self.prefix

    def argv(self, *cmd: str) -> list[str]:
        return [*self.prefix, *cmd]

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)


def _feed(stream: IO[bytes] | None, data: bytes) -> None:
    if stream is None:
        return
    try:
        stream.write(data)
    except BrokenPipeError:
        pass  # the child died early: its exit code tells why
    finally:
        try:
            stream.close()
        except BrokenPipeError:
            pass


def _drain(stream: IO[bytes] | None, into: list[bytes]) -> None:
    if stream is not None:
        into.append(stream.read())
        stream.close()


def _failure(side: Side, what: str, code: int, tail: Sequence[str]) -> TransientError:
    # tar ends with a generic "Exiting with failure status"; the cause is a line or two above.
    last = " | ".join(tail[-3:]) if tail else "no output"
    return TransientError(
        f"{side.label}: {what} failed with exit code {code}: {last}", side=side.label, command=what
    )


def run_all(
    calls: Sequence[tuple[Side, Sequence[str], bytes | None]],
    *,
    what: str,
    deadline: retry.Deadline,
) -> list[bytes]:
    """Run commands concurrently (stdin fed, stdout captured); any non-zero exit → error (75).

    The children are started from this thread so that leaving (SIGTERM included) stops them;
    helper threads only move bytes.
    """
    outputs: list[list[bytes]] = [[] for _ in calls]
    with ExitStack() as stack:
        children: list[tuple[Side, proc.Child, list[threading.Thread]]] = []
        for (side, cmd, data), out in zip(calls, outputs, strict=True):
            child = stack.enter_context(
                proc.spawn(
                    side.argv(*cmd),
                    name=f"{side.label} {cmd[0]}",
                    stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                )
            )
            # Pumps of the child's pipes, not jobs.core.background workers: each blocks in a
            # read or write no stop event can interrupt, and ends when the pipe does — the child
            # exits, or is stopped by proc.spawn when this stack unwinds (SIGTERM included).
            threads = [threading.Thread(target=_drain, args=(child.popen.stdout, out), daemon=True)]
            if data is not None:
                threads.append(
                    threading.Thread(target=_feed, args=(child.popen.stdin, data), daemon=True)
                )
            for thread in threads:
                thread.start()
            children.append((side, child, threads))
        for side, child, threads in children:
            code = child.wait(deadline=deadline)
            for thread in threads:
                thread.join()
            if code != 0:
                raise _failure(side, what, code, list(child.tail))
    return [b"".join(out) for out in outputs]


def run(side: Side, cmd: Sequence[str], *, what: str, deadline: retry.Deadline) -> bytes:
    return run_all([(side, cmd, None)], what=what, deadline=deadline)[0]


# Lists the files under those of the directories "$2"… (names under the root "$1") that exist:
# `D <dir>` for each of them, then `F <dir> <name> <size>` per file, NUL-separated. A missing
# root or directory is an answer (nothing there yet), not a failure. Dot-names (staging, marks,
# temporaries) are never part of a filestore's content, as in jobs.adapters.filestore; -mindepth 1
# keeps a dot-named starting point (the staging directory) itself listed.
_OBSERVE = r"""
cd "$1" 2>/dev/null || exit 0
shift; n=$#
for d; do [ -d "$d" ] && set -- "$@" "$d"; done
shift "$n"
[ $# -gt 0 ] || exit 0
printf 'D\0%s\0' "$@"
exec find "$@" -mindepth 1 \( -name '.*' -prune \) -o -type f -printf 'F\0%H\0%P\0%s\0'
"""


def _observe_cmd(side: Side, dirs: Sequence[str]) -> list[str]:
    return ["sh", "-c", _OBSERVE, "sh", side.root, *dirs]


def _parse(out: bytes) -> dict[str, Listing]:
    fields = out.decode("utf-8", "surrogateescape").split("\0")
    found: dict[str, Listing] = {}
    i = 0
    while i < len(fields) - 1:
        if fields[i] == "D":
            found[fields[i + 1]] = {}
            i += 2
        else:  # "F"
            found[fields[i + 1]][fields[i + 2]] = int(fields[i + 3])
            i += 4
    return found


def observe(side: Side, dirs: Sequence[str], *, deadline: retry.Deadline) -> dict[str, Listing]:
    """{dir: files (name → size)} for those of `dirs` (names under the root) that exist."""
    return observe_all([(side, dirs)], deadline=deadline)[0]


def observe_all(
    sides: Sequence[tuple[Side, Sequence[str]]], *, deadline: retry.Deadline
) -> list[dict[str, Listing]]:
    """`observe` on several sides at once (one command per side, concurrently)."""
    remote = [(side, dirs) for side, dirs in sides if not side.local]
    calls = [(side, _observe_cmd(side, dirs), None) for side, dirs in remote]
    answers = iter(_parse(out) for out in run_all(calls, what="list files", deadline=deadline))
    return [_observe_local(side, dirs) if side.local else next(answers) for side, dirs in sides]


@contextmanager
def _opened(side: Side, directory: str) -> Iterator[int | None]:
    """The descriptor of `{root}/{directory}` (None if absent); a symlink there: 65."""
    root = os.open(side.root, fstree.DIR_FLAGS & ~os.O_NOFOLLOW)  # the configured mount
    try:
        try:
            fd = os.open(directory, fstree.DIR_FLAGS, dir_fd=root)
        except FileNotFoundError:
            fd = None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise fstree.FilestoreError(
                f"{side.label}: {side.path(directory)} is a symlink or not a directory:"
                " refused, never followed",
                side=side.label,
            ) from None
    finally:
        os.close(root)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _observe_local(side: Side, dirs: Sequence[str]) -> dict[str, Listing]:
    found: dict[str, Listing] = {}
    if not os.path.isdir(side.root):
        return found
    for directory in dirs:
        with _opened(side, directory) as fd:
            if fd is None:
                continue
            found[directory] = {
                f"{rel}/{name}" if rel else name: size
                for rel, _dir_fd, files in fstree.walk(fd)
                for name, size in files
            }
    return found


class _Dirs:
    """Opened subdirectories of a tree, each opened relative to its parent with O_NOFOLLOW."""

    def __init__(self, root_fd: int) -> None:
        self.fds: dict[str, int | None] = {"": root_fd}

    def get(self, rel: str) -> int | None:
        if rel not in self.fds:
            head, _, name = rel.rpartition("/")
            parent = self.get(head)
            self.fds[rel] = None if parent is None else fstree.open_dir(parent, name)
        return self.fds[rel]

    def close(self) -> None:
        for rel, fd in self.fds.items():
            if rel and fd is not None:
                os.close(fd)


def sha1s(
    side: Side, directory: str, names: Sequence[str], *, deadline: retry.Deadline, jobs: int = 2
) -> dict[str, str]:
    """sha1 of each of `names` under `directory`, hashed by `jobs` sha1sum processes at once."""
    if not names:
        return {}
    if side.local:
        return _sha1s_local(side, directory, names)
    script = 'cd "$1" && exec xargs -0 -r sha1sum --'
    chunks = [names[i::jobs] for i in range(jobs) if names[i::jobs]]
    calls = [
        (side, ["sh", "-c", script, "sh", side.path(directory)], _nul(chunk)) for chunk in chunks
    ]
    found: dict[str, str] = {}
    for out in run_all(calls, what="sha1sum", deadline=deadline):
        for line in out.decode("utf-8", "surrogateescape").splitlines():
            digest, _, name = line.partition("  ")
            found[name] = digest
    return found


def _sha1s_local(side: Side, directory: str, names: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    buf = bytearray(1 << 20)
    with _opened(side, directory) as fd:
        if fd is None:
            return found
        dirs = _Dirs(fd)
        try:
            for name in names:
                head, _, base = name.rpartition("/")
                parent = dirs.get(head)
                opened = None if parent is None else fstree.open_file(parent, base)
                if opened is None:
                    continue  # not a regular file reached without a link: no digest
                file_fd, _st = opened
                try:
                    found[name] = fstree.sha1_of(file_fd, buf)
                finally:
                    os.close(file_fd)
        finally:
            dirs.close()
    return found


def _nul(names: Iterable[str]) -> bytes:
    return b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names)


@dataclass
class Progress:
    files: int = 0
    bytes: int = 0


class _Meter:
    """Progress from the bytes the receiving process has read (its /proc/<pid>/io `rchar`).

    Asking tar for `-v` would cost a flushed write per file and a context switch on our side;
    counting what the receiver consumed costs nothing per file. The archive holds the files in
    the order of `names`, each as a 512-byte header plus its data padded to 512, so the offset
    tells how many files have passed.
    """

    def __init__(self, pid: int, names: Sequence[str], sizes: Listing) -> None:
        self.io = f"/proc/{pid}/io"
        self.ends: list[int] = []
        self.totals: list[int] = []
        offset = total = 0
        for name in names:
            size = sizes.get(name, 0)
            offset += 512 + -(-size // 512) * 512
            total += size
            self.ends.append(offset)
            self.totals.append(total)

    def read(self) -> Progress | None:
        try:
            with open(self.io, encoding="ascii") as fh:
                fields = dict(line.split(": ", 1) for line in fh.read().splitlines())
            consumed = int(fields["rchar"])
        except (OSError, KeyError, ValueError):
            return None  # gone already, or /proc not readable here: skip this report
        done = bisect.bisect_right(self.ends, consumed)
        return Progress(done, self.totals[done - 1] if done else 0)


def _widen(fd: int) -> None:
    """A 1 MiB pipe between the two sides instead of 64 KiB: fewer stalls of either tar."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError):
        pass  # above fs.pipe-max-size, or not Linux: the default pipe works, a little slower


def tar_pipe(
    source: Side,
    source_dir: str,
    target: Side,
    target_dir: str,
    names: Sequence[str],
    sizes: Listing,
    *,
    deadline: retry.Deadline,
    interval: float,
    report: Callable[[Progress, float], None],
) -> Progress:
    """`tar -c` of `names` on the source piped into `tar -x` on the target; both exits checked.

    The data flows from one child to the other through an OS pipe, never through Python. A
    local source is not a `tar -c` child: its files are opened by descriptor and written into
    the pipe as a tar stream (`sendfile`, so the bytes still never pass through Python).
    """
    if source.local:
        return _tar_pipe_local(
            source, source_dir, target, target_dir, names, sizes,
            deadline=deadline, interval=interval, report=report,
        )  # fmt: skip
    # 128 KiB records instead of tar's 10 KiB: fewer writes, reads and wake-ups across the pipe
    # (and kubectl's stream); the reader takes whole records whatever the pipe hands it.
    records = ["--blocking-factor=256"]
    create = ["tar", "-cf", "-", *records, "-C", source.path(source_dir)]
    create += ["--null", "--no-recursion", "-T", "-"]  # the names come on stdin
    extract = ["tar", "-xf", "-", *records, "--read-full-records", "-C", target.path(target_dir)]
    extract += ["--no-same-owner", "--no-same-permissions"]  # the target image's owner and umask
    started = time.monotonic()
    with proc.spawn(
        source.argv(*create), name="source tar", stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as src:
        assert src.popen.stdout is not None
        _widen(src.popen.stdout.fileno())
        with proc.spawn(
            target.argv(*extract),
            name="target tar",
            stdin=src.popen.stdout,
            stdout=subprocess.DEVNULL,
        ) as dst:
            assert src.popen.stdout is not None
            src.popen.stdout.close()  # the target holds the pipe now: a dying reader is seen
            # A pump of the source tar's stdin (see run_all): it ends with that child.
            feeder = threading.Thread(
                target=_feed, args=(src.popen.stdin, _nul(names)), daemon=True
            )
            feeder.start()
            meter = _Meter(dst.popen.pid, names, sizes)
            next_report = started + interval
            while src.popen.poll() is None or dst.popen.poll() is None:
                if deadline.expired():
                    raise TransientError(
                        f"filestore copy still running after {deadline.seconds:.0f}s"
                    )
                time.sleep(0.1)
                if time.monotonic() >= next_report:
                    seen = meter.read()
                    if seen is not None:
                        report(seen, time.monotonic() - started)
                    next_report += interval
            src_code, dst_code = src.wait(), dst.wait()
            feeder.join()
            # Both exit codes: a pipeline that hid a failing `tar -c` would publish a partial copy.
            if src_code != 0:
                raise _failure(source, "tar -c", src_code, list(src.tail))
            if dst_code != 0:
                raise _failure(target, "tar -x", dst_code, list(dst.tail))
    progress = Progress(len(names), sum(sizes.get(n, 0) for n in names))
    report(progress, time.monotonic() - started)
    return progress


def _write_tar(source: Side, source_dir: str, names: Sequence[str], out: int) -> None:
    """The tar stream of `names` under `{root}/{source_dir}`, from descriptors, into `out`."""
    with _opened(source, source_dir) as fd:
        if fd is None:
            raise TransientError(f"source: {source.path(source_dir)} vanished", side="source")
        dirs = _Dirs(fd)
        try:
            tar = fstree.TarWriter(out)
            for name in names:
                head, _, base = name.rpartition("/")
                parent = dirs.get(head)
                if parent is None or not tar.add(parent, base, name):
                    # Listed as a file, now not one reached without a link: observe again.
                    raise TransientError(
                        f"source: {name} changed since it was listed", side="source"
                    )
            tar.close()
        finally:
            dirs.close()


def _tar_pipe_local(
    source: Side,
    source_dir: str,
    target: Side,
    target_dir: str,
    names: Sequence[str],
    sizes: Listing,
    *,
    deadline: retry.Deadline,
    interval: float,
    report: Callable[[Progress, float], None],
) -> Progress:
    extract = ["tar", "-xf", "-", "--blocking-factor=256", "--read-full-records"]
    extract += ["-C", target.path(target_dir), "--no-same-owner", "--no-same-permissions"]
    started = time.monotonic()
    read_end, write_end = os.pipe()
    _widen(write_end)
    failed: list[BaseException] = []

    def produce() -> None:
        try:
            _write_tar(source, source_dir, names, write_end)
        except BrokenPipeError:
            pass  # the target tar died early: its exit code tells why
        except BaseException as exc:  # re-raised in the job's thread
            failed.append(exc)
        finally:
            os.close(write_end)

    try:
        with proc.spawn(
            target.argv(*extract), name="target tar", stdin=read_end, stdout=subprocess.DEVNULL
        ) as dst:
            os.close(read_end)
            read_end = -1
            # A pump too: it spends its time blocked writing the target tar's pipe, and ends
            # (BrokenPipeError) as soon as proc.spawn stops that child on any exit.
            writer = threading.Thread(target=produce, daemon=True)
            writer.start()
            meter = _Meter(dst.popen.pid, names, sizes)
            next_report = started + interval
            while dst.popen.poll() is None:
                if deadline.expired():
                    raise TransientError(
                        f"filestore copy still running after {deadline.seconds:.0f}s"
                    )
                time.sleep(0.1)
                if time.monotonic() >= next_report:
                    seen = meter.read()
                    if seen is not None:
                        report(seen, time.monotonic() - started)
                    next_report += interval
            dst_code = dst.wait()
            writer.join()
            if failed:
                raise failed[0]
            if dst_code != 0:
                raise _failure(target, "tar -x", dst_code, list(dst.tail))
    finally:
        if read_end >= 0:
            os.close(read_end)
    progress = Progress(len(names), sum(sizes.get(n, 0) for n in names))
    report(progress, time.monotonic() - started)
    return progress


def make_dir(side: Side, directory: str, *, deadline: retry.Deadline) -> None:
    """`{root}/{directory}` exists (the staging directory; created by us, never through a link)."""
    if not side.local:
        run(side, ["mkdir", "-p", "--", side.path(directory)], what="create staging",
            deadline=deadline)  # fmt: skip
        return
    os.makedirs(side.root, exist_ok=True)
    root = os.open(side.root, fstree.DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        os.close(fstree.make_dir(root, directory, replace=True))
    finally:
        os.close(root)


def clear(side: Side, directory: str, *, deadline: retry.Deadline) -> None:
    """Remove `{root}/{directory}` (a link there is unlinked, a tree removed by descriptor)."""
    if not side.local:
        run(side, ["rm", "-rf", "--", side.path(directory)], what="clear staging",
            deadline=deadline)  # fmt: skip
        return
    fstree.remove_path(side.path(directory))


def rename(side: Side, src: str, dst: str, *, deadline: retry.Deadline) -> None:
    """Publish `{root}/{src}` as `{root}/{dst}` by one rename."""
    if not side.local:
        run(side, ["mv", "-T", "--", side.path(src), side.path(dst)], what="publish",
            deadline=deadline)  # fmt: skip
        return
    os.rename(side.path(src), side.path(dst))


def merge(side: Side, staging: str, directory: str, *, deadline: retry.Deadline) -> None:
    """Hard-link every staged file into `{root}/{directory}`, replacing what has its name.

    Locally the links are made relative to opened directories: a directory of the target
    that is a symlink is refused (65), never written through.
    """
    if not side.local:
        run(side, ["cp", "-al", "--remove-destination", "--", side.path(staging) + "/.",
                   side.path(directory) + "/"], what="publish", deadline=deadline)  # fmt: skip
        return
    with _opened(side, staging) as src, _opened(side, directory) as dst:
        if src is None or dst is None:
            raise TransientError(f"{side.label}: staging or target vanished", side=side.label)
        _link_tree(src, dst)


def _link_tree(src: int, dst: int) -> None:
    files, dirs = fstree.list_dir(src)
    for name, _size in files:
        tmp = f".{name}.link-{os.getpid()}"
        fstree.remove(dst, tmp)
        os.link(name, tmp, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
        os.replace(tmp, name, src_dir_fd=dst, dst_dir_fd=dst)
    for name in dirs:
        sub = fstree.open_dir(src, name)
        if sub is None:
            continue
        try:
            target = fstree.make_dir(dst, name, replace=False)
            try:
                _link_tree(sub, target)
            finally:
                os.close(target)
        finally:
            os.close(sub)
