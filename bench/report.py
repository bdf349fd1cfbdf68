"""One row per measure, and the README's bench table written from a run's rows.

Every bench module declares its measures up front (`MEASURES`: what is compared, and the target
ratio) and returns one `Row` per measure from `measure()`. `make bench` prints the table of the
whole run; `make bench BENCH_ARGS=--readme` also writes it into README.md between the markers,
so the README shows a real run's output, never figures pasted by hand
(tests/contract/test_repository.py checks the block names exactly the declared measures and
targets).
"""

from __future__ import annotations

import datetime as dt
import operator
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
HEADER = "| job | measure | baseline | job | ratio | target | met |"
_OPS = {"<=": operator.le, ">=": operator.ge}
TIMES = "\u00d7"  # the multiplication sign of "1.02x", as the README writes it


@dataclass(frozen=True)
class Measure:
    job: str
    what: str  # the comparison, e.g. "end to end vs bare `CREATE DATABASE … TEMPLATE`"
    target: str  # "<= 1.25" or ">= 5" (a ratio job / baseline); "" for a figure shown only

    def met(self, ratio: float) -> bool | None:
        if not self.target:
            return None
        op, value = self.target.split()
        return bool(_OPS[op](ratio, float(value)))


@dataclass(frozen=True)
class Row:
    measure: Measure
    baseline_s: float
    measured_s: float
    paired_ratio: float | None = None  # the median of per-round ratios, where a bench pairs runs

    @property
    def ratio(self) -> float:
        if self.paired_ratio is not None:
            return self.paired_ratio
        return self.measured_s / self.baseline_s

    @property
    def met(self) -> bool | None:
        return self.measure.met(self.ratio)


def _target_cell(target: str) -> str:
    if not target:
        return "—"
    op, value = target.split()
    return f"{'≤' if op == '<=' else '≥'} {value}{TIMES}"


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 0.1 else f"{value:.3f} s"


def markdown(rows: list[Row], notes: list[str]) -> str:
    """The table of one run, with the conditions the benches reported under it."""
    when = dt.date.today().isoformat()
    lines = [
        f"`make bench`, {when}, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}:",
        "",
        HEADER,
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row.measure
        met = {None: "—", True: "yes", False: "**no**"}[row.met]
        lines.append(
            f"| {m.job} | {m.what} | {_seconds(row.baseline_s)} | {_seconds(row.measured_s)} |"
            f" {row.ratio:.2f}{TIMES} | {_target_cell(m.target)} | {met} |"
        )
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def run(measure: Callable[[], tuple[list[Row], list[str]]]) -> int:
    """A bench module's `main()`: measure, print its table, 1 if a target was missed."""
    rows, notes = measure()
    print(markdown(rows, notes))
    return 0 if all(r.met is not False for r in rows) else 1


def write_readme(path: Path, table: str) -> None:
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no {BEGIN} … {END} block to write the bench table into")
    path.write_text(pattern.sub(lambda _m: f"{BEGIN}\n{table}{END}", text, count=1))


def readme_measures(text: str) -> list[tuple[str, str, str]]:
    """(job, measure, target cell) of each row of the README's bench block."""
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = []
    for line in block.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 7 and cells[0] not in ("job", "---"):
            rows.append((cells[0], cells[1], cells[5]))
    return rows


def declared(measures: list[Measure]) -> list[tuple[str, str, str]]:
    return [(m.job, m.what, _target_cell(m.target)) for m in measures]
