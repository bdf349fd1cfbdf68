"""The example Jobs under images/jobs, read as the Job contract and the manifest replay need them:
each container with its pod, what it executes (its command or the image's ENTRYPOINT, then its
args) and the ENV of the image it runs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.dockerfile import DOCKERFILE, chain, last, parse
from tests.support.harness import ROOT

MANIFESTS = sorted((ROOT / "images" / "jobs").glob("*.yaml"))


@dataclass
class Box:
    """One container of a manifest, with the pod it runs in."""

    file: Path
    kind: str  # containers | initContainers
    spec: dict[str, Any]
    pod: dict[str, Any]
    job: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.file.name}:{self.spec['name']}"


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def job_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        spec: dict[str, Any] = doc["spec"]["jobTemplate"]["spec"]
        return spec
    assert doc["kind"] == "Job", doc["kind"]
    spec = doc["spec"]
    return spec


def boxes(path: Path) -> list[Box]:
    out = []
    for doc in load(path):
        job = job_spec(doc)
        pod = job["template"]["spec"]
        for kind in ("initContainers", "containers"):
            for spec in pod.get(kind, []):
                out.append(Box(path, kind, spec, pod, job))
    return out


DOCKER_ARGS, STAGES = parse(DOCKERFILE)


def image_target(image: str) -> str:
    """`…/plana-job-<target>:<tag>` → the images/Dockerfile target it was built from."""
    match = re.fullmatch(r"(?:.+/)?plana-job-([a-z0-9-]+):[\w.-]+", image)
    assert match, f"image {image!r} is not a plana-job-<target> image"
    return match.group(1)


def argv(box: Box) -> list[str]:
    """What the container executes: its command, or the image's ENTRYPOINT, then args."""
    command = box.spec.get("command")
    if command is None:
        entry = last(STAGES, image_target(box.spec["image"]), "ENTRYPOINT")
        assert entry is not None, box.name
        command = json.loads(entry)
    return [*command, *box.spec.get("args", [])]


def image_env(box: Box) -> dict[str, str]:
    """ENV of the image's target (and its bases): part of the container's environment."""
    env: dict[str, str] = {}
    for stage in reversed(chain(STAGES, image_target(box.spec["image"]))):
        for instr, rest in stage.lines:
            if instr == "ENV":
                for key, value in re.findall(r"(\w+)=(\S+)", rest):
                    env[key] = value
    return env
