"""The shared retry policy and connection classification, against real endpoints."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from jobs.adapters import pg
from jobs.core import retry
from jobs.core.errors import ConfigError, TransientError


def test_transient_failures_are_retried_until_success() -> None:
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise retry.RetryLater("503 from peer", retry_after=0.3)
        return "ok"

    out = retry.call(
        flaky, what="peer", deadline=retry.Deadline(10), transient=retry.http_transient
    )
    assert out == "ok"
    assert len(calls) == 3
    # The peer's Retry-After was honoured between attempts (not the 0.2 s initial backoff).
    assert calls[1] - calls[0] >= 0.29 and calls[2] - calls[1] >= 0.29


def test_permanent_failures_are_not_retried() -> None:
    calls = 0

    def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        retry.call(broken, what="peer", deadline=retry.Deadline(10), transient=retry.http_transient)
    assert calls == 1


def test_deadline_turns_transient_into_exit_75() -> None:
    def always() -> None:
        raise retry.RetryLater("busy", retry_after=0.2)

    with pytest.raises(TransientError) as err:
        retry.call(always, what="peer", deadline=retry.Deadline(1), transient=retry.http_transient)
    assert err.value.code == 75
    assert "retry budget exhausted" in err.value.message


def test_retry_after_header_forms() -> None:
    assert retry.parse_retry_after("7") == 7.0
    assert retry.parse_retry_after(None) is None
    assert retry.parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    hinted = retry.parse_retry_after(later)
    assert hinted is not None and 25 < hinted <= 30


def test_postgres_refused_is_transient_75() -> None:
    started = time.monotonic()
    with pytest.raises(TransientError):
        pg.connect(dsn="host=127.0.0.1 port=1 user=postgres", deadline=retry.Deadline(1.5))
    assert time.monotonic() - started < 15


def test_postgres_unknown_role_is_config_78(pg_dsn: str) -> None:
    dsn = pg_dsn.replace("postgres@", "no_such_role_plana@", 1)
    with pytest.raises(ConfigError) as err:
        pg.connect(dsn=dsn, deadline=retry.Deadline(5))
    assert err.value.code == 78
