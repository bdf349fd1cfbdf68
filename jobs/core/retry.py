"""Retry policy, in one place: tenacity with a total deadline shared by the whole job.

Which failures are transient is decided per dependency (`pg.transient`,
`redis_client.transient`, `http_transient`) and passed in by the caller; everything else
propagates at once. A transient failure that outlives the deadline becomes TransientError
(exit 75) so Kubernetes counts the pod and retries it later.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import structlog
import tenacity

from jobs.core import redact
from jobs.core.errors import TransientError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600.0


class Deadline:
    """The job's total budget for retries and waits (`PLANA_TIMEOUT`)."""

    def __init__(self, seconds: float | None = None) -> None:
        if seconds is None:
            seconds = float(os.environ.get("PLANA_TIMEOUT") or DEFAULT_TIMEOUT_S)
        self.seconds = seconds
        self.expires = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.expires - time.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0


class RetryLater(Exception):
    """A peer asked us to come back (5xx, 429, M_LIMIT_EXCEEDED); `retry_after` in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(header: str | None) -> float | None:
    """`Retry-After` is either delay-seconds or an HTTP date."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def http_transient(exc: BaseException) -> bool:
    httpx: Any = sys.modules.get("httpx")
    if isinstance(exc, RetryLater):
        return True
    return httpx is not None and isinstance(exc, httpx.TransportError)


_BACKOFF = tenacity.wait_exponential(multiplier=0.2, max=5.0) + tenacity.wait_random(0, 0.3)


def _wait(state: tenacity.RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    hinted = getattr(exc, "retry_after", None)
    backoff = _BACKOFF(state)
    return float(hinted) if isinstance(hinted, int | float) else backoff


def call(
    fn: Callable[[], T],
    *,
    what: str,
    deadline: Deadline,
    transient: Callable[[BaseException], bool],
) -> T:
    """Run `fn`, retrying transient failures until the deadline; then TransientError (75)."""
    log = structlog.get_logger()

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "retrying",
            what=what,
            attempt=state.attempt_number,
            error=redact.text(f"{type(exc).__name__}: {exc}"),
            wait_s=round(state.upcoming_sleep, 2),
        )

    def stop(state: tenacity.RetryCallState) -> bool:
        # Stop when the next wait would cross the deadline: never sleep past it.
        return deadline.remaining() <= state.upcoming_sleep

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(transient),
        stop=stop,
        wait=_wait,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(fn)
    except BaseException as exc:
        if transient(exc):
            raise TransientError(
                redact.text(f"{what}: {type(exc).__name__}: {exc} (retry budget exhausted)")
            ) from None
        raise
