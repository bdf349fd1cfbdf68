"""Grandfather-father-son retention: the pure rule on synthetic calendars, then in the job."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobs.ops.retention import Policy, expired, keep
from tests.support.backup import make_tenant
from tests.support.harness import BACKUP_KEY, Runner

# 2025-01-01 .. 2025-04-30: exactly 120 daily sets at 02:00 UTC (2025-04-30 is a Wednesday).
CALENDAR = [datetime(2025, 1, 1, 2, tzinfo=UTC) + timedelta(days=i) for i in range(120)]


def day(month: int, d: int, hour: int = 2) -> datetime:
    return datetime(2025, month, d, hour, tzinfo=UTC)


def test_120_daily_sets_keep_7_daily_4_weekly_6_monthly() -> None:
    assert CALENDAR[-1] == day(4, 30)
    kept = keep(CALENDAR, Policy(daily=7, weekly=4, monthly=6))
    daily = {day(4, d) for d in range(24, 31)}
    weekly = {day(4, 30), day(4, 27), day(4, 20), day(4, 13)}  # newest of each ISO week
    monthly = {day(4, 30), day(3, 31), day(2, 28), day(1, 31)}  # only 4 months have sets
    assert kept == daily | weekly | monthly
    assert len(kept) == 12
    assert sorted(expired(CALENDAR, Policy(7, 4, 6))) == sorted(set(CALENDAR) - kept)


def test_weekly_keeps_the_newest_set_of_each_iso_week() -> None:
    kept = keep(CALENDAR, Policy(daily=0, weekly=20, monthly=0))
    # ISO weeks start on Mondays: 2025-01-01 is in the week ending Sunday 2025-01-05, and the
    # last, partial week (Apr 28-30) ends with the newest set.
    sundays = {d for d in CALENDAR if d.weekday() == 6}
    assert kept == sundays | {day(4, 30)}
    assert len(kept) == 18 and min(kept) == day(1, 5)


def test_the_newest_set_is_always_kept() -> None:
    assert keep(CALENDAR, Policy(0, 0, 0)) == {CALENDAR[-1]}
    assert keep([], Policy()) == set()


def test_several_sets_a_day_keep_the_newest_of_each_day() -> None:
    times = [day(4, d, h) for d in (28, 29, 30) for h in (2, 8, 14, 20)]
    assert keep(times, Policy(daily=7, weekly=0, monthly=0)) == {
        day(4, 28, 20), day(4, 29, 20), day(4, 30, 20)}  # fmt: skip


def test_days_without_sets_do_not_shorten_what_is_kept() -> None:
    every_third = CALENDAR[::3]
    kept = keep(every_third, Policy(daily=7, weekly=0, monthly=0))
    assert kept == set(sorted(every_third)[-7:])


def test_sets_newer_than_the_one_just_written_are_never_deleted() -> None:
    # A node clock that jumped back: the set just written is older than two already there.
    just_written = day(3, 1)
    times = [*CALENDAR[:59], just_written, day(4, 10), day(4, 20)]
    kept = keep(times, Policy(daily=1, weekly=0, monthly=0), protect_from=just_written)
    assert {just_written, day(4, 10), day(4, 20)} <= kept


def _fake_set(tdir: Path, t: datetime, final: bool = False) -> str:
    name = t.strftime("%Y%m%dT%H%M%SZ")
    (tdir / name).mkdir(parents=True)
    body = json.dumps({"format": 1, "final": final}).encode()
    (tdir / name / "manifest.json").write_bytes(body)
    sig = hmac.new(BACKUP_KEY.encode(), body, hashlib.sha256).hexdigest()  # as backup signs
    (tdir / name / "manifest.sig").write_text(sig)
    return name


def test_backup_applies_retention_to_the_sets_on_the_volume(
    pg_dsn: str, uid: str, tmp_path: Path, drop_dbs: list[str], run_job: Runner
) -> None:
    drop_dbs.append(f"{uid}%")
    data_dir, dest = tmp_path / "data", tmp_path / "backups"
    make_tenant(pg_dsn, uid, data_dir, partners=1)
    tdir = dest / uid
    names = {t: _fake_set(tdir, t) for t in CALENDAR}
    final = _fake_set(tdir, datetime(2024, 12, 1, 2, tzinfo=UTC), final=True)
    future = _fake_set(tdir, datetime(2099, 1, 1, 2, tzinfo=UTC))
    (tdir / "20250115T020000Z.partial").mkdir()  # a killed run's leftover

    args: list[Any] = ["--subdomain", uid, "--dest", str(dest), "--data-dir", str(data_dir)]
    done = run_job(["backup", *args, "--keep-daily", "7", "--keep-weekly", "4",
                    "--keep-monthly", "6"])  # fmt: skip
    assert done.rc == 0, done.output
    new = done.result["set"]
    remaining = {p.name for p in tdir.iterdir()}
    # The future set and the new one take two of the 7 days, of the 4 weeks and of the 6 months;
    # the final set of a deprovisioned tenant is never a candidate.
    expected_old = {names[day(4, d)] for d in range(26, 31)} | {
        names[day(3, 31)], names[day(2, 28)], names[day(1, 31)]}  # fmt: skip
    assert remaining == {new, future, final} | expected_old
    assert len(done.result["retention_deleted"]) == 120 - len(expected_old)
