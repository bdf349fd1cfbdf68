"""Keeps secrets out of every line a job writes.

Three nets, because a secret can arrive in three shapes: a value we loaded ourselves (registered
here when it is read), a field whose name says it is secret, and a secret embedded in text we did
not produce (a DSN in a driver's error message, a bearer header echoed by a peer).

A registered value is also masked in the forms it takes on the way out: stripped, JSON-escaped,
repr-escaped, libpq-quoted, URL-encoded (`quote`, `quote_plus`, upper- or lower-case hex) and
base64-encoded; `register_basic` adds the base64 of a `login:key` pair (HTTP Basic). A
registered value shorter than `SHORT` characters is masked only as a whole token, never inside
a longer word or number (neither neighbour a letter, digit or `_`): masking every "a" inside
every word would make the logs useless, while a whole-token mask of a word that happens to
equal a short password costs only that word.

Every pattern runs in linear time on any input: each quantifier that could scan far is bounded,
and the URL password, whose end (`@`) may be anywhere, is found by a scan that remembers the next
`@` and whitespace instead of searching for them again from every candidate.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
SHORT = 4

_known: set[str] = set()
_short: dict[str, re.Pattern[str]] = {}

_SECRET_KEY = re.compile(
    r"pass(?:word|wd|phrase)|secret|token|api[_-]?key|authorization|hmac|credential"
    r"|private[_-]?key",
    re.I,
)
# "pass" alone is short for password only as a part of its own in a snake_case, dotted or
# camelCase key (`pass`, `api_pass`, `DB_PASS`, `smtp.pass`, `apiPass`). In a hyphenated
# compound or inside a word it is a word: the phases `source-pass`/`target-pass`, `passes`,
# `bypass`, `passive`.
_KEY_PART = re.compile(r"[_.\s]+|(?<=[a-z0-9])(?=[A-Z])")


def secret_key(key: str) -> bool:
    """Whether a field named `key` holds a secret (its whole value is then masked)."""
    if _SECRET_KEY.search(key):
        return True
    return any(part.lower() == "pass" for part in _KEY_PART.split(key))


_VALUE = (
    # quoted (libpq's 'a b' with \' escapes, or "a b"), at most 512 characters; an unterminated
    # quote masks those 512 anyway
    r"'(?:[^'\\\n]|\\.){0,512}'?"
    r'|"(?:[^"\\\n]|\\.){0,512}"?'
    # bare, up to a separator
    r"|[^\s&;,'\"]{1,512}"
)
_IN_TEXT = [
    # libpq key=value and query-string style password=…, and repr/JSON 'password': '…'
    re.compile(
        r"(?P<keep>\bpass(?:word|wd)(?:\s{0,8}=|['\"]\s{0,8}[:=])\s{0,8})(?P<secret>"
        + _VALUE
        + ")",
        re.I,
    ),
    # HTTP auth headers
    re.compile(r"(?P<keep>\b(?:bearer|basic)\s{1,16})(?P<secret>[A-Za-z0-9._~+/=-]{8,})", re.I),
    # Standard Webhooks secrets and Matrix access tokens
    re.compile(r"(?P<keep>)(?P<secret>whsec_[A-Za-z0-9+/=]+|sy[td]_[A-Za-z0-9_=-]{8,})"),
]
# scheme://user: — the password after it runs to the next "@" (see _userinfo).
_URL_USER = re.compile(r"[a-z][a-z0-9+.-]{0,31}://[^:/@\s]{0,256}:", re.I)
_SPACE = re.compile(r"\s")


def _forms(secret: str) -> set[str]:
    """The secret as it may be printed: escaped, quoted or URL-encoded."""
    forms = {secret, secret.strip()}
    for s in list(forms):
        forms.update(
            {
                json.dumps(s)[1:-1],
                json.dumps(s, ensure_ascii=False)[1:-1],
                repr(s)[1:-1],
                s.replace("\\", "\\\\").replace("'", "\\'"),  # libpq conninfo quoting
                quote(s),
                quote(s, safe=""),
                quote_plus(s),
                quote_plus(s, safe=""),
                base64.b64encode(s.encode()).decode(),
            }
        )
    # Percent-encoding with lower-case hex digits (%2f), as some clients write it.
    forms.update(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in list(forms))
    return {f for f in forms if f}


def register(secret: str | None) -> None:
    """Remember a secret value so it is masked wherever it later appears, in any form."""
    if not secret:
        return
    for form in _forms(secret):
        if len(form) >= SHORT:
            _known.add(form)
        elif form not in _short:
            _short[form] = re.compile(r"(?<![A-Za-z0-9_])" + re.escape(form) + r"(?![A-Za-z0-9_])")


def register_basic(login: str | None, key: str | None) -> None:
    """Register the HTTP Basic credentials of `login`/`key`: base64 of "login:key"."""
    if not login or not key:
        return
    raw = f"{login}:{key}".encode()
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text_form = encoded.decode()
        register(text_form)
        register(text_form.rstrip("="))


def _userinfo(value: str) -> str:
    """Mask the password of every `scheme://user:password@` in one left-to-right pass."""
    out: list[str] = []
    done = 0  # value[:done] is already copied to out
    next_at = next_space = -1  # cached positions, valid while >= the current index
    for m in _URL_USER.finditer(value):
        start = m.end()
        if start < done:
            continue  # inside a password masked already
        if next_at < start:
            found = value.find("@", start)
            next_at = len(value) if found < 0 else found
        if next_space < start:
            space = _SPACE.search(value, start)
            next_space = len(value) if space is None else space.start()
        if next_at == len(value) or next_at > next_space or next_at == start:
            continue
        out.append(value[done:start])
        out.append(MASK)
        done = next_at
    if not out:
        return value
    out.append(value[done:])
    return "".join(out)


def text(value: str) -> str:
    for secret in sorted(_known, key=len, reverse=True):
        if secret in value:
            value = value.replace(secret, MASK)
    for form, pattern in _short.items():
        if form in value:
            value = pattern.sub(MASK, value)
    value = _userinfo(value)
    for pattern in _IN_TEXT:
        value = pattern.sub(lambda m: m.group("keep") + MASK, value)
    return value


def value(obj: Any, key: str = "") -> Any:
    """Redact any JSON-like structure; a secret-named key masks its whole value."""
    if key and secret_key(key) and obj not in (None, "", False):
        return MASK
    if isinstance(obj, str):
        return text(obj)
    if isinstance(obj, Mapping):
        return {k: value(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [value(v) for v in obj]
    return obj


def processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: the last one before rendering."""
    return {k: value(v, k) for k, v in event_dict.items()}
