"""structlog set-up: JSON lines off a TTY, console on a TTY, every line redacted."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Final

import structlog

from jobs.core import redact
from jobs.core.errors import UsageError

FORMATS: Final = ("json", "console")


def format_from_env() -> str | None:
    """PLANA_LOG_FORMAT, or None when unset or empty (then the TTY decides).

    Anything but `json` or `console` is refused (64): `text` or a typo must not quietly mean
    JSON. `cli.main` asks before any job module loads, so nothing has happened yet.
    """
    value = os.environ.get("PLANA_LOG_FORMAT") or None
    if value is not None and value not in FORMATS:
        shown = repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
        raise UsageError("PLANA_LOG_FORMAT", f"must be json or console, got {shown}")
    return value


def configure(fmt: str | None = None) -> None:
    fmt = fmt or format_from_env() or ("console" if sys.stdout.isatty() else "json")
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact.processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def bind(**context: Any) -> None:
    """Bind fields (job, tenant/template, step) onto every later line."""
    structlog.contextvars.bind_contextvars(**context)


def step(name: str) -> None:
    structlog.contextvars.bind_contextvars(step=name)


def get() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger
