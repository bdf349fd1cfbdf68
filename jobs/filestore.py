"""Odoo filestores: staged, incremental, content-verified copies, and crash-safe removal.

Stable API (tenant-db, template-build, environment and restore jobs):

- `copy_tree(src, dst, *, durable=False, hashed=True, publish=True, stop=None)` → `CopyStats`.
  Copies the tree `src`
  (usually `{data_dir}/filestore/{template}`) to `dst` (`{data_dir}/filestore/{db}`).
  When `dst` does not exist the copy is made in a staging directory beside it
  (`.{name}.partial`, reused after a crash) and published with one `rename`; when `dst` exists
  the missing files are added to it in place, each through a temporary name and a rename.
  Files already present by name and size are skipped: a re-run after a crash only copies what is
  missing (inside the staging tree files are written in place: a killed write leaves a short
  file, which the size check copies again).
  Odoo names attachments by content (`ab/ab12…` = sha1 of the bytes): each such file is hashed
  as it is copied and a mismatch is refused (`FilestoreError`, exit 65). `hashed=False` leaves
  the bytes to the kernel (sendfile) and verifies by name and size only. Names starting with
  "." (staging and marker files) are never copied. A missing `src` is an empty filestore.
  `durable=True` also fsyncs files and directories (survives a node crash, not only a pod kill).
  `publish=False` fills the staging tree and stops before the rename; `publish_staged(dst)`
  renames it into place later (so does a later `copy_tree`, after one `stat` per file). `stop`, a
  `threading.Event`, ends a copy running in a thread between two files (`CopyStats.stopped`).
- `verify(path)` → `VerifyReport`: re-hashes every content-addressed file.
- `discard(path)`: removes a tree by first renaming it aside (`.{name}.trash-…`), so a crash
  mid-delete never leaves half a tree under the real name; leftovers are swept next time.
- `write_mark(path, data)` / `read_mark(path)`: a small JSON file (`.plana-mark.json`) kept
  inside a tree and moved with it by renames (never copied: dot-name). template-build records
  the template's fingerprint there so a clone can tell that a template's database and its
  filestore belong together.
- `staging_path(dst)`, `is_content_name(rel)` (only top-level `ab/ab…` files; Odoo's
  `checklist/ab/ab…` GC markers are empty and copied unchecked).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.errors import ConflictError

CHUNK = 1 << 20
MARK_FILE = ".plana-mark.json"
_SHA1 = re.compile(r"[0-9a-f]{40}", re.ASCII)


class FilestoreError(ConflictError):
    """A file's content does not match its content address: the source is corrupt (65)."""


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


def staging_path(dst: str | Path) -> Path:
    dst = Path(dst)
    return dst.parent / f".{dst.name}.partial"


def is_content_name(rel: str) -> bool:
    """`ab/ab12…` (40 hex digits, in the directory named by the first two)."""
    parts = rel.split("/")
    return len(parts) == 2 and bool(_SHA1.fullmatch(parts[-1])) and parts[-2] == parts[-1][:2]


def _walk(root: Path, rel: str = "") -> list[tuple[str, int]]:
    """(relative path, size) of every regular file under root, dot-names excluded."""
    out: list[tuple[str, int]] = []
    try:
        entries = list(os.scandir(root / rel if rel else root))
    except FileNotFoundError:
        return out
    for entry in entries:
        if entry.name.startswith("."):
            continue
        sub = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_dir(follow_symlinks=False):
            out.extend(_walk(root, sub))
        elif entry.is_file(follow_symlinks=False):
            out.append((sub, entry.stat(follow_symlinks=False).st_size))
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_buffers = threading.local()


def _hash_copy(src: str, out: str) -> tuple[str, int]:
    """Copy `src` to `out` through one reused buffer, hashing on the way: (sha1, bytes).

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
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fout = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            while n := os.readv(fin, [buf]):
                digest.update(view[:n])
                done = 0
                while done < n:
                    done += os.write(fout, view[done:n])
                total += n
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    return digest.hexdigest(), total


def _copy_file(src: str, dst: str, rel: str, durable: bool, atomic: bool, hashed: bool) -> int:
    """Copy one file; returns the bytes written.

    `atomic`: write a temporary name and rename (the target tree is live). In a staging tree
    the file is written in place: a run killed mid-write leaves it short, and the size check
    of the next run copies it again. `hashed`: the bytes of a content-addressed file are hashed
    on the way and must match its name; otherwise the kernel copies it (sendfile), as `cp` does.
    """
    # Plain strings, not Path objects: this runs once per file, thousands of times per tenant.
    head, name = os.path.split(dst)
    out = os.path.join(head, f".{name}.tmp-{os.getpid()}") if atomic else dst
    if hashed and is_content_name(rel):
        digest, written = _hash_copy(src, out)
        if digest != name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
            raise FilestoreError(
                f"filestore file {rel} does not match its content address (sha1 {digest})",
                path=rel,
            )
    else:
        shutil.copyfile(src, out)
        written = os.stat(out).st_size
    if durable:
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if atomic:
        os.replace(out, dst)
    return written


def copy_tree(
    src: str | Path,
    dst: str | Path,
    *,
    durable: bool = False,
    hashed: bool = True,
    publish: bool = True,
    stop: threading.Event | None = None,
) -> CopyStats:
    """Make `dst` hold every file of `src` (see the module docstring); idempotent."""
    src, dst = Path(src), Path(dst)
    stats = CopyStats()
    live = dst.is_dir()
    target = dst if live else staging_path(dst)
    # A staging tree made just now holds nothing to skip: no per-file look-up is needed.
    fresh = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    made: set[str] = {""}
    todo: list[str] = []
    for rel, size in sorted(_walk(src)):
        stats.files += 1
        out = os.path.join(target, rel)
        if not fresh:
            try:
                if os.stat(out).st_size == size:
                    stats.skipped += 1
                    continue
            except FileNotFoundError:
                pass
        parent = os.path.dirname(rel)
        if parent not in made:
            os.makedirs(os.path.join(target, parent), exist_ok=True)
            made.add(parent)
        todo.append(rel)
    # One file at a time, on purpose: measured here, a thread pool cut a lone copy's wall time
    # by a third but cost far more kernel CPU (futex hand-offs, page-cache contention), and the
    # copy already runs hidden beside the database clone; ten tenants at once are CPU-bound.
    src_s, target_s = str(src), str(target)
    for rel in todo:
        if stop is not None and stop.is_set():
            stats.stopped = True
            return stats
        stats.bytes_copied += _copy_file(
            os.path.join(src_s, rel), os.path.join(target_s, rel), rel, durable, live, hashed
        )
        stats.copied += 1
    if durable:
        for directory in made:
            _fsync_dir(target / directory if directory else target)
    if target != dst and publish:
        stats.published = publish_staged(dst, durable=durable)
    return stats


def publish_staged(dst: str | Path, *, durable: bool = False) -> bool:
    """Rename the staging tree of `dst` into place (dst appears complete or not at all).

    False when there is nothing to publish: no staging tree, or `dst` already exists (a copy
    into a live tree writes in place).
    """
    dst = Path(dst)
    staging = staging_path(dst)
    if dst.exists() or not staging.is_dir():
        return False
    os.rename(staging, dst)
    if durable:
        _fsync_dir(dst.parent)
    return True


def verify(path: str | Path) -> VerifyReport:
    """Re-hash every content-addressed file under `path`."""
    root = Path(path)
    report = VerifyReport()
    for rel, size in sorted(_walk(root)):
        report.files += 1
        report.bytes += size
        if not is_content_name(rel):
            continue
        digest = hashlib.sha1(usedforsecurity=False)
        with open(root / rel, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != rel.rsplit("/", 1)[-1]:
            report.bad.append(rel)
    return report


def discard(path: str | Path) -> bool:
    """Remove the tree at `path` (if any) crash-safely; also sweeps earlier leftovers."""
    path = Path(path)
    removed = False
    if path.exists():
        trash = path.parent / f".{path.name}.trash-{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)
        removed = True
    if path.parent.is_dir():
        for leftover in path.parent.glob(f".{path.name}.trash-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return removed


def write_mark(path: str | Path, data: dict[str, Any]) -> None:
    """Write the tree's mark atomically (temporary name, then rename)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{MARK_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
    os.replace(tmp, root / MARK_FILE)


def read_mark(path: str | Path) -> dict[str, Any] | None:
    """The tree's mark, or None when the tree or its mark is missing or unreadable."""
    try:
        data = json.loads((Path(path) / MARK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
