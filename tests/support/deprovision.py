"""deprovision's world, shared with the attack tests: the `setup` fixture (a marked tenant with
partners and files, a backup volume and an event stream, exposed by the root conftest) and
filestore files to plant where a tenant's leftovers would be.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.backup import make_tenant


@pytest.fixture
def setup(
    pg_dsn: str, redis_url: str, uid: str, tmp_path: Path, drop_dbs: list[str]
) -> Iterator[dict[str, Any]]:
    drop_dbs.append(f"{uid}%")
    data_dir, dest = tmp_path / "data", tmp_path / "backups"
    dest.mkdir()
    db = make_tenant(pg_dsn, uid, data_dir, partners=5)
    stream = f"test:{uid}:events"
    args = ["--subdomain", uid, "--project-id", "7", "--tier", "pro", "--generation", "3",
            "--dest", str(dest), "--data-dir", str(data_dir), "--stream", stream]  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    yield {"sub": uid, "db": db, "data_dir": data_dir, "dest": dest, "stream": stream,
           "args": args, "redis": client}  # fmt: skip
    client.delete(stream, *client.keys(f"{stream}:*"))
    client.close()


def files_in(path: Path, count: int) -> Path:
    for i in range(count):
        content = f"attachment {path.name} {i}".encode()
        sha = hashlib.sha1(content).hexdigest()
        (path / sha[:2]).mkdir(parents=True, exist_ok=True)
        (path / sha[:2] / sha).write_bytes(content)
    return path
