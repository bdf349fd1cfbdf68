"""The result object: the last line on stdout and the Kubernetes termination message."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from jobs.core import redact

# "planned": a --dry-run's result (jobs.core.plan), which changed nothing.
Outcome = Literal["created", "updated", "unchanged", "planned", "failed"]
TERMINATION_LIMIT = 4096
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


@dataclass
class Done:
    """What a job body returns: its outcome and the facts worth reporting."""

    outcome: Literal["created", "updated", "unchanged", "planned"]
    details: dict[str, Any] = field(default_factory=dict)


def encode(obj: dict[str, Any], limit: int = TERMINATION_LIMIT) -> str:
    """JSON of the result within `limit` bytes: details are shed before the core fields."""
    obj = redact.value(obj)
    text = json.dumps(obj, default=str, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) <= limit:
        return text
    core_keys = ("job", "outcome", "exit_code", "duration_s", "tenant", "template", "error")
    core = {k: obj[k] for k in core_keys if k in obj}
    if isinstance(core.get("error"), str):
        core["error"] = core["error"][:1024]
    core["truncated"] = True
    for key, val in obj.items():  # add back what still fits, smallest first
        if key in core:
            continue
        trial = {**core, key: val}
        if len(json.dumps(trial, default=str, ensure_ascii=False).encode()) <= limit:
            core = trial
    return json.dumps(core, default=str, ensure_ascii=False, separators=(",", ":"))


def emit(obj: dict[str, Any]) -> str:
    """Print the result as the last stdout line and write the termination message."""
    line = encode(obj, limit=1 << 20)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    path = os.environ.get("PLANA_TERMINATION_LOG", DEFAULT_TERMINATION_LOG)
    if path:
        try:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(encode(obj))
        except OSError:
            pass  # not in a pod (or not writable): the stdout line is enough
    return line
