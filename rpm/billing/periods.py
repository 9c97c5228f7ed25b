"""Device periods and calendar months, in the patient's own time zone.

Device-supply codes (CPT 99445, 99454) are billed "each 30 days": the periods are the
consecutive 30-day spans from the first day of monitoring, whatever the calendar month
(CMS, CY 2026 Physician Fee Schedule final rule, remote physiologic monitoring). Treatment
management time (CPT 99470, 99457, 99458) counts per calendar month. Days are local dates;
a day counts once however many devices sent readings on it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, timedelta

PERIOD_DAYS = 30


@dataclass(frozen=True, slots=True)
class Period:
    """A span of local dates, ``start`` included, ``end`` excluded; ``number`` from 0."""

    number: int
    start: date
    end: date

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.start <= day < self.end

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    def days_left(self, today: date) -> int:
        """Days from ``today`` to the period's last day, both included (0 once it ended)."""
        return max(0, (self.end - max(today, self.start)).days)


def device_period(monitoring_start: date, day: date) -> Period:
    """The 30-day device period holding ``day``; the first one for a day before the start."""
    return numbered_period(monitoring_start, max(0, (day - monitoring_start).days // PERIOD_DAYS))


@functools.lru_cache(maxsize=65_536)
def numbered_period(monitoring_start: date, number: int) -> Period:
    """Device period ``number`` (from 0) of a monitoring start. Periods are values, shared
    (a month-end report makes one per patient and period, and patients share start days)."""
    start = monitoring_start + timedelta(days=number * PERIOD_DAYS)
    return Period(number, start, start + timedelta(days=PERIOD_DAYS))


def calendar_month(day: date) -> Period:
    """The calendar month holding ``day``, numbered as year * 12 + month - 1."""
    start = day.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    return Period(start.year * 12 + start.month - 1, start, end)


def month_of(key: str) -> Period:
    """The calendar month named ``YYYY-MM``; ValueError for anything else."""
    year, _, month = key.partition("-")
    if (
        len(year) != 4
        or len(month) != 2
        or not (year + month).isdigit()
        or not (1 <= int(month) <= 12)
    ):
        raise ValueError(f"not a month (YYYY-MM): {key!r}")
    return calendar_month(date(int(year), int(month), 1))
