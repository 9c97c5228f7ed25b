"""Worked examples of the month-end evaluation at every boundary of the CY 2026 table:
1, 2, 15, 16 and 30 days of readings in a device period; 9, 10, 19, 20, 39, 40 and 60
minutes in a month, with and without an interactive communication; the set-up code once per
patient; a period that crosses a month end; what is missing, in words and numbers."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from rpm.billing.codes import default_table, parse
from rpm.billing.evaluate import MonthTime, PatientMonth, PeriodDays, Report, evaluate
from rpm.billing.periods import device_period, month_of

pytestmark = pytest.mark.pure

TABLE = default_table()
JUNE = month_of("2026-06")
START = date(2026, 5, 2)  # period 0: May 2 - May 31; period 1: June 1 - June 30
AFTER_JUNE = date(2026, 7, 1)


def june(
    days: int | None = None,
    minutes: float = 0,
    interactive: int = 0,
    *,
    setup_period: int | None = 0,
    today: date = AFTER_JUNE,
    start: date = START,
) -> Report:
    """The June report of a patient with ``days`` days in the period ending June 30."""
    periods = ()
    if days is not None:
        periods = (PeriodDays(device_period(start, date(2026, 6, 30)), days),)
    time = MonthTime(
        seconds=round(minutes * 60), entries=3 if minutes else 0, interactive=interactive
    )
    patient = PatientMonth("p1", JUNE, start, periods, setup_period, time, today)
    return evaluate(patient, [TABLE])


def codes(report: Report) -> dict[str, int]:
    return {e.code: e.units for e in report.earned}


def missing(report: Report) -> dict[str, str]:
    return {m.code: m.text for m in report.missing}


# --- days with readings in a device period (99445 / 99454) ----------------------------------


@pytest.mark.parametrize(
    ("days", "earned", "needs"),
    [
        (0, None, {"99445": "2 more days of readings", "99454": "16 more days of readings"}),
        (1, None, {"99445": "1 more day of readings", "99454": "15 more days of readings"}),
        (2, "99445", {"99454": "14 more days of readings"}),
        (15, "99445", {"99454": "1 more day of readings"}),
        (16, "99454", {}),
        (30, "99454", {}),
    ],
)
def test_device_supply_boundaries(days: int, earned: str | None, needs: dict[str, str]) -> None:
    report = june(days)
    device = {c for c in codes(report) if c in ("99445", "99454")}
    assert device == ({earned} if earned else set())  # never both for one period
    shown = {
        k: v.removesuffix(" (too late: its period has ended)") for k, v in missing(report).items()
    }
    assert {k: v for k, v in shown.items() if k in ("99445", "99454")} == needs


def test_missing_days_are_reachable_while_the_period_runs() -> None:
    report = june(13, today=date(2026, 6, 28))  # 3 days left: June 28, 29 and 30
    by_code = {m.code: m for m in report.missing}
    assert (by_code["99454"].days, by_code["99454"].reachable) == (3, True)
    assert by_code["99454"].text == "3 more days of readings"
    late = june(12, today=date(2026, 6, 28))
    assert not {m.code: m for m in late.missing}["99454"].reachable
    assert missing(late)["99454"] == "4 more days of readings (too late: its period has ended)"


# --- minutes in a calendar month (99470 / 99457 / 99458) ------------------------------------


@pytest.mark.parametrize(
    ("minutes", "earned", "needs"),
    [
        (
            0,
            {},
            {"99470": "10 more minutes", "99457": "20 more minutes", "99458": "40 more minutes"},
        ),
        (9, {}, {"99470": "1 more minute", "99457": "11 more minutes", "99458": "31 more minutes"}),
        (10, {"99470": 1}, {"99457": "10 more minutes", "99458": "30 more minutes"}),
        (19, {"99470": 1}, {"99457": "1 more minute", "99458": "21 more minutes"}),
        (20, {"99457": 1}, {"99458": "20 more minutes"}),
        (39, {"99457": 1}, {"99458": "1 more minute"}),
        (40, {"99457": 1, "99458": 1}, {"99458": "20 more minutes"}),
        (60, {"99457": 1, "99458": 2}, {"99458": "20 more minutes"}),
    ],
)
def test_minutes_with_an_interactive_communication(
    minutes: int, earned: dict[str, int], needs: dict[str, str]
) -> None:
    report = june(16, minutes, interactive=1, today=date(2026, 6, 30))
    assert {c: u for c, u in codes(report).items() if c in ("99470", "99457", "99458")} == earned
    assert {c: t for c, t in missing(report).items() if c in ("99470", "99457", "99458")} == needs


@pytest.mark.parametrize("minutes", [9, 10, 19, 20, 39, 40, 60])
def test_no_management_code_without_an_interactive_communication(minutes: int) -> None:
    report = june(16, minutes, interactive=0, today=date(2026, 6, 30))
    assert not {"99470", "99457", "99458"} & set(codes(report))
    needs = missing(report)
    assert needs["99470"].endswith("an interactive communication")
    assert needs["99457"] == ", ".join(
        ([f"{20 - minutes} more minute{'s' if 20 - minutes != 1 else ''}"] if minutes < 20 else [])
        + ["an interactive communication"]
    )


def test_minutes_are_whole_minutes_of_the_summed_seconds() -> None:
    assert june(16, 19.99, interactive=1).earned[-1].code == "99470"  # 19 min 59 s: 19
    assert "99457" in codes(june(16, 20.0, interactive=1))


def test_99470_and_99457_never_together_and_99458_only_with_99457() -> None:
    for m in range(0, 121):
        got = codes(june(16, m, interactive=1))
        assert not {"99470", "99457"} <= set(got)
        assert "99458" not in got or "99457" in got


def test_missing_minutes_after_the_month_are_too_late() -> None:
    report = june(16, 15, interactive=1)  # read on July 1
    assert missing(report)["99457"] == "5 more minutes (too late: its period has ended)"


# --- set-up (99453): once per patient ------------------------------------------------------


def test_setup_in_the_first_period_that_qualifies() -> None:
    first = june(2, setup_period=1)
    assert codes(first)["99453"] == 1
    assert "first device period with 2 or more days" in first.earned[0].evidence
    assert "99453" not in codes(june(20, setup_period=0))  # billed in May's report already
    waiting = june(1, setup_period=None)
    assert "99453" not in codes(waiting)
    assert missing(waiting)["99453"].startswith("1 more day of readings")


def test_setup_days_are_data() -> None:
    doc = TABLE.document()
    doc["codes"][0]["min_days"] = 16  # the pre-2026 reading: 16 days
    strict = parse(doc)
    patient = PatientMonth(
        "p1",
        JUNE,
        START,
        (PeriodDays(device_period(START, date(2026, 6, 30)), 10),),
        None,
        MonthTime(),
        AFTER_JUNE,
    )
    report = evaluate(patient, [strict])
    assert "99453" not in codes(report)
    assert codes(report) == {"99445": 1}
    assert missing(report)["99453"].startswith("6 more days of readings")


# --- periods and months ---------------------------------------------------------------------


def test_a_period_that_crosses_a_month_end_is_judged_by_all_its_days() -> None:
    start = date(2026, 5, 20)  # period 1: June 19 - July 18, reported in July
    period = device_period(start, date(2026, 7, 18))
    assert (period.start.month, period.last_day.month) == (6, 7)
    patient = PatientMonth(
        "p1",
        month_of("2026-07"),
        start,
        (PeriodDays(period, 16),),  # 12 of them in June, 4 in July: one period
        0,
        MonthTime(),
        date(2026, 8, 1),
    )
    report = evaluate(patient, [TABLE])
    assert codes(report) == {"99454": 1}
    assert "2026-06-19 to 2026-07-18" in report.earned[0].evidence


def test_a_patient_enrolled_mid_month_has_minutes_but_no_period_yet() -> None:
    start = date(2026, 6, 15)
    patient = PatientMonth(
        "p1",
        JUNE,
        start,
        (),
        None,
        MonthTime(seconds=25 * 60, entries=2, interactive=1),
        AFTER_JUNE,
        next_period_end=date(2026, 7, 14),
    )
    report = evaluate(patient, [TABLE])
    assert codes(report) == {"99457": 1}  # time counts per calendar month from the first day
    assert report.document()["next_period_end"] == date(2026, 7, 14)
    assert not {"99445", "99454", "99453"} & {m.code for m in report.missing}


def test_two_period_ends_in_one_month() -> None:
    start = date(2026, 6, 2)  # periods 0 and 1 end on July 1 and July 31
    first = device_period(start, date(2026, 7, 1))
    second = device_period(start, date(2026, 7, 31))
    assert (first.last_day, second.last_day) == (date(2026, 7, 1), date(2026, 7, 31))
    patient = PatientMonth(
        "p1",
        month_of("2026-07"),
        start,
        (PeriodDays(first, 20), PeriodDays(second, 5)),
        0,
        MonthTime(),
        date(2026, 8, 1),
    )
    got = evaluate(patient, [TABLE])
    assert [(e.code, e.period) for e in got.earned] == [("99453", 0), ("99454", 0), ("99445", 1)]
    assert got.codes_text() == "99453 99454 99445"


def test_the_document_names_codes_evidence_and_missing() -> None:
    doc = june(17, 45, interactive=2).document()
    assert [c["code"] for c in doc["codes"]] == ["99454", "99457", "99458"]
    assert doc["codes"][1]["evidence"] == (
        "45 minutes in June 2026 over 3 time entries, 2 interactive"
    )
    assert doc["missing"][0]["minutes"] == 15
    assert doc["periods"][0]["days_with_readings"] == 17
    assert doc["table"] == "cms-2026"


def test_no_table_in_force_is_a_clear_error() -> None:
    from rpm.domain.errors import InvalidCodeTable

    patient = PatientMonth("p1", month_of("2025-06"), None, (), None, MonthTime(), date(2025, 7, 1))
    with pytest.raises(InvalidCodeTable, match="no billing code table is in force on 2025-06-30"):
        evaluate(patient, [TABLE])


def test_a_newer_table_applies_from_its_date() -> None:
    doc = TABLE.document() | {"name": "cms-2027", "effective_from": "2026-07-01"}
    doc["codes"] = [c for c in doc["codes"] if c["code"] != "99470"]
    doc["codes"] = [{**c, "excludes": []} if c["code"] == "99457" else c for c in doc["codes"]]
    later = parse(doc)
    june_report = evaluate(june(16, 12, 1).patient, [TABLE, later])
    july = PatientMonth(
        "p1", month_of("2026-07"), START, (), 1, MonthTime(12 * 60, 1, 1), date(2026, 8, 1)
    )
    assert "99470" in codes(june_report)
    assert "99470" not in codes(evaluate(july, [TABLE, later]))
    assert evaluate(july, [TABLE, later]).table == "cms-2027"
    assert date(2026, 7, 1) - timedelta(days=1) == JUNE.last_day
