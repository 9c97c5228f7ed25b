"""What a patient still needs this period, as a nurse can act on it: the panel's flags.

"Needs readings": fewer days with readings in the current 30-day device period than the
device-supply code asks (16 for CPT 99454), said as "3 more days, 10 days left". "Needs
time": fewer minutes of treatment management this calendar month than the first
management code asks (20 for CPT 99457), or no real-time interactive communication yet
(CMS, CY 2026 Physician Fee Schedule final rule, remote physiologic monitoring).

The thresholds are one value, :class:`Thresholds`, handed in by the caller (the code table
of ``rpm.billing.codes`` sets them), never literals here. The same definitions run in SQL
to filter and sort a whole care team (``rpm/storage/panel.py``); tests/test_panel.py
checks that both agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from rpm.billing.codes import CodeTable
from rpm.billing.periods import Period, device_period


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What "enough" is: days with readings per device period, minutes per calendar month,
    and whether a real-time interactive communication is required in the month, and which
    activities of a time entry count as one (the code table's ``interactive_activities``)."""

    days_needed: int = 16
    minutes_needed: int = 20
    interactive_needed: bool = True
    interactive_activities: frozenset[str] = frozenset({"interactive_phone", "interactive_video"})

    def __post_init__(self) -> None:
        if not 1 <= self.days_needed <= 30:
            raise ValueError("days_needed must be 1 to 30")
        if not 1 <= self.minutes_needed <= 24 * 60:
            raise ValueError("minutes_needed must be 1 to 1440")


DEFAULT_THRESHOLDS = Thresholds()


def thresholds_of(table: CodeTable) -> Thresholds:
    """The flags' thresholds as a code table sets them: the most days a device-supply code
    asks (CPT 99454's 16), the most minutes a management code asks (99457's 20) and whether
    that code requires a real-time interactive communication. A kind the table lacks keeps
    the default."""
    supply = table.of_kind("device_supply")
    management = table.of_kind("management")
    most = max(management, key=lambda c: c.min_minutes) if management else None
    return Thresholds(
        max(c.min_days for c in supply) if supply else DEFAULT_THRESHOLDS.days_needed,
        most.min_minutes if most else DEFAULT_THRESHOLDS.minutes_needed,
        most.requires_interactive if most else DEFAULT_THRESHOLDS.interactive_needed,
        frozenset(table.interactive_activities),
    )


@dataclass(frozen=True, slots=True)
class ReadingsNeed:
    """Days with readings in the current device period, and what is missing."""

    period: Period | None  # None: monitoring has not started (no readings, no start day)
    days: int
    more_days: int  # 0 when enough
    days_left: int  # days of the period still to come, today included (0 without a period)

    @property
    def flag(self) -> bool:
        return self.more_days > 0

    @property
    def reachable(self) -> bool:
        """Whether the missing days still fit in the period."""
        return self.more_days <= self.days_left

    def text(self) -> str:
        if not self.flag:
            return "enough days"
        if self.period is None:
            return f"no readings yet: {self.more_days} days needed"
        return f"{_count(self.more_days, 'more day')}, {_count(self.days_left, 'day')} left"


@dataclass(frozen=True, slots=True)
class TimeNeed:
    """Minutes logged this calendar month and the interactive communication."""

    seconds: int
    interactive: bool
    more_minutes: int  # whole minutes still to log (rounded up); 0 when enough
    interactive_missing: bool

    @property
    def minutes(self) -> float:
        return self.seconds / 60

    @property
    def flag(self) -> bool:
        return self.more_minutes > 0 or self.interactive_missing

    def text(self) -> str:
        parts = []
        if self.more_minutes:
            parts.append(_count(self.more_minutes, "more minute"))
        if self.interactive_missing:
            parts.append("an interactive call (phone or video)")
        return " and ".join(parts) if parts else "enough time"


def period_start(monitoring_start: date | None, first_day: date | None) -> date | None:
    """Where device periods are counted from: the monitoring start, else the first day with
    readings (migration 0018); None when neither is known."""
    return monitoring_start if monitoring_start is not None else first_day


def readings_need(start: date | None, today: date, days: int, t: Thresholds) -> ReadingsNeed:
    """What ``days`` with readings in the device period holding ``today`` still lack."""
    more = max(0, t.days_needed - days)
    if start is None:
        return ReadingsNeed(None, days, more, 0)
    period = device_period(start, today)
    return ReadingsNeed(period, days, more, period.days_left(today))


def time_need(seconds: int, interactive: bool, t: Thresholds) -> TimeNeed:
    """What ``seconds`` logged this month (and the interactive communication) still lack."""
    missing_s = max(0, t.minutes_needed * 60 - seconds)
    return TimeNeed(
        seconds,
        interactive,
        -(-missing_s // 60),  # a part of a minute still to log counts as a minute
        t.interactive_needed and not interactive,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
