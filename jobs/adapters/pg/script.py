"""SQL script files of the package (`sql/`, shipped as `jobs.sql`): read, split into statements.

A script with parameters (`%(name)s`) runs one statement per `execute`: PostgreSQL's extended
protocol, which binds parameters server-side, takes a single statement. So the text is split
the way PostgreSQL's own lexer reads it, not at every ";" that ends a line: a ";" inside a
string ('…', E'…'), a quoted identifier ("…"), a dollar-quoted body ($$…$$, $tag$…$tag$, as in
`DO $$ … $$`) or a comment (-- …, /* … */, nested) ends nothing. Comments are dropped from the
statements: a `%(` in a comment would otherwise be read as a parameter by psycopg.
"""

from __future__ import annotations

import importlib.resources
import re

# A dollar-quote tag: $$ or $name$, name as the PostgreSQL lexer defines it ([A-Za-z\200-\377_]
# then [A-Za-z\200-\377_0-9]*: any non-ASCII character counts as a letter); "$1" is a positional
# parameter, not a quote. Written as the ASCII it excludes: a class ranging up to U+10FFFF
# compiles in milliseconds, paid at every job's start.
_DOLLAR_TAG = re.compile(
    r"\$(?:[^\x00-\x40\x5b-\x5e\x60\x7b-\x7f][^\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]*)?\$"
)


class ScriptError(ValueError):
    """The script does not end where a statement can: an unterminated quote or comment."""


def read(name: str) -> str:
    """The text of `sql/{name}` (e.g. "tenant/personalise.sql") from the installed package."""
    return importlib.resources.files("jobs.sql").joinpath(name).read_text(encoding="utf-8")


def statements(name: str) -> list[str]:
    """The statements of `sql/{name}`, comments dropped, in order."""
    return split(read(name))


def split(text: str) -> list[str]:
    """`text` split into its statements (stripped, without the ";"), comments removed."""
    out: list[str] = []
    current: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end  # the newline stays: it separates tokens
        elif ch == "/" and text.startswith("/*", i):
            i = _block_comment_end(text, i)
            current.append(" ")
        elif ch == "'":
            # E'…' strings take backslash escapes; a standard string only doubles quotes.
            escaped = i > 0 and text[i - 1] in "eE" and not _ident_char(text, i - 2)
            end = _quoted_end(text, i, "'", backslash=escaped)
            current.append(text[i:end])
            i = end
        elif ch == '"':
            end = _quoted_end(text, i, '"', backslash=False)
            current.append(text[i:end])
            i = end
        elif ch == "$" and not _ident_char(text, i - 1):
            tag = _DOLLAR_TAG.match(text, i)
            if tag is None:
                current.append(ch)
                i += 1
                continue
            close = text.find(tag.group(0), tag.end())
            if close < 0:
                raise ScriptError(f"unterminated dollar quote {tag.group(0)}")
            end = close + len(tag.group(0))
            current.append(text[i:end])
            i = end
        elif ch == ";":
            _flush(current, out)
            i += 1
        else:
            current.append(ch)
            i += 1
    _flush(current, out)
    return out


def _flush(current: list[str], out: list[str]) -> None:
    statement = "".join(current).strip()
    current.clear()
    if statement:
        out.append(statement)


def _ident_char(text: str, i: int) -> bool:
    return i >= 0 and (text[i].isalnum() or text[i] in "_$")


def _quoted_end(text: str, start: int, quote: str, *, backslash: bool) -> int:
    """The index just past the closing `quote` of the literal opened at `start`."""
    i = start + 1
    while i < len(text):
        ch = text[i]
        if backslash and ch == "\\":
            i += 2
            continue
        if ch == quote:
            if text.startswith(quote * 2, i):  # a doubled quote is the quote character
                i += 2
                continue
            return i + 1
        i += 1
    raise ScriptError(f"unterminated {quote} quote")


def _block_comment_end(text: str, start: int) -> int:
    """Just past the end of the /* … */ comment at `start` (they nest in PostgreSQL)."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise ScriptError("unterminated /* comment")
