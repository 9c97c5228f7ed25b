"""A patient's month-end billing report, as pure logic: given the device periods that end in
the month with their days with readings, the month's time, and the code tables, the codes
earned with their evidence, and what is missing for the others, in words and numbers.

Which periods and minutes belong to a month (docs/billing.md):

- a device period is reported in the calendar month of its last day, so each period is in
  exactly one month's report (a period that crosses a month end is reported in the later
  month; a month may hold two period ends, or none);
- minutes are the whole minutes of the month's time entries (seconds summed, then rounded
  down: CMS counts a threshold as met only when the full minutes are);
- the set-up code is earned once per patient, in the report of the first period that reached
  its days;
- each period is judged by the table in force on its last day, the month's time by the table
  in force on the month's last day.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from rpm.billing.codes import Code, CodeTable, in_force
from rpm.billing.periods import Period


@dataclass(frozen=True, slots=True)
class PeriodDays:
    """A device period and its days with readings (a day counts once, whatever the devices)."""

    period: Period
    days: int


@dataclass(frozen=True, slots=True)
class MonthTime:
    """The month's time entries (not deleted) of one patient."""

    seconds: int = 0
    entries: int = 0
    interactive: int = 0  # entries that are a real-time interactive communication
    interactive_first: str | None = None  # when the first one started (ISO 8601)

    @property
    def minutes(self) -> int:
        return self.seconds // 60


@dataclass(frozen=True, slots=True)
class PatientMonth:
    """What the report reads for one patient and month."""

    patient_id: str
    month: Period
    monitoring_start: date | None
    periods: tuple[PeriodDays, ...]  # the device periods whose last day is in the month
    setup_period: int | None  # number of the first period that reached the set-up's days
    time: MonthTime
    today: date  # the patient's local date now: what is still reachable
    care_team: str | None = None
    next_period_end: date | None = None  # when no period ends in the month


@dataclass(frozen=True, slots=True)
class Earned:
    code: str
    units: int
    evidence: str
    period: int | None = None  # device and set-up codes: the period number


@dataclass(frozen=True, slots=True)
class Missing:
    """What a code still needs; ``reachable``: whether the rest of its period or month can
    still bring it."""

    code: str
    days: int = 0
    minutes: int = 0
    interactive: bool = False
    reachable: bool = True
    period: int | None = None

    @property
    def text(self) -> str:
        return _words(self.days, self.minutes, self.interactive, self.reachable)


@functools.lru_cache(maxsize=4096)
def _words(days: int, minutes: int, interactive: bool, reachable: bool) -> str:
    parts = []
    if days:
        parts.append(f"{days} more day{'s' if days != 1 else ''} of readings")
    if minutes:
        parts.append(f"{minutes} more minute{'s' if minutes != 1 else ''}")
    if interactive:
        parts.append("an interactive communication")
    words = ", ".join(parts)
    return words if reachable else f"{words} (too late: its period has ended)"


@dataclass(frozen=True, slots=True)
class Report:
    patient: PatientMonth
    earned: tuple[Earned, ...]
    missing: tuple[Missing, ...]
    table: str  # the name of the table the month's time was judged by
    extra: dict[str, Any] = field(default_factory=dict)

    def codes_text(self) -> str:
        """``99454 99457 99458x2``: the codes earned, with units above one."""
        return " ".join(e.code + (f"x{e.units}" if e.units > 1 else "") for e in self.earned)

    def missing_text(self) -> str:
        return "; ".join(f"{m.code}: {m.text}" for m in self.missing)

    def document(self) -> dict[str, Any]:
        p = self.patient
        return {
            "patient_id": p.patient_id,
            "care_team": p.care_team,
            "month": f"{p.month.start:%Y-%m}",
            "monitoring_start": p.monitoring_start,
            "periods": [
                {
                    "number": d.period.number,
                    "start": d.period.start,
                    "last_day": d.period.last_day,
                    "days_with_readings": d.days,
                    "days_left": d.period.days_left(p.today),
                }
                for d in p.periods
            ],
            "next_period_end": p.next_period_end,
            "minutes": p.time.minutes,
            "time_entries": p.time.entries,
            "interactive_communications": p.time.interactive,
            "first_interactive_at": p.time.interactive_first,
            "codes": [
                {"code": e.code, "units": e.units, "period": e.period, "evidence": e.evidence}
                for e in self.earned
            ],
            "missing": [
                {
                    "code": m.code,
                    "text": m.text,
                    "days": m.days,
                    "minutes": m.minutes,
                    "interactive": m.interactive,
                    "reachable": m.reachable,
                    "period": m.period,
                }
                for m in self.missing
            ],
            "table": self.table,
        }


def evaluate(patient: PatientMonth, tables: Sequence[CodeTable]) -> Report:
    """The codes ``patient`` earned in the month, their evidence, and what the others need."""
    earned: list[Earned] = []
    missing: list[Missing] = []
    for pd in patient.periods:
        table = in_force(tables, pd.period.last_day)
        _setup(patient, pd, table, earned, missing)
        _device_supply(patient, pd, table, earned, missing)
    month_table = in_force(tables, patient.month.last_day)
    _management(patient, month_table, earned, missing)
    return Report(patient, tuple(earned), tuple(missing), month_table.name)


def _period_words(pd: PeriodDays) -> str:
    return _words_of_period(pd.period)


@functools.lru_cache(maxsize=65_536)
def _words_of_period(p: Period) -> str:
    return f"device period {p.number + 1} ({p.start.isoformat()} to {p.last_day.isoformat()})"


def _setup(
    patient: PatientMonth,
    pd: PeriodDays,
    table: CodeTable,
    earned: list[Earned],
    missing: list[Missing],
) -> None:
    setup = table.setup
    if setup is None:
        return
    first = patient.setup_period
    if first is None and pd.days >= setup.min_days:
        first = pd.period.number
    if first == pd.period.number:
        earned.append(
            Earned(
                setup.code,
                1,
                f"set-up: the first device period with {setup.min_days} or more days of "
                f"readings, {_period_words(pd)}: {_days(pd.days)}",
                pd.period.number,
            )
        )
    elif first is None or first > pd.period.number:
        short = setup.min_days - pd.days
        missing.append(
            Missing(
                setup.code,
                days=short,
                reachable=short <= pd.period.days_left(patient.today),
                period=pd.period.number,
            )
        )


def _device_supply(
    patient: PatientMonth,
    pd: PeriodDays,
    table: CodeTable,
    earned: list[Earned],
    missing: list[Missing],
) -> None:
    left = pd.period.days_left(patient.today)
    key = ("device", pd.days, left)
    decided = table.memo.get(key)
    if decided is None:
        decided = table.memo[key] = _device_decision(table, pd.days, left)
    won, short = decided
    for c in won:
        earned.append(
            Earned(c.code, 1, f"{_days(pd.days)} in {_period_words(pd)}", pd.period.number)
        )
    for code, days, reachable in short:
        missing.append(Missing(code, days=days, reachable=reachable, period=pd.period.number))


def _device_decision(
    table: CodeTable, days: int, left: int
) -> tuple[list[Code], list[tuple[str, int, bool]]]:
    codes = table.of_kind("device_supply")
    won = _resolve(
        [c for c in codes if c.min_days <= days and (c.max_days is None or days <= c.max_days)]
    )
    short = [
        (c.code, c.min_days - days, c.min_days - days <= left)
        for c in codes
        if c not in won
        and not _superseded(c, won)
        and not (c.max_days is not None and days > c.max_days)
    ]
    return won, short


def _management(
    patient: PatientMonth, table: CodeTable, earned: list[Earned], missing: list[Missing]
) -> None:
    t = patient.time
    minutes = t.minutes
    over = patient.today > patient.month.last_day
    key = ("time", minutes, t.interactive > 0, over)
    decided = table.memo.get(key)
    if decided is None:
        decided = table.memo[key] = _management_decision(table, minutes, t.interactive > 0, over)
    won, short = decided
    if won:
        evidence = (
            f"{_minutes(minutes)} in {patient.month.start:%B %Y} over {t.entries} time "
            f"entr{'y' if t.entries == 1 else 'ies'}"
        )
    for c, units in won:
        if c.kind == "management_addon":
            base = table.code(c.addon_to or "")
            said = (
                f"{_minutes(minutes)}: {units} x {c.each_minutes} minutes past "
                f"{base.code}'s {base.min_minutes}"
            )
        elif c.requires_interactive:
            said = f"{evidence}, {t.interactive} interactive"
        else:
            said = evidence
        earned.append(Earned(c.code, units, said))
    missing.extend(short)


def _management_decision(
    table: CodeTable, minutes: int, interactive: bool, over: bool
) -> tuple[list[tuple[Code, int]], list[Missing]]:
    codes = table.of_kind("management")
    won = _resolve(
        [
            c
            for c in codes
            if minutes >= c.min_minutes and (interactive or not c.requires_interactive)
        ]
    )
    earned: list[tuple[Code, int]] = [(c, 1) for c in won]
    missing = [
        Missing(
            c.code,
            minutes=max(0, c.min_minutes - minutes),
            interactive=c.requires_interactive and not interactive,
            reachable=not over,
        )
        for c in codes
        if c not in won and not _superseded(c, won)
    ]
    for addon in table.of_kind("management_addon"):
        base = table.code(addon.addon_to or "")
        units = 0
        if base in won:
            units = (minutes - base.min_minutes) // addon.each_minutes
            if addon.max_units is not None:
                units = min(units, addon.max_units)
        if units:
            earned.append((addon, units))
        if addon.max_units is not None and units >= addon.max_units:
            continue
        missing.append(
            Missing(
                addon.code,
                minutes=base.min_minutes + addon.each_minutes * (units + 1) - minutes,
                interactive=base.requires_interactive and not interactive,
                reachable=not over,
            )
        )
    return earned, missing


def _resolve(qualifying: list[Code]) -> list[Code]:
    """Of codes that exclude each other and all qualify, the one with the higher threshold."""
    return [
        c
        for c in qualifying
        if not any(o.code in c.excludes and o.threshold > c.threshold for o in qualifying)
    ]


def _superseded(code: Code, won: list[Code]) -> bool:
    """An earned code excludes it and asks at least as much: more of it brings nothing."""
    return any(w.code in code.excludes and w.threshold >= code.threshold for w in won)


def _days(n: int) -> str:
    return f"{n} day{'s' if n != 1 else ''} with readings"


def _minutes(n: int) -> str:
    return f"{n} minute{'s' if n != 1 else ''}"
