"""Grandfather-father-son retention over backup set timestamps: pure functions (`expired`, and
`doomed`, the set names to delete once a set is written), `listed` (the sets on the volume) and
`apply_retention`, which deletes from a tenant's sets what it finds expired.

A set is kept when it is the newest set of one of the `daily` most recent days that have a set,
of one of the `weekly` most recent ISO weeks that have one, or of one of the `monthly` most
recent calendar months that have one (the rules are independent; their union is kept). Periods
are counted in UTC, and only periods that hold a set count, so a week without backups (an outage,
a paused CronJob) does not silently shorten what is kept.

Two guards on top of the rules: the newest set is always kept, and so is every set newer than
`protect_from` (the set just written), so a clock that jumped backwards never makes a backup
delete sets it cannot judge.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jobs.core import runner
from jobs.ops import backup_sets


@dataclass(frozen=True)
class Policy:
    daily: int = 7
    weekly: int = 4
    monthly: int = 6


def _day(t: datetime) -> Hashable:
    return t.date()


def _week(t: datetime) -> Hashable:
    iso = t.isocalendar()
    return (iso.year, iso.week)


def _month(t: datetime) -> Hashable:
    return (t.year, t.month)


def _newest_per_period(
    times: list[datetime], period: Callable[[datetime], Hashable], count: int
) -> set[datetime]:
    """The newest time of each of the `count` most recent periods that have one."""
    kept: set[datetime] = set()
    seen: set[Hashable] = set()
    for t in times:  # newest first
        if len(seen) >= count:
            break
        key = period(t)
        if key not in seen:
            seen.add(key)
            kept.add(t)
    return kept


def keep(
    times: Iterable[datetime], policy: Policy, protect_from: datetime | None = None
) -> set[datetime]:
    """The set timestamps to keep; every other one may be deleted."""
    ordered = sorted(set(times), reverse=True)
    if not ordered:
        return set()
    kept = {ordered[0]}
    kept |= _newest_per_period(ordered, _day, policy.daily)
    kept |= _newest_per_period(ordered, _week, policy.weekly)
    kept |= _newest_per_period(ordered, _month, policy.monthly)
    if protect_from is not None:
        kept |= {t for t in ordered if t >= protect_from}
    return kept


def expired(
    times: Iterable[datetime], policy: Policy, protect_from: datetime | None = None
) -> list[datetime]:
    """The complement of `keep`, oldest first."""
    all_times = set(times)
    return sorted(all_times - keep(all_times, policy, protect_from))


@dataclass(frozen=True)
class Listed:
    """A complete set on the volume, as retention sees it."""

    name: str
    final: bool  # believed only from a validly signed manifest


def listed(tdir: Path, key: bytes) -> tuple[Listed, ...]:
    """The complete sets under a tenant's directory, oldest first (reads only)."""
    return tuple(
        Listed(name, backup_sets.is_final(tdir / name, key))
        for name in backup_sets.complete_sets(tdir)
    )


def doomed(sets: Iterable[Listed], policy: Policy, just_written: str) -> list[str]:
    """The sets retention deletes once `just_written` exists, oldest first: a pure function.

    Never a `final` set (a deprovisioned tenant's last backup), never `just_written` or a set
    newer than it. `just_written` counts in its period whether it is listed yet or not (a plan
    made before the set is taken lists it too).
    """
    candidates = {backup_sets.set_time(s.name): s.name for s in sets if not s.final}
    newest = backup_sets.set_time(just_written)
    times = set(candidates) | {newest}
    return [candidates[t] for t in expired(times, policy, protect_from=newest) if t in candidates]


def delete(job: runner.Job, tdir: Path, names: Iterable[str]) -> list[str]:
    """Delete the named sets, each renamed to `.deleting` first; the names deleted."""
    deleted: list[str] = []
    for name in names:
        backup_sets.remove_tree(tdir / name)
        deleted.append(name)
    if deleted:
        job.log.info("retention deleted sets", deleted=deleted)
    return deleted


def apply_retention(
    job: runner.Job, tdir: Path, policy: Policy, just_written: str, key: bytes
) -> list[str]:
    """Delete expired sets (never a `final` one: a deprovisioned tenant's last backup).

    Only a signed manifest's `final` is believed; an unsigned set is an ordinary candidate.
    """
    return delete(job, tdir, doomed(listed(tdir, key), policy, just_written))
