"""`make bench`: `plana-job backup` of the benchmark tenant against raw `pg_dump -Fc` + `tar`.

The benchmark tenant is an Odoo (stand-in) database with BENCH_PARTNERS partner rows and
BENCH_FILES filestore attachments of 32 KiB of random bytes. Baseline and job run in the same
process, interleaved for BENCH_ROUNDS rounds (best of each side is reported), on the same data,
each as a fresh process (the job's time is the wall clock of the whole `plana-job backup`,
Python start-up, manifest, checksums and fsync included). Target: 1.1 x baseline.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from bench import report
from bench.report import Measure, Row
from jobs.core import naming
from jobs.ops import marker
from tests.support import harness, markers

ROOT = Path(__file__).resolve().parent.parent
ODOO = ROOT / "tests" / "support" / "standins" / "odoo"
PARTNERS = int(os.environ.get("BENCH_PARTNERS", "3000000"))
FILES = int(os.environ.get("BENCH_FILES", "3000"))
BACKUP = Measure("backup", "vs raw `pg_dump -Fc` + `tar`", "<= 1.1")
MEASURES = [BACKUP]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))


def _dsn() -> str:
    return os.environ.get("PLANA_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _make_tenant(dsn: str, sub: str, data_dir: Path) -> str:
    db = naming.db_name(sub)
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    env = {
        **os.environ,
        "PGHOST": str(params.get("host", "127.0.0.1")),
        "PGPORT": str(params.get("port", 5432)),
        # Odoo (and so the stand-in) refuses the postgres role: the jobs' own role, as in tests.
        "PGUSER": harness.JOB_ROLE,
    }
    harness.ensure_job_role(dsn)
    subprocess.run(
        [sys.executable, str(ODOO), "-d", db, "-i", "base,mail,contacts", "--without-demo=all",
         "--stop-after-init", "-D", str(data_dir)],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    with psycopg.connect(dsn, autocommit=True) as conn:
        marker.write(conn, db, marker.Marker("tenant", "complete", markers.tenant(sub)))
    with psycopg.connect(dsn, dbname=db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO res_partner (name, email, is_company) SELECT 'Partner ' || i || ' '"
            " || md5(i::text), 'p' || i || '@example.com', i %% 7 = 0"
            " FROM generate_series(1, %s) i",
            (PARTNERS,),
        )
        conn.execute("VACUUM ANALYZE res_partner")
    fs = naming.filestore(db, data_dir)
    for _ in range(FILES):
        content = os.urandom(32 * 1024)
        sha = hashlib.sha1(content).hexdigest()
        (fs / sha[:2]).mkdir(parents=True, exist_ok=True)
        (fs / sha[:2] / sha).write_bytes(content)
    return db


def _timed(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> float:
    started = time.monotonic()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def measure() -> tuple[list[Row], list[str]]:
    dsn = _dsn()
    sub = "bench" + os.urandom(4).hex()
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    db = ""
    try:
        data_dir, dest, raw = work / "data", work / "dest", work / "raw"
        dest.mkdir()
        raw.mkdir()
        print(f"building the benchmark tenant ({PARTNERS} partners, {FILES} files)...", flush=True)
        db = _make_tenant(dsn, sub, data_dir)
        conninfo = psycopg.conninfo.make_conninfo(dsn, dbname=db)
        key = work / "backup.key"  # the set is signed as in production (HMAC of the manifest)
        key.write_text(os.urandom(32).hex())
        env = {**os.environ, "PLANA_PG_DSN": dsn, "PLANA_LOG_FORMAT": "json",
               "PLANA_TERMINATION_LOG": "", "PLANA_BACKUP_KEY_FILE": str(key)}  # fmt: skip
        fs = str(naming.filestore(db, data_dir))
        bases: list[float] = []
        jobs: list[float] = []
        # Interleaved rounds, best of each side: a shared CI machine is noisy, and the first
        # round warms the caches for both.
        for _ in range(ROUNDS):
            base = _timed(["pg_dump", "-Fc", "-f", str(raw / "db.dump"), "-d", conninfo])
            base += _timed(["tar", "-cf", str(raw / "fs.tar"), "."], cwd=fs)
            bases.append(base)
            jobs.append(_timed([str(Path(sys.executable).parent / "plana-job"), "backup",
                                "--subdomain", sub, "--dest", str(dest), "--data-dir",
                                str(data_dir), "--keep-daily", "1"], env=env))  # fmt: skip
        note = (f"backup: {PARTNERS:,} partners, {FILES:,} files of 32 KiB; best of {ROUNDS}"
                f" interleaved rounds: baseline {[round(b, 2) for b in bases]}, backup"
                f" {[round(j, 2) for j in jobs]}")  # fmt: skip
        return [Row(BACKUP, min(bases), min(jobs))], [note]
    finally:
        if db:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
                )
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    return report.run(measure)


if __name__ == "__main__":
    sys.exit(main())
