"""images/Dockerfile read as the tests need it (no Docker engine in CI): its global ARGs, its
stages and the chain of stages each is built FROM, for the image and Job contract tests."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.harness import ROOT

DOCKERFILE = ROOT / "images" / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    lines: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, rest)


def parse(path: Path) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuations joined)."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", path.read_text())
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name, words[0])
        elif current is None and instr == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        elif current is not None:
            current.lines.append((instr, rest))
    return args, stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    out = []
    while name in stages:
        out.append(stages[name])
        name = stages[name].base
    return out


def last(stages: dict[str, Stage], name: str, instr: str) -> str | None:
    for stage in chain(stages, name):
        for got, rest in reversed(stage.lines):
            if got == instr:
                return rest
    return None


Parsed = tuple[dict[str, str], dict[str, Stage]]
