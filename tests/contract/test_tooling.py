"""The Makefile explains itself and fails in one line when a tool it needs is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    # A top-level make, as a user types it: under `make test` (CI) the inherited MAKELEVEL and
    # MAKEFLAGS would make it a sub-make, which words its messages differently ("make[1]:").
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
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


def _plana_job(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "plana-job"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, env=env)


def test_bare_plana_job_prints_the_normal_help_and_exits_64(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "PLANA_TERMINATION_LOG": str(tmp_path / "termination")}
    bare = _plana_job(env=env)
    assert bare.returncode == 64  # nothing ran: a Job without its subcommand must not succeed
    assert bare.stdout == _plana_job("--help", env=env).stdout
    assert bare.stdout.startswith("Usage: plana-job")
    assert len(bare.stdout.splitlines()) > 10  # click's layout, not one squashed line
    # No result line and no termination message: no job ran.
    assert bare.stderr == ""
    assert not (tmp_path / "termination").exists()


def test_make_lint_covers_every_python_tree_and_the_readme_says_so() -> None:
    done = _make("-n", "lint")  # the recipe, as make would run it
    assert done.returncode == 0, done.stderr
    tools = ("ruff", "mypy", "lint-imports")
    recipe = [line for line in done.stdout.splitlines() if any(t in line for t in tools)]
    trees = {  # every top-level package with code of its own (sql/ only ships .sql files)
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").is_file() and any(f.name != "__init__.py" for f in p.rglob("*.py"))
    }
    assert {"jobs", "tests", "bench", "demo"} <= trees
    check = next(line for line in recipe if "ruff check" in line)
    assert trees <= set(check.split()), f"ruff check skips {trees - set(check.split())}"
    typed = next(line for line in recipe if "mypy" in line)
    assert {"jobs", "demo"} <= set(typed.split()), typed
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = re.search(r"`make lint` runs (.+?)\.\s", readme)
    assert said, "the README does not say what `make lint` runs"
    for line in recipe:
        tool = " ".join(w for w in line.split()[1:] if w.startswith(("check", "format", "--")))
        words = line.split()
        while "=" in words[0]:  # an environment assignment before the tool (PYTHONPATH=.)
            words = words[1:]
        name = os.path.basename(words[0])
        assert name in said[1], f"README omits {name}"
        for tree in (w for w in words if w in trees):
            assert f"`{tree}/`" in said[1], f"README omits {tree}/ for {name} {tool}"


def test_tests_without_services_stop_with_one_line(tmp_path: Path) -> None:
    """No PLANA_TEST_*, nothing on loopback, no Docker engine: one line, not a traceback."""
    if shutil.which("unshare") is None:
        raise AssertionError("util-linux's unshare is needed to hide the loopback services")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANA_TEST_")}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # no docker CLI either
    probe = tmp_path / "test_probe.py"
    probe.write_text("def test_needs_pg(pg_dsn: str) -> None:\n    assert pg_dsn\n")
    done = subprocess.run(  # a network namespace of its own: loopback answers nothing
        ["unshare", "-n", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.conftest", "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
         str(probe)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    said = [line for line in done.stdout.splitlines() if "tests need PostgreSQL and Redis" in line]
    assert len(said) == 1, done.stdout


# -- the package's layers ---------------------------------------------------------------------

# import-linter's own virtualenv (`make lint-tools`, which `make test` depends on): see Makefile.
LINT_IMPORTS = ROOT / ".venv-lint" / "bin" / "lint-imports"


def _contract_names() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    return {c["id"]: c["name"] for c in contracts}


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # The package under `root` comes first on the path, ahead of the editable install's finder
    # (so a copy is checked, not the repository); --no-cache leaves no cache directory behind.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_the_package_keeps_its_layers() -> None:
    """reference > cli > commands > ops > adapters > core, commands independent of one another,
    adapters of one another: the contracts in pyproject.toml, as `make lint` checks them (CI
    runs only `make test`, so this is where CI holds the package to them)."""
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("path", "added", "contract"),
    [
        ("commands/restore.py", "from jobs.commands import backup", "commands"),
        ("adapters/http.py", "from jobs.adapters import redis_client", "adapters"),
        # grimp sees imports inside functions too: a lazy import is no way around a layer.
        ("core/retry.py", "def _lazy() -> None:\n    from jobs.ops import marker", "layers"),
        ("stray.py", "", "layers"),  # `exhaustive`: a new top-level module has no layer yet
    ],
)
def test_the_layers_catch_each_kind_of_violation(
    tmp_path: Path, path: str, added: str, contract: str
) -> None:
    """The check is not vacuous: a copy of the package with one offending module breaks it."""
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "jobs" / path
    target.write_text((target.read_text() if target.exists() else "") + f"\n{added}\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    name = _contract_names()[contract]
    assert re.search(rf"^{re.escape(name)} BROKEN", done.stdout, re.M), done.stdout


def test_cli_loads_only_command_modules() -> None:
    """cli imports the commands by the strings of its COMMANDS table, which import-linter cannot
    see: each one must name a module of jobs.commands, or a command could sit in any layer."""
    from jobs.cli import COMMANDS

    outside = {name: t for name, t in COMMANDS.items() if not t.startswith("jobs.commands.")}
    assert not outside, f"COMMANDS targets outside jobs.commands: {outside}"
