"""A test driver: one child process run by the shared core inside the job frame.

    python -m tests.support.drivers.child_job ARGV...

Runs ARGV with `jobs.core.proc.run` (name "child") inside `jobs.core.runner.run`, the way a job runs
pg_dump, tar or Odoo: its output streamed into the log, a SIGTERM to the job stopping it.
Not shipped; used by tests/integration/test_odoo_run.py.
"""

from __future__ import annotations

import os
import sys

from jobs.core import proc, runner
from jobs.core.result import Done


def child(job: runner.Job, argv: list[str]) -> Done:
    job.bind(tenant="driver")
    job.step("child")
    done = proc.run(argv, name="child", deadline=job.deadline)
    return Done("updated", {"child_rc": done.returncode})


def main() -> None:
    argv = sys.argv[1:]
    runner.run("child-driver", lambda job: child(job, argv))
    os._exit(2)


if __name__ == "__main__":
    main()
