"""Time entries as pure logic (rpm/billing/time.py): activities, the bounds an entry is
checked against, what a stopped timer records, and a month's total."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from rpm.billing.periods import calendar_month
from rpm.billing.time import (
    CLOCK_SKEW,
    INTERACTIVE,
    NOTE_MAX,
    Activity,
    EntryValues,
    TimePolicy,
    activity_of,
    checked,
    month_span,
    month_total,
    timer_duration,
)
from rpm.domain.errors import InvalidTimeEntry

pytestmark = pytest.mark.pure

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
POLICY = TimePolicy()  # 240 minutes


def entry(
    started_at: datetime = NOW - timedelta(hours=1),
    duration_s: int = 600,
    activity: Activity = Activity.DATA_REVIEW,
    note: str = "",
) -> EntryValues:
    return EntryValues("pat-1", "nina", started_at, duration_s, activity, note)


def test_the_activities_their_labels_and_which_are_interactive() -> None:
    assert [a.value for a in Activity] == [
        "data_review",
        "interactive_phone",
        "interactive_video",
        "care_coordination",
    ]
    assert {Activity.INTERACTIVE_PHONE, Activity.INTERACTIVE_VIDEO} == INTERACTIVE
    assert Activity.INTERACTIVE_VIDEO.label == "Interactive communication (video)"
    assert not Activity.CARE_COORDINATION.interactive
    assert activity_of("interactive_phone") is Activity.INTERACTIVE_PHONE
    with pytest.raises(InvalidTimeEntry, match="one of: data_review, interactive_phone"):
        activity_of("lunch")


def test_a_valid_entry_is_normalised() -> None:
    local = datetime(2026, 11, 23, 9, 30, 15, 999_000, tzinfo=ZoneInfo("America/New_York"))
    got = checked(entry(started_at=local, note="  called, BP ok \n"), NOW, POLICY)
    assert got.started_at == datetime(2026, 11, 23, 14, 30, 15, tzinfo=UTC)
    assert got.started_at.tzinfo is UTC
    assert got.note == "called, BP ok"
    assert got.ended_at == got.started_at + timedelta(seconds=600)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (entry(duration_s=0), "duration_s must be between 1 and 14400"),
        (entry(duration_s=POLICY.entry_max_s + 1), "duration_s must be between 1 and 14400"),
        (entry(started_at=NOW + timedelta(seconds=1), duration_s=1), "in the future"),
        (entry(started_at=NOW - timedelta(minutes=5), duration_s=600), "ends in the future"),
        (entry(started_at=NOW - timedelta(days=367)), "more than 366 days ago"),
        (entry(note="x" * (NOTE_MAX + 1)), f"at most {NOTE_MAX}"),
        (entry(note="a\x00b"), "NUL"),
        (entry(started_at=datetime(2026, 11, 23, 9, 0)), "needs a time zone"),
    ],
)
def test_an_entry_out_of_bounds_is_refused_saying_why(values: EntryValues, problem: str) -> None:
    with pytest.raises(InvalidTimeEntry, match=problem):
        checked(values, NOW, POLICY)


def test_the_bounds_themselves_are_allowed() -> None:
    longest = POLICY.entry_max_s
    checked(entry(started_at=NOW - timedelta(seconds=longest), duration_s=longest), NOW, POLICY)
    checked(entry(started_at=NOW, duration_s=1), NOW, POLICY)  # starts now
    ends_in_skew = NOW + CLOCK_SKEW - timedelta(seconds=600)
    checked(entry(started_at=ends_in_skew, duration_s=600), NOW, POLICY)
    checked(entry(note="x" * NOTE_MAX), NOW, POLICY)
    assert TimePolicy(entry_max_minutes=10).entry_max_s == 600
    assert TimePolicy(entry_max_minutes=5000).entry_max_s == 86_400  # the table's bound


def test_a_stopped_timer_records_whole_seconds_up_to_the_cap() -> None:
    start = NOW - timedelta(minutes=12, seconds=30, milliseconds=200)
    timer = timer_duration(start, NOW, POLICY)
    assert (timer.duration_s, timer.elapsed_s, timer.capped) == (751, 751, False)
    quick = timer_duration(NOW, NOW, POLICY)  # stopped at once, or a clock gone back
    assert (quick.duration_s, quick.capped) == (1, False)
    long = timer_duration(NOW - timedelta(hours=9), NOW, POLICY)
    assert (long.duration_s, long.elapsed_s, long.capped) == (14_400, 32_400, True)
    exact = timer_duration(NOW - timedelta(hours=4), NOW, POLICY)
    assert (exact.duration_s, exact.capped) == (14_400, False)


def test_a_months_total_floors_minutes_and_notes_an_interactive_communication() -> None:
    total = month_total([(600, "data_review"), (599, "care_coordination")])
    assert (total.seconds, total.minutes, total.entries, total.interactive) == (1199, 19, 2, False)
    total = month_total([(1200, "data_review"), (60, "interactive_video")])
    assert (total.minutes, total.interactive) == (21, True)
    assert month_total([]).minutes == 0


def test_a_month_is_the_patients_local_calendar_month() -> None:
    # New York leaves daylight saving time on 2026-11-01 at 02:00 (UTC-4 before, UTC-5 after).
    start, end = month_span(calendar_month(date(2026, 11, 23)), ZoneInfo("America/New_York"))
    assert start == datetime(2026, 11, 1, 4, 0, tzinfo=UTC)
    assert end == datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
    start, end = month_span(calendar_month(date(2026, 2, 3)), UTC)
    assert (start, end) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
