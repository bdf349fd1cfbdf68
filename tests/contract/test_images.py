"""The images: hadolint clean, and images/Dockerfile keeps its contract with jobs/cli.py.

There is no Docker engine in CI, so nothing is built here; what can be checked without one is:
hadolint on every Dockerfile (warnings fail unless ignored inline with a reason), one target per
subcommand with `ENTRYPOINT ["plana-job", "<cmd>"]`, a numeric non-root USER, no compilers in
shipped stages, the tools each job shells out to, and the bake file building every target.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import COMMANDS
from tests.support.dockerfile import DOCKERFILE, Parsed, chain, last, parse

ROOT = Path(__file__).resolve().parents[2]
BAKE = ROOT / "images" / "docker-bake.hcl"
HADOLINT = Path(sys.executable).parent / "hadolint"
SKIP_DIRS = {".git", ".venv", "node_modules", ".mypy_cache", ".ruff_cache", ".pytest_cache"}

# Jobs that run a tool as a child process, and the stage that must provide it.
NEEDS_PG_CLIENT = {"backup", "restore", "backup-verify", "deprovision", "environment-db"}
RUNS_ODOO = {"template-build", "upgrade", "environment-db"}
COMPILERS = ("gcc", "g++", "build-essential", "clang", "make ", "python3-dev", "libpq-dev")


def dockerfiles() -> list[Path]:
    """Every Dockerfile of the repository (virtualenvs and caches pruned, not walked)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".venv")]
        for name in filenames:
            if "Dockerfile" in name and not name.endswith(".dockerignore"):
                found.append(Path(dirpath) / name)
    return sorted(found)


@pytest.fixture(scope="module")
def dockerfile() -> Parsed:
    return parse(DOCKERFILE)


def test_there_are_dockerfiles_to_lint() -> None:
    assert DOCKERFILE in dockerfiles()


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_clean(path: Path) -> None:
    done = subprocess.run(
        [str(HADOLINT), "--format", "json", "--failure-threshold", "warning", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = json.loads(done.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, json.dumps(serious, indent=1)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_hadolint_ignore_says_why(path: Path) -> None:
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=", line):
            above = lines[i - 1].strip() if i else ""
            codes = re.findall(r"(?:DL|SC)\d{4}", line)
            assert above.startswith("#") and len(above) > 20, f"{path}:{i + 1}: no reason given"
            # The reason must be about the rule it ignores, not a stray comment.
            context = " ".join(lines[max(0, i - 4) : i])
            for code in codes:
                assert code in context, f"{path}:{i + 1}: the reason does not name {code}"


def test_a_target_per_subcommand_with_its_entrypoint(dockerfile: Parsed) -> None:
    _, stages = dockerfile
    for cmd in COMMANDS:
        assert cmd in stages, f"images/Dockerfile has no target {cmd!r}"
        entry = last(stages, cmd, "ENTRYPOINT")
        assert entry is not None and json.loads(entry) == ["plana-job", cmd], (cmd, entry)


def test_shipped_targets_run_as_numeric_non_root(dockerfile: Parsed) -> None:
    _, stages = dockerfile
    for cmd in COMMANDS:
        user = last(stages, cmd, "USER")
        assert user is not None, cmd
        uid = user.split(":")[0]
        if uid.startswith("${"):
            # A build argument: its default (in the stage that uses it) must be numeric too.
            arg = uid.strip("${}")
            defaults = [
                rest.partition("=")[2]
                for stage in chain(stages, cmd)
                for instr, rest in stage.lines
                if instr == "ARG" and rest.startswith(arg + "=")
            ]
            assert defaults, f"{cmd}: USER {user} has no default"
            uid = defaults[0]
        assert uid.isdigit() and int(uid) != 0, f"{cmd}: USER {user}"


def test_no_compilers_in_shipped_stages(dockerfile: Parsed) -> None:
    _, stages = dockerfile
    for cmd in COMMANDS:
        for stage in chain(stages, cmd):
            for instr, rest in stage.lines:
                if instr == "RUN":
                    for word in COMPILERS:
                        assert word not in rest, f"{cmd} (stage {stage.name}) installs {word}"


def test_bases_are_pinned(dockerfile: Parsed) -> None:
    args, stages = dockerfile
    assert re.fullmatch(r"3\.11\.\d+", args["PYTHON_VERSION"]), args["PYTHON_VERSION"]
    for stage in stages.values():
        base = stage.base
        if base in stages:
            continue
        assert ":" in base and not base.endswith(":latest"), f"{stage.name}: FROM {base}"
        if base.startswith("python:"):
            assert base == "python:${PYTHON_VERSION}-slim-bookworm", base


def test_tools_where_jobs_need_them(dockerfile: Parsed) -> None:
    _, stages = dockerfile

    def text(cmd: str) -> str:
        return " ".join(f"{i} {r}" for s in chain(stages, cmd) for i, r in s.lines)

    for cmd in NEEDS_PG_CLIENT & set(COMMANDS):
        # The odoo images bring their own PGDG client: there the build checks it is there.
        own = "pg_dump --version" in text(cmd) and cmd in RUNS_ODOO
        assert "postgresql-client" in text(cmd) or own, cmd
    assert "/usr/local/bin/kubectl" in text("filestore-copy")
    assert "sha256sum --check" in " ".join(r for _, r in stages["kubectl"].lines)
    for cmd in RUNS_ODOO & set(COMMANDS):
        bases = [s.base for s in chain(stages, cmd)]
        assert "odoo:${ODOO_VERSION}" in bases, (cmd, bases)
    for cmd in set(COMMANDS) - RUNS_ODOO:
        assert all(not s.base.startswith("odoo:") for s in chain(stages, cmd)), cmd


def test_read_only_root_friendly(dockerfile: Parsed) -> None:
    _, stages = dockerfile
    for cmd in COMMANDS:
        envs = " ".join(r for s in chain(stages, cmd) for i, r in s.lines if i == "ENV")
        assert "PYTHONDONTWRITEBYTECODE=1" in envs, cmd
        assert last(stages, cmd, "WORKDIR") == "/tmp", cmd


def test_the_wheel_stage_copies_what_exists(dockerfile: Parsed) -> None:
    _, stages = dockerfile
    for instr, rest in stages["wheels"].lines:
        if instr == "COPY":
            *sources, _dest = shlex.split(rest)
            for src in sources:
                assert (ROOT / src).exists(), src


def test_bake_builds_every_target() -> None:
    text = BAKE.read_text()
    named = set(re.findall(r'"([a-z][a-z0-9-]+)"', text))
    for cmd in COMMANDS:
        assert cmd in named, f"images/docker-bake.hcl does not build {cmd!r}"


def test_compose_has_a_job_service_per_subcommand() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.test.yml").read_text())
    services = compose["services"]
    for cmd in COMMANDS:
        service = services.get(cmd)
        assert service is not None, f"docker-compose.test.yml has no service {cmd!r}"
        assert service["profiles"] == ["jobs"], cmd  # `docker compose up` must not run jobs
        assert service["build"]["dockerfile"] == "images/Dockerfile"
        assert service["build"]["target"] == cmd
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], (cmd, secret)


def test_openupgrade_comes_from_its_pinned_pypi_wheels() -> None:
    """No git checkout of OpenUpgrade in the image: its framework and scripts wheels, pinned."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"^\s*(ADD|COPY)\b.*OpenUpgrade", text, re.M | re.I), "ADDs OpenUpgrade"
    for name, arg in (("framework", "OPENUPGRADE_FRAMEWORK_VERSION"),
                      ("scripts", "OPENUPGRADE_SCRIPTS_VERSION")):  # fmt: skip
        assert f'"odoo-addon-openupgrade-{name}==${{{arg}}}"' in text
        default = re.search(rf"^ARG {arg}=(\S+)$", text, re.M)
        odoo = re.search(r"^ARG ODOO_VERSION=(\d+)$", text, re.M)
        assert default and odoo and default[1].startswith(f"{odoo[1]}.0."), arg
    # One pin per Odoo major the bake file builds, of that major.
    bake = BAKE.read_text()
    majors = re.search(r'v\s*=\s*\[([^\]]*)\]', bake)
    assert majors
    for v in re.findall(r'"(\d+)"', majors[1]):
        pins = re.search(rf'"{v}"\s*=\s*\["([\d.]+)",\s*"([\d.]+)"\]', bake)
        assert pins, f"no OpenUpgrade pins for Odoo {v} in images/docker-bake.hcl"
        assert all(p.startswith(f"{v}.0.") for p in pins.groups()), pins.groups()
    # The scripts directory the jobs are told about is inside what the wheels install.
    upgrade_path = re.search(r"PLANA_UPGRADE_PATH=(\S+)", text)
    assert upgrade_path and upgrade_path[1] == (
        "/opt/openupgrade/odoo/addons/openupgrade_scripts/scripts"
    )
