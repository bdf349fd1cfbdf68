"""`make bench`: runs every bench/bench_*.py module's `measure()` in turn (or those named), then
prints the run's table; `--readme` also writes it into README.md (bench/report.py).

bench_tenant_db runs first, the others in name order. The default run stays within about
10 GB of disk and fills no memory; BENCH_FULL=1 is the full-size tenant-db run (about 45 GB).
"""

from __future__ import annotations

import compileall
import importlib
import sys
from pathlib import Path

import jobs
from bench import report

ROOT = Path(__file__).resolve().parent.parent
# Runs before the others: the files they delete would slow down its clones (see its docstring).
FIRST = {"bench_tenant_db"}


def modules() -> list[str]:
    found = (p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    return sorted(found, key=lambda n: (n not in FIRST, n))


def main(argv: list[str]) -> int:
    write = "--readme" in argv
    names = [a for a in argv if a != "--readme"] or modules()
    # The jobs run as they do in their image, whose build compiles the package's bytecode
    # (images/Dockerfile): with PYTHONDONTWRITEBYTECODE set (images, CI) every job would
    # otherwise compile its modules from source at each start, ≈ 25 ms of CPU each time.
    compileall.compile_dir(Path(jobs.__file__).parent, quiet=1)
    rows: list[report.Row] = []
    notes: list[str] = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name} ==", flush=True)
        got, said = module.measure()
        print(report.markdown(got, said), flush=True)
        rows += got
        notes += said
    table = report.markdown(rows, notes)
    print("== all ==\n" + table)
    if write:
        report.write_readme(ROOT / "README.md", table)
        print("README.md: bench table written")
    return 1 if any(r.met is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
