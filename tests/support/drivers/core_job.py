"""A test driver: a tiny job built only from the shared core, run as a real process.

It exercises what every real job relies on (locks, child processes, SIGTERM, redaction) without
depending on any one job's business logic. Not shipped; used by tests/integration/test_core.py.

    python -m tests.support.drivers.core_job hold-lock NAME WAIT_S [CHILD_SECONDS]
    python -m tests.support.drivers.core_job leak SECRET_FILE
"""

from __future__ import annotations

import os
import sys

from jobs.adapters import pg
from jobs.adapters.pg import locks
from jobs.core import proc, runner, secrets
from jobs.core.errors import ConflictError
from jobs.core.result import Done


def hold_lock(job: runner.Job, name: str, wait_s: float, child_s: str) -> Done:
    job.bind(tenant="driver")
    job.step("lock")
    with locks.advisory(name, deadline=job.deadline, wait_s=wait_s):
        job.log.info("lock held", lock=name)
        job.step("child")
        completed = proc.run(["sleep", child_s], name="sleep", deadline=job.deadline)
    return Done("updated", {"child_rc": completed.returncode})


def leak(job: runner.Job, secret_file: str) -> Done:
    """Tries hard to leak: logs the secret, the DSN, a child's echo of it, then fails with it."""
    token = secrets.read_file(secret_file, "PLANA_TEST_TOKEN_FILE")
    dsn = pg.base_conninfo()
    job.bind(tenant="driver")
    job.log.info("configuration", dsn=dsn, token=token, note=f"using {token} and {dsn}")
    job.log.info("headers", headers={"Authorization": f"Bearer {token}"}, api_key=token)
    proc.run(["sh", "-c", f"echo child saw {token} >&2; echo url {dsn}"], name="echo")
    raise ConflictError(f"peer refused key {token} for {dsn}", key=token)


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "hold-lock":
        name, wait_s = args[0], float(args[1])
        child_s = args[2] if len(args) > 2 else "0"
        runner.run("core-driver", lambda job: hold_lock(job, name, wait_s, child_s))
    elif mode == "leak":
        runner.run("core-driver", lambda job: leak(job, args[0]))
    os._exit(2)


if __name__ == "__main__":
    main()
