"""Time entries as pure logic: the activities, checking an entry, the timer's duration, and
a calendar month's total (docs/time-tracking.md).

A time entry is one span of a clinician's time spent on one patient. Its activity says what
kind of work it was; the two interactive ones (phone, video) are the "real-time interactive
communication" that CPT 99470 and 99457 require in the calendar month (CMS, CY 2026
Physician Fee Schedule final rule, remote physiologic monitoring treatment management).
Minutes count per calendar month of the patient's time zone, by the month the entry starts
in; a month's minutes are its seconds summed, then floored (20 min means 1,200 s).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import Literal

from rpm.domain.errors import InvalidTimeEntry

from .periods import Period


class Activity(StrEnum):
    """What the time was spent on (``time_entries.activity``)."""

    DATA_REVIEW = "data_review"
    INTERACTIVE_PHONE = "interactive_phone"
    INTERACTIVE_VIDEO = "interactive_video"
    CARE_COORDINATION = "care_coordination"

    @property
    def label(self) -> str:
        return LABELS[self]

    @property
    def interactive(self) -> bool:
        """A real-time interactive communication with the patient (or caregiver)."""
        return self in INTERACTIVE


LABELS: dict[Activity, str] = {
    Activity.DATA_REVIEW: "Data review",
    Activity.INTERACTIVE_PHONE: "Interactive communication (phone)",
    Activity.INTERACTIVE_VIDEO: "Interactive communication (video)",
    Activity.CARE_COORDINATION: "Care coordination",
}
INTERACTIVE = frozenset({Activity.INTERACTIVE_PHONE, Activity.INTERACTIVE_VIDEO})

Source = Literal["timer", "manual"]

NOTE_MAX = 2000  # characters of an entry's (or a running timer's) note
DURATION_LIMIT_S = 86_400  # the table's own bound (CHECK duration_s <= 86400)
CLOCK_SKEW = timedelta(minutes=2)  # an entry may end this far after "now" (clients' clocks)
BACKDATE_LIMIT = timedelta(days=366)  # older starts are typos, not late entries


@dataclass(frozen=True, slots=True)
class TimePolicy:
    """The limits an entry is checked against (``RPM_TIME_ENTRY_MAX_MINUTES``)."""

    entry_max_minutes: int = 240  # the longest entry; a timer running longer is capped to it

    @property
    def entry_max_s(self) -> int:
        return min(self.entry_max_minutes * 60, DURATION_LIMIT_S)


@dataclass(frozen=True, slots=True)
class EntryValues:
    """What a time entry says (everything but its id, version and bookkeeping)."""

    patient_id: str
    staff_id: str
    started_at: datetime
    duration_s: int
    activity: Activity
    note: str = ""
    source: Source = "manual"

    @property
    def ended_at(self) -> datetime:
        return self.started_at + timedelta(seconds=self.duration_s)


def activity_of(text: str) -> Activity:
    """The activity named ``text``; ``InvalidTimeEntry`` naming the choices otherwise."""
    try:
        return Activity(text)
    except ValueError:
        choices = ", ".join(a.value for a in Activity)
        raise InvalidTimeEntry(f"activity must be one of: {choices}") from None


def checked_note(note: str) -> str:
    """The note without surrounding blanks; refused when too long or holding a NUL."""
    note = note.strip()
    if len(note) > NOTE_MAX:
        raise InvalidTimeEntry(f"the note has {len(note)} characters; at most {NOTE_MAX}")
    if "\x00" in note:
        raise InvalidTimeEntry("the note holds a NUL character")
    return note


def checked(values: EntryValues, now: datetime, policy: TimePolicy) -> EntryValues:
    """``values`` normalised (UTC, whole seconds, a trimmed note), or ``InvalidTimeEntry``
    saying what is wrong: a duration outside 1 s .. the policy's maximum, a start in the
    future or more than a year back, an end in the future, a note too long."""
    started = values.started_at
    if started.tzinfo is None:
        raise InvalidTimeEntry("started_at needs a time zone (e.g. 2026-11-23T09:30:00Z)")
    started = started.astimezone(UTC).replace(microsecond=0)
    if not 1 <= values.duration_s <= policy.entry_max_s:
        raise InvalidTimeEntry(
            f"duration_s must be between 1 and {policy.entry_max_s} "
            f"({policy.entry_max_s // 60} minutes)"
        )
    if started > now:
        raise InvalidTimeEntry("started_at is in the future")
    if started + timedelta(seconds=values.duration_s) > now + CLOCK_SKEW:
        raise InvalidTimeEntry("the entry ends in the future (started_at + duration_s)")
    if started < now - BACKDATE_LIMIT:
        raise InvalidTimeEntry(f"started_at is more than {BACKDATE_LIMIT.days} days ago")
    return replace(
        values,
        started_at=started,
        activity=activity_of(values.activity),
        note=checked_note(values.note),
    )


@dataclass(frozen=True, slots=True)
class TimerDuration:
    """What a stopped timer records: ``duration_s``; ``capped`` when it ran past the policy's
    maximum (``elapsed_s`` is then longer than ``duration_s``)."""

    duration_s: int
    elapsed_s: int
    capped: bool


def timer_duration(started_at: datetime, now: datetime, policy: TimePolicy) -> TimerDuration:
    """The entry a timer started at ``started_at`` and stopped at ``now`` records: whole
    seconds, rounded up, at least 1, at most the policy's maximum."""
    elapsed = max(1, math.ceil((now - started_at).total_seconds()))
    duration = min(elapsed, policy.entry_max_s)
    return TimerDuration(duration, elapsed, duration < elapsed)


@dataclass(frozen=True, slots=True)
class MonthTotal:
    """A patient's time in one calendar month."""

    seconds: int = 0
    entries: int = 0
    interactive: bool = False  # at least one real-time interactive communication

    @property
    def minutes(self) -> int:
        """Whole minutes: 19 min 59 s is 19."""
        return self.seconds // 60


def month_total(entries: Iterable[tuple[int, str]]) -> MonthTotal:
    """The total of ``(duration_s, activity)`` pairs (the month's entries, not deleted)."""
    seconds = count = 0
    interactive = False
    for duration_s, activity in entries:
        seconds += duration_s
        count += 1
        interactive = interactive or activity in INTERACTIVE
    return MonthTotal(seconds, count, interactive)


def month_span(month: Period, zone: tzinfo) -> tuple[datetime, datetime]:
    """The instants (UTC) a calendar month of local dates in ``zone`` starts and ends at."""
    start = datetime.combine(month.start, time(), zone).astimezone(UTC)
    end = datetime.combine(month.end, time(), zone).astimezone(UTC)
    return start, end
