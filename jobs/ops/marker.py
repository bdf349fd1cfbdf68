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

Whoever may COMMENT on a database can write a comment that looks like ours, so a marker is input
to validate, not a fact. Each `Kind` has one `Schema` (`SCHEMAS`): the states its jobs write and
the fields, with their JSON types, that its markers carry. A marker that does not fit the schema
of its kind is not ours, wherever it is read (`ours`, `require_ours`, `examine`, `parse`,
`read`), and `write` refuses to write one: a job never writes what it would refuse to read.
`problem` says what does not fit, worded for an error message ("field 'subdomain' is a list,
not text").

How the schemas are drawn:

- `fields` are what every marker of the kind carries, as written by every version of its jobs
  still to be found on a database; `optional` what only some states, paths or later versions
  write (an upgrade's `upgrading`, deprovision's `final_backup`, restore's `restored_from`, the
  `subdomain` work copies record since they are told apart per tenant). Per-state fields are
  not modelled: the states of one kind share one set of fields, the one a reader can rely on.
- Types are JSON's: str (text), int (an integer; a JSON true/false is a bool, never an int),
  bool, float, list, dict, None (null), or a tuple of them. A `Kind` as a field's type is an
  object holding the data of a marker of that kind: a rollback copy keeps the tenant marker it
  gives back (`tenant`), which a rollback publishes again, so it is checked as one. The
  fields of an object a job reads back (`upgrading`, a pass's `failed`) are a `Shape`, checked
  the same way; the contents of lists and of history objects (`phases`, `upgrade`, `update`)
  are not: they are shown, never acted on.
- Fields a schema does not name are allowed and ignored: a job one release behind reads markers
  a newer one wrote (a rolling update, a CronJob still on the old image), and refusing each
  newly added field would make it exit 65 on every database the newer jobs touched. They carry
  no trust: each job reads the fields of the kinds it asked for, and a reader of markers of any
  kind reads a field through `declared`, which ignores undeclared ones (`inspect`'s facts, the
  tenant an environment names). The one exception only ever refuses more: restore waits while
  its target's marker, whatever its kind, holds `upgrading`.

Where a kind's schema is not enough: `Marker.decode` checks the form only (a JSON object with a
kind and a state), so `inspect` can still name what a refused marker claims to be; a template
marker that does not fit is refused by the jobs that clone the template (`clone.template_state`,
65) rather than taken for a template made by other means; a backup manifest's marker is checked
against its kind's fields (`data_problem`) before a restore would publish it.
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
    take). A member is its string: it compares, hashes and encodes as one. Which job writes
    each is beside its schema in `SCHEMAS`."""

    TENANT = "tenant"
    TEMPLATE = "template"
    ENVIRONMENT = "environment"
    ENVIRONMENT_WORK = "environment-work"
    RESTORE_WORK = "restore-work"
    VERIFY_SCRATCH = "verify-scratch"
    UPGRADE_WORK = "upgrade-work"
    ROLLBACK = "rollback"


# Marker kinds a backup accepts: databases this project created for a tenant.
BACKUP_KINDS = (Kind.TENANT, Kind.ENVIRONMENT)

# A JSON type as a field declares it: one Python type, or a tuple of them (any of these).
JsonType = type | tuple[type, ...]


@dataclass(frozen=True)
class Shape:
    """An object field whose own fields a job reads (an upgrade's `upgrading` record): checked
    as a marker's fields are, so a forged `attempt` is a refusal (65), not a crash (70)."""

    name: str  # how it is named in a message: "an upgrade record"
    fields: Mapping[str, FieldType]
    optional: Mapping[str, FieldType] = field(default_factory=dict)


# ... or a Kind: an object holding the data of a marker of that kind (its fields, no state);
# or a Shape: an object with fields of its own.
FieldType = JsonType | Kind | Shape


@dataclass(frozen=True)
class Schema:
    """What the markers of one kind look like: the states its jobs write, the fields every one
    carries and those only some carry (see the module docstring)."""

    states: tuple[str, ...]
    fields: Mapping[str, FieldType] = field(default_factory=dict)
    optional: Mapping[str, FieldType] = field(default_factory=dict)


# What upgrade records on the live tenant while it is frozen, and reads back on a re-run.
_UPGRADING: Mapping[str, FieldType] = {
    "upgrading": Shape(
        "an upgrade record",
        fields={"from": int, "to": int, "attempt": int},
        optional={"base": (str, type(None)), "strategy": str, "revision": str},
    ),
}
_RESTORED: Mapping[str, FieldType] = {
    "restored_from": str,  # restore: the set it was restored from
    "restored_as_copy": bool,
}

SCHEMAS: Mapping[Kind, Schema] = {
    # tenant-db: `{db}__new` cloned → filestore → personalised, then `{db}` complete. Restore
    # publishes a set's tenant under it again (its identity and `restored_*`); upgrade freezes
    # it (`upgrading`), swaps in the upgraded copy (its history added) and, rolling back, the
    # old marker; deprovision marks it deprovisioning, naming its final backup.
    Kind.TENANT: Schema(
        states=("cloned", "filestore", "personalised", "complete", "deprovisioning"),
        fields={
            "subdomain": str,
            "project_id": int,
            "template": str,
            "template_fingerprint": (str, type(None)),  # None: a template made by other means
        },
        optional={
            **_UPGRADING,
            **_RESTORED,
            "odoo_version": int,  # upgrade, after a cutover or a same-major update
            "upgraded_from": int,
            "rollback_db": str,
            "upgrade": dict,  # a cutover's history
            "addons_revision": str,  # same-major
            "updated_at": str,
            "update": dict,  # a same-major update's history
            "final_backup": str,  # deprovision
        },
    ),
    # template-build: `{template}__build` verified, then the live template complete (and its
    # `__old` keeps that marker until dropped).
    Kind.TEMPLATE: Schema(
        states=("verified", "complete"),
        fields={
            "fingerprint": str,
            "code": str,
            "odoo_version": int,
            "modules": list,
            "binary": str,
            "addons_revision": str,
        },
        optional={"addons_digest": str, "addons_missing": list},  # since the code digest
    ),
    # environment-db: `{sub}--{env}` complete; restore publishes a set's environment again.
    Kind.ENVIRONMENT: Schema(
        states=("complete",),
        fields={
            "subdomain": str,
            "tenant": str,
            "env": str,
            "source": str,
            "generation": (int, type(None)),
        },
        optional=_RESTORED,
    ),
    # environment-db's work copy `{db}__env` (its owner recorded since deprovision asks).
    Kind.ENVIRONMENT_WORK: Schema(
        states=("created",), optional={"subdomain": str, "tenant": str, "env": str}
    ),
    # restore's work copy `{db}__rst`: created by pg_restore, verified against the manifest.
    Kind.RESTORE_WORK: Schema(
        states=("created", "verified"),
        fields={"set": str},
        optional={"subdomain": str, "as_copy": bool},
    ),
    # backup-verify's scratch database `{db}__vfy`.
    Kind.VERIFY_SCRATCH: Schema(states=("created",), optional={"subdomain": str}),
    # upgrade's work copy `{db}__up{to}`: the chain's phases, same-major's verified, a pass's
    # failed, and rolled-back (a rollback's, then holding the live marker it replaced).
    Kind.UPGRADE_WORK: Schema(
        states=(
            "snapshot",
            "source-pass",
            "prefix",
            "target-pass",
            "verified",
            "failed",
            "rolled-back",
        ),
        fields={"subdomain": str, "from": int, "to": int},
        optional={
            "attempt": int,
            "phases": list,
            "prefixes": list,
            "running": str,  # the pass under way: a copy found so was killed midway
            "failed": Shape(  # a pass's failure, shown by status
                "a failure record", fields={"phase": str}, optional={"problems": list}
            ),
            "strategy": str,  # same-major
            "revision": str,
            "was": dict,  # rolled-back: the live marker it was, kept for the record only
        },
    ),
    # upgrade: the old live tenant `{db}__rb{from}` after a cutover or same-major swap, with
    # the tenant marker a rollback gives back.
    Kind.ROLLBACK: Schema(
        states=("complete",),
        fields={"subdomain": str, "from": int, "to": int, "tenant": Kind.TENANT},
        optional={"strategy": str},
    ),
}


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
        """The marker's form only (a JSON object with a kind and a state after the prefix);
        whether it fits its kind's schema is `problem`'s question."""
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


# --------------------------------------------------------------------------- the schema check

# How a JSON value is named in a message: "field 'subdomain' is a list, not text".
_TYPE_NAMES: Mapping[type, str] = {
    str: "text",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def _a(word: str) -> str:
    """`word` with its article: "a tenant", "an upgrade-work"."""
    return f"an {word}" if word[:1] in ("a", "e", "i", "o", "u") else f"a {word}"


def describe(want: FieldType) -> str:
    """A declared type in words: "text", "an integer", "text or null", "a tenant marker's data"."""
    if isinstance(want, Kind):
        return f"{_a(want)} marker's data"
    if isinstance(want, Shape):
        return want.name
    types = want if isinstance(want, tuple) else (want,)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _name_of(value: object) -> str:
    for t, name in _TYPE_NAMES.items():  # bool before int: True is an int to Python
        if isinstance(value, t):
            return name
    return type(value).__name__  # not from JSON: a job's own mistake


def _is(value: object, want: JsonType) -> bool:
    types = want if isinstance(want, tuple) else (want,)
    if isinstance(value, bool):  # JSON's true/false: an integer field never takes one
        return bool in types
    return isinstance(value, types)


def _field_problem(name: str, value: object, want: FieldType) -> str | None:
    if isinstance(want, Kind):
        if not isinstance(value, dict):
            return f"field {name!r} is {_name_of(value)}, not {describe(want)}"
        inner = _data_problem(SCHEMAS[want], value)
        return None if inner is None else f"field {name!r} is not {describe(want)} ({inner})"
    if isinstance(want, Shape):
        if not isinstance(value, dict):
            return f"field {name!r} is {_name_of(value)}, not {describe(want)}"
        inner = _fields_problem(want.fields, want.optional, value)
        return None if inner is None else f"field {name!r} is not {describe(want)} ({inner})"
    if _is(value, want):
        return None
    return f"field {name!r} is {_name_of(value)}, not {describe(want)}"


def _data_problem(schema: Schema, data: Mapping[str, Any]) -> str | None:
    return _fields_problem(schema.fields, schema.optional, data)


def _fields_problem(
    fields: Mapping[str, FieldType], optional: Mapping[str, FieldType], data: Mapping[str, Any]
) -> str | None:
    for name, want in fields.items():
        if name not in data:
            return f"field {name!r} is missing"
        wrong = _field_problem(name, data[name], want)
        if wrong is not None:
            return wrong
    for name, want in optional.items():
        if name in data:
            wrong = _field_problem(name, data[name], want)
            if wrong is not None:
                return wrong
    return None  # fields it does not declare: allowed and ignored (the module docstring)


def data_problem(kind: Kind, data: Mapping[str, Any]) -> str | None:
    """What in `data` does not fit the fields of a `kind` marker (its state aside), or None:
    for data that becomes a marker's, such as a backup manifest's identity a restore
    publishes."""
    return _data_problem(SCHEMAS[kind], data)


def problem(mark: Marker) -> str | None:
    """What does not fit the schema of `mark`'s kind, worded for an error message (the first
    thing found), or None when it fits: "state 'bogus' is not a tenant state", "field
    'template_fingerprint' is missing", "field 'project_id' is a boolean, not an integer"."""
    if mark.kind not in SCHEMAS:
        return f"kind {_short(mark.kind)} is not a plana-jobs marker kind"
    kind = Kind(mark.kind)
    schema = SCHEMAS[kind]
    if mark.state not in schema.states:
        return f"state {_short(mark.state)} is not {_a(kind)} state"
    return _data_problem(schema, mark.data)


def misfit(mark: Marker) -> str | None:
    """How a marker that does not fit its schema is named where it is refused ("a tenant
    marker that does not fit its schema (…)"), or None when it fits."""
    wrong = problem(mark)
    if wrong is None:
        return None
    kind = mark.kind if mark.kind in SCHEMAS else _short(mark.kind)
    return f"{_a(kind)} marker that does not fit its schema ({wrong})"


def declared(mark: Marker, name: str) -> Any:
    """`mark.data[name]` when its kind's schema declares the field, else None: the one way to
    read a field a caller does not know every kind declares (undeclared ones are ignored)."""
    schema = SCHEMAS.get(Kind(mark.kind)) if mark.kind in SCHEMAS else None
    if schema is None or (name not in schema.fields and name not in schema.optional):
        return None
    return mark.data.get(name)


class InvalidMarker(ValueError):
    """A job tried to write a marker that does not fit its own schema: a bug (70), never input."""


# --------------------------------------------------------------------------- reading and writing


@dataclass(frozen=True)
class Seen:
    """A database as the catalog shows it, for a job's observe: whether it exists, its comment
    (`examine` tells whose it is)."""

    exists: bool = False
    comment: str | None = None


def seen(conn: psycopg.Connection[Any], db: str) -> Seen:
    return Seen(*pg.described(conn, db))


def refusal(db: str, what: str, found: str | None) -> str:
    """Why a database that is not ours as asked is refused (`require_ours`'s message)."""
    return f"database {db} exists but {what} ({found}): left untouched"


def parse(comment: str | None) -> Marker | None:
    """The marker in `comment` when it is one of ours, of any kind: a plana-jobs marker that
    fits the schema of its kind; else None (no comment, someone else's, or one that does not
    fit)."""
    mark = Marker.decode(comment)
    return mark if mark is not None and problem(mark) is None else None


def read(conn: psycopg.Connection[Any], db: str) -> Marker | None:
    """The marker of `db`, or None when it has none (or one that is not ours: `parse`)."""
    return parse(pg.database_comment(conn, db))


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
    wrong = misfit(mark)
    if wrong is not None:  # of the kind asked, but not as its jobs write it: not ours
        return None, f"it carries {wrong}"
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

    Ours as asked: one of `kinds`, fitting its kind's schema, in one of `states` (any when
    None), and for each key of `match` holding that value in its data (e.g. `{"subdomain":
    ...}`: this tenant's).
    """
    exists, comment = pg.described(conn, db)
    if not exists:
        return None
    mark, _ = _mismatch(comment, _kinds(kinds), states, match or {})
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
    exists, comment = pg.described(conn, db)
    if not exists:
        if absent_ok:
            return None
        raise ConflictError(f"database {db} does not exist", database=db)
    mark, found = _mismatch(comment, _kinds(kinds), states, match or {})
    if mark is None:
        raise ConflictError(refusal(db, what, found), database=db)
    return mark


def write(conn: psycopg.Connection[Any], db: str, marker: Marker) -> None:
    """`marker` as the comment of `db`; InvalidMarker (a bug: 70) when it does not fit its own
    schema, before anything is written."""
    wrong = unwritable(marker)
    if wrong is not None:
        raise InvalidMarker(f"refusing to write a {marker.kind} marker on {db}: {wrong}")
    pg.set_database_comment(conn, db, marker.encode())


def unwritable(marker: Marker) -> str | None:
    """Why `write` refuses `marker` (None: it writes it): it does not fit its schema, or its
    data would overwrite its kind or state in the encoded comment."""
    for name in ("kind", "state"):
        if name in marker.data:
            return f"field {name!r} would replace the marker's own {name}"
    return problem(marker)


def drop_unmarked(job: runner.Job, conn: psycopg.Connection[Any], name: str, kind: str) -> None:
    """Drop `name` when it is a work database a killed run left before marking it.

    Only this exact name, which no tenant can have (subdomains and base domains never contain
    `_`), and only while the caller holds the lock for it. One carrying our marker of `kind` is
    left for the caller; one carrying any other comment (a marker that does not fit its schema
    included) is refused (65).
    """
    exists, comment = pg.described(conn, name)
    if not exists:
        return
    mark, found = _mismatch(comment, (kind,), None, {})
    if mark is not None:
        return
    if comment is not None:
        raise ConflictError(f"database {name} exists and is not ours ({found})", database=name)
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
