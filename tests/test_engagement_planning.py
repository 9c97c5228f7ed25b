"""Incremental campaign planning, pure: which zones a pass looks at whole, which instants of
a patient's own it must look for, and when it evaluates everyone instead
(rpm.engagement.planning). The planner against a real database is in
tests/test_engagement_incremental.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpm.engagement import campaigns, planning, segments
from rpm.engagement.planning import (
    Full,
    Incremental,
    PlanKey,
    PlannerState,
    Scope,
    phase,
    phase_ranges,
    plan_mode,
    zone_scope,
)
from tests.examples import examples

pytestmark = pytest.mark.pure

NUDGE = campaigns.parse(
    {
        "segment": "s",
        "trigger": {"kind": "no_reading_by", "local_time": "11:00"},
        "messages": {"en": "hi"},
    }
)
WEEKLY = campaigns.parse(
    {
        "segment": "s",
        "trigger": {"kind": "weekly", "weekday": "mon", "local_time": "09:00"},
        "messages": {"en": "hi"},
    }
)
GAP = campaigns.parse(
    {"segment": "s", "trigger": {"kind": "missed_days"}, "messages": {"en": "hi"}}
)
ZONES = ("America/New_York", "Europe/Madrid", "Asia/Tokyo", "Asia/Kolkata", "Pacific/Chatham")


def local(at: datetime, zone: str) -> datetime:
    return at.astimezone(ZoneInfo(zone)).replace(tzinfo=None)


def test_a_zone_is_looked_at_whole_when_its_trigger_time_comes() -> None:
    # 14:30 and 15:30 UTC on Wednesday 10 June 2026: 10:30 and 11:30 in New York.
    before, after = (
        datetime(2026, 6, 10, 14, 30, tzinfo=UTC),
        datetime(2026, 6, 10, 15, 30, tzinfo=UTC),
    )
    ny = "America/New_York"
    assert zone_scope(NUDGE.trigger, local(before, ny), local(after, ny)) is Scope.ALL
    later = after + timedelta(hours=1)
    assert zone_scope(NUDGE.trigger, local(after, ny), local(later, ny)) is Scope.CHANGED
    # Tokyo is past midnight: the nudge cannot fire there until 11:00.
    tokyo = "Asia/Tokyo"
    assert zone_scope(NUDGE.trigger, local(before, tokyo), local(after, tokyo)) is Scope.NONE


def test_local_midnight_makes_a_zone_whole_for_a_trigger_that_is_always_active() -> None:
    ny = "America/New_York"
    before = datetime(2026, 6, 11, 3, 50, tzinfo=UTC)  # 23:50 in New York
    after = before + timedelta(minutes=20)
    assert zone_scope(GAP.trigger, local(before, ny), local(after, ny)) is Scope.ALL
    assert zone_scope(GAP.trigger, local(after, ny), local(after, ny)) is Scope.CHANGED
    # A new day before the nudge's time: nothing to look at yet.
    assert zone_scope(NUDGE.trigger, local(before, ny), local(after, ny)) is Scope.NONE


def test_a_weekly_trigger_counts_on_its_weekday_only() -> None:
    madrid = "Europe/Madrid"
    monday_8 = datetime(2026, 6, 15, 6, 0, tzinfo=UTC)  # 08:00 in Madrid
    monday_10 = monday_8 + timedelta(hours=2)
    tuesday_10 = monday_10 + timedelta(days=1)
    assert zone_scope(WEEKLY.trigger, local(monday_8, madrid), local(monday_10, madrid)) is (
        Scope.ALL
    )
    assert zone_scope(WEEKLY.trigger, local(monday_10, madrid), local(tuesday_10, madrid)) is (
        Scope.NONE
    )


def test_the_hour_repeated_when_daylight_saving_time_ends() -> None:
    # 1 November 2026, New York: 01:00-01:59 twice (EDT, then EST from 06:00 UTC).
    ny = "America/New_York"
    trigger = campaigns.parse(
        {
            "segment": "s",
            "trigger": {"kind": "no_reading_by", "local_time": "01:30"},
            "messages": {"en": "hi"},
        }
    ).trigger
    first_0145 = datetime(2026, 11, 1, 5, 45, tzinfo=UTC)
    second_0115 = datetime(2026, 11, 1, 6, 15, tzinfo=UTC)
    second_0145 = datetime(2026, 11, 1, 6, 45, tzinfo=UTC)
    assert zone_scope(trigger, local(first_0145, ny), local(second_0115, ny)) is Scope.NONE
    # The trigger's time comes again: the SQL condition turned true again, look at everyone.
    assert zone_scope(trigger, local(second_0115, ny), local(second_0145, ny)) is Scope.ALL


instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)
triggers = st.sampled_from([NUDGE.trigger, WEEKLY.trigger, GAP.trigger])


@settings(max_examples=examples(300), deadline=None)
@given(
    prev=instants,
    gap=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)),
    zone=st.sampled_from(ZONES),
    trigger=triggers,
)
def test_a_zone_is_only_left_to_its_changes_when_nothing_about_its_clock_changed(
    prev: datetime, gap: timedelta, zone: str, trigger: campaigns.Trigger
) -> None:
    now = prev + gap
    before, after = local(prev, zone), local(now, zone)
    scope = zone_scope(trigger, before, after)
    # The SQL decides with (local date, trigger active): a pass may look only at the changed
    # patients of a zone exactly when neither differs, and nobody when the trigger is off.
    active = planning.trigger_active(trigger, after)
    assert (scope is Scope.NONE) == (not active)
    if scope is Scope.CHANGED:
        assert before.date() == after.date()
        assert planning.trigger_active(trigger, before)
    if active and before.date() != after.date():
        assert scope is Scope.ALL


def weeks(t: datetime, c: datetime) -> int:
    return (t - c) // planning.WEEK


@settings(max_examples=examples(500), deadline=None)
@given(
    enrolled=instants,
    prev=instants,
    gap=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=9)),
)
def test_a_week_since_enrolment_passes_exactly_for_the_phases_named(
    enrolled: datetime, prev: datetime, gap: timedelta
) -> None:
    now = prev + gap
    ranges = phase_ranges(prev, now)
    crossed = weeks(now, enrolled) != weeks(prev, enrolled)
    if ranges is None:
        assert gap >= planning.WEEK
        return
    p = phase(enrolled)
    assert crossed == any(lo < p <= hi for lo, hi in ranges)


@settings(max_examples=examples(200), deadline=None)
@given(prev=instants, gap=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=6)))
def test_a_week_since_enrolment_passes_at_the_enrolment_instant_itself(
    prev: datetime, gap: timedelta
) -> None:
    enrolled = prev + gap - planning.WEEK * 3  # exactly three weeks before now
    ranges = phase_ranges(prev, prev + gap)
    assert ranges is not None
    assert (gap > timedelta(0)) == any(lo < phase(enrolled) <= hi for lo, hi in ranges)


def test_phase_matches_postgresql_epoch() -> None:
    # rpm_week_phase_us: extract(epoch) in microseconds, modulo a week, never negative.
    assert phase(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert phase(datetime(1970, 1, 8, 0, 0, 1, tzinfo=UTC)) == 1_000_000
    assert phase(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)) == 604_800_000_000 - 1_000_000


KEY = PlanKey(version=3, segment="s", segment_version=2, daily_cap=3)
T = datetime(2026, 6, 10, 12, tzinfo=UTC)


def state(planned_to: datetime, full_at: datetime, key: PlanKey = KEY) -> PlannerState:
    return PlannerState(key, planned_to, watermark=1000, full_at=full_at)


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        (None, T, Full("first pass")),
        (
            state(T, T, PlanKey(2, "s", 2, 3)),
            T + timedelta(minutes=1),
            Full("campaign, segment or daily cap changed"),
        ),
        (
            state(T, T, PlanKey(3, "s", 3, 3)),
            T + timedelta(minutes=1),
            Full("campaign, segment or daily cap changed"),
        ),
        (
            state(T, T, PlanKey(3, "s", 2, 4)),
            T + timedelta(minutes=1),
            Full("campaign, segment or daily cap changed"),
        ),
        (state(T, T), T - timedelta(seconds=1), Full("the clock went back")),
        (state(T, T), T + timedelta(hours=7), Full("not planned for a while")),
        (state(T, T - timedelta(hours=23)), T + timedelta(hours=1), Full("reconciliation")),
        (state(T, T), T, Incremental(T, 1000)),
        (state(T, T - timedelta(hours=5)), T + timedelta(hours=6), Incremental(T, 1000)),
    ],
)
def test_when_a_pass_evaluates_everyone(
    last: PlannerState | None, now: datetime, expected: Full | Incremental
) -> None:
    assert plan_mode(last, KEY, now) == expected


def test_every_fact_trigger_and_exclusion_says_what_can_change_it() -> None:
    assert set(planning.FACT_EVENTS) == set(segments.FACTS)
    assert set(planning.TRIGGER_EVENTS) == set(campaigns.TRIGGERS)
    assert set(planning.EXCLUSION_EVENTS) == {
        "no SMS consent",
        "opted out",
        "no phone number",
        "open high or critical alert",
        "already planned",
        "cooldown",
        "daily cap",
    }


def test_the_instants_a_campaign_looks_for_follow_its_segment_and_trigger() -> None:
    where = segments.parse(
        {
            "where": {
                "any": [
                    {"fact": "weeks_since_enrolment", "op": ">=", "value": 2},
                    {"not": {"fact": "news2_severity_7d", "op": ">=", "value": "high"}},
                ]
            }
        }
    ).where
    assert planning.facts_used(where) == {"weeks_since_enrolment", "news2_severity_7d"}
    resolved = campaigns.parse(
        {
            "segment": "s",
            "trigger": {"kind": "alert_resolved"},
            "messages": {"en": "hi"},
            "cooldown_days": 2,
        }
    )
    assert planning.crossings(resolved, where) == planning.Crossings(True, True, True, 2)
    plain = segments.parse({"where": {"fact": "age", "op": ">=", "value": 65}}).where
    assert planning.crossings(NUDGE, plain) == planning.Crossings()


def test_zone_scope_reads_wall_clock_times_only() -> None:
    # The planner hands it PostgreSQL's local times, naive; the same instant in two zones.
    assert (
        zone_scope(
            NUDGE.trigger,
            datetime.combine(date(2026, 6, 10), time(10, 59)),
            datetime.combine(date(2026, 6, 10), time(11, 0)),
        )
        is Scope.ALL
    )
