"""The events a job adds to a Redis stream, read back typed for the tests that check them."""

from __future__ import annotations

from typing import cast

import redis

Entry = tuple[str, dict[str, str]]  # (entry id, fields)


def xrange(rds: redis.Redis, stream: str) -> list[Entry]:
    """The stream's entries, oldest first. The tests' clients decode responses, which redis-py's
    types cannot tell from the client (they allow bytes and None): hence the cast."""
    return cast(list[Entry], rds.xrange(stream))


def xrevrange(rds: redis.Redis, stream: str, count: int) -> list[Entry]:
    """The stream's newest `count` entries, newest first (decoded, as `xrange`)."""
    return cast(list[Entry], rds.xrevrange(stream, count=count))
