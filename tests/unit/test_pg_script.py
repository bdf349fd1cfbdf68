"""jobs.adapters.pg.script: SQL files split into statements the way PostgreSQL reads them."""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobs.adapters.pg import script
from jobs.adapters.pg.script import ScriptError, split

DO_BLOCK = """\
-- a comment; with a semicolon and a %(parameter)s
CREATE TABLE {t} ("k;" text, v text);
DO $$
BEGIN
    INSERT INTO {t} VALUES ('do', 'a;');
    INSERT INTO {t} VALUES ('do', 'b');
END
$$;
INSERT INTO {t} VALUES (%(k)s, 'x;
y');  /* a block; comment /* nested; */ still; */
INSERT INTO {t} ("k;", v) VALUES ('E', E'it\\'s;'), ('k', $tag$ $$; $tag$)
"""


def test_semicolons_inside_quotes_bodies_and_comments_end_nothing() -> None:
    parts = split(DO_BLOCK.format(t="t"))
    assert len(parts) == 4, parts
    assert parts[0] == 'CREATE TABLE t ("k;" text, v text)'
    assert parts[1].startswith("DO $$") and parts[1].endswith("$$")
    assert "'a;'" in parts[1] and "INSERT INTO t VALUES ('do', 'b');" in parts[1]
    assert parts[2] == "INSERT INTO t VALUES (%(k)s, 'x;\ny')"
    assert parts[3] == "INSERT INTO t (\"k;\", v) VALUES ('E', E'it\\'s;'), ('k', $tag$ $$; $tag$)"
    assert all("comment" not in p and "parameter" not in p for p in parts)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1;;SELECT 2", ["SELECT 1", "SELECT 2"]),
        ("SELECT 'it''s; fine'", ["SELECT 'it''s; fine'"]),
        ("SELECT 'a\\'; SELECT 2", ["SELECT 'a\\'", "SELECT 2"]),  # no E: \ is a character
        ('SELECT 1 AS "a;""b"', ['SELECT 1 AS "a;""b"']),
        ("SELECT $1; SELECT a$b$c", ["SELECT $1", "SELECT a$b$c"]),  # not dollar quotes
        ("-- only a comment\n", []),
        ("SELECT $€$;$€$; SELECT $_1$;$_1$", ["SELECT $€$;$€$", "SELECT $_1$;$_1$"]),
    ],
)
def test_split_cases(text: str, expected: list[str]) -> None:
    assert split(text) == expected


@pytest.mark.parametrize("text", ["SELECT 'open", 'SELECT "open', "DO $x$ open", "/* open"])
def test_an_unterminated_quote_or_comment_is_refused(text: str) -> None:
    with pytest.raises(ScriptError):
        split(text)


def test_a_do_block_runs_statement_by_statement_with_parameters(
    pg: psycopg.Connection[Any],
) -> None:
    table = f"plana_script_{uuid.uuid4().hex[:10]}"  # a plain name: formatted into the script
    name = sql.Identifier(table)
    try:
        with pg.transaction():
            for statement in split(DO_BLOCK.format(t=table)):
                pg.execute(statement, {"k": "param"} if "%(k)s" in statement else None)
        query = sql.SQL('SELECT "k;", v FROM {} ORDER BY 1, 2').format(name)
        assert pg.execute(query).fetchall() == [
            ("E", "it's;"), ("do", "a;"), ("do", "b"), ("k", " $$; "), ("param", "x;\ny"),
        ]  # fmt: skip
    finally:
        pg.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))


@pytest.mark.parametrize(
    "name",
    ["tenant/identity.sql", "tenant/personalise.sql", "tenant/personalise_mail.sql",
     "tenant/check.sql"],
)
def test_the_shipped_scripts_split_as_the_line_end_rule_did(name: str) -> None:
    """The files as written hold no quoted ";": the old rule (comment lines dropped, split at a
    ";" ending a line) and PostgreSQL's reading agree on them, so nothing changes for them."""
    text = script.read(name)
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("--"))
    old = [part.strip() for part in re.split(r";\s*$", body, flags=re.M) if part.strip()]
    assert script.statements(name) == old and old


# ------------------------------------------------- base's version: one reader for every job


def test_base_version_one_reader_for_every_job(pg: psycopg.Connection[Any]) -> None:
    """backup, restore, upgrade and environment-db read base's version through odoo.base_version:
    None without the module table (and the transaction still usable), the states asked for."""
    from jobs.adapters import odoo

    assert odoo.series("18.0.1.3") == "18.0" and odoo.series(None) is None
    assert odoo.major("18.0.1.3") == 18 and odoo.major("") is None
    with pg.transaction():
        assert not odoo.has_module_table(pg) and odoo.base_version(pg) is None
        pg.execute("SELECT 1")  # the probe aborted nothing
        pg.execute(sql.SQL("CREATE TEMP TABLE ir_module_module (name text, state text,"
                           " latest_version text)"))  # fmt: skip
        pg.execute("INSERT INTO ir_module_module VALUES ('base', 'to upgrade', '17.0.1.3')")
        assert odoo.has_module_table(pg)
        assert odoo.base_version(pg) is None
        assert odoo.base_version(pg, odoo.LOADED) == "17.0.1.3"
        pg.execute("UPDATE ir_module_module SET state = 'installed'")
        assert odoo.base_version(pg) == "17.0.1.3"
        pg.execute(sql.SQL("DROP TABLE ir_module_module"))
