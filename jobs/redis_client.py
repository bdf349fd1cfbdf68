"""Redis clients as every job opens them: bounded connect/read timeouts, and a malformed
`PLANA_REDIS_URL` refused as configuration (exit 78) before anything is sent.
"""

from __future__ import annotations

import redis

from jobs.errors import ConfigError


def from_url(url: str) -> redis.Redis:
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    except ValueError as exc:
        raise ConfigError(f"PLANA_REDIS_URL: {exc}") from None
