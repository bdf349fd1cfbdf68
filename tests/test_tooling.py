"""The Makefile explains itself and fails in one line when a tool it needs is missing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _phony_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {t for line in re.findall(r"^\.PHONY:(.*)$", text, re.M) for t in line.split()}


def test_make_help_lists_every_target_one_line_each() -> None:
    done = _make("help")
    assert done.returncode == 0, done.stderr
    listed = {}
    for line in done.stdout.splitlines():
        m = re.fullmatch(r"\s*make (\S+)\s+(\S.*)", line)
        assert m, f"not a 'make TARGET  description' line: {line!r}"
        listed[m[1]] = m[2]
    assert set(listed) == _phony_targets()
    # Bare `make` explains instead of building something.
    assert _make().stdout == done.stdout


def test_make_clean_removes_egg_info() -> None:
    # Dry run: the real one would remove the venv these tests run in.
    done = _make("-n", "clean")
    assert done.returncode == 0, done.stderr
    assert "*.egg-info" in done.stdout.split()


def test_make_images_without_buildx_says_what_it_needs(tmp_path: Path) -> None:
    # A docker without the buildx plugin, answering as the real one does.
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\necho \"unknown shorthand flag: 'f' in -f\" >&2\nexit 125\n")
    docker.chmod(0o755)
    done = _make("images", f"DOCKER={docker}")
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("make: ***")]
    assert lines == [
        f"make images: needs Docker with the buildx plugin ('{docker} buildx version' fails)"
    ]
    assert "unknown" not in done.stdout + done.stderr
