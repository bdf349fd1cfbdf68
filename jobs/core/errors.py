"""Exit codes and the exceptions that carry them (docs/design.md, "Exit codes")."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USAGE = 64  # bad input: FailJob
    DATAERR = 65  # state conflict, version mismatch, 4xx from a peer: FailJob
    SOFTWARE = 70  # a bug: Count
    TEMPFAIL = 75  # transient failure that outlived the retry budget: Count
    CONFIG = 78  # missing/unreadable configuration or secret, auth refused: FailJob


class JobError(Exception):
    """An expected failure: its message is safe to log and its code is the exit code."""

    code: ExitCode = ExitCode.SOFTWARE

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class UsageError(JobError):
    """Bad input. The message names the field; raised before any side effect."""

    code = ExitCode.USAGE

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)
        self.field = field
        self.problem = problem


class ConflictError(JobError):
    code = ExitCode.DATAERR


class TransientError(JobError):
    code = ExitCode.TEMPFAIL


class ConfigError(JobError):
    code = ExitCode.CONFIG


class Terminated(TransientError):
    """SIGTERM arrived: stop the child, release locks, exit 75 so the pod is retried."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}", signal=signum)
