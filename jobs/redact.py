"""Keeps secrets out of every line a job writes.

Three nets, because a secret can arrive in three shapes: a value we loaded ourselves (registered
here when it is read), a field whose name says it is secret, and a secret embedded in text we did
not produce (a DSN in a driver's error message, a bearer header echoed by a peer).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

MASK = "***"

_known: set[str] = set()

_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|api[_-]?key|authorization|hmac|credential|private[_-]?key",
    re.I,
)
_IN_TEXT = [
    # scheme://user:password@host
    re.compile(r"(?P<keep>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)(?=@)", re.I),
    # libpq key=value and query-string style password=…
    re.compile(r"(?P<keep>\bpassword\s*=\s*)(?P<secret>'[^']*'|[^\s&;,]+)", re.I),
    # HTTP auth headers
    re.compile(r"(?P<keep>\b(?:bearer|basic)\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})", re.I),
    # Standard Webhooks secrets and Matrix access tokens
    re.compile(r"(?P<keep>)(?P<secret>whsec_[A-Za-z0-9+/=]+|sy[td]_[A-Za-z0-9_=-]{8,})"),
]


def register(secret: str | None) -> None:
    """Remember a secret value so it is masked wherever it later appears."""
    if secret and len(secret) >= 4:
        _known.add(secret)
        stripped = secret.strip()
        if stripped and stripped != secret and len(stripped) >= 4:
            _known.add(stripped)


def text(value: str) -> str:
    for secret in sorted(_known, key=len, reverse=True):
        if secret in value:
            value = value.replace(secret, MASK)
    for pattern in _IN_TEXT:
        value = pattern.sub(lambda m: m.group("keep") + MASK, value)
    return value


def value(obj: Any, key: str = "") -> Any:
    """Redact any JSON-like structure; a secret-named key masks its whole value."""
    if key and _SECRET_KEY.search(key) and obj not in (None, "", False):
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
