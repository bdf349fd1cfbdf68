"""The package declares its data the way setuptools wants it, and the SQL ships with it.

setuptools warns at every build (four ~40-line blocks) about a directory holding package data
that is not itself a declared package; an installed image must still find every SQL file through
importlib.resources. Checked from pyproject.toml and the source tree, without building anything.
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict[str, Any]:  # TOML: whatever the file holds
    with (ROOT / "pyproject.toml").open("rb") as f:
        table: dict[str, Any] = tomllib.load(f)["tool"]["setuptools"]
    return table


def _data_files() -> list[Path]:
    return [*(ROOT / "sql").rglob("*.sql"), *(ROOT / "jobs" / "data").iterdir()]


def _owner(path: Path) -> tuple[str, Path]:
    """The package setuptools counts a data file under, and that package's directory.

    The deepest directory above the file whose every name is an identifier: a directory such as
    "17-18" cannot be a package, so its files are data of the nearest importable parent.
    """
    pkg, base = (
        ("jobs.sql", ROOT / "sql") if path.is_relative_to(ROOT / "sql") else ("jobs", ROOT / "jobs")
    )
    parts: list[str] = []
    for name in path.parent.relative_to(base).parts:
        if not name.isidentifier():
            break
        parts.append(name)
    return ".".join((pkg, *parts)), base.joinpath(*parts)


def test_every_data_directory_is_a_declared_package() -> None:
    declared = set(_setuptools()["packages"])
    missing = sorted({_owner(p)[0] for p in _data_files()} - declared)
    assert not missing, f"data directories not declared in [tool.setuptools] packages: {missing}"


def test_every_sql_and_data_file_matches_package_data() -> None:
    package_data: dict[str, list[str]] = _setuptools()["package-data"]
    unshipped = []
    for path in _data_files():
        owner, base = _owner(path)
        rel = path.relative_to(base).as_posix()
        globs = package_data.get(owner, [])
        # fnmatch's "*" crosses "/", setuptools' does not: compare depths as well.
        if not any(fnmatch.fnmatchcase(rel, g) and rel.count("/") == g.count("/") for g in globs):
            unshipped.append(f"{owner}: {rel}")
    assert not unshipped, f"files no package-data glob ships: {unshipped}"


def test_importlib_resources_finds_every_sql_file() -> None:
    expected = sorted(p.relative_to(ROOT / "sql").as_posix() for p in (ROOT / "sql").rglob("*.sql"))
    assert expected, "sql/ holds no .sql file"

    def walk(node: importlib.resources.abc.Traversable, prefix: str) -> list[str]:
        out: list[str] = []
        for entry in node.iterdir():
            if entry.is_dir():
                out += walk(entry, f"{prefix}{entry.name}/")
            elif entry.name.endswith(".sql"):
                out.append(prefix + entry.name)
        return out

    assert sorted(walk(importlib.resources.files("jobs.sql"), "")) == expected


def test_every_python_package_is_declared() -> None:
    """The editable install of the dev venv finds any subpackage of jobs/, the wheel (and so
    every image) only the ones declared: a package left out of [tool.setuptools] packages
    would pass every other test and be missing from the image."""
    declared = set(_setuptools()["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "jobs").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    missing = sorted(found - declared)
    assert not missing, f"packages not declared in [tool.setuptools] packages: {missing}"
