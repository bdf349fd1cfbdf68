"""Observe → plan → apply: the steps a job decides on, as data.

Every job is three parts. `observe` reads the world (the catalog, the filesystem, Redis, a peer)
and changes nothing; `plan(state, params)` is a pure function from what was observed to the
steps still to take (each with a one-line description); the job then applies the steps. A run
killed anywhere is resumed because the next run observes what the last one left and plans only
the difference, and the decision is a plain function that unit tests can drive through every
crash state in milliseconds.

`--dry-run` stops after the plan: the job prints its steps and reports outcome `planned`
(`dry_run`). A plan may instead be *blocked*: the state is one no job can resolve alone (a
database someone else owns, a tampered marker); that is exit 65 with or without `--dry-run`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jobs.core.errors import ConflictError, JobError
from jobs.core.result import Done


@dataclass(frozen=True)
class Step:
    """One step of a plan: the `job.step` name it runs under and what it will do."""

    name: str
    says: str
    target: str = ""  # what it acts on when a plan has several steps of one kind (a database)

    def as_dict(self) -> dict[str, str]:
        out = {"step": self.name, "says": self.says}
        if self.target:
            out["target"] = self.target
        return out


@dataclass(frozen=True)
class Plan:
    """The steps still to take, in order; none means the job has nothing left to do."""

    steps: tuple[Step, ...] = ()
    blocked: str | None = None  # why no job can go on alone (exit 65)
    details: Mapping[str, Any] | None = None  # facts the plan rests on, for dry-run and inspect

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def require_unblocked(self, **details: object) -> None:
        """65 when the state is one no job can resolve alone."""
        if self.blocked is not None:
            raise ConflictError(self.blocked, **details)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": [s.as_dict() for s in self.steps]}
        if self.blocked is not None:
            out["blocked"] = self.blocked
        if self.details:
            out.update(self.details)
        return out


def of(*steps: Step | None, blocked: str | None = None, **details: Any) -> Plan:
    """A plan of the given steps, leaving out the Nones (steps a state does not need)."""
    return Plan(tuple(s for s in steps if s is not None), blocked, details or None)


def blocked(why: str, **details: Any) -> Plan:
    return Plan((), why, details or None)


def dry_run(job: Any, plan: Plan) -> Done:
    """The result of `--dry-run`: the plan, logged step by step, and outcome `planned`."""
    plan.require_unblocked()
    for step in plan.steps:
        job.log.info("would", step=step.name, says=step.says, **_target(step))
    if not plan.steps:
        job.log.info("would do nothing: already converged")
    return Done("planned", {"dry_run": True, **plan.as_dict()})


def apply(job: Any, plan: Plan, actions: Mapping[str, Callable[[Step], object]]) -> None:
    """Run each step of `plan` under its name (`job.step`: the lock check comes first)."""
    plan.require_unblocked()
    for step in plan.steps:
        action = actions.get(step.name)
        if action is None:  # a plan naming a step the job cannot take is a bug, never skipped
            raise JobError(f"no action for planned step {step.name!r}")
        job.step(step.name)
        action(step)


def _target(step: Step) -> dict[str, str]:
    return {"target": step.target} if step.target else {}
