"""PostgreSQL's client tools (pg_dump, pg_restore) as child processes: the conninfo they are
given without its password, and what their failure means for the exit code.
"""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobs.adapters import pg
from jobs.core import proc, runner
from jobs.core.errors import ConfigError, TransientError


def child_conninfo(dbname: str, dsn: str | None = None) -> tuple[str, dict[str, str]]:
    """A conninfo for pg_dump/pg_restore without its password, and an env carrying it.

    The password goes through PGPASSWORD so it never shows on argv (`ps`, the logged argv).
    """
    params = conninfo_to_dict(pg.conninfo_for(dbname, dsn))
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **{k: str(v) for k, v in params.items() if v is not None}), env


def child_failed(what: str, code: int, tail: list[str]) -> Exception:
    """Classify a failed pg_dump/pg_restore/tar by what it said: config (78) or transient (75)."""
    said = " | ".join(tail[-3:]) or "(no output)"
    low = said.lower()
    if any(
        s in low
        for s in ("authentication failed", "no password supplied", "version mismatch", "role ")
    ):
        return ConfigError(f"{what} exited {code}: {said}", command=what)
    return TransientError(f"{what} exited {code}: {said}", command=what)


def pg_restore_argv(
    db: str, dsn: str | None, jobs_n: int, dump_fd: int
) -> tuple[list[str], dict[str, str]]:
    """pg_restore of the dump open at `dump_fd` (the checked inode, handed on as /dev/fd/N).

    pg_restore is never given the dump's path: between the checksum and the restore the set's
    volume could have a file or directory swapped under that name.
    """
    conninfo, env = child_conninfo(db, dsn)
    argv = ["pg_restore", f"--dbname={conninfo}", "--exit-on-error", "--no-comments"]
    if jobs_n > 1:
        argv.append(f"--jobs={jobs_n}")
    argv.append(f"/dev/fd/{dump_fd}")
    return argv, env


def pg_restore(job: runner.Job, dump_fd: int, db: str, dsn: str | None, jobs_n: int) -> None:
    argv, env = pg_restore_argv(db, dsn, jobs_n, dump_fd)
    done = proc.run(argv, name="pg_restore", env=env, deadline=job.deadline, pass_fds=(dump_fd,))
    if done.returncode != 0:
        raise child_failed("pg_restore", done.returncode, done.tail)
