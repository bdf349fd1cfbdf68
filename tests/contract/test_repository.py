"""The repository explains itself: it refers to no file outside it and to no issue number, its
Markdown links resolve inside it, docs/design.md names exactly the variables the jobs read and
its markers table is the marker schemas."""

from __future__ import annotations

import importlib
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import click

from jobs import reference
from jobs.cli import COMMANDS
from jobs.ops import marker

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"
# Written with escapes so that this file does not match itself.
OUTSIDE = re.compile(
    r"\bDESIGN\.md|\bREFERENCE\.md"  # the design notes kept outside the repository
    r"|\.\./shared\b|/work/share[d]"  # the directory beside the clone that holds them
    r"|\b[Ii]ssues? #?[0-9]"  # issue numbers: the code and docs say what, not which ticket
)
# Variables every job reads outside any command's options (jobs/core/log.py, jobs/core/result.py).
GLOBAL_VARIABLES = {"PLANA_LOG_FORMAT", "PLANA_TERMINATION_LOG"}


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name]


def test_no_tracked_file_refers_outside_the_repository_or_to_an_issue() -> None:
    files = tracked_files()
    assert ROOT / "README.md" in files and DESIGN in files
    found = []
    for path in files:
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []


def test_the_check_catches_each_kind_of_reference() -> None:
    for line in [
        "see ../" + "shared/DESIGN" + ".md",
        "facts in REFERENCE" + ".md",
        "(issue" + " 7)",
        "Issue" + " 12 says",
        "like issue" + " #4",
    ]:
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search("see docs/design.md; a known issue with 0-byte files")


def test_markdown_links_resolve_inside_the_repository() -> None:
    broken = []
    for path in tracked_files():
        if path.suffix != ".md":
            continue
        text = re.sub(r"```.*?```|`[^`\n]*`", "", path.read_text(), flags=re.DOTALL)  # code
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            file = (path.parent / target.partition("#")[0]).resolve()
            if not file.is_relative_to(ROOT) or not file.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert broken == []


def command_variables() -> set[str]:
    found: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            envvars = [param.envvar] if isinstance(param.envvar, str) else param.envvar or []
            found.update(envvars)
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    for target in COMMANDS.values():
        module, _, attr = target.partition(":")
        walk(getattr(importlib.import_module(module), attr))
    return found


def test_design_names_exactly_the_variables_the_jobs_read() -> None:
    text = DESIGN.read_text()
    # `PLANA_TEST_*` are the test suite's, not a job's; `PLANA_TARGET_*` is a pattern.
    named = {
        v
        for v in re.findall(r"PLANA_[A-Z0-9_]+", text)
        if not v.endswith("_") and not v.startswith("PLANA_TEST_")
    }
    # "the same `PLANA_TARGET_*`": each PLANA_SOURCE_* name with TARGET.
    named |= {v.replace("PLANA_SOURCE_", "PLANA_TARGET_") for v in named}
    read = command_variables() | GLOBAL_VARIABLES
    assert sorted(read - named) == []  # read, but not in the contract
    assert sorted(named - read) == []  # in the contract, but read by no job


def _fields(fields: Mapping[str, marker.FieldType]) -> str:
    return "; ".join(f"`{name}`: {marker.describe(t)}" for name, t in fields.items()) or "—"


def test_the_design_marker_table_is_the_schemas() -> None:
    """docs/design.md's markers table: one row per kind, its states and fields exactly those of
    `marker.SCHEMAS` (the writer column is prose)."""
    block = DESIGN.read_text().split("<!-- markers:begin -->\n", 1)[1]
    rows = block.split("<!-- markers:end -->", 1)[0].strip().splitlines()[2:]
    found = {}
    for row in rows:
        kind, _writer, states, fields, optional = (c.strip() for c in row.strip("|").split(" | "))
        found[kind.strip("`")] = (states, fields, optional)
    expected = {
        str(kind): (", ".join(f"`{s}`" for s in schema.states), _fields(schema.fields),
                    _fields(schema.optional))
        for kind, schema in marker.SCHEMAS.items()
    }  # fmt: skip
    assert found == expected


def test_the_readme_configuration_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    expected = reference.replace_block(readme, reference.table())
    assert readme == expected, "README's configuration table is stale: run `make docs`"


def test_the_generated_table_names_every_variable_and_flag() -> None:
    rows = reference.table().splitlines()[2:]
    names = {m[1] for row in rows if (m := re.match(r"\| `(PLANA_[A-Z0-9_]+)` \|", row))}
    assert len(names) == len(rows)
    assert names == command_variables() | GLOBAL_VARIABLES


def test_the_readme_subcommand_table_lists_exactly_the_subcommands() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Subcommands", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z-]+)` \|", section, re.M)
    assert sorted(listed) == sorted(COMMANDS)
    assert len(listed) == len(set(listed))


def test_the_readme_bench_table_is_a_run_of_the_declared_measures() -> None:
    """The README's bench block is `make bench BENCH_ARGS=--readme` output: the rows name exactly
    the measures and targets the bench modules declare, in the order `make bench` runs them."""
    from bench import __main__ as bench_main
    from bench import report as bench_report

    declared = []
    for name in bench_main.modules():
        measures = importlib.import_module(f"bench.{name}").MEASURES
        listed = list(measures.values()) if isinstance(measures, dict) else list(measures)
        declared += bench_report.declared(listed)
    shown = bench_report.readme_measures((ROOT / "README.md").read_text())
    assert shown == declared, "README's bench table is not a run's output: make bench --readme"
