"""Secrets come from files mounted from Kubernetes Secrets (or, failing that, the environment)."""

from __future__ import annotations

from pathlib import Path

from jobs.core import redact
from jobs.core.errors import ConfigError


def read_file(path: str | Path | None, field: str) -> str:
    """Read a secret file; missing, unreadable or empty → ConfigError (78). Registers the value."""
    if not path:
        raise ConfigError(f"{field}: no secret file configured")
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read secret file {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{field}: secret file {path} is empty")
    redact.register(value)
    return value
