"""Benchmark: `tenant-db` against a bare `CREATE DATABASE … TEMPLATE` + `cp -r`, and against
`pg_dump -Fc | pg_restore`, on a realistic template (≥ 700 tables, ≥ 300 MB, ≥ 2,000 files).

Run with `make bench` (or `.venv/bin/python -m bench bench_tenant_db`). Needs PostgreSQL
(PLANA_TEST_PG_DSN, default postgresql://postgres@127.0.0.1:5432/postgres), psql, pg_dump,
pg_restore and cp on PATH, and the Odoo stand-in (tests/support/standins/odoo) for the Odoo core
schema. Every figure is measured in the same run; the targets are ratios, never absolute times.

Memory is filled first where free memory is handed back to the host, as on this VM (see
`fill_page_cache`: touching such memory again is slow). Nothing is dropped until the end (about
100 databases: ~45 GB on disk while it runs, plus that scratch file: up to free memory, at most
32 GB). Dropping between runs made every run after a drop slower, whichever kind it was: on an
ext4 file system without a journal (this machine's), the inode allocator skips every inode freed
in the last 60 s (`recently_deleted()`, one buffer look-up each), so the ~6,000 files of a
dropped clone made the next clone's file creations scan past them (seen with `perf record -a`: a
1 s clone took 4.5 s). A tenant is created on a server that keeps its databases; that is what is
measured. For the same reason `make bench` runs this bench first: files deleted in the minutes
before (another bench's scratch data, a test run) slow down its file creations too — the window
is 60 s, and 360 s while the inode table block is being written again, as it is by every clone
here.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import report
from bench.report import Measure, Row
from jobs.adapters import filestore
from jobs.core import naming
from jobs.ops import marker
from tests.support import harness, markers

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ODOO = ROOT / "tests" / "support" / "standins" / "odoo"
DSN = os.environ.get("PLANA_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

SHAPE = Path(__file__).with_name("odoo_shape.sql")  # ~720 Odoo-shaped tables, ~340 MB
# The default run fits a laptop: single runs and dump|restore on the full-size template (what a
# clone of a real tenant costs), the 10 concurrent runs on a second template with the same
# ~740 tables and their relations but a quarter of the rows and files, one concurrent round,
# best of 2 single runs, no memory fill: about 9 GB of disk at its peak (every clone is kept
# until the end: see above). BENCH_FULL=1 is the full-size run (about 45 GB of disk, plus the
# memory fill where free memory goes back to the host).
FULL = os.environ.get("BENCH_FULL", "") == "1"
SCALE = 1.0  # the single runs' template
CONCURRENT_SCALE = 1.0 if FULL else 0.25
FILES = 2_400  # at scale 1
REPEAT = 3 if FULL else 2
CONCURRENT = 10
CONCURRENT_ROUNDS = 3 if FULL else 1
OWNER = "plana"

SINGLE = Measure("tenant-db", "end to end vs bare `CREATE DATABASE … TEMPLATE … STRATEGY"
                 " FILE_COPY` + `cp -r`", "<= 1.25")  # fmt: skip
DUMP = Measure("tenant-db", "`pg_dump -Fc \\| pg_restore` vs tenant-db", ">= 5")
# Ten jobs at once cannot beat ten interpreter start-ups (each loading tenant-db's modules)
# followed by ten bare clones, on 2 cores: that floor, measured in the same run, is the baseline.
CONCURRENT_JOB = Measure("tenant-db", f"{CONCURRENT} concurrent vs the floor: {CONCURRENT}"
                         " concurrent interpreter start-ups loading tenant-db's modules, each"
                         " then a bare clone", "<= 1.05")  # fmt: skip
FLOOR = Measure("tenant-db", f"(the floor itself) vs {CONCURRENT} concurrent bare clones", "")
MEASURES = [SINGLE, DUMP, CONCURRENT_JOB, FLOOR]
# What a job process loads before it does anything (jobs/cli.py pauses the collector likewise).
STARTUP = "import gc; gc.disable(); import jobs.cli, jobs.commands.tenant_db"


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    ident = sql.Identifier(name)
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))


def build_template(
    conn: psycopg.Connection[Any], name: str, data_dir: Path, scale: float
) -> dict[str, Any]:
    """The Odoo core from the stand-in, then Odoo-shaped data (odoo_shape.sql) and files."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    params = psycopg.conninfo.conninfo_to_dict(DSN)
    for key, var in (("host", "PGHOST"), ("port", "PGPORT")):
        if params.get(key):
            env[var] = str(params[key])
    # Odoo (and so the stand-in) refuses the postgres role: the jobs' own role, as in tests.
    harness.ensure_job_role(DSN)
    env["PGUSER"] = harness.JOB_ROLE
    subprocess.run(
        [str(ODOO), "-d", name, "-i", "base,web,mail,contacts", "--without-demo=all",
         "--stop-after-init", "--no-http", "-D", str(data_dir), "--log-level=warn"],
        env=env, check=True,
    )  # fmt: skip
    with psycopg.connect(DSN, dbname=name, autocommit=True) as db:
        with db.transaction():
            db.execute(shape_sql(scale).encode())
        db.execute("VACUUM ANALYZE")
        shape = db.execute(
            "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = 'public'),"
            " (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            "   WHERE n.nspname = 'public'),"
            " (SELECT count(*) FROM pg_constraint WHERE contype = 'f'),"
            " pg_database_size(current_database())"
        ).fetchone()
        assert shape is not None
    fs = naming.filestore(name, data_dir)
    rnd = os.urandom(1 << 20)
    for i in range(round(FILES * scale)):
        size_i = 4096 + (i * 7919) % 65536
        start = (i * 104729) % (len(rnd) - size_i)
        content = rnd[start : start + size_i] + i.to_bytes(4, "big")
        digest = hashlib.sha1(content).hexdigest()
        (fs / digest[:2]).mkdir(parents=True, exist_ok=True)
        (fs / digest[:2] / digest).write_bytes(content)
    filestore.write_mark(fs, {"fingerprint": "bench"})
    conn.execute(
        sql.SQL("ALTER DATABASE {} WITH is_template true ALLOW_CONNECTIONS false").format(
            sql.Identifier(name)
        )
    )
    marker.write(conn, name, marker.Marker("template", "complete", markers.template("bench")))
    conn.execute("CHECKPOINT")
    report = filestore.verify(fs)
    return {
        "tables": shape[0],
        "relations": shape[1],
        "foreign_keys": shape[2],
        "db_mb": round(shape[3] / 1e6),
        "files": report.files,
        "fs_mb": round(report.bytes / 1e6),
    }


def shape_sql(scale: float) -> str:
    """odoo_shape.sql with the large tables' row counts scaled (tables, indexes, keys stay).

    Every count of 20,000 and more is scaled, wherever it appears: a table's rows
    (`generate_series(1, N)`) and the references into it (`... + g % N`) stay consistent. Small
    counts (rows per model table, lines per move, accounts) are the shape itself and stay.
    """
    text = SHAPE.read_text(encoding="utf-8")
    return re.sub(
        r"(?<![\w.])(\d{5,})(?![\w.])",
        lambda m: str(round(int(m[1]) * scale)) if int(m[1]) >= 20_000 else m[1],
        text,
    )


def _meminfo_kb() -> dict[str, int]:
    """/proc/meminfo, in kB by field name."""
    with open("/proc/meminfo", encoding="ascii") as fh:
        return {name: int(value.split()[0]) for name, value in (ln.split(":", 1) for ln in fh)}


BALLOON = Path("/sys/bus/virtio/drivers/virtio_balloon")
BALLOON_F_REPORTING = 5  # VIRTIO_BALLOON_F_REPORTING: free page reporting
FILL_MAX_MB = int(os.environ.get("BENCH_FILL_MAX_GB", "32" if FULL else "0")) * 1024


def reports_free_memory() -> bool:
    """A virtio balloon with free page reporting: freed guest memory goes back to the host."""
    for features in BALLOON.glob("virtio*/features"):
        bits = features.read_text(encoding="ascii").strip()
        if len(bits) > BALLOON_F_REPORTING and bits[BALLOON_F_REPORTING] == "1":
            return True
    return False


def fill_size_mb(keep_free_mb: int = 1024) -> int:
    """How much `fill_page_cache` writes: free memory less `keep_free_mb`, at most
    BENCH_FILL_MAX_GB (32 in the full run, 0 by default); nothing where free memory stays with
    the machine."""
    if not reports_free_memory():
        return 0
    return max(0, min(FILL_MAX_MB, _meminfo_kb()["MemFree"] // 1024 - keep_free_mb))


def fill_page_cache(path: Path, size_mb: int) -> None:
    """Write a scratch file of `size_mb` (see `fill_size_mb`) and keep it.

    This machine is a VM whose balloon reports free memory back to the host: the first touch
    of each such page then costs a host page fault. A freshly started run (after the previous
    one dropped its ~30 GB) would pay for that in whichever runs come first, until the page
    cache had filled memory once; measured here, ten bare clones took 9.4 s in the first round
    and 4.7 s in the next. Filled (and written back) first, every measured run allocates by
    evicting clean cache pages, as on a server that has been up for a while.
    """
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        for _ in range(size_mb):
            fh.write(block)
    os.sync()


def settle(conn: psycopg.Connection[Any]) -> None:
    """Start every measured run from the same state: no dirty buffers, no write-back pending.

    Without this the write-back of the run before (and the checkpoint it forces) lands on
    whichever run comes next.
    """
    conn.execute("CHECKPOINT")
    os.sync()
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        info = _meminfo_kb()
        pending_kb = info.get("Dirty", 0) + info.get("Writeback", 0)
        if pending_kb < 32 * 1024:
            break
        time.sleep(0.2)


def run_all(fns: list[Callable[[], None]]) -> None:
    """Run every function at once, each in its own thread; re-raise the first failure."""
    with ThreadPoolExecutor(len(fns)) as pool:
        for future in [pool.submit(fn) for fn in fns]:
            future.result()


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def psql(command: str) -> None:
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DSN, "-c", command],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def bare(template: str, target: str, data_dir: Path) -> None:
    """What an operator's shell script would do: psql + cp -r."""
    psql(f'CREATE DATABASE "{target}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    subprocess.run(
        ["cp", "-r", str(naming.filestore(template, data_dir)),
         str(naming.filestore(target, data_dir))],
        check=True,
    )  # fmt: skip


def startup_then_bare(template: str, target: str, data_dir: Path) -> None:
    """The floor for any job in Python: the interpreter loading exactly the modules
    `plana-job tenant-db` loads (psycopg, click, structlog, tenacity and ours), then the bare
    clone. Ten tenant-db runs cannot be cheaper than ten of these."""
    subprocess.run([sys.executable, "-c", STARTUP], check=True)
    bare(template, target, data_dir)


def tenant_db(template: str, sub: str, data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANA_", "PG"))}
    env.update(PLANA_PG_DSN=DSN, PLANA_LOG_FORMAT="json", PLANA_TERMINATION_LOG="",
               PLANA_TIMEOUT="300")  # fmt: skip
    done = subprocess.run(
        [str(BIN / "plana-job"), "tenant-db", "--subdomain", sub, "--project-id", "1",
         "--tier", "starter", "--owner-email", "bench@example.com", "--owner-name", "Bench",
         "--template-db", template, "--data-dir", str(data_dir)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"tenant-db failed ({done.returncode}): {done.stdout[-500:]}")


def dump_restore(conn: psycopg.Connection[Any], template: str, tag: str) -> float:
    """pg_dump -Fc | pg_restore of the same database (a connectable copy of the template)."""
    src, dst = f"bench_dump_src_{tag}", f"bench_dump_dst_{tag}"
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
        sql.Identifier(src), sql.Identifier(template)))  # fmt: skip
    src_dsn = psycopg.conninfo.make_conninfo(DSN, dbname=src)
    dst_dsn = psycopg.conninfo.make_conninfo(DSN, dbname=dst)

    def run() -> None:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dst)))
        dump = subprocess.Popen(["pg_dump", "-Fc", "-d", src_dsn], stdout=subprocess.PIPE)
        subprocess.run(["pg_restore", "--no-owner", "-d", dst_dsn], stdin=dump.stdout,
                       check=True)  # fmt: skip
        assert dump.stdout is not None
        dump.stdout.close()
        if dump.wait() != 0:
            raise RuntimeError("pg_dump failed")

    settle(conn)
    return timed(run)  # both databases are dropped with the others at the end


def _footprint_gb(conn: psycopg.Connection[Any], names: list[str], data_dir: Path) -> float:
    """Disk the run holds now: its databases and its filestores."""
    row = conn.execute(
        "SELECT coalesce(sum(pg_database_size(datname)), 0) FROM pg_database"
        " WHERE datname = ANY(%s)",
        (names,),
    ).fetchone()
    files = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file())
    return (int(row[0] if row else 0) + files) / 1e9


def measure() -> tuple[list[Row], list[str]]:
    tag = uuid.uuid4().hex[:8]
    template = f"template_bench_{tag}"
    # The concurrent runs' template: the same one in the full run, a smaller one by default.
    ctemplate = template if CONCURRENT_SCALE == SCALE else f"template_bench_{tag}_c"
    work = Path(tempfile.mkdtemp(prefix="bench-tenant-db-"))
    data_dir = work / "data"
    made: list[str] = [template, ctemplate]
    with psycopg.connect(DSN, autocommit=True) as conn:
        try:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (OWNER,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(OWNER)))
            t0 = time.perf_counter()
            shape = build_template(conn, template, data_dir, SCALE)
            cshape = shape
            if ctemplate != template:
                cshape = build_template(conn, ctemplate, data_dir, CONCURRENT_SCALE)
            print(f"template: {shape['tables']} tables, {shape['relations']} relations, "
                  f"{shape['foreign_keys']} foreign keys, {shape['db_mb']} MB, "
                  f"{shape['files']} files ({shape['fs_mb']} MB); built in "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip

            fill_mb = fill_size_mb()
            need = ((2 * REPEAT + 3) * (shape["db_mb"] + shape["fs_mb"])
                    + 3 * CONCURRENT * CONCURRENT_ROUNDS * (cshape["db_mb"] + cshape["fs_mb"])
                    ) * 1e6 + fill_mb * 1e6  # fmt: skip
            if shutil.disk_usage(work).free < need:
                raise SystemExit(f"not enough disk: the bench keeps its databases until the end"
                                 f" and needs {need / 1e9:.0f} GB free")  # fmt: skip
            # Warm-up (memory, page cache, first checkpoint), not measured.
            t0 = time.perf_counter()
            if fill_mb:
                fill_page_cache(work / "page-cache-fill", fill_mb)
                print(f"page cache filled with {fill_mb / 1024:.1f} GB in "
                      f"{time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip
            made.append(f"bench_warm_{tag}")
            bare(template, f"bench_warm_{tag}", data_dir)

            singles_bare: list[float] = []
            singles_job: list[float] = []
            for i in range(REPEAT):
                name, sub = f"bench_bare_{tag}_{i}", f"bench{tag}s{i}"
                made += [name, naming.db_name(sub)]
                runs = [
                    (singles_bare, lambda n=name: bare(template, n, data_dir)),
                    (singles_job, lambda s=sub: tenant_db(template, s, data_dir)),
                ]
                for times, fn in runs if i % 2 == 0 else reversed(runs):  # alternate order
                    settle(conn)
                    times.append(timed(fn))
            # Best of REPEAT: other work on the machine only ever adds time, so the minimum is the
            # least noisy estimate of each one's own cost.
            bare_s, job_s = min(singles_bare), min(singles_job)

            made += [f"bench_dump_src_{tag}", f"bench_dump_dst_{tag}"]
            dump_s = dump_restore(conn, template, tag)

            # Concurrent runs, CONCURRENT_ROUNDS times in alternating order (bare, floor, job,
            # then job, floor, bare, ...), each from a settled state.
            conc: dict[str, list[float]] = {"bare": [], "floor": [], "job": []}
            for r in range(CONCURRENT_ROUNDS):
                batches: dict[str, list[Callable[[], None]]] = {"bare": [], "floor": [], "job": []}
                for i in range(CONCURRENT):
                    bare_db, floor_db = f"bench_cbare_{tag}_{r}_{i}", f"bench_cfloor_{tag}_{r}_{i}"
                    sub = f"bench{tag}c{r}x{i}"
                    made += [bare_db, floor_db, naming.db_name(sub)]
                    batches["bare"].append(functools.partial(bare, ctemplate, bare_db, data_dir))
                    batches["floor"].append(
                        functools.partial(startup_then_bare, ctemplate, floor_db, data_dir)
                    )
                    batches["job"].append(functools.partial(tenant_db, ctemplate, sub, data_dir))
                for kind in ("bare", "floor", "job")[:: 1 if r % 2 == 0 else -1]:
                    settle(conn)
                    conc[kind].append(timed(functools.partial(run_all, batches[kind])))
            conc_bare, conc_floor, conc_job = (min(conc[k]) for k in ("bare", "floor", "job"))
            peak_gb = _footprint_gb(conn, made, data_dir)
        finally:
            for name in made:
                _drop(conn, name)
            shutil.rmtree(work, ignore_errors=True)

    rows = [
        Row(SINGLE, bare_s, job_s),
        Row(DUMP, job_s, dump_s),
        Row(CONCURRENT_JOB, conc_floor, conc_job),
        Row(FLOOR, conc_bare, conc_floor),
    ]
    size = "full size (BENCH_FULL=1)" if FULL else "default size"
    notes = [
        f"tenant-db, {size}: Odoo-shaped template of {shape['tables']} tables,"
        f" {shape['relations']} relations, {shape['foreign_keys']} foreign keys,"
        f" {shape['db_mb']} MB, {shape['files']} files ({shape['fs_mb']} MB); the concurrent"
        f" runs' template {cshape['db_mb']} MB, {cshape['files']} files; single runs best of"
        f" {REPEAT}, concurrent best of {CONCURRENT_ROUNDS} round(s); peak disk"
        f" {peak_gb:.1f} GB; memory fill {fill_mb / 1024:.1f} GB",
        f"tenant-db single runs: bare {[round(x, 2) for x in singles_bare]}, tenant-db"
        f" {[round(x, 2) for x in singles_job]}; concurrent rounds: bare"
        f" {[round(x, 2) for x in conc['bare']]}, floor {[round(x, 2) for x in conc['floor']]},"
        f" tenant-db {[round(x, 2) for x in conc['job']]}; dump\\|restore / bare clone ="
        f" {dump_s / bare_s:.2f} (the ceiling of the dump target on this machine)",
    ]
    return rows, notes


def main() -> int:
    return report.run(measure)


if __name__ == "__main__":
    sys.exit(main())
