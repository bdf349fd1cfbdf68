"""`make bench`: runs every bench/bench_*.py module's `main()` in turn (or those named).

bench_tenant_db runs first, the others in name order."""

from __future__ import annotations

import compileall
import importlib
import sys
from pathlib import Path

import jobs

# Runs before the others: the files they delete would slow down its clones (see its docstring).
FIRST = {"bench_tenant_db"}


def main() -> int:
    # The jobs run as they do in their image, whose build compiles the package's bytecode
    # (images/Dockerfile): with PYTHONDONTWRITEBYTECODE set (images, CI) every job would
    # otherwise compile its modules from source at each start, ≈ 25 ms of CPU each time.
    compileall.compile_dir(Path(jobs.__file__).parent, quiet=1)
    found = (p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    names = sys.argv[1:] or sorted(found, key=lambda n: (n not in FIRST, n))
    failed = 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name} ==", flush=True)
        failed += 1 if module.main() else 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
