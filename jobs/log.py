"""structlog set-up: JSON lines off a TTY, console on a TTY, every line redacted."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from jobs import redact


def configure(fmt: str | None = None) -> None:
    fmt = (
        fmt or os.environ.get("PLANA_LOG_FORMAT") or ("console" if sys.stdout.isatty() else "json")
    )
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
