"""Walking, reading and writing a tenant's directory tree by file descriptor only.

A tenant's Odoo writes its own filestore, so any name in it may be swapped for a symlink at any
instant (to another tenant's files, or to a secret mounted in the job's pod). Everything here
therefore works on descriptors: the root is opened `O_DIRECTORY|O_NOFOLLOW`, each level is
opened relative to its parent's descriptor (`dir_fd`) with `O_NOFOLLOW`, and each file is opened
`O_NOFOLLOW|O_NONBLOCK` and `fstat`-ed as a regular file before a byte is read. Listing and
opening happen in the same pass on the same directory descriptor, so no path is ever resolved
twice: a directory replaced by a symlink after it was listed fails to open (ELOOP) and is
skipped, never followed.

- `open_root(path)`: the descriptor of a tree's root; None when absent; `FilestoreError` (65)
  when it is a symlink or not a directory.
- `walk(root_fd)`: `(rel, dir_fd, files)` for every directory, top-down, names sorted; `files`
  are the regular, non-dot files as `(name, size)`.
- `open_file(dir_fd, name)`: a regular file's descriptor and `fstat`, or None.
- `make_dir(parent_fd, name)`, `remove(parent_fd, name)`: writes relative to an opened parent.
- `remove_aside(path, aside)`: a crash-safe delete (renamed aside first, then removed), the one
  both a backup set's `.deleting` and a filestore's `.trash-…` go through.
- `fsync_dir(path)`: make a directory's entries (a rename into it) durable.
- `TarWriter`: a tar stream (GNU format) built from descriptors; the bytes go from the file to
  the output with `sendfile`, never through a path.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator

from jobs.core.errors import ConflictError, TransientError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file must not block the open (regular files ignore it).
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# What open(…, O_NOFOLLOW) answers when the name is a symlink (or, with O_DIRECTORY, a file).
_NOT_OURS = (errno.ELOOP, errno.ENOTDIR)
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
SEND_MAX = 1 << 30


class FilestoreError(ConflictError):
    """A filestore is not what it must be: corrupt content, or a symlink where a tree belongs."""


def open_root(path: str | os.PathLike[str]) -> int | None:
    """The descriptor of the directory at `path`, never through a symlink; None if absent."""
    try:
        return os.open(path, DIR_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _NOT_OURS:
            raise FilestoreError(
                f"{path} is a symlink or not a directory: refused, never followed",
                path=str(path),
            ) from None
        raise


def kind_of(path: str | os.PathLike[str]) -> str:
    """ "dir", "missing" or "other" (a symlink, a file…), from `lstat`: never follows a link."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    return "dir" if stat.S_ISDIR(st.st_mode) else "other"


def require_tree(path: str | os.PathLike[str]) -> bool:
    """True for a real directory, False when absent; `FilestoreError` for anything else."""
    found = kind_of(path)
    if found == "other":
        raise FilestoreError(
            f"{path} is a symlink or not a directory: refused, never followed", path=str(path)
        )
    return found == "dir"


def open_dir(parent_fd: int, name: str) -> int | None:
    """A subdirectory's descriptor, or None when it is gone or no longer a directory."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _NOT_OURS:
            return None  # swapped for a symlink or a file since it was listed: not followed
        raise


def list_dir(fd: int) -> tuple[list[tuple[str, int]], list[str]]:
    """(regular files as (name, size), subdirectories) of an opened directory, dot-names out."""
    files: list[tuple[str, int]] = []
    dirs: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                dirs.append(entry.name)
            elif entry.is_file(follow_symlinks=False):
                files.append((entry.name, entry.stat(follow_symlinks=False).st_size))
    files.sort()
    dirs.sort()
    return files, dirs


def walk(root_fd: int, rel: str = "") -> Iterator[tuple[str, int, list[tuple[str, int]]]]:
    """Every directory under `root_fd`, top-down: (relative path, its descriptor, its files).

    A descriptor yielded is valid until the walk moves on; the walk closes what it opened.
    """
    files, dirs = list_dir(root_fd)
    yield rel, root_fd, files
    for name in dirs:
        sub = open_dir(root_fd, name)
        if sub is None:
            continue
        try:
            yield from walk(sub, f"{rel}/{name}" if rel else name)
        finally:
            os.close(sub)


def open_file(dir_fd: int, name: str) -> tuple[int, os.stat_result] | None:
    """(descriptor, fstat) of the regular file `name` in `dir_fd`; None if it is not one now."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # swapped for a symlink since it was listed: never followed
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def sha1_of(fd: int, buf: bytearray) -> str:
    """sha1 of an opened file from its current offset, read through the caller's reused buffer
    (one allocation per walk, not per file: thousands of files per tenant)."""
    view = memoryview(buf)
    digest = hashlib.sha1(usedforsecurity=False)
    while n := os.readv(fd, [buf]):
        digest.update(view[:n])
    return digest.hexdigest()


def make_dir(parent_fd: int, name: str, *, replace: bool) -> int:
    """Create (or open) the subdirectory `name` of `parent_fd`; its descriptor.

    Whatever else holds the name (a symlink, a file) is removed first when `replace` (a
    staging tree of ours), refused otherwise (`FilestoreError`): a live tree is never written
    through a link.
    """
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass
    fd = open_dir(parent_fd, name)
    if fd is not None:
        return fd
    if not replace:
        raise FilestoreError(f"{name} is a symlink or not a directory: not written", path=name)
    remove(parent_fd, name)
    os.mkdir(name, 0o755, dir_fd=parent_fd)
    fd = open_dir(parent_fd, name)
    if fd is None:
        raise TransientError(f"{name} changed while it was being created", path=name)
    return fd


def remove(parent_fd: int, name: str) -> None:
    """Remove `name` from `parent_fd`: a link or file is unlinked, a tree removed by descriptor."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # shutil.rmtree walks by descriptor on Linux (rmtree.avoids_symlink_attacks).
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        try:
            os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass


def remove_path(path: str | os.PathLike[str]) -> bool:
    """Remove whatever is at `path` without following a symlink there; True if there was one."""
    head, name = os.path.split(os.fspath(path))
    try:
        parent = os.open(head or ".", DIR_FLAGS)
    except FileNotFoundError:
        return False
    try:
        present = kind_of(path) != "missing"
        remove(parent, name)
        return present
    finally:
        os.close(parent)


def remove_aside(
    path: str | os.PathLike[str], aside: str | os.PathLike[str], *, best_effort: bool = False
) -> bool:
    """Remove the tree at `path` so that no crash leaves part of it under its own name.

    The tree is first renamed to `aside` (a name in the same directory that says "being
    deleted": readers skip it, the next run sweeps it), then removed by descriptor, no link
    inside it followed. A symlink or file at `path` is unlinked itself (never renamed, never
    followed). `aside == path`: already aside, just removed. `best_effort`: a removal that fails
    half-way is left for the next sweep instead of failing the caller (the aside name already
    marks it as garbage). True when there was something at `path`.
    """
    found = kind_of(path)
    if found == "missing":
        return False
    doomed = path
    if found == "dir" and os.fspath(aside) != os.fspath(path):
        os.rename(path, aside)
        doomed = aside
    try:
        remove_path(doomed)
    except OSError:
        if not best_effort:
            raise
    return True


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory: the names renamed or created in it survive a node crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TarWriter:
    """A tar archive written to `out_fd` from descriptors, as `tar --create` would (GNU format).

    Members are regular files only (directories are implied by the names, as with tar's
    `--no-recursion` on a file list). A file's header comes from its `fstat`, its bytes from the
    opened descriptor by `sendfile`: the content is never read by path, and never copied
    through Python.
    """

    def __init__(self, out_fd: int) -> None:
        self.out = out_fd
        self.offset = 0
        self.files = 0
        self.bytes = 0

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.out, view)
            view = view[n:]
        self.offset += len(data)

    def add(self, dir_fd: int, name: str, arcname: str) -> bool:
        """Append the regular file `name` of `dir_fd` as `arcname`; False if it is not one."""
        opened = open_file(dir_fd, name)
        if opened is None:
            return False
        fd, st = opened
        try:
            info = tarfile.TarInfo(arcname)
            info.size = st.st_size
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = int(st.st_mtime)
            info.uid, info.gid = st.st_uid, st.st_gid
            self._write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
            left = st.st_size
            while left:
                n = os.sendfile(self.out, fd, None, min(left, SEND_MAX))
                if n == 0:
                    # Shrunk after its fstat: the header's size would lie. Odoo never rewrites
                    # an attachment, so this is a tree changing under us: try again later.
                    raise TransientError(f"{arcname} shrank while it was archived", path=arcname)
                left -= n
            self.offset += st.st_size
        finally:
            os.close(fd)
        pad = -st.st_size % BLOCK
        if pad:
            self._write(b"\0" * pad)
        self.files += 1
        self.bytes += st.st_size
        return True

    def close(self) -> None:
        """The end-of-archive blocks, padded to a whole record as tar does."""
        end = self.offset + 2 * BLOCK
        self._write(b"\0" * (2 * BLOCK + (-end % RECORD)))
