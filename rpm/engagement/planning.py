"""Incremental campaign planning: which patients a planner pass must look at. Pure.

A campaign's outcome for a patient (planned or not, with which occurrence and figures) is a
function of the patient's data and of the time. A pass at ``now`` that follows a pass at
``prev`` of the same campaign and segment versions can only plan a patient for whom one of
these happened in (prev, now] (docs/engagement.md, "How the planner finds who to look at"):

- their data changed: a reading counted into their days, an alert opened, changed or
  resolved, their patient record edited (the change log, migration 0020);
- their zone's local day changed (every day-based fact, the age, the daily cap, the
  occurrence of a daily or weekly trigger), or the trigger's local time came
  (:func:`zone_scope`);
- a per-patient instant passed: a week since enrolment (:func:`phase_ranges`), a NEWS2 alert
  leaving the 7-day window, an episode's resolution time, the end of a cooldown
  (:func:`crossings`).

Anything else (a first pass, a new version of the campaign or its segment, a long gap, the
periodic reconciliation) evaluates everyone (:func:`plan_mode`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from rpm.engagement.campaigns import CampaignSpec, Trigger
from rpm.engagement.segments import FACTS, Comparison, Condition, Group

# The periodic full evaluation, a safety net (RPM_CAMPAIGN_PLANNER_RECONCILE_S), and the gap
# after which a campaign is evaluated in full (RPM_CAMPAIGN_PLANNER_FULL_AFTER_S).
RECONCILE_S = 86_400.0
FULL_AFTER_S = 21_600.0

WEEK = timedelta(weeks=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# What can make a patient newly eligible, per fact and per trigger: the table of
# docs/engagement.md, kept here so a new fact or trigger cannot be added without saying.
# "data: ..." are caught by the change log; "midnight" and "trigger time" by zone_scope;
# the rest by crossings().
FACT_EVENTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "program": ("data: patient record",),
        "care_team": ("data: patient record",),
        "language": ("data: patient record",),
        "age": ("data: patient record", "midnight"),
        "age_band": ("data: patient record", "midnight"),
        "days_with_readings_7d": ("data: patient_days", "midnight"),
        "days_with_readings_30d": ("data: patient_days", "midnight"),
        "days_since_last_reading": ("data: patient_days", "midnight"),
        "open_alerts": ("data: alert",),
        "open_alert_severity": ("data: alert",),
        "news2_severity_7d": ("data: alert", "news2 window"),
        "weeks_since_enrolment": ("data: patient record", "enrolment week"),
        "sms_consent": ("data: patient record",),
        "opted_out": ("data: patient record",),
        "channel": ("data: patient record",),
    }
)
TRIGGER_EVENTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "no_reading_by": ("data: patient_days", "midnight", "trigger time"),
        "missed_days": ("data: patient_days", "midnight"),
        "first_reading": ("data: patient_days", "midnight"),
        "streak": ("data: patient_days", "midnight", "cooldown"),
        "alert_resolved": ("data: alert", "resolution time", "cooldown"),
        "weight_rising": ("data: patient_days", "data: alert", "midnight", "cooldown"),
        "weekly": ("data: patient record", "midnight", "trigger time"),
    }
)
EXCLUSION_EVENTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "no SMS consent": ("data: patient record",),
        "opted out": ("data: patient record",),
        "no phone number": ("data: patient record",),
        "open high or critical alert": ("data: alert",),
        "already planned": ("midnight",),  # a new day's or week's occurrence
        "cooldown": ("cooldown",),
        "daily cap": ("midnight",),
    }
)


class Scope(enum.Enum):
    """How much of a time zone a pass looks at."""

    NONE = "none"  # the trigger cannot fire there now: nobody
    CHANGED = "changed"  # only patients whose data changed or whose own instant passed
    ALL = "all"  # every patient: the local day changed or the trigger's time came


def trigger_active(trigger: Trigger, local: datetime) -> bool:
    """Whether the trigger can fire at this local wall-clock time (the planner's SQL
    condition on the zone: ``_local_time >= local_time``, the weekday)."""
    at = local.time().replace(tzinfo=None)
    match trigger.kind:
        case "no_reading_by":
            assert trigger.local_time is not None
            return at >= trigger.local_time
        case "weekly":
            assert trigger.local_time is not None
            return local.isoweekday() == trigger.weekday and at >= trigger.local_time
        case _:
            return True


def zone_scope(trigger: Trigger, prev_local: datetime, now_local: datetime) -> Scope:
    """What a pass at ``now_local`` must look at in a zone whose previous pass was at
    ``prev_local`` (both that zone's wall-clock time, as PostgreSQL computes it)."""
    if not trigger_active(trigger, now_local):
        return Scope.NONE
    if prev_local.date() != now_local.date() or not trigger_active(trigger, prev_local):
        return Scope.ALL
    return Scope.CHANGED


def _micros(t: datetime) -> int:
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def phase(t: datetime, period: timedelta = WEEK) -> int:
    """``t``'s offset in microseconds into its period counted from the Unix epoch (SQL:
    ``rpm_week_phase_us``, migration 0020)."""
    return _micros(t) % (period // timedelta(microseconds=1))


def phase_ranges(
    prev: datetime, now: datetime, period: timedelta = WEEK
) -> tuple[tuple[int, int], ...] | None:
    """The phases ``phase(c)`` (as ``(lo, hi]`` ranges) of the instants ``c`` for which
    whole periods since ``c`` differ between ``prev`` and ``now``: ``floor((now - c) /
    period) != floor((prev - c) / period)``. None: every ``c`` (a period or more passed)."""
    if now <= prev:
        return ()
    if now - prev >= period:
        return None
    lo, hi = phase(prev, period), phase(now, period)
    if lo < hi:
        return ((lo, hi),)
    return ((lo, period // timedelta(microseconds=1) - 1), (-1, hi))


def facts_used(where: Condition) -> frozenset[str]:
    """The facts a segment condition reads."""
    if isinstance(where, Comparison):
        return frozenset({where.fact})
    assert isinstance(where, Group)
    out: frozenset[str] = frozenset()
    for part in where.parts:
        out |= facts_used(part)
    return out


@dataclass(frozen=True, slots=True)
class Crossings:
    """The per-patient instants a pass must look for in (prev, now]."""

    enrolment_week: bool = False  # a whole week since enrolment
    news2_window: bool = False  # a NEWS2 alert leaves the 7-day window
    resolution: bool = False  # an episode's resolved_at (alert_resolved)
    cooldown_days: int = 0  # a cooldown of this campaign ends


def crossings(spec: CampaignSpec, where: Condition) -> Crossings:
    used = facts_used(where)
    return Crossings(
        enrolment_week="weeks_since_enrolment" in used,
        news2_window="news2_severity_7d" in used,
        resolution=spec.trigger.kind == "alert_resolved",
        cooldown_days=spec.cooldown_days,
    )


@dataclass(frozen=True, slots=True)
class PlanKey:
    """What a pass's evaluation depends on besides data and time: a change of any is a full
    evaluation."""

    version: int
    segment: str
    segment_version: int
    daily_cap: int


@dataclass(frozen=True, slots=True)
class PlannerState:
    """A campaign's last pass, as stored (migration 0020)."""

    key: PlanKey
    planned_to: datetime  # the planner clock of the pass
    watermark: int  # changes of transactions from this id on were not yet seen
    full_at: datetime  # the last full evaluation


@dataclass(frozen=True, slots=True)
class Full:
    reason: str


@dataclass(frozen=True, slots=True)
class Incremental:
    since: datetime
    watermark: int


def plan_mode(
    state: PlannerState | None,
    key: PlanKey,
    now: datetime,
    *,
    reconcile_s: float = RECONCILE_S,
    full_after_s: float = FULL_AFTER_S,
) -> Full | Incremental:
    """Whether a pass at ``now`` may look only at what changed since the campaign's last."""
    if state is None:
        return Full("first pass")
    if state.key != key:
        return Full("campaign, segment or daily cap changed")
    if now < state.planned_to:
        return Full("the clock went back")
    if (now - state.planned_to).total_seconds() > full_after_s:
        return Full("not planned for a while")
    if (now - state.full_at).total_seconds() >= reconcile_s:
        return Full("reconciliation")
    return Incremental(state.planned_to, state.watermark)


assert set(FACT_EVENTS) == set(FACTS), "every fact says what can change it"
