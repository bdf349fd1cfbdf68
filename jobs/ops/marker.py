"""Ownership and progress markers on databases, kept in `COMMENT ON DATABASE`.

The comment is readable from the catalog without connecting to the database (templates have
`datallowconn = false`, tenants have CONNECT revoked from PUBLIC), survives a rename, and is not
copied by `CREATE DATABASE … TEMPLATE`, so a clone never inherits its template's marker. A
database whose comment is not ours is "not ours": jobs refuse to touch it (exit 65).

"Is this database ours?" is asked in one way: `ours` (the marker, or None, for callers that
branch) and `require_ours` (the marker, or 65 naming the database and what it carries), each
given the kinds, states and identity (`match`) the caller accepts. `examine` is the same question
asked of a comment already read (a job's pure `decide`), `refusal` the one message every "not
ours" answer gives, and `seen` what a job's observe reads of a database (exists, comment).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, overload

import psycopg

from jobs.adapters import pg
from jobs.core import runner
from jobs.core.errors import ConflictError

PREFIX = "plana-jobs "


class Kind(StrEnum):
    """Every kind of marker a job writes, in one place: a job recognises the others' databases
    by these (deprovision drops them all, restore and backup check what they may overwrite or
    take). A member is its string: it compares, hashes and encodes as one."""

    TENANT = "tenant"  # tenant-db; upgrade and restore publish a tenant under it again
    TEMPLATE = "template"  # template-build
    ENVIRONMENT = "environment"  # environment-db
    ENVIRONMENT_WORK = "environment-work"  # environment-db's work copy `{db}__env`
    RESTORE_WORK = "restore-work"  # restore's work copy
    VERIFY_SCRATCH = "verify-scratch"  # backup-verify's scratch database
    UPGRADE_WORK = "upgrade-work"  # upgrade's work copy
    ROLLBACK = "rollback"  # the pre-upgrade tenant an upgrade keeps for its rollback


# Marker kinds a backup accepts: databases this project created for a tenant.
BACKUP_KINDS = (Kind.TENANT, Kind.ENVIRONMENT)


@dataclass
class Marker:
    kind: str  # a Kind when ours; read from a comment, any string
    state: str  # the last step completed, e.g. "cloned", "personalised", "complete"
    data: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> str:
        body = {"kind": self.kind, "state": self.state, **self.data}
        return PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, comment: str | None) -> Marker | None:
        if not comment or not comment.startswith(PREFIX):
            return None
        try:
            body = json.loads(comment[len(PREFIX) :])
        except ValueError:
            return None
        if not isinstance(body, dict) or "kind" not in body or "state" not in body:
            return None
        kind, state = str(body.pop("kind")), str(body.pop("state"))
        return cls(kind=kind, state=state, data=body)


@dataclass(frozen=True)
class Seen:
    """A database as the catalog shows it, for a job's observe: whether it exists, its comment
    (`examine` tells whose it is)."""

    exists: bool = False
    comment: str | None = None


def seen(conn: psycopg.Connection[Any], db: str) -> Seen:
    if not pg.database_exists(conn, db):
        return Seen()
    return Seen(True, pg.database_comment(conn, db))


def refusal(db: str, what: str, found: str | None) -> str:
    """Why a database that is not ours as asked is refused (`require_ours`'s message)."""
    return f"database {db} exists but {what} ({found}): left untouched"


def read(conn: psycopg.Connection[Any], db: str) -> Marker | None:
    """The marker of `db`, or None when it has none (or one that is not ours)."""
    return Marker.decode(pg.database_comment(conn, db))


def _short(value: object) -> str:
    """A value read from someone's comment, quoted and bounded for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _mismatch(
    comment: str | None,
    kinds: Collection[str],
    states: Collection[str] | None,
    match: Mapping[str, object],
) -> tuple[Marker | None, str | None]:
    """(the marker, None) when `comment` is one of ours as asked, else (None, what it is)."""
    if comment is None:
        return None, "it has no comment"
    mark = Marker.decode(comment)
    if mark is None:
        return None, "its comment is not a plana-jobs marker"
    if mark.kind not in kinds:
        return None, f"it carries a {_short(mark.kind)} marker"
    if states is not None and mark.state not in states:
        return None, f"it carries a {mark.kind} marker in state {_short(mark.state)}"
    for k, want in match.items():
        got = mark.data.get(k)
        if got != want:
            return None, f"it carries a {mark.kind} marker for {k} {_short(got)}"
    return mark, None


def _kinds(kinds: str | Collection[str]) -> Collection[str]:
    return (kinds,) if isinstance(kinds, str) else kinds  # "tenant" is not ("t", "e", ...)


def ours(
    conn: psycopg.Connection[Any],
    db: str,
    kinds: str | Collection[str],
    *,
    states: Collection[str] | None = None,
    match: Mapping[str, object] | None = None,
) -> Marker | None:
    """The marker of `db` when it is ours as asked, else None (`db` missing included).

    Ours as asked: one of `kinds`, in one of `states` (any when None), and for each key of
    `match` holding that value in its data (e.g. `{"subdomain": ...}`: this tenant's).
    """
    if not pg.database_exists(conn, db):
        return None
    mark, _ = _mismatch(pg.database_comment(conn, db), _kinds(kinds), states, match or {})
    return mark


@overload
def require_ours(
    conn: psycopg.Connection[Any],
    db: str,
    kinds: str | Collection[str],
    *,
    states: Collection[str] | None = None,
    match: Mapping[str, object] | None = None,
    what: str = ...,
    absent_ok: Literal[False] = False,
) -> Marker: ...


@overload
def require_ours(
    conn: psycopg.Connection[Any],
    db: str,
    kinds: str | Collection[str],
    *,
    states: Collection[str] | None = None,
    match: Mapping[str, object] | None = None,
    what: str = ...,
    absent_ok: Literal[True],
) -> Marker | None: ...


def require_ours(
    conn: psycopg.Connection[Any],
    db: str,
    kinds: str | Collection[str],
    *,
    states: Collection[str] | None = None,
    match: Mapping[str, object] | None = None,
    what: str = "is not ours",
    absent_ok: bool = False,
) -> Marker | None:
    """The marker of `db`, which must be ours as `ours` asks; 65 (ConflictError) otherwise.

    A missing `db` is 65 too, unless `absent_ok` (then None: the caller creates it). `what`
    says what the caller expected, e.g. "is not a plana-jobs tenant"; the message names the
    database and what it carries instead: "database {db} exists but {what} ({found}): left
    untouched".
    """
    if not pg.database_exists(conn, db):
        if absent_ok:
            return None
        raise ConflictError(f"database {db} does not exist", database=db)
    mark, found = _mismatch(pg.database_comment(conn, db), _kinds(kinds), states, match or {})
    if mark is None:
        raise ConflictError(refusal(db, what, found), database=db)
    return mark


def write(conn: psycopg.Connection[Any], db: str, marker: Marker) -> None:
    pg.set_database_comment(conn, db, marker.encode())


def drop_unmarked(job: runner.Job, conn: psycopg.Connection[Any], name: str, kind: str) -> None:
    """Drop `name` when it is a work database a killed run left before marking it.

    Only this exact name, which no tenant can have (subdomains and base domains never contain
    `_`), and only while the caller holds the lock for it. One carrying someone else's
    comment is refused (65).
    """
    if not pg.database_exists(conn, name):
        return
    comment = pg.database_comment(conn, name)
    mark = Marker.decode(comment)
    if mark is not None and mark.kind == kind:
        return
    if comment is not None:
        raise ConflictError(f"database {name} exists and is not ours", database=name)
    job.log.info("dropping an unmarked work database left by a killed run", database=name)
    pg.drop_database(conn, name)


def examine(
    comment: str | None,
    kinds: str | Collection[str],
    *,
    states: Collection[str] | None = None,
    match: Mapping[str, object] | None = None,
) -> tuple[Marker | None, str | None]:
    """`ours` for a comment already read (a job's observe step, then its pure plan): (the
    marker, None) when it is ours as asked, else (None, what it carries instead, as
    `require_ours` words it)."""
    return _mismatch(comment, _kinds(kinds), states, match or {})
