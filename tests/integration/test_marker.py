"""`marker.ours` / `marker.require_ours`: the one answer to "is this database ours?"."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.core.errors import ConflictError, ExitCode
from jobs.ops import marker
from tests.support import markers

TEMPLATE = markers.template("fp")


@pytest.fixture
def db(pg: psycopg.Connection[Any], uid: str, drop_dbs: list[str]) -> str:
    name = f"{uid}_marker"
    drop_dbs.append(name)
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def comment(pg: psycopg.Connection[Any], db: str, text: str) -> None:
    query = sql.SQL("COMMENT ON DATABASE {} IS {}")
    pg.execute(query.format(sql.Identifier(db), sql.Literal(text)))


def conflict(pg: psycopg.Connection[Any], db: str, *args: Any, **kw: Any) -> str:
    with pytest.raises(ConflictError) as caught:
        marker.require_ours(pg, db, *args, **kw)
    assert caught.value.code == ExitCode.DATAERR
    return str(caught.value)


def test_ours_matches_kind_state_and_identity(pg: psycopg.Connection[Any], db: str) -> None:
    marker.write(pg, db, marker.Marker("tenant", "complete", markers.tenant("acme", n=1)))
    mark = marker.ours(pg, db, "tenant", states=("complete",), match={"subdomain": "acme"})
    assert mark is not None and mark.data == markers.tenant("acme", n=1)  # `n`: not declared
    assert marker.ours(pg, db, ("environment", "tenant")) == mark  # one of several kinds
    assert marker.require_ours(pg, db, "tenant", match={"subdomain": "acme", "n": 1}) == mark
    # A kind is one string, never its letters.
    assert marker.ours(pg, db, "tenantx") is None
    assert marker.ours(pg, db, "environment") is None
    assert marker.ours(pg, db, "tenant", states=("cloned",)) is None
    assert marker.ours(pg, db, "tenant", match={"subdomain": "other"}) is None
    assert marker.ours(pg, db, "tenant", match={"missing": "x"}) is None


def test_require_ours_names_the_database_and_what_it_carries(
    pg: psycopg.Connection[Any], db: str
) -> None:
    assert conflict(pg, db, "tenant") == (
        f"database {db} exists but is not ours (it has no comment): left untouched"
    )
    comment(pg, db, "someone else's database")
    assert "(its comment is not a plana-jobs marker)" in conflict(pg, db, "tenant")
    marker.write(pg, db, marker.Marker("template", "complete", {**TEMPLATE, "subdomain": "acme"}))
    message = conflict(pg, db, "tenant", what="is not a plana-jobs tenant")
    assert message == (
        f"database {db} exists but is not a plana-jobs tenant (it carries a 'template' marker):"
        " left untouched"
    )
    assert "in state 'complete'" in conflict(pg, db, "template", states=("verified",))
    assert "for subdomain 'acme'" in conflict(pg, db, "template", match={"subdomain": "beta"})
    # A long value from a foreign comment is cut short in the message.
    comment(pg, db, marker.Marker("template", "x" * 500, TEMPLATE).encode())
    long = conflict(pg, db, "template", states=("complete",))
    assert "x" * 100 not in long and "..." in long and len(long) < 250


def test_a_missing_database(pg: psycopg.Connection[Any], uid: str) -> None:
    missing = f"{uid}_absent"
    assert marker.ours(pg, missing, "tenant") is None
    assert marker.require_ours(pg, missing, "tenant", absent_ok=True) is None
    assert conflict(pg, missing, "tenant") == f"database {missing} does not exist"


@pytest.mark.parametrize(
    ("data", "state", "why"),
    [
        ({"subdomain": ["acme"]}, "complete", "field 'subdomain' is a list, not text"),
        ({"project_id": True}, "complete", "field 'project_id' is a boolean, not an integer"),
        ({"template_fingerprint": 5}, "complete",
         "field 'template_fingerprint' is an integer, not text or null"),
        ({}, "bogus", "state 'bogus' is not a tenant state"),
    ],
    ids=["list-for-text", "bool-for-int", "int-for-text", "unknown-state"],
)  # fmt: skip
def test_a_marker_of_the_kind_asked_that_does_not_fit_its_schema_is_not_ours(
    pg: psycopg.Connection[Any], db: str, data: dict[str, Any], state: str, why: str
) -> None:
    # As anyone who may COMMENT could write it: right kind, right subdomain, wrong shape.
    comment(pg, db, marker.Marker("tenant", state, {**markers.tenant("acme"), **data}).encode())
    assert marker.ours(pg, db, "tenant") is None
    assert marker.ours(pg, db, ("tenant", "environment"), match={"subdomain": ["acme"]}) is None
    assert marker.read(pg, db) is None
    assert conflict(pg, db, "tenant", what="is not a plana-jobs tenant") == (
        f"database {db} exists but is not a plana-jobs tenant (it carries a tenant marker that"
        f" does not fit its schema ({why})): left untouched"
    )
    assert marker.examine(marker.seen(pg, db).comment, "tenant") == (
        None, f"it carries a tenant marker that does not fit its schema ({why})"
    )


def test_write_refuses_a_marker_that_does_not_fit_and_writes_nothing(
    pg: psycopg.Connection[Any], db: str
) -> None:
    with pytest.raises(marker.InvalidMarker, match="field 'project_id' is missing"):
        marker.write(pg, db, marker.Marker("tenant", "complete", {"subdomain": "acme"}))
    with pytest.raises(marker.InvalidMarker, match="state 'done' is not a tenant state"):
        marker.write(pg, db, marker.Marker("tenant", "done", markers.tenant("acme")))
    with pytest.raises(marker.InvalidMarker, match="kind"):
        marker.write(pg, db, marker.Marker("tenant", "complete", markers.tenant("a", kind="x")))
    assert not isinstance(marker.InvalidMarker("x"), ConflictError)  # a bug (70), not a 65
    assert marker.seen(pg, db) == marker.Seen(True, None)
