"""filestore-copy against the raw `tar -cf - | tar -xf -` pipe it wraps.

A filestore of 10,000 content-addressed files (~52 KB each, ~520 MB of random bytes, so nothing
compresses or dedupes) is generated once in a temporary directory. Each round times, into a fresh
target: the raw pipe (with the same extraction flags), `filestore-copy --verify names`,
`filestore-copy --verify sha1`, then the `unchanged` re-run. Every variant runs as a real process
(`plana-job`, like a pod). Dirty pages are flushed (`sync`) before each timed run so that one
run's write-back does not land on the next one's clock. The machine is shared, so the runs of a
round are compared with each other (paired, order alternating) and the ratio reported is the
median of the per-round ratios; CPU time (user + sys, children included) is shown beside it.

Targets: names ≤ 1.3x raw, sha1 ≤ 2x, unchanged re-run ≤ 0.1x.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.report import Measure, Row

FILES = 10_000
FILE_SIZE = 52 * 1024
ROUNDS = 3
DB = "bench.planapulse.app"
TARGETS = {"names": 1.3, "sha1": 2.0, "unchanged": 0.1}
RAW = "raw `tar -cf - \\| tar -xf -`"
MEASURES = {
    "names": Measure("filestore-copy", f"`--verify names` vs {RAW}", "<= 1.3"),
    "sha1": Measure("filestore-copy", f"`--verify sha1` vs {RAW}", "<= 2.0"),
    "unchanged": Measure("filestore-copy", f"`unchanged` re-run vs {RAW}", "<= 0.1"),
}
PLANA_JOB = str(Path(sys.executable).parent / "plana-job")


def generate(root: Path) -> int:
    """Odoo's layout: `ab/ab12…` named by the sha1 of the content."""
    total = 0
    for _ in range(FILES):
        data = os.urandom(FILE_SIZE)
        sha = hashlib.sha1(data).hexdigest()
        folder = root / sha[:2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / sha).write_bytes(data)
        total += len(data)
    return total


class Sample:
    """Wall and CPU seconds (user + sys of the process and everything it waited for)."""

    def __init__(self, wall: float, cpu: float) -> None:
        self.wall, self.cpu = wall, cpu


def timed(argv: list[str], env: dict[str, str] | None = None) -> Sample:
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]} exited {done.returncode}: {done.stderr[-500:]!r}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Sample(elapsed, cpu)


def measure() -> tuple[list[Row], list[str]]:
    work = Path(tempfile.mkdtemp(prefix="bench-filestore-"))
    env = {**os.environ, "PLANA_LOG_FORMAT": "json", "PLANA_TERMINATION_LOG": "",
           "PLANA_TIMEOUT": "1200"}  # fmt: skip
    try:
        src_root, dst_root = work / "src", work / "dst"
        started = time.perf_counter()
        size = generate(src_root / DB)
        print(f"filestore: {FILES} files, {size / 1e6:.0f} MB in {work} "
              f"(generated in {time.perf_counter() - started:.1f}s)", flush=True)  # fmt: skip
        job = [PLANA_JOB, "filestore-copy", "--transport", "local", "--db", DB,
               "--source-root", str(src_root), "--target-root", str(dst_root)]  # fmt: skip
        raw = (f"tar -cf - -C '{src_root / DB}' . | tar -xf - -C '{dst_root / DB}' "
               "--no-same-owner --no-same-permissions")  # fmt: skip

        def run_raw() -> Sample:
            shutil.rmtree(dst_root, ignore_errors=True)
            (dst_root / DB).mkdir(parents=True)
            # bash's pipefail: the baseline checks both sides too.
            return timed(["bash", "-o", "pipefail", "-c", raw])

        def run_job(verify: str) -> Sample:
            shutil.rmtree(dst_root, ignore_errors=True)
            return timed([*job, "--verify", verify], env)

        ratios: dict[str, list[float]] = {k: [] for k in TARGETS}
        cpu: dict[str, list[float]] = {k: [] for k in ["raw", *TARGETS]}
        walls: dict[str, list[float]] = {k: [] for k in ["raw", *TARGETS]}
        for rnd in range(ROUNDS):
            # Paired: each round compares runs made moments apart; the order alternates so
            # neither side always runs first on a machine others are using too.
            order = ["raw", "names", "sha1"] if rnd % 2 == 0 else ["sha1", "names", "raw"]
            got: dict[str, Sample] = {}
            for name in order:
                got[name] = run_raw() if name == "raw" else run_job(name)
            got["unchanged"] = timed([*job, "--verify", "names"], env)  # target is complete
            print(f"round {rnd + 1}/{ROUNDS}: " + ", ".join(
                f"{k} {v.wall:.2f}s (cpu {v.cpu:.2f}s)" for k, v in got.items()), flush=True)
            for name, sample in got.items():
                walls[name].append(sample.wall)
                cpu[name].append(sample.cpu)
                if name in ratios:
                    ratios[name].append(sample.wall / got["raw"].wall)

        med = statistics.median
        rows = [
            Row(MEASURES[name], med(walls["raw"]), med(walls[name]), med(ratios[name]))
            for name in TARGETS
        ]
        cpu_ratios = ", ".join(f"{n} {med(cpu[n]) / med(cpu['raw']):.2f}" for n in TARGETS)
        notes = [f"filestore-copy: {FILES:,} files, {size / 1e6:.0f} MB; medians of {ROUNDS}"
                 f" paired rounds (ratio: median of the per-round ratios); CPU-time ratios"
                 f" {cpu_ratios}"]  # fmt: skip
        return rows, notes
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    return report.run(measure)


if __name__ == "__main__":
    sys.exit(main())
