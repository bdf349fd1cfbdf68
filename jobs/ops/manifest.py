"""A backup set's manifest: its schema, its signature, and the only fields anyone may trust.

Whoever can write the backup volume can write a manifest, so a manifest is input to validate:

- It is authenticated: `manifest.sig` beside `manifest.json` holds the hex HMAC-SHA256 of the
  exact bytes of `manifest.json`, keyed with the backup key (a Secret file,
  `PLANA_BACKUP_KEY_FILE`). An unsigned or mis-signed set is refused (65).
- It is schema-checked into typed dataclasses (65 on anything malformed); only these fields are
  used afterwards, and every path in it is a plain relative name inside the set.
- Files of a set are opened by descriptor relative to the set's directory (`O_NOFOLLOW` at every
  level) and must be regular files, so a symlink planted in a set never leads outside it.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from jobs.core import secrets
from jobs.core.errors import ConfigError, ConflictError
from jobs.ops import marker

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
DUMP_FILE = "db.dump"
DUMP_DIR = "db.dir"
FILESTORE_TAR = "filestore.tar"
KEY_FIELD = "backup-key-file (PLANA_BACKUP_KEY_FILE)"
MIN_KEY_CHARS = 16
MAX_MANIFEST_BYTES = 64 << 20
CHUNK = 1 << 20

SET_NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")
# PostgreSQL server encodings (pg_enc.h); a database is only ever created with one of these.
ENCODINGS = frozenset(
    "SQL_ASCII EUC_JP EUC_CN EUC_KR EUC_TW EUC_JIS_2004 UTF8 MULE_INTERNAL LATIN1 LATIN2 LATIN3"
    " LATIN4 LATIN5 LATIN6 LATIN7 LATIN8 LATIN9 LATIN10 WIN1256 WIN1258 WIN866 WIN874 KOI8R"
    " WIN1251 WIN1252 ISO_8859_5 ISO_8859_6 ISO_8859_7 ISO_8859_8 WIN1250 WIN1253 WIN1254"
    " WIN1255 WIN1257 KOI8U".split()
)
# A locale name as initdb/CREATE DATABASE accept them: C, POSIX, en_US.UTF-8, de_DE@euro …
_LOCALE = re.compile(r"[A-Za-z][A-Za-z0-9_.@-]{0,63}")
MARKER_KINDS = marker.BACKUP_KINDS
# The marker fields a restore carries over: who the database is, never where a job stood
# (`upgrading`, `odoo_version`, `final_backup`, `deprovisioning`, `frozen` … are dropped).
MARKER_IDENTITY = (
    "subdomain",
    "project_id",
    "template",
    "template_fingerprint",
    "tenant",
    "env",
    "source",
    "generation",
)


# --------------------------------------------------------------------------- the key


def read_key(path: str | None) -> bytes:
    """The backup key from its Secret file: missing, unreadable, empty or short → 78."""
    value = secrets.read_file(path, KEY_FIELD)  # registered with jobs.core.redact
    if len(value) < MIN_KEY_CHARS:
        raise ConfigError(f"{KEY_FIELD}: the key is shorter than {MIN_KEY_CHARS} characters")
    return value.encode("utf-8")


def sign(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def authentic(key: bytes, body: bytes, signature: bytes) -> bool:
    return hmac.compare_digest(sign(key, body).encode("ascii"), signature.strip())


# --------------------------------------------------------------------------- the schema


class Malformed(ConflictError):
    """The manifest does not follow the schema (65)."""


def _fail(what: str) -> Malformed:
    return Malformed(f"{MANIFEST}: {what}")


def _obj(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _fail(f"{where} must be an object")
    return data


def _str(data: dict[str, Any], key: str, where: str, *, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _fail(f"{where}.{key} must be a string")
    return value


def _req_str(data: dict[str, Any], key: str, where: str) -> str:
    value = _str(data, key, where)
    assert value is not None
    return value


def _int(data: dict[str, Any], key: str, where: str, *, optional: bool = False) -> int | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < -1:
        raise _fail(f"{where}.{key} must be a whole number")
    return value


def _req_int(data: dict[str, Any], key: str, where: str) -> int:
    value = _int(data, key, where)
    assert value is not None
    return value


def _bool(data: dict[str, Any], key: str, where: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise _fail(f"{where}.{key} must be true or false")
    return value


def safe_relpath(rel: Any, where: str) -> str:
    """A plain relative name inside the set: no absolute, no `..`, no empty or dot components."""
    if not isinstance(rel, str) or not rel:
        raise _fail(f"{where} must be a non-empty string")
    parts = rel.split("/")
    if any(not _NAME.fullmatch(p) for p in parts):
        raise _fail(f"{where} {rel!r} is not a plain relative name inside the set")
    return rel


@dataclass(frozen=True)
class Dump:
    format: str  # custom | directory
    path: str


@dataclass(frozen=True)
class Filestore:
    path: str
    files: int
    bytes: int
    present: bool


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class DbSettings:
    """Only what may shape the new database; owner and ACL are never taken from a set."""

    encoding: str | None
    collate: str | None
    ctype: str | None


@dataclass(frozen=True)
class MarkerInfo:
    kind: str
    identity: dict[str, str | int | None]


@dataclass(frozen=True)
class Table:
    rows: int | None


@dataclass(frozen=True)
class Manifest:
    set: str
    subdomain: str
    database: str
    base_domain: str
    final: bool
    dump: Dump
    filestore: Filestore
    files: dict[str, FileEntry]
    base_version: str | None
    settings: DbSettings
    marker: MarkerInfo
    tables: dict[str, Table]


def _dump(data: Any) -> Dump:
    d = _obj(data, "dump")
    fmt = _req_str(d, "format", "dump")
    path = safe_relpath(d.get("path"), "dump.path")
    if (fmt, path) not in (("custom", DUMP_FILE), ("directory", DUMP_DIR)):
        raise _fail(f"dump: format {fmt!r} at {path!r} is not one a backup writes")
    return Dump(fmt, path)


def _filestore(data: Any) -> Filestore:
    d = _obj(data, "filestore")
    path = safe_relpath(d.get("path"), "filestore.path")
    if "/" in path:
        raise _fail("filestore.path must be a file at the top of the set")
    return Filestore(
        path, _req_int(d, "files", "filestore"), _req_int(d, "bytes", "filestore"),
        _bool(d, "present", "filestore"),
    )  # fmt: skip


def _files(data: Any, dump: Dump) -> dict[str, FileEntry]:
    d = _obj(data, "files")
    out: dict[str, FileEntry] = {}
    for rel, meta in d.items():
        safe_relpath(rel, "files key")
        parts = rel.split("/")
        # db.dir/… entries are exactly one level below db.dir; every other file is top-level.
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != DUMP_DIR):
            raise _fail(f"files: {rel!r} is not a file a backup writes")
        m = _obj(meta, f"files[{rel!r}]")
        sha = _req_str(m, "sha256", f"files[{rel!r}]")
        if not _SHA256.fullmatch(sha):
            raise _fail(f"files[{rel!r}].sha256 is not a sha256")
        size = _req_int(m, "size", f"files[{rel!r}]")
        if size < 0:
            raise _fail(f"files[{rel!r}].size is negative")
        out[rel] = FileEntry(size, sha)
    if not out:
        raise _fail("files lists nothing")
    if dump.format == "custom" and dump.path not in out:
        raise _fail(f"files does not list the dump {dump.path}")
    if dump.format == "directory" and f"{DUMP_DIR}/toc.dat" not in out:
        raise _fail(f"files does not list {DUMP_DIR}/toc.dat")
    return out


def settings_of(data: Any) -> DbSettings:
    """Encoding and collation, each only from its whitelist (65 otherwise)."""
    d = _obj(data if data is not None else {}, "database_settings")
    enc = _str(d, "encoding", "database_settings", optional=True)
    if enc is not None and enc not in ENCODINGS:
        raise _fail(f"database_settings.encoding {enc!r} is not a PostgreSQL server encoding")
    locales: list[str | None] = []
    for key in ("collate", "ctype"):
        value = _str(d, key, "database_settings", optional=True)
        if value is not None and not _LOCALE.fullmatch(value):
            raise _fail(f"database_settings.{key} {value!r} is not a locale name")
        locales.append(value)
    return DbSettings(enc, locales[0], locales[1])


def _marker(data: Any) -> MarkerInfo:
    d = _obj(data, "marker")
    kind = _req_str(d, "kind", "marker")
    if kind not in MARKER_KINDS:
        raise _fail(f"marker.kind {kind!r} is not one a backup accepts")
    identity: dict[str, str | int | None] = {}
    for key in MARKER_IDENTITY:
        value = d.get(key)
        if key not in d:
            continue
        if value is not None and (not isinstance(value, str | int) or isinstance(value, bool)):
            raise _fail(f"marker.{key} must be a string or a number")
        identity[key] = value
    # What a restore publishes under this kind: it must fit the kind's schema, or the restore
    # would write a marker no job accepts (refused here, before anything is restored).
    wrong = marker.data_problem(marker.Kind(kind), identity)
    if wrong is not None:
        raise _fail(f"marker does not fit the {kind} schema: {wrong}")
    return MarkerInfo(kind, identity)


def _tables(data: Any) -> dict[str, Table]:
    d = _obj(data, "tables")
    out: dict[str, Table] = {}
    for name, meta in d.items():
        m = _obj(meta, f"tables[{name!r}]")
        out[name] = Table(_int(m, "rows", f"tables[{name!r}]", optional=True))
    return out


def parse(data: Any) -> Manifest:
    """The typed manifest; Malformed (65) on anything a backup would not have written."""
    d = _obj(data, "the manifest")
    fmt = d.get("format")
    if fmt != FORMAT or isinstance(fmt, bool):
        raise _fail(f"format {fmt!r} is unknown (expected {FORMAT})")
    name = _req_str(d, "set", "manifest")
    if not SET_NAME.fullmatch(name):
        raise _fail(f"set {name!r} is not a set name")
    dump = _dump(d.get("dump"))
    odoo = _obj(d.get("odoo") if d.get("odoo") is not None else {}, "odoo")
    return Manifest(
        set=name,
        subdomain=_req_str(d, "subdomain", "manifest"),
        database=_req_str(d, "database", "manifest"),
        base_domain=_req_str(d, "base_domain", "manifest"),
        final=_bool(d, "final", "manifest"),
        dump=dump,
        filestore=_filestore(d.get("filestore")),
        files=_files(d.get("files"), dump),
        base_version=_str(odoo, "base_version", "odoo", optional=True),
        settings=settings_of(d.get("database_settings")),
        marker=_marker(d.get("marker")),
        tables=_tables(d.get("tables")),
    )


# --------------------------------------------------------------------------- files by descriptor

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def open_dir(name: str, dir_fd: int | None = None) -> int:
    """A directory opened without following a symlink at its last component."""
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def open_file(set_fd: int, rel: str) -> int:
    """`rel` (already a safe relative name) opened inside the set, every level O_NOFOLLOW.

    Raises FileNotFoundError when missing, ConflictError when a level is a link or the file is
    not regular.
    """
    parts = rel.split("/")
    fd = set_fd
    opened: list[int] = []
    try:
        for part in parts[:-1]:
            try:
                fd = open_dir(part, fd)
            except NotADirectoryError:
                raise ConflictError(f"{rel}: {part} is not a directory") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # the last component is a symlink
                    raise ConflictError(f"{rel}: {part} is a symlink") from None
                raise
            opened.append(fd)
        try:
            out = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConflictError(f"{rel}: is a symlink") from None
            raise
    finally:
        for o in opened:
            os.close(o)
    if not stat.S_ISREG(os.fstat(out).st_mode):
        os.close(out)
        raise ConflictError(f"{rel}: not a regular file")
    return out


def open_set(dest: str | os.PathLike[str], subdomain: str, name: str) -> int:
    """The set directory `{dest}/{subdomain}/{name}`, each level below `dest` O_NOFOLLOW."""
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tdir = open_dir(subdomain, root)
    finally:
        os.close(root)
    try:
        return open_dir(name, tdir)
    finally:
        os.close(tdir)


def read_small(set_fd: int, rel: str) -> bytes | None:
    """The bytes of a small file of the set (None when it does not exist)."""
    try:
        fd = open_file(set_fd, rel)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        body = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(body) > MAX_MANIFEST_BYTES:
        raise ConflictError(f"{rel}: larger than {MAX_MANIFEST_BYTES} bytes")
    return body


def authenticated(set_fd: int, key: bytes, label: str) -> Any:
    """The manifest's JSON once its signature is checked (65 when unsigned or mis-signed)."""
    body = read_small(set_fd, MANIFEST)
    if body is None:
        raise ConflictError(f"set {label}: no {MANIFEST} (not a complete set)")
    sig = read_small(set_fd, SIGNATURE)
    if sig is None:
        raise ConflictError(f"set {label}: unsigned ({SIGNATURE} missing): refused")
    if not authentic(key, body, sig):
        raise ConflictError(
            f"set {label}: {SIGNATURE} does not match (tampered, or signed with another key)"
        )
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConflictError(f"set {label}: unreadable {MANIFEST}: {exc}") from None
    except RecursionError:
        raise _fail("nested too deeply") from None


def load(set_fd: int, key: bytes, label: str) -> tuple[Manifest, dict[str, Any]]:
    """Authenticate and parse the manifest of the set open at `set_fd` (65 on any doubt).

    Returns the typed manifest and the raw JSON (for reporting only; nothing acts on it).
    """
    data = authenticated(set_fd, key, label)
    try:
        parsed = parse(data)
    except RecursionError:
        raise _fail("nested too deeply") from None
    if parsed.set != label:
        raise ConflictError(f"set {label}: its manifest names set {parsed.set}")
    return parsed, data


def sha256_fd(fd: int) -> tuple[int, str]:
    """(bytes, sha256) of an open file, read from its start."""
    digest = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def check_files(set_fd: int, m: Manifest, pinned: dict[str, int] | None = None) -> list[str]:
    """Every mismatch between the set's files and the manifest's sizes and checksums.

    `pinned`: when every file checked out, receives descriptors of what the caller goes on to
    read — the dump (the file of a custom-format dump, the directory of a directory-format one)
    and the filestore archive — so that pg_restore and the extraction read the very inodes that
    were hashed, not whatever the paths name a moment later. The caller closes them.
    """
    problems: list[str] = []
    kept: dict[str, int] = {}
    wanted = {m.filestore.path} | ({m.dump.path} if m.dump.format == "custom" else set())
    if m.dump.format == "directory":
        try:
            kept[m.dump.path] = open_dir(m.dump.path, set_fd)
        except OSError as exc:
            problems.append(f"{m.dump.path}: cannot be opened safely: {exc.strerror}")
    for rel, want in sorted(m.files.items()):
        try:
            fd = open_file(set_fd, rel)
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        except ConflictError as exc:
            problems.append(exc.message)
            continue
        keep = False
        try:
            size = os.fstat(fd).st_size
            if size != want.size:
                problems.append(f"{rel}: size {size} != {want.size}")
            elif sha256_fd(fd)[1] != want.sha256:
                problems.append(f"{rel}: sha256 mismatch")
            elif pinned is not None and rel in wanted:
                kept[rel], keep = fd, True
        finally:
            if not keep:
                os.close(fd)
    if m.filestore.path not in m.files:
        problems.append(f"{m.filestore.path}: not listed in files")
    if m.dump.path in kept and m.dump.format == "directory":
        problems += _unlisted_in_dump_dir(kept[m.dump.path], m)
    if problems or pinned is None:
        for fd in kept.values():
            os.close(fd)
    else:
        pinned.update(kept)
    return problems


def _unlisted_in_dump_dir(dir_fd: int, m: Manifest) -> list[str]:
    """Entries of the opened `db.dir` the manifest does not list: pg_restore reads what is there
    by name (a plain `NNNN.dat` before the signed `NNNN.dat.gz`), so an unlisted file is a
    forgery."""
    names = sorted(os.listdir(dir_fd))
    return [
        f"{m.dump.path}/{n}: not listed in files"
        for n in names
        if f"{m.dump.path}/{n}" not in m.files
    ]
