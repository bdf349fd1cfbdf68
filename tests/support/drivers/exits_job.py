"""A test driver for exit codes: failures a real job can meet, raised inside the shared runner.

    python -m tests.support.drivers.exits_job bug
    python -m tests.support.drivers.exits_job pg-wait APPLICATION_NAME

`bug` raises an exception nothing classifies (exit 70). `pg-wait` waits on PostgreSQL in a
worker thread (`SELECT pg_sleep`) under its own application_name, so a test can terminate that
backend and see which exit code a lost connection gets. Not shipped.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

from jobs.adapters import pg
from jobs.core import runner
from jobs.core.result import Done


def bug(job: runner.Job) -> Done:
    job.bind(tenant="driver")
    raise RuntimeError("an unforeseen state in the job body")


def pg_wait(job: runner.Job, app: str) -> Done:
    job.bind(tenant="driver")

    def wait() -> None:
        with pg.connection(deadline=job.deadline, application_name=app) as conn:
            conn.execute("SELECT pg_sleep(300)")

    job.step("wait")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(wait).result()  # the worker's exception is re-raised here
    return Done("unchanged")


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "bug":
        runner.run("exits-driver", bug)
    elif mode == "pg-wait":
        runner.run("exits-driver", lambda job: pg_wait(job, args[0]))
    os._exit(2)


if __name__ == "__main__":
    main()
