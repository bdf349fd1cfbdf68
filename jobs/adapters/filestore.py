"""Odoo filestores: staged, incremental, content-verified copies, and crash-safe removal.

Every tree is read and written by file descriptor (jobs.core.fstree), never by a path the tenant
could have swapped: the root is opened `O_DIRECTORY|O_NOFOLLOW`, each level relative to its
parent, each file `O_NOFOLLOW` and `fstat`-ed as regular before a byte is read; the target is
written by `mkdir`/`open` relative to opened directories. A filestore (source or target) that
is itself a symlink is refused (`FilestoreError`, exit 65), never followed.

Stable API (tenant-db, template-build, environment, upgrade and restore jobs):

- `copy_tree(src, dst, *, kind="clone", durable=False, hashed=True, publish=True, stop=None)`
  → `CopyStats`. Copies the tree `src` (usually `{data_dir}/filestore/{template}`) to `dst`
  (`{data_dir}/filestore/{db}`). When `dst` does not exist the copy is made in the staging
  directory of that job kind beside it (`staging_path(dst, kind)`, reused after a crash of the
  same job) and published with one `rename`; a staging tree is published as exactly the
  source's file set (whatever else it holds is removed first). When `dst` exists the missing
  files are added to it in place, each through a temporary name and a rename. Files already
  present by name and size are skipped: a re-run after a crash only copies what is missing
  (inside the staging tree files are written in place: a killed write leaves a short file,
  which the size check replaces with a new one).
  Odoo names attachments by content (`ab/ab12…` = sha1 of the bytes): each such file is hashed
  as it is copied and a mismatch is refused (`FilestoreError`, exit 65). `hashed=False` leaves
  the bytes to the kernel (sendfile) and verifies by name and size only. Names starting with
  "." (staging and marker files) are never copied. A missing `src` is an empty filestore.
  `durable=True` also fsyncs files and directories (survives a node crash, not only a pod kill).
  `publish=False` fills the staging tree and stops before the rename; `publish_staged(dst,
  kind=…)` renames it into place later (so does a later `copy_tree`). `stop`, a
  `threading.Event`, ends a copy running in a thread between two files (`CopyStats.stopped`).
- `verify(path)` → `VerifyReport`: re-hashes every content-addressed file.
- `discard(path)`: removes a tree by first renaming it aside (`.{name}.trash-…`), so a crash
  mid-delete never leaves half a tree under the real name, then by descriptor (shutil.rmtree,
  which never follows a link on Linux); leftovers are swept next time. A symlink at `path` (or
  a leftover `.trash-` link) is unlinked itself: its target is never touched.
- `discard_staging(dst)`: every job kind's staging tree of `dst` (deprovision's sweep).
- `present(path)`: True for a real directory, False when absent, `FilestoreError` for a link.
- `write_mark(path, data)` / `read_mark(path)`: a small JSON file (`.plana-mark.json`) kept
  inside a tree and moved with it by renames (never copied: dot-name). template-build records
  the template's fingerprint there so a clone can tell that a template's database and its
  filestore belong together.
- `staging_path(dst, kind)`: `.{name}.{kind}.partial`, one name per job kind (`STAGING_KINDS`:
  clone = tenant-db, restore, env, upgrade, copy = filestore-copy), so no job ever takes up
  another's stage (a restore of tenant S killed mid-extraction is never published as X's
  filestore by a tenant-db of X). `is_content_name(rel)` (only top-level `ab/ab…` files;
  Odoo's `checklist/ab/ab…` GC markers are empty and copied unchecked).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.core import fstree
from jobs.core.errors import TransientError
from jobs.core.fstree import FilestoreError as FilestoreError  # 65: corrupt, or a symlinked tree

CHUNK = 1 << 20
MARK_FILE = ".plana-mark.json"
_SHA1 = re.compile(r"[0-9a-f]{40}", re.ASCII)


@dataclass
class CopyStats:
    files: int = 0  # files in the source
    copied: int = 0
    skipped: int = 0  # already present by name and size
    bytes_copied: int = 0
    published: bool = False  # the staging directory was renamed into place
    stopped: bool = False  # `stop` was set before every file was copied

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "files": self.files,
            "copied": self.copied,
            "skipped": self.skipped,
            "bytes_copied": self.bytes_copied,
            "published": self.published,
        }


@dataclass
class VerifyReport:
    files: int = 0
    bytes: int = 0
    bad: list[str] = field(default_factory=list)  # relative paths whose content ≠ name

    @property
    def ok(self) -> bool:
        return not self.bad


# Staging names, one per job kind: a stage left by one job (a restore of tenant S killed
# mid-extraction) is never taken up by another (a tenant-db for X reusing it).
STAGING_KINDS = ("clone", "restore", "env", "upgrade", "copy")
LEGACY_STAGING = ".{}.partial"  # the one name every job shared before: swept, never reused


def staging_path(dst: str | Path, kind: str = "clone") -> Path:
    """`.{name}.{kind}.partial` beside `dst`: where `kind` of job builds `dst` before publishing."""
    if kind not in STAGING_KINDS:
        raise ValueError(f"unknown staging kind {kind!r}")
    dst = Path(dst)
    return dst.parent / f".{dst.name}.{kind}.partial"


def discard_staging(dst: str | Path) -> list[Path]:
    """Remove every job's staging tree of `dst` (and the legacy shared name); those removed."""
    dst = Path(dst)
    stages = [staging_path(dst, kind) for kind in STAGING_KINDS]
    stages.append(dst.parent / LEGACY_STAGING.format(dst.name))
    return [stage for stage in stages if discard(stage)]


def is_content_name(rel: str) -> bool:
    """`ab/ab12…` (40 hex digits, in the directory named by the first two)."""
    parts = rel.split("/")
    return len(parts) == 2 and bool(_SHA1.fullmatch(parts[-1])) and parts[-2] == parts[-1][:2]


def present(path: str | Path) -> bool:
    """True for a real directory, False when absent; `FilestoreError` (65) for a symlink."""
    return fstree.require_tree(path)


_buffers = threading.local()


def _hash_copy(fin: int, fout: int) -> tuple[str, int]:
    """Copy `fin` to `fout` through one reused buffer, hashing on the way: (sha1, bytes).

    Plain os-level reads into a preallocated buffer: per file this costs the same system calls
    as `cp` (the copy runs beside PostgreSQL's clone and, with ten tenants at once, CPU spent in
    the kernel is what the jobs compete for), where `read(n)` would allocate and fault in a new
    buffer for every call.
    """
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(CHUNK)
    view = memoryview(buf)
    digest = hashlib.sha1(usedforsecurity=False)
    total = 0
    while n := os.readv(fin, [buf]):
        digest.update(view[:n])
        done = 0
        while done < n:
            done += os.write(fout, view[done:n])
        total += n
    return digest.hexdigest(), total


def _send_copy(fin: int, fout: int, size: int) -> int:
    """The kernel copies the bytes (sendfile), as `cp` and shutil.copyfile do."""
    total = 0
    while n := os.sendfile(fout, fin, None, max(size - total, CHUNK)):
        total += n
    return total


_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_out(tdir: int, name: str) -> int:
    """A new file in our staging tree (any earlier entry of that name was removed already)."""
    try:
        return os.open(name, _OUT_FLAGS | os.O_EXCL, 0o644, dir_fd=tdir)
    except FileExistsError:
        pass  # appeared since the listing: ours to clear, since nothing is written through it
    fstree.remove(tdir, name)
    return os.open(name, _OUT_FLAGS | os.O_EXCL, 0o644, dir_fd=tdir)


def _copy_file(
    sdir: int, tdir: int, name: str, rel: str, *, durable: bool, atomic: bool, hashed: bool
) -> int | None:
    """Copy one file between opened directories; the bytes written, None if not a file now.

    `atomic`: write a temporary name and rename (the target tree is live). In a staging tree
    the file is written in place: a run killed mid-write leaves it short, and the size check
    of the next run copies it again. `hashed`: the bytes of a content-addressed file are hashed
    on the way and must match its name; otherwise the kernel copies it (sendfile), as `cp` does.
    """
    opened = fstree.open_file(sdir, name)
    if opened is None:
        return None
    fin, st = opened
    out = f".{name}.tmp-{os.getpid()}" if atomic else name
    try:
        if atomic:
            # A fresh inode under the temporary name: whatever held it (a stale temporary, a
            # planted link) is removed first, and O_EXCL makes sure nothing slipped in between.
            fstree.remove(tdir, out)
            fout = os.open(out, _OUT_FLAGS | os.O_EXCL, 0o644, dir_fd=tdir)
        else:
            fout = _open_out(tdir, out)
        try:
            if hashed and is_content_name(rel):
                digest, written = _hash_copy(fin, fout)
                if digest != name:
                    os.unlink(out, dir_fd=tdir)
                    raise FilestoreError(
                        f"filestore file {rel} does not match its content address (sha1 {digest})",
                        path=rel,
                    )
            else:
                written = _send_copy(fin, fout, st.st_size)
            if durable:
                os.fsync(fout)
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    if atomic:
        # rename replaces whatever holds the name (a planted link included) without following.
        os.replace(out, name, src_dir_fd=tdir, dst_dir_fd=tdir)
    return written


@dataclass
class _Copy:
    stats: CopyStats
    durable: bool
    hashed: bool
    live: bool  # writing into a published tree: add missing files only, atomically
    fresh: bool  # a staging tree made just now: nothing in it to compare with
    stop: threading.Event | None

    def tree(self, sdir: int, tdir: int, rel: str) -> bool:
        """Copy the directory `sdir` into `tdir`; False once `stop` ended the copy."""
        files, dirs = fstree.list_dir(sdir)
        there: dict[str, tuple[bool, int]] = {}
        if not self.fresh:
            # One listing of the target directory instead of a stat per file.
            with os.scandir(tdir) as entries:
                for entry in entries:
                    is_file = entry.is_file(follow_symlinks=False)
                    size = entry.stat(follow_symlinks=False).st_size if is_file else -1
                    there[entry.name] = (is_file, size)
        if not self.live:
            # A staging tree is published as exactly the source's file set: whatever else it
            # holds (another attempt's files, another job's) is removed before publishing.
            wanted = {name for name, _ in files} | set(dirs)
            for name in sorted(set(there) - wanted):
                fstree.remove(tdir, name)
        for name, size in files:
            sub = f"{rel}/{name}" if rel else name
            self.stats.files += 1
            found = there.get(name)
            if found == (True, size):
                self.stats.skipped += 1
                continue
            if self.stop is not None and self.stop.is_set():
                self.stats.stopped = True
                return False
            if found is not None and not self.live:
                # Short, of another size, or not a file: a new inode, never one written through
                # (it could be a hard link or a symlink to someone else's file).
                fstree.remove(tdir, name)
            written = _copy_file(
                sdir, tdir, name, sub, durable=self.durable, atomic=self.live, hashed=self.hashed
            )
            if written is not None:
                self.stats.bytes_copied += written
                self.stats.copied += 1
        if self.durable:
            os.fsync(tdir)
        for name in dirs:
            src_sub = fstree.open_dir(sdir, name)
            if src_sub is None:
                continue  # gone, or swapped for a symlink since it was listed: not followed
            try:
                dst_sub = fstree.make_dir(tdir, name, replace=not self.live)
                try:
                    if not self.tree(src_sub, dst_sub, f"{rel}/{name}" if rel else name):
                        return False
                finally:
                    os.close(dst_sub)
            finally:
                os.close(src_sub)
        return True


def copy_tree(
    src: str | Path,
    dst: str | Path,
    *,
    kind: str = "clone",
    durable: bool = False,
    hashed: bool = True,
    publish: bool = True,
    stop: threading.Event | None = None,
) -> CopyStats:
    """Make `dst` hold every file of `src` (see the module docstring); idempotent."""
    src, dst = Path(src), Path(dst)
    stats = CopyStats()
    live = present(dst)
    target = dst if live else staging_path(dst, kind)
    src_fd = fstree.open_root(src)  # a symlinked source is refused (65), never followed
    try:
        if not live and fstree.kind_of(target) == "other":
            fstree.remove_path(target)  # our own staging name, but not a tree: start afresh
        # A staging tree made just now holds nothing to skip: no per-file look-up is needed.
        fresh = fstree.kind_of(target) == "missing"
        target.mkdir(parents=True, exist_ok=True)
        target_fd = fstree.open_root(target)
        if target_fd is None:
            raise TransientError(f"{target} vanished while it was being created")
        try:
            copier = _Copy(stats, durable, hashed, live, fresh, stop)
            done = True
            if src_fd is not None:
                # One file at a time, on purpose: measured here, a thread pool cut a lone copy's
                # wall time by a third but cost far more kernel CPU (futex hand-offs, page-cache
                # contention), and the copy already runs hidden beside the database clone.
                done = copier.tree(src_fd, target_fd, "")
            elif not live and not fresh:
                _clear(target_fd)
            if not done:
                return stats
        finally:
            os.close(target_fd)
    finally:
        if src_fd is not None:
            os.close(src_fd)
    if durable:
        fstree.fsync_dir(target)
    if target != dst and publish:
        stats.published = publish_staged(dst, kind=kind, durable=durable)
    return stats


def _clear(fd: int) -> None:
    """Empty an opened directory (a reused stage for a source that has no files)."""
    with os.scandir(fd) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        fstree.remove(fd, name)


def publish_staged(dst: str | Path, *, kind: str = "clone", durable: bool = False) -> bool:
    """Rename the staging tree of `dst` into place (dst appears complete or not at all).

    False when there is nothing to publish: no staging tree, or `dst` already exists (a copy
    into a live tree writes in place).
    """
    dst = Path(dst)
    staging = staging_path(dst, kind)
    if fstree.kind_of(dst) != "missing" or fstree.kind_of(staging) != "dir":
        return False
    os.rename(staging, dst)
    if durable:
        fstree.fsync_dir(dst.parent)
    return True


def verify(path: str | Path) -> VerifyReport:
    """Re-hash every content-addressed file under `path`, read by descriptor only."""
    report = VerifyReport()
    root = fstree.open_root(path)
    if root is None:
        return report
    buf = bytearray(CHUNK)
    try:
        for rel, dir_fd, files in fstree.walk(root):
            for name, size in files:
                sub = f"{rel}/{name}" if rel else name
                report.files += 1
                report.bytes += size
                if not is_content_name(sub):
                    continue
                opened = fstree.open_file(dir_fd, name)
                if opened is None:
                    report.bad.append(sub)  # listed as a file, no longer one
                    continue
                fd, _st = opened
                try:
                    digest = fstree.sha1_of(fd, buf)
                finally:
                    os.close(fd)
                if digest != name:
                    report.bad.append(sub)
    finally:
        os.close(root)
    report.bad.sort()
    return report


def discard(path: str | Path) -> bool:
    """Remove the tree at `path` (if any) crash-safely; also sweeps earlier leftovers.

    A symlink at `path` is removed itself (never its target, never renamed aside). A tree is
    renamed aside first (`.{name}.trash-…`) so a crash mid-delete never leaves half a tree under
    the real name, then removed by descriptor (no link inside it is followed).
    """
    path = Path(path)
    # A unique aside name: two discards of one name (a crash, then a retry) never collide.
    removed = fstree.remove_aside(path, path.parent / f".{path.name}.trash-{uuid.uuid4().hex[:8]}")
    if path.parent.is_dir():
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.trash-*"):
            fstree.remove_path(leftover)
    return removed


def write_mark(path: str | Path, data: dict[str, Any]) -> None:
    """Write the tree's mark atomically (temporary name, then rename), by descriptor."""
    root = Path(path)
    if not present(root):
        root.mkdir(parents=True, exist_ok=True)
    fd = fstree.open_root(root)
    if fd is None:
        raise TransientError(f"{root} vanished while its mark was written")
    try:
        tmp = f"{MARK_FILE}.tmp-{os.getpid()}"
        fstree.remove(fd, tmp)
        out = os.open(tmp, _OUT_FLAGS | os.O_EXCL, 0o644, dir_fd=fd)
        try:
            os.write(out, json.dumps(data, sort_keys=True).encode("utf-8"))
        finally:
            os.close(out)
        os.replace(tmp, MARK_FILE, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def read_mark(path: str | Path) -> dict[str, Any] | None:
    """The tree's mark, or None when the tree or its mark is missing, unreadable or a link."""
    try:
        root = fstree.open_root(path)
    except FilestoreError:
        return None
    if root is None:
        return None
    try:
        opened = fstree.open_file(root, MARK_FILE)
        if opened is None:
            return None
        fd, st = opened
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(min(st.st_size, 1 << 20)).decode("utf-8"))
    except (OSError, ValueError):
        return None
    finally:
        os.close(root)
    return data if isinstance(data, dict) else None
