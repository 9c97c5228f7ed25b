"""Device periods (30 days from the start of monitoring) and calendar months."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpm.billing.periods import PERIOD_DAYS, calendar_month, device_period, month_of

pytestmark = pytest.mark.pure

START = date(2026, 1, 20)


@pytest.mark.parametrize(
    ("day", "number", "first", "last"),
    [
        (date(2026, 1, 20), 0, date(2026, 1, 20), date(2026, 2, 18)),  # the first day
        (date(2026, 2, 18), 0, date(2026, 1, 20), date(2026, 2, 18)),  # day 30 of period 0
        (date(2026, 2, 19), 1, date(2026, 2, 19), date(2026, 3, 20)),  # crosses a month end
        (date(2026, 1, 1), 0, date(2026, 1, 20), date(2026, 2, 18)),  # before monitoring
    ],
)
def test_device_period_boundaries(day: date, number: int, first: date, last: date) -> None:
    period = device_period(START, day)
    assert (period.number, period.start, period.last_day) == (number, first, last)
    assert (period.end - period.start).days == PERIOD_DAYS


@given(st.dates(date(2020, 1, 1), date(2030, 1, 1)), st.integers(0, 3000))
def test_every_day_after_the_start_is_in_exactly_one_period(start: date, offset: int) -> None:
    day = start + timedelta(days=offset)
    period = device_period(start, day)
    assert day in period
    assert period.start == start + timedelta(days=PERIOD_DAYS * period.number)
    assert day not in device_period(start, period.end)


def test_days_left_counts_today_and_the_last_day() -> None:
    period = device_period(START, START)
    assert period.days_left(START) == 30
    assert period.days_left(period.last_day) == 1
    assert period.days_left(period.end) == 0


def test_calendar_months() -> None:
    assert calendar_month(date(2026, 2, 14)).start == date(2026, 2, 1)
    assert calendar_month(date(2026, 2, 14)).last_day == date(2026, 2, 28)
    assert calendar_month(date(2026, 12, 31)).end == date(2027, 1, 1)
    assert month_of("2026-03") == calendar_month(date(2026, 3, 9))
    for bad in ("2026-3", "26-03", "2026/03", "2026-13", ""):
        with pytest.raises(ValueError, match="not a month"):
            month_of(bad)
