"""Redis clients as every job opens them, and what a Redis failure means for the exit code.

Clients get bounded connect/read timeouts, and a malformed `PLANA_REDIS_URL` is refused as
configuration (exit 78) before anything is sent. `transient` and `classify` are the one place
that decides what a Redis error means: the retry loops and the runner both ask them.
"""

from __future__ import annotations

import redis

from jobs.core import runner
from jobs.core.errors import ConfigError, ConflictError, JobError, TransientError

# Replies a server gives while it cannot serve writes for now: a replica, a failover, a load.
_TRANSIENT_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY ")


def from_url(url: str) -> redis.Redis:
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    except ValueError as exc:
        raise ConfigError(f"PLANA_REDIS_URL: {exc}") from None


def _auth(exc: BaseException) -> bool:
    # NOAUTH (no password given) and WRONGPASS arrive as AuthenticationError; NOPERM (an ACL
    # user lacking a command or key) as NoPermissionError.
    return isinstance(exc, redis.AuthenticationError | redis.exceptions.NoPermissionError)


def transient(exc: BaseException) -> bool:
    """Worth retrying: the connection failed or timed out, or the server is busy/failing over."""
    if _auth(exc):
        return False
    transient_types = (
        redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError | redis.ReadOnlyError
    )
    if isinstance(exc, transient_types):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


def classify(exc: BaseException, what: str = "redis") -> JobError | None:
    """The JobError a Redis failure stands for, or None when it is not one we can name (a bug).

    Refused credentials are configuration (78); a key of another type where we expect ours (a
    stream that is a string, say) is a conflict with whoever wrote it (65), not a bug.
    """
    if not isinstance(exc, redis.RedisError):
        return None
    message = f"{what}: {type(exc).__name__}: {exc}"
    if _auth(exc):
        return ConfigError(f"{what}: authentication refused: {exc}")
    if transient(exc):
        return TransientError(message)
    if isinstance(exc, redis.ResponseError) and str(exc).startswith("WRONGTYPE"):
        return ConflictError(f"{what}: a key holds another type than expected: {exc}")
    return None


# The runner asks this module through a hook registered on import (see runner.add_classifier).
runner.add_classifier(classify)
