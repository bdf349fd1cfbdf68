"""The digest of the code of a set of Odoo modules, as Odoo would find them on its addons path.

`odoo --version` says "Odoo Server 18.0" for every 18 build, so a fingerprint made of it misses
a new image's code. This digest covers the code itself: the wanted modules, `base` (always
installed), their `depends` closure and the `auto_install` modules those pull in, each read
from the first directory of the addons path that holds it, exactly as Odoo looks modules up,
and the server code of the `odoo` package around that `base`.

- `installation(odoo_bin)` → `Installation`: what the binary's own interpreter says of the
  `odoo` package it imports (`package`, its `addons` dirs; empty for a shell wrapper), and
  `release_package`, the package directory holding `release.py` (the version line).
- `search_path(odoo_bin, *, odoo_config=None, addons_path=None, found=None)` → the addons
  directories in Odoo's order: Odoo's own `odoo/addons` (where `base` lives; Odoo always puts
  it first), then `addons_path` (the job's `--addons-path`, else the config's `addons_path`
  option; without either, Odoo's default `<checkout>/addons` when it exists). `found`: an
  `installation(odoo_bin)` already made (the probe is not run twice).
- `digest(modules, path)` → `Digest`: `value` (SHA-256 hex), `modules` (every module covered →
  the SHA-256 of its directory, or "missing"), `server` (the same for the `odoo` package that
  holds the `base` found, without its `addons/`: the ORM and loader), `path`. Deterministic:
  same files, same digest, whatever the directory order, mtimes or location of a module.
  Python libraries outside the odoo package (lxml, psycopg2, ...) are not covered.

A module's directory is hashed file by file, sorted, as (relative path, SHA-1 of the content):
content, never size+mtime, because image builds reset mtimes. Left out as build by-products:
`__pycache__/`, `*.pyc`, `*.pyo` and dot-names (`.git`, editor files). Everything else counts,
`i18n/` and `static/` included: data files load images from `static/`, and an upgrade reloads
the translations of installed languages.

Symlinks are followed, as Odoo follows them (addons trees are often assembled from links), but
a directory already visited in a module (by device and inode) is not entered again, so a link
loop ends; a FIFO or device is never opened for reading (O_NONBLOCK + fstat). Manifests are
read with `ast.literal_eval`, never executed. The data dir's `addons/<series>` (Odoo's download
directory, on the tenants' shared volume) is deliberately left out: the digest reads image
files only, never a tree a tenant could write.

A module not found on the path (every module for the test stand-in, which has none on disk) is
recorded as "missing" and logged at info: the digest stays stable, and the module appearing
later changes it. Its dependencies are then unknown and not followed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from jobs.adapters import odoo
from jobs.core import fstree

MANIFEST_NAMES = ("__manifest__.py", "__openerp__.py")  # Odoo's lookup order
MISSING = "missing"
UNREADABLE = "unreadable"
PROBE_TIMEOUT_S = 30.0
BUFFER = 1 << 20
# A directory name that can be an importable Odoo module: also keeps `depends` entries of a
# manifest from ever reaching a path as "..", "a/b" or an absolute path.
_MODULE_DIR = re.compile(r"[A-Za-z0-9_]{1,128}", re.ASCII)
_PYTHON = re.compile(r"python[0-9.]*", re.ASCII)
# Interpreter flags of a shebang that change sys.path; others are irrelevant to the probe.
_PATH_FLAGS = frozenset({"-I", "-E", "-s", "-S", "-P"})
_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc", ".pyo")
_SHEBANG_MAX = 512

# Asks Odoo's own interpreter where the `odoo` package is, without importing it (find_spec of
# a top-level name only searches sys.path). sys.path[0] is set as Python sets it for the
# script, so a source checkout's `odoo-bin` finds the `odoo/` next to it. The other
# `odoo/addons` directories on sys.path follow, as odoo/addons/__init__.py adds them with
# pkgutil.extend_path (pip-installed addons).
_PROBE = """\
import importlib.util, json, os, sys
sys.path[0] = os.path.dirname(sys.argv[1])
spec = importlib.util.find_spec("odoo")
found = []
if spec is not None and spec.submodule_search_locations:
    dirs = [os.path.join(p, "addons") for p in spec.submodule_search_locations]
    dirs += [os.path.join(p or os.getcwd(), "odoo", "addons") for p in sys.path]
    for d in dirs:
        d = os.path.realpath(d)
        if os.path.isdir(d) and d not in found:
            found.append(d)
package = list(spec.submodule_search_locations or []) if spec is not None else []
print(json.dumps({"odoo": package, "addons": found}))
"""


@dataclass(frozen=True)
class Digest:
    value: str
    modules: dict[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()
    server: str = MISSING  # the odoo package's own code (without its addons/), or "missing"

    @property
    def missing(self) -> list[str]:
        return sorted(m for m, d in self.modules.items() if d == MISSING)


@dataclass(frozen=True)
class Installation:
    """What Odoo's own interpreter says: the odoo package dirs and its addons dirs."""

    package: tuple[str, ...]
    addons: tuple[str, ...]

    @property
    def release_package(self) -> str | None:
        """The `odoo` package the binary imports, when it is one with a release.py: that file
        names the version the binary reports. Never a guess from the addons path, which a
        shell wrapper could contradict."""
        return next((where for where in self.package if is_odoo_package(where)), None)


def search_path(
    odoo_bin: str,
    *,
    odoo_config: str | Path | None = None,
    addons_path: str | None = None,
    found: Installation | None = None,
) -> list[str]:
    """Odoo's addons directories, in its search order (the first one holding a module wins).

    `addons_path` is the job's `--addons-path`, which beats the config's `addons_path` as on
    Odoo's command line; `odoo_config` the base config (default `$ODOO_RC`) the job gives Odoo.
    """
    found = found if found is not None else installation(odoo_bin)
    configured = addons_path if addons_path and addons_path.strip() else None
    if configured is None:
        configured = odoo.base_option("addons_path", odoo_config)
    if configured is not None and configured.strip() != "None":  # Odoo reads "None" as unset
        entries = [_normalize(p) for p in configured.split(",") if p.strip()]
    else:
        # Odoo's default without an addons_path: <root>/addons (= base's dir, already first)
        # and, in a source checkout, the `addons/` beside the odoo package.
        beside = [os.path.realpath(os.path.join(p, os.pardir, "addons")) for p in found.package]
        entries = [p for p in beside if os.path.isdir(p)]
    ordered: list[str] = []
    for entry in [*found.addons, *entries]:
        if entry not in ordered:
            ordered.append(entry)
    return ordered


def digest(modules: Iterable[str], path: Sequence[str]) -> Digest:
    """The digest of `modules` + `base` + their dependency closure, as found on `path`."""
    log = structlog.get_logger()
    started = time.monotonic()
    index = _Index(path)
    covered = index.closure(modules)
    buf = bytearray(BUFFER)
    digests: dict[str, str] = {}
    for name in sorted(covered):
        where = index.dirs.get(name)
        digests[name] = MISSING if where is None else _tree_digest(where, buf)
    package = server_package(index.dirs.get("base"))
    # The server's own code (ORM, loading, tools) shapes a database as much as base does.
    server = MISSING if package is None else _tree_digest(package, buf, skip=("addons",))
    body = {"modules": digests, "server": server}
    value = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    result = Digest(value, digests, tuple(path), server)
    if result.missing:
        log.info("modules not found on the addons path", missing=result.missing, path=list(path))
    log.info(
        "addons digest",
        addons_digest=value,
        modules=len(digests),
        server=package or MISSING,
        duration_s=round(time.monotonic() - started, 3),
    )
    return result


def server_package(base_dir: str | None) -> str | None:
    """The `odoo` package holding the `base` module found (`<odoo>/addons/base`), if it is one:
    found from the path, it is the same for a probed binary and for a shell wrapper."""
    if base_dir is None:
        return None
    package = os.path.dirname(os.path.dirname(os.path.realpath(base_dir)))
    return package if is_odoo_package(package) else None


def is_odoo_package(where: str) -> bool:
    """An `odoo` package directory: importable, with the release.py that names its version."""
    return all(os.path.isfile(os.path.join(where, f)) for f in ("__init__.py", "release.py"))


class _Index:
    """The modules on an addons path, and their manifests (read once, lazily)."""

    def __init__(self, path: Sequence[str]) -> None:
        self.dirs: dict[str, str] = {}
        for addons in path:
            try:
                names = sorted(os.listdir(addons))
            except OSError:
                continue  # absent or unreadable: Odoo finds nothing there either
            for name in names:
                if name in self.dirs or not _MODULE_DIR.fullmatch(name):
                    continue
                where = os.path.join(addons, name)
                if any(os.path.isfile(os.path.join(where, m)) for m in MANIFEST_NAMES):
                    self.dirs[name] = where
        self._manifests: dict[str, dict[str, Any]] = {}

    def manifest(self, name: str) -> dict[str, Any]:
        if name not in self._manifests:
            self._manifests[name] = _read_manifest(self.dirs[name])
        return self._manifests[name]

    def depends(self, name: str) -> list[str]:
        deps = self.manifest(name).get("depends", [])
        if not isinstance(deps, (list, tuple)):
            return []
        return [d for d in deps if isinstance(d, str) and _MODULE_DIR.fullmatch(d)]

    def closure(self, modules: Iterable[str]) -> set[str]:
        """What `odoo -i modules` installs: base, the modules, their depends, auto_install."""
        covered: set[str] = set()
        self._add(["base", *modules], covered)
        triggers = self._auto_install()
        pending = True
        while pending:  # an auto-installed module may trigger another one
            pending = False
            for name, needs in sorted(triggers.items()):
                if name not in covered and needs <= covered:
                    self._add([name], covered)
                    pending = True
        return covered

    def _add(self, todo: list[str], covered: set[str]) -> None:
        while todo:
            name = todo.pop()
            if name in covered:
                continue
            covered.add(name)
            if name in self.dirs:
                todo.extend(self.depends(name))

    def _auto_install(self) -> dict[str, set[str]]:
        """auto_install module → the modules whose installation triggers it (Odoo's rule:
        `True` means all its depends, a list names them, [] means always)."""
        found: dict[str, set[str]] = {}
        for name, where in self.dirs.items():
            # Most manifests never mention it: skip parsing those (hundreds in a full image).
            if name not in self._manifests and not _mentions(where, b"auto_install"):
                continue
            manifest = self.manifest(name)
            auto = manifest.get("auto_install", False)
            if not manifest.get("installable", True):
                continue
            if isinstance(auto, (list, tuple, set)):
                found[name] = {d for d in auto if isinstance(d, str)}
            elif auto:
                found[name] = set(self.depends(name))
        return found


def _manifest_file(where: str) -> str | None:
    for name in MANIFEST_NAMES:
        candidate = os.path.join(where, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _mentions(where: str, word: bytes) -> bool:
    manifest = _manifest_file(where)
    if manifest is None:
        return False
    try:
        with open(manifest, "rb") as fh:
            return word in fh.read()
    except OSError:
        return False


def _read_manifest(where: str) -> dict[str, Any]:
    """The manifest as a dict (literal_eval: a manifest is data and is never executed); {} when
    it cannot be read, which Odoo itself would then refuse: its files are still hashed."""
    manifest = _manifest_file(where)
    if manifest is None:
        return {}
    try:
        with open(manifest, "rb") as fh:
            value = ast.literal_eval(fh.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError):
        structlog.get_logger().warning("unreadable module manifest", manifest=manifest)
        return {}
    return value if isinstance(value, dict) else {}


def _tree_digest(root: str, buf: bytearray, skip: Sequence[str] = ()) -> str:
    """SHA-256 over (relative path, SHA-1 of content) of every file under `root`, sorted;
    `skip` names top-level entries left out."""
    digest = hashlib.sha256()
    seen: set[tuple[int, int]] = set()

    def visit(directory: str, rel: str) -> None:
        try:
            st = os.stat(directory)
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            digest.update(os.fsencode(rel) + b"\0" + UNREADABLE.encode() + b"\n")
            return
        if (st.st_dev, st.st_ino) in seen:
            return  # a symlink back into the tree (a loop) or a second link to one directory
        seen.add((st.st_dev, st.st_ino))
        for entry in entries:
            name = entry.name
            if name.startswith(".") or (not rel and name in skip):
                continue
            try:
                is_dir = entry.is_dir()  # follows a symlink, as Odoo does
            except OSError:
                continue
            if is_dir:
                if name not in _SKIP_DIRS:
                    visit(entry.path, f"{rel}{name}/")
            elif not name.endswith(_SKIP_SUFFIXES):
                sha = _file_sha1(entry.path, buf)
                if sha is not None:
                    digest.update(os.fsencode(f"{rel}{name}") + b"\0" + sha.encode() + b"\n")

    visit(root, "")
    return digest.hexdigest()


def _file_sha1(path: str, buf: bytearray) -> str | None:
    """SHA-1 of a regular file's content; None for a dangling link, FIFO, socket or device."""
    try:
        # O_NONBLOCK: a FIFO must not block the open; fstat then refuses it unread.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None  # a dangling symlink: there is no file for Odoo either
    except OSError:
        return UNREADABLE
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return fstree.sha1_of(fd, buf)
    except OSError:
        return UNREADABLE
    finally:
        os.close(fd)


def _normalize(entry: str) -> str:
    # As Odoo normalises addons_path entries (relative to the working directory it shares
    # with this job).
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.path.expandvars(entry.strip()))))


def installation(odoo_bin: str) -> Installation:
    """Where the Odoo that `odoo_bin` runs keeps its own `odoo/addons` (base lives there).

    Asked of the interpreter named in the binary's shebang: it is the one Odoo runs on, so its
    sys.path decides which `odoo` package loads, for a Debian/pip install (`/usr/bin/odoo`) as
    for a source checkout (`odoo-bin`) or a venv. A binary that is not a Python script (a shell
    wrapper, as in the tests) cannot be asked: then Odoo's own addons directory must be listed
    in addons_path (`--addons-path` / `PLANA_ODOO_ADDONS_PATH` or the config), where Odoo
    accepts it too.
    """
    log = structlog.get_logger()
    none = Installation((), ())
    exe = shutil.which(odoo_bin)
    if exe is None:
        return none
    script = os.path.realpath(exe)
    interpreter = _shebang_python(script)
    if interpreter is None:
        log.info("odoo binary is not a Python script: base addons only from addons_path",
                 binary=script)  # fmt: skip
        return none
    try:
        # The job's environment, as Odoo gets it: PYTHONPATH and friends shape its sys.path.
        done = subprocess.run(
            [*interpreter, "-c", _PROBE, script],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        answer = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        answer = {}
    package = tuple(str(p) for p in answer.get("odoo", []))
    addons = tuple(str(p) for p in answer.get("addons", []))
    if not addons:
        log.info("no odoo package found by the odoo binary's interpreter",
                 interpreter=interpreter[0], binary=script)  # fmt: skip
    return Installation(package, addons)


def _shebang_python(script: str) -> list[str] | None:
    try:
        with open(script, "rb") as fh:
            return parse_shebang(fh.read(_SHEBANG_MAX))
    except OSError:
        return None


def parse_shebang(head: bytes) -> list[str] | None:
    """The Python interpreter (and its sys.path flags) named by a script's `#!` line, or None
    when the file is no Python script (a shell wrapper, an ELF binary)."""
    if not head.startswith(b"#!"):
        return None
    try:
        tokens = head[2:].split(b"\n", 1)[0].decode("utf-8").split()
    except UnicodeDecodeError:
        return None
    if tokens and os.path.basename(tokens[0]) == "env":
        tokens = tokens[1:]
        while tokens and (tokens[0].startswith("-") or "=" in tokens[0]):
            tokens = tokens[1:]  # env's own options and VAR=value assignments
    if not tokens or not _PYTHON.fullmatch(os.path.basename(tokens[0])):
        return None
    interpreter = tokens[0] if os.path.isabs(tokens[0]) else shutil.which(tokens[0])
    if interpreter is None:
        return None
    return [interpreter, *(t for t in tokens[1:] if t in _PATH_FLAGS)]
