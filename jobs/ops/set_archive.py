"""A set's `filestore.tar`, read as untrusted input: checked member by member, extracted by fd.

Every member must be a regular file or a directory whose name is a plain relative path (no
absolute name, no `..`, no empty or dot-leading component). Symlinks, hard links, devices,
FIFOs and anything else are refused (65) — never skipped, so a count cannot hide them. The
extraction writes each file itself, relative to the stage's directory descriptor, every level
opened `O_NOFOLLOW` and every file created `O_EXCL`: nothing but the members' regular files
and directories is ever created, and nothing outside the stage is ever touched. A file that is
not a tar, or is truncated, is 65 (it will not get better on a retry).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

from jobs.adapters import filestore
from jobs.core.errors import ConflictError, TransientError

CHUNK = 1 << 20
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Report:
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why `member` may not be in a filestore archive (None: it may)."""
    name = _name(member)
    if not (member.isreg() or member.isdir()) or member.type == tarfile.GNUTYPE_SPARSE:
        kind = "symlink" if member.issym() else "hard link" if member.islnk() else "special file"
        return f"filestore member {member.name!r} is a {kind}"
    if member.isdir() and name in ("", "."):
        return None  # the archive's root
    if not name or any(not _PART.fullmatch(p) for p in name.split("/")):
        return f"filestore member {member.name!r} is not a plain relative path"
    return None


def _name(member: tarfile.TarInfo) -> str:
    return member.name.removeprefix("./").rstrip("/")


def _members(fh: IO[bytes]) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    try:
        with tarfile.open(fileobj=fh, mode="r|") as tar:
            for member in tar:
                yield tar, member
    except (tarfile.TarError, EOFError) as exc:
        raise ConflictError(f"filestore archive is not a readable tar: {exc}") from None


def _hash_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, sink: Callable[[bytes], None]
) -> str:
    src = tar.extractfile(member)
    assert src is not None
    digest = hashlib.sha1(usedforsecurity=False)
    try:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            sink(chunk)
    except (tarfile.TarError, EOFError) as exc:
        raise ConflictError(f"filestore archive is truncated at {member.name!r}: {exc}") from None
    return digest.hexdigest()


def scan(fh: IO[bytes]) -> Report:
    """Check every member (backup-verify): each problem is reported, nothing is written."""
    report = Report()
    try:
        for tar, member in _members(fh):
            problem = member_problem(member)
            if problem:
                report.problems.append(problem)
                continue
            if member.isdir():
                continue
            report.files += 1
            report.bytes += member.size
            name = _name(member)
            digest = _hash_member(tar, member, lambda _chunk: None)
            if filestore.is_content_name(name) and digest != name.rsplit("/", 1)[-1]:
                report.problems.append(f"filestore {name}: content does not match its name")
    except ConflictError as exc:
        report.problems.append(exc.message)
    return report


class _Dirs:
    """Directory descriptors below the stage, opened (or made) one level at a time."""

    def __init__(self, root_fd: int) -> None:
        self.fds: dict[str, int] = {"": root_fd}

    def get(self, rel: str) -> int:
        if rel in self.fds:
            return self.fds[rel]
        parent, _, name = rel.rpartition("/")
        pfd = self.get(parent)
        try:
            os.mkdir(name, 0o750, dir_fd=pfd)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        except OSError as exc:  # a member file took the name, or it is a link: refuse
            raise ConflictError(f"filestore member directory {rel!r}: {exc.strerror}") from None
        self.fds[rel] = fd
        return fd

    def close(self) -> None:
        for rel, fd in self.fds.items():
            if rel:
                os.close(fd)


def extract(fh: IO[bytes], stage_fd: int) -> Report:
    """Unpack into the (empty) directory open at `stage_fd`; ConflictError on the first problem.

    Content-addressed files are checked against their names while they are written.
    """
    report = Report()
    dirs = _Dirs(stage_fd)
    try:
        for tar, member in _members(fh):
            problem = member_problem(member)
            if problem:
                raise ConflictError(problem)
            name = _name(member)
            if member.isdir():
                if name not in ("", "."):
                    dirs.get(name)
                continue
            parent, _, base = name.rpartition("/")
            pfd = dirs.get(parent)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                out = os.open(base, flags, 0o640, dir_fd=pfd)
            except FileExistsError:
                raise ConflictError(f"filestore member {name!r} appears twice") from None
            try:
                digest = _hash_member(tar, member, functools.partial(_write_all, out))
            finally:
                os.close(out)
            if filestore.is_content_name(name) and digest != base:
                raise ConflictError(f"restored filestore: {name} differs from its name")
            report.files += 1
            report.bytes += member.size
    finally:
        dirs.close()
    return report


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:  # a full or failing volume: another attempt may succeed
        raise TransientError(f"writing the restored filestore: {exc.strerror}") from None
