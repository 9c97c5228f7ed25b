"""``rpm rules backtest``: the pure replay on small synthetic series, the CSV input end to
end through the command line, and stored readings in a real PostgreSQL.

The rule sets under test are written here (not the built-in files, which clinicians
tune), so the expected episodes follow from the numbers in this file alone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from rpm.backtest.replay import Burden, Comparison, Options, Replay, backtest, merge_spans
from rpm.backtest.store import parse_until, read_csv, render
from rpm.cli import main
from rpm.domain import AcceptedReading, Metric, Reading, Severity
from rpm.storage.reading_values import slots_of
from rules.engine import PatientContext
from rules.programs import RuleBook, parse_document

D0 = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
DAY = timedelta(days=1)

HF_TEST = """
program: heart_failure
title: Heart failure (backtest fixture)
rules:
  - id: hf.weight_gain_24h
    kind: change
    metric: weight
    component: weight
    direction: rise
    severity: high
    title: Weight gain in 24 hours
    params: {window_hours: 24, min_change: %(daily)s}
    source: "AHA self-check plan: call for a gain of 2 lb (0.9 kg) or more in a day."
  - id: hf.weight_gain_7d
    kind: change
    metric: weight
    component: weight
    direction: rise
    severity: high
    title: Weight gain in 7 days
    params: {window_hours: 168, min_change: 2.3}
    source: "AHA self-check plan: call for a gain of 5 lb (2.3 kg) or more in a week."
  - id: hf.weight_missing
    kind: missing
    metric: weight
    severity: medium
    title: No weight readings
    params: {after_hours: 36}
    source: "Program default: one missed morning weight before the nurse is told."
"""

BP_TEST = """
program: bp_test
title: Blood pressure (backtest fixture)
rules:
  - id: bpt.high
    kind: threshold
    metric: blood_pressure
    title: Blood pressure high
    tiers:
      - severity: critical
        any: [{component: systolic, op: ">", param: critical_above}]
      - severity: medium
        any: [{component: systolic, op: ">", param: high_above}]
    params: {high_above: 150, critical_above: 172}
    source: "Backtest fixture: two tiers to exercise escalation."
  - id: bpt.missing
    kind: missing
    metric: blood_pressure
    severity: low
    title: No blood pressure readings
    params: {after_hours: 72}
    source: "Backtest fixture: three days without a reading."
"""


def hf_program(daily: float = 0.9) -> str:
    return HF_TEST % {"daily": daily}


def book(*documents: str) -> RuleBook:
    programs = dict(RuleBook.builtin().programs)
    for text in documents:
        spec = parse_document(text)
        programs[spec.program] = spec
    return RuleBook(programs)


def weight(kg: float, at: datetime, patient: str = "hf-1") -> AcceptedReading:
    return AcceptedReading(
        Reading(f"scale-{patient}", Metric.WEIGHT, {"weight": kg}, at, at), patient
    )


def bp(systolic: float, at: datetime, patient: str = "bp-1") -> AcceptedReading:
    values = {"systolic": systolic, "diastolic": 80.0}
    return AcceptedReading(
        Reading(f"cuff-{patient}", Metric.BLOOD_PRESSURE, values, at, at), patient
    )


def daily_weights(kgs: Sequence[float], patient: str = "hf-1") -> list[AcceptedReading]:
    return [weight(kg, D0 + i * DAY + 8 * H, patient) for i, kg in enumerate(kgs)]


def episodes(burden: Burden) -> list[tuple[str, str, datetime, Severity]]:
    return [(a.patient_id, a.rule_id, a.opened_at, a.severity) for a in burden.alerts]


HF = {"hf-1": PatientContext("hf-1", ("heart_failure",))}
BPT = {"bp-1": PatientContext("bp-1", ("bp_test",))}
# Daily morning weights: +1.0 kg on day 2 and day 5, 2.4-2.6 kg above day 0 from day 5 on.
GAINING = [80.0, 80.1, 81.1, 81.2, 81.4, 82.4, 82.5, 82.6]


# --- the pure replay --------------------------------------------------------------


def test_the_report_counts_alerts_before_and_after_grouping() -> None:
    # The built-in heart-failure program groups the day's gain, the week's gain and the
    # trend (one fluid build-up: 2022 AHA/ACC/HFSA; AHA self-check plan, 5 lb in a week).
    # A week of +0.4 kg a day is one clinical event; one episode per rule would be two.
    week = daily_weights([80 + 0.4 * i for i in range(8)])
    options = Options(start=D0, end=D0 + 8 * DAY, resolve_after=10 * DAY)
    burden = backtest(RuleBook.builtin(), week, HF, options)
    assert len(burden.alerts) == 1
    assert burden.ungrouped == 2
    [event] = burden.alerts
    assert (event.rule_id, event.severity) == ("hf.weight_gain_7d", Severity.HIGH)
    grouping = burden.as_json()["grouping"]
    assert (grouping["alerts_before"], grouping["alerts_after"]) == (2, 1)
    assert grouping["alerts_per_patient_month_before"] == pytest.approx(
        2 * grouping["alerts_per_patient_month_after"], abs=1e-3
    )
    assert "before grouping" in render(burden)


def test_a_heart_failure_patient_gaining_weight_yields_the_expected_episodes() -> None:
    options = Options(resolve_after=36 * H)
    burden = backtest(book(hf_program()), daily_weights(GAINING), HF, options)

    high = Severity.HIGH
    assert episodes(burden) == [
        ("hf-1", "hf.weight_gain_24h", D0 + 2 * DAY + 8 * H, high),
        ("hf-1", "hf.weight_gain_24h", D0 + 5 * DAY + 8 * H, high),
        ("hf-1", "hf.weight_gain_7d", D0 + 5 * DAY + 8 * H, high),
        # day 6 recurs into the day-5 episode; the nurse resolved it 36 h after it opened
        ("hf-1", "hf.weight_gain_7d", D0 + 7 * DAY + 8 * H, high),
    ]
    seven_day = burden.per_rule["hf.weight_gain_7d"]
    assert (seven_day.alerts, seven_day.candidates, seven_day.patients) == (2, 3, 1)
    assert burden.alerts[2].recurrences == 1
    # Whole UTC days around the readings; the last weight (day 7) is 16 h before the end,
    # under the 36 h missing-data limit.
    assert (burden.start, burden.end, burden.days) == (D0, D0 + 8 * DAY, 8.0)
    assert burden.per_rule["hf.weight_missing"].alerts == 0
    assert (burden.patients, burden.readings) == (1, 8)


@pytest.mark.parametrize(
    ("resolve_after_hours", "expected"),
    [
        (0, 18),  # every reading is a new alert: the upper bound
        (12, 6),  # 0, 12, 24, 36, 48, 60 h
        (24, 3),  # 0, 24, 48 h
        (100, 1),  # the nurse never got to it within the three days
    ],
)
def test_resolve_after_models_when_a_persisting_condition_alerts_again(
    resolve_after_hours: float, expected: int
) -> None:
    readings = [bp(170, D0 + 4 * i * H) for i in range(18)]  # every 4 h for 3 days
    options = Options(resolve_after=resolve_after_hours * H)
    burden = backtest(book(BP_TEST), readings, BPT, options)

    assert len(burden.alerts) == expected
    assert all(a.rule_id == "bpt.high" and a.severity is Severity.MEDIUM for a in burden.alerts)
    assert sum(1 + a.recurrences for a in burden.alerts) == 18
    gap = max(resolve_after_hours, 4)
    opened = [a.opened_at for a in burden.alerts]
    assert all(b - a >= gap * H for a, b in pairwise(opened))


def test_a_looser_program_lowers_the_count() -> None:
    readings = daily_weights(GAINING)
    options = Options(resolve_after=36 * H)
    baseline = backtest(book(hf_program(0.9)), readings, HF, options)
    looser = backtest(book(hf_program(1.5)), readings, HF, options)

    assert baseline.per_rule["hf.weight_gain_24h"].alerts == 2
    assert looser.per_rule["hf.weight_gain_24h"].alerts == 0
    assert len(looser.alerts) == len(baseline.alerts) - 2
    delta = Comparison(baseline, looser).as_json()["delta"]
    assert delta["alerts"] == -2
    assert delta["per_rule"] == {"hf.weight_gain_24h": -2}
    assert delta["alerts_per_patient_month"] < 0


def test_a_worse_reading_escalates_the_open_episode_instead_of_opening_another() -> None:
    readings = [bp(160, D0 + 8 * H), bp(175, D0 + 9 * H), bp(160, D0 + 10 * H)]
    burden = backtest(book(BP_TEST), readings, BPT)

    [alert] = burden.alerts
    assert (alert.opened_severity, alert.severity) == (Severity.MEDIUM, Severity.CRITICAL)
    assert (alert.escalations, alert.recurrences) == (1, 1)
    assert burden.by_severity() == {"critical": 1, "high": 0, "medium": 0, "low": 0}
    assert burden.per_rule["bpt.high"].escalations == 1


AUTO_TEST = """
program: auto_test
title: Auto-resolve (backtest fixture)
rules:
  - id: auto.high
    kind: threshold
    metric: blood_pressure
    title: Blood pressure high
    tiers:
      - severity: medium
        any: [{component: systolic, op: ">", param: high_above}]
    params: {high_above: 150}
    auto_resolve_after_hours: 2
    source: "Backtest fixture: resolves itself after two clear hours."
"""


@pytest.mark.parametrize(
    ("systolic_by_hour", "alerts", "auto_resolved"),
    [
        ({8: 160, 9: 120, 12: 160}, 2, 1),  # clear from 09:00, resolved at 11:00
        ({8: 160, 9: 120, 10: 160, 11: 120, 12: 160}, 1, 0),  # 10:00 started the wait over
        ({8: 160, 9: 160, 12: 160}, 1, 0),  # never seen to clear: the nurse's 24 h
    ],
)
def test_a_rule_that_auto_resolves_closes_its_episode_once_clear_long_enough(
    systolic_by_hour: dict[int, float], alerts: int, auto_resolved: int
) -> None:
    readings = [bp(v, D0 + h * H) for h, v in systolic_by_hour.items()]
    contexts = {"bp-1": PatientContext("bp-1", ("auto_test",))}
    burden = backtest(book(AUTO_TEST), readings, contexts)

    rule = burden.per_rule["auto.high"]
    assert (rule.alerts, rule.auto_resolved) == (alerts, auto_resolved)
    assert burden.as_json()["per_rule"]["auto.high"]["auto_resolved"] == auto_resolved


def test_the_missing_data_timer_alerts_after_silence_and_again_after_each_resolution() -> None:
    readings = daily_weights([80.0, 80.1, 80.0])  # then nothing from day 2 08:00
    options = Options(end=D0 + 7 * DAY)
    burden = backtest(book(hf_program()), readings, HF, options)

    first = D0 + 2 * DAY + 8 * H + 36 * H  # day 3, 20:00: on the hourly timer
    assert [a.opened_at for a in burden.alerts] == [first + i * DAY for i in range(4)]
    assert {a.rule_id for a in burden.alerts} == {"hf.weight_missing"}
    assert {a.severity for a in burden.alerts} == {Severity.MEDIUM}
    assert any("heartbeats are not replayed" in n for n in burden.notes)


def test_the_timer_watches_a_patient_only_while_a_device_is_bound() -> None:
    readings = daily_weights([80.0, 80.1, 80.0])
    options = Options(end=D0 + 7 * DAY)
    bound = {"hf-1": [(D0, D0 + 5 * DAY)]}  # the scale went back on day 5
    burden = backtest(book(hf_program()), readings, HF, options, watch=bound)

    first = D0 + 2 * DAY + 8 * H + 36 * H
    assert [a.opened_at for a in burden.alerts] == [first, first + DAY]
    assert not any("without device bindings" in n for n in burden.notes)


def test_the_timer_proposes_once_per_tick_while_one_of_several_metrics_is_silent() -> None:
    # Weights stop after day 2; the cuff keeps reading every morning (its own missing rule
    # never fires, but each reading reschedules the patient on the timer).
    readings = daily_weights([80.0, 80.1, 80.0]) + [
        bp(120, D0 + i * DAY + 9 * H, "hf-1") for i in range(7)
    ]
    contexts = {"hf-1": PatientContext("hf-1", ("heart_failure", "bp_test"))}
    burden = backtest(book(hf_program(), BP_TEST), readings, contexts, Options(end=D0 + 7 * DAY))

    silent = burden.per_rule["hf.weight_missing"]
    # Hourly from day 3 20:00 to the end (day 7 00:00), each folded into or opening an alert.
    assert (silent.alerts, silent.candidates) == (4, 76)
    assert burden.per_rule["bpt.missing"].candidates == 0


def test_a_finer_timer_alerts_sooner_not_more_often() -> None:
    readings = daily_weights([80.0, 80.1, 80.0])
    at = D0 + 2 * DAY + 8 * H + 36 * H + 20 * timedelta(minutes=1)  # 20:20
    shifted = [
        weight(r.reading.values["weight"], r.reading.measured_at + 20 * timedelta(minutes=1))
        for r in readings
    ]
    hourly = backtest(book(hf_program()), shifted, HF, Options(end=D0 + 4 * DAY))
    fine = backtest(
        book(hf_program()), shifted, HF, Options(end=D0 + 4 * DAY, step=5 * timedelta(minutes=1))
    )

    assert [a.opened_at for a in hourly.alerts] == [at + 40 * timedelta(minutes=1)]
    assert [a.opened_at for a in fine.alerts] == [at]


def test_warm_up_readings_fill_windows_and_hold_alerts_back_but_are_not_counted() -> None:
    readings = [
        bp(170, D0 + 12 * H),  # warm-up: opens an episode the nurse resolves at D0 + 36 h
        bp(170, D0 + DAY + 6 * H),  # in the period, folded into that episode
        bp(170, D0 + DAY + 13 * H),  # after the resolution: a new alert
    ]
    burden = backtest(book(BP_TEST), readings, BPT, Options(start=D0 + DAY))

    assert [a.opened_at for a in burden.alerts] == [D0 + DAY + 13 * H]
    assert (burden.start, burden.end, burden.readings) == (D0 + DAY, D0 + 2 * DAY, 2)
    assert burden.per_rule["bpt.high"].candidates == 2


def test_the_timer_runs_through_the_warm_up_so_the_period_starts_in_step() -> None:
    readings = daily_weights([80.0, 80.1])  # silent from day 1 08:00: due day 2 20:00
    options = Options(start=D0 + 4 * DAY, end=D0 + 6 * DAY)
    burden = backtest(book(hf_program()), readings, HF, options)

    # Alerts on days 2 and 3 at 20:00 fell in the warm-up; the period's own follow daily.
    assert [a.opened_at for a in burden.alerts] == [D0 + 4 * DAY + 20 * H, D0 + 5 * DAY + 20 * H]
    assert burden.patients == 1


def test_rates_per_patient_month_and_per_nurse_day() -> None:
    readings = [bp(170, D0 + i * DAY + 8 * H, f"bp-{i % 3}") for i in range(30)]
    contexts = {f"bp-{i}": PatientContext(f"bp-{i}", ("bp_test",)) for i in range(3)}
    options = Options(start=D0, end=D0 + 30 * DAY, patients_per_nurse=2)
    burden = backtest(book(BP_TEST), readings, contexts, options)

    # Each patient measures every third day, past the 24 h resolution: every reading alerts.
    assert len(burden.alerts) == 30
    assert (burden.patients, burden.nurses, burden.days) == (3, 2, 30.0)
    assert burden.alerts_per_patient_month == pytest.approx(30 / (3 * 30 / (365.25 / 12)))
    assert burden.alerts_per_nurse_day == pytest.approx(30 / 30 / 2)
    assert burden.share_patients_alerted == 1.0
    report = burden.as_json()
    assert report["alerts"] == 30
    assert report["alerts_per_nurse_day"] == 0.5
    assert report["per_rule"]["bpt.high"]["by_severity"]["medium"] == 30


def test_patients_without_an_alert_count_in_the_denominators() -> None:
    readings = [bp(170, D0 + 8 * H, "bp-0"), bp(120, D0 + 8 * H, "bp-1")]
    contexts = {p: PatientContext(p, ("bp_test",)) for p in ("bp-0", "bp-1")}
    burden = backtest(book(BP_TEST), readings, contexts)

    assert (burden.patients, burden.patients_alerted, burden.share_patients_alerted) == (2, 1, 0.5)


def test_readings_must_be_fed_in_time_order() -> None:
    replay = Replay(book(BP_TEST))
    replay.feed([bp(120, D0 + 2 * H)], BPT)
    with pytest.raises(ValueError, match="measured-time order"):
        replay.feed([bp(120, D0 + H)])


def test_nothing_to_replay_is_an_error_unless_the_period_is_given() -> None:
    with pytest.raises(ValueError, match="no readings"):
        backtest(book(), [])
    empty = backtest(book(), [], options=Options(start=D0, end=D0 + DAY))
    assert (empty.patients, len(empty.alerts), empty.alerts_per_patient_month) == (0, 0, 0.0)


def test_unknown_programs_are_noted() -> None:
    contexts = {"bp-1": PatientContext("bp-1", ("bp_test", "cardio_rehab"))}
    burden = backtest(book(BP_TEST), [bp(120, D0)], contexts)
    assert any("cardio_rehab (1 patients)" in n for n in burden.notes)


def test_options_refuse_what_cannot_be_modelled() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Options(start=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="ends before"):
        Options(start=D0, end=D0)
    with pytest.raises(ValueError, match="step"):
        Options(step=timedelta(0))
    with pytest.raises(ValueError, match="patients_per_nurse"):
        Options(patients_per_nurse=0)


def test_watch_periods_merge() -> None:
    spans = [(D0 + 3 * DAY, None), (D0, D0 + DAY), (D0 + DAY, D0 + 2 * DAY)]
    assert merge_spans(spans) == [(D0, D0 + 2 * DAY), (D0 + 3 * DAY, None)]


# --- CSV ------------------------------------------------------------------------------

CSV_HEADER = "patient_id,metric,measured_at,systolic,diastolic,pulse,weight,programs\n"


def csv_text(rows: Iterable[str]) -> list[str]:
    return [CSV_HEADER, *(r + "\n" for r in rows)]


def test_csv_rows_become_readings_and_programs() -> None:
    data = read_csv(
        csv_text(
            [
                "hf-1,weight,2026-01-02T08:00:00Z,,,,80.5,heart_failure;hypertension",
                "hf-1,weight,2026-01-01T08:00:00,,,,80.0,",
                "bp-1,blood_pressure,2026-01-01T09:00:00+01:00,150,85,70,,",
                "bp-1,blood_pressure,2026-01-01T10:00:00+01:00,400,85,,,",
                "bp-1,blood_pressure,2026-01-01T09:00:00+01:00,150,85,70,,",
            ]
        ),
        default_programs=("hypertension",),
    )

    assert [(a.patient_id, a.reading.measured_at) for a in data.readings] == [
        ("hf-1", D0 + 8 * H),  # no offset: UTC
        ("bp-1", D0 + 8 * H),  # sorted by measured time
        ("hf-1", D0 + DAY + 8 * H),
    ]
    assert data.readings[1].reading.values == {"systolic": 150, "diastolic": 85, "pulse": 70}
    assert data.contexts["hf-1"].programs == ("heart_failure", "hypertension")
    assert data.contexts["bp-1"].programs == ("hypertension",)
    assert data.refused == [
        "line 5: systolic 400 mm[Hg] outside the plausible range 40-300",
        "line 6: the same reading as line 4",
    ]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("p,pressure,2026-01-01T08:00:00Z,150,85,,,", "line 2: unknown metric 'pressure'"),
        ("p,weight,yesterday,,,,80,", "line 2: not an ISO 8601 date or time"),
        ("p,blood_pressure,2026-01-01T08:00:00Z,150,,,,", "line 2: blood_pressure needs diastolic"),
        ("p,weight,2026-01-01T08:00:00Z,150,,,80,", "line 2: weight has no component 'systolic'"),
        ("p,weight,2026-01-01T08:00:00Z,,,,eighty,", "line 2: weight is not a number"),
        (",weight,2026-01-01T08:00:00Z,,,,80,", "line 2: no patient_id"),
    ],
)
def test_a_malformed_csv_row_is_named_by_its_line(row: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        read_csv(csv_text([row]))


def test_a_patient_with_two_program_lists_is_refused() -> None:
    rows = [
        "p,weight,2026-01-01T08:00:00Z,,,,80,heart_failure",
        "p,weight,2026-01-02T08:00:00Z,,,,80,copd",
    ]
    with pytest.raises(ValueError, match="line 3: patient p has programs copd"):
        read_csv(csv_text(rows))


def test_csv_without_the_required_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="missing \\['measured_at'\\]"):
        read_csv(["patient_id,metric,weight\n", "p,weight,80\n"])


def test_a_bare_end_date_includes_that_day() -> None:
    assert parse_until("2026-01-31") == datetime(2026, 2, 1, tzinfo=UTC)
    assert parse_until("2026-01-31T12:00:00Z") == datetime(2026, 1, 31, 12, tzinfo=UTC)


# --- the command line, CSV in, JSON out ------------------------------------------------


def write_hf_csv(path: Path, patients: Sequence[str] = ("hf-1",)) -> Path:
    rows = []
    for pid in patients:
        for i, kg in enumerate(GAINING):
            at = (D0 + i * DAY + 8 * H).isoformat()
            rows.append(f"{pid},weight,{at},,,,{kg},heart_failure")
    path.write_text("".join(csv_text(rows)))
    return path


def run_cli(args: Sequence[str]) -> int:
    return main(["rules", "backtest", *args])


def test_the_cli_replays_a_csv_and_writes_the_figures_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = write_hf_csv(tmp_path / "readings.csv", ["hf-1", "hf-2", "hf-3"])
    program = tmp_path / "hf.yaml"
    program.write_text(hf_program())
    out = tmp_path / "report.json"

    status = run_cli(
        [
            "--csv",
            str(csv_file),
            "--program",
            str(program),
            "--resolve-after-hours",
            "36",
            "--patients-per-nurse",
            "2",
            "--json",
            str(out),
        ]
    )

    assert status == 0
    report = json.loads(out.read_text())
    assert report["alerts"] == 12  # the four episodes of the first test, for each patient
    assert report["patients"] == 3
    assert report["days"] == 8.0
    assert report["nurses"] == 2
    assert report["alerts_per_nurse_day"] == pytest.approx(12 / 8 / 2, abs=1e-4)
    assert report["alerts_per_patient_month"] == pytest.approx(
        12 / (3 * 8 / (365.25 / 12)), abs=1e-4
    )
    assert report["share_patients_alerted"] == 1.0
    assert report["per_rule"]["hf.weight_gain_24h"]["alerts"] == 6
    assert report["per_rule"]["hf.weight_gain_7d"]["by_severity"]["high"] == 6
    assert report["resolve_after_hours"] == 36.0
    assert report["input"]["program_files"] == [str(program)]
    printed = capsys.readouterr().out
    assert "hf.weight_gain_7d" in printed
    assert "alerts per nurse-day      0.75" in printed


def test_the_cli_compares_a_candidate_program_with_the_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = write_hf_csv(tmp_path / "readings.csv")
    baseline = tmp_path / "hf.yaml"
    baseline.write_text(hf_program(0.9))
    looser = tmp_path / "hf_looser.yaml"
    looser.write_text(hf_program(1.5))
    out = tmp_path / "compare.json"

    status = run_cli(
        [
            "--csv",
            str(csv_file),
            "--program",
            str(baseline),
            "--compare",
            str(looser),
            "--resolve-after-hours",
            "36",
            "--json",
            str(out),
        ]
    )

    assert status == 0
    report = json.loads(out.read_text())
    assert (report["baseline"]["alerts"], report["candidate"]["alerts"]) == (4, 2)
    assert report["delta"]["per_rule"] == {"hf.weight_gain_24h": -2}
    printed = capsys.readouterr().out
    assert "candidate: baseline + hf_looser.yaml" in printed
    assert "total" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--programs", "heart_faliure"], "unknown programs ['heart_faliure']"),
        (["--program", "/nonexistent/x.yaml"], "/nonexistent/x.yaml: No such file"),
        (["--resolve-after-hours", "-1"], "resolve_after cannot be negative"),
    ],
)
def test_the_cli_explains_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    csv_file = write_hf_csv(tmp_path / "readings.csv")
    assert run_cli(["--csv", str(csv_file), *args]) == 2
    assert message in capsys.readouterr().err


# --- stored readings in PostgreSQL ------------------------------------------------------


async def store(pool: asyncpg.Pool, readings: Iterable[AcceptedReading]) -> None:
    await pool.executemany(
        """INSERT INTO readings (measured_at, device_id, metric, patient_id, v1, v2, v3,
                                 received_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $1)""",
        [
            (
                a.reading.measured_at,
                a.reading.device_id,
                a.reading.metric.value,
                a.patient_id,
                *slots_of(a.reading.metric, a.reading.values),
            )
            for a in readings
        ],
    )


async def enroll(
    pool: asyncpg.Pool,
    patient: str,
    programs: Sequence[str],
    overrides: dict[str, dict[str, float]] | None = None,
    bound: tuple[datetime, datetime | None] = (D0, None),
) -> None:
    await pool.execute(
        "INSERT INTO patients (id, display_name, programs, rule_overrides) VALUES ($1, $2, $3, $4)",
        patient,
        f"Patient {patient}",
        list(programs),
        overrides or {},
    )
    device = f"scale-{patient}"
    await pool.execute("INSERT INTO devices (id, kind) VALUES ($1, 'scale')", device)
    await pool.execute(
        """INSERT INTO device_bindings (device_id, patient_id, during)
           VALUES ($1, $2, tstzrange($3, $4))""",
        device,
        patient,
        *bound,
    )


async def backtest_db(db_url: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    (tmp_path / "hf.yaml").write_text(hf_program())
    (tmp_path / "bp.yaml").write_text(BP_TEST)
    out = tmp_path / "report.json"
    programs = ["--program", str(tmp_path / "hf.yaml"), "--program", str(tmp_path / "bp.yaml")]
    argv = ["--database-url", db_url, *programs, "--json", str(out), *args]
    # The command runs its own event loop, as it does from a shell.
    assert await asyncio.to_thread(run_cli, argv) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


async def test_stored_readings_replay_with_each_patients_programs_and_overrides(
    pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    # hf-1: defaults; hf-2: the nurse raised the daily limit; hf-3 stopped weighing on
    # day 2 and the scale went back on day 4; bp-1: another program, one reading only.
    await enroll(pool, "hf-1", ["heart_failure"])
    await enroll(pool, "hf-2", ["heart_failure"], {"hf.weight_gain_24h": {"min_change": 1.5}})
    await enroll(pool, "hf-3", ["heart_failure"], bound=(D0, D0 + 4 * DAY))
    await enroll(pool, "bp-1", ["bp_test"])
    await store(pool, daily_weights(GAINING, "hf-1") + daily_weights(GAINING, "hf-2"))
    await store(pool, daily_weights([70.0, 70.1, 70.0], "hf-3"))
    await store(pool, [bp(120, D0 + 8 * H, "bp-1")])

    report = await backtest_db(db_url, tmp_path, "--resolve-after-hours", "36")

    assert report["patients"] == 4
    assert report["readings"] == 20
    assert (report["start"], report["end"]) == (D0.isoformat(), (D0 + 8 * DAY).isoformat())
    per_rule = report["per_rule"]
    assert per_rule["hf.weight_gain_24h"]["alerts"] == 2  # hf-1 only: hf-2's override
    assert per_rule["hf.weight_gain_7d"]["alerts"] == 4  # hf-1 and hf-2
    # hf-3: silent from day 2 08:00: an alert on day 3 at 20:00; unbound before it recurs.
    assert per_rule["hf.weight_missing"]["alerts"] == 1
    # bp-1: one normal reading on day 0 at 08:00, then 72 h of silence: days 3, 4 (+36 h),
    # 6 and 7 (+36 h), and never the high-pressure rule.
    assert per_rule["bpt.missing"]["alerts"] == 4
    assert per_rule["bpt.high"]["alerts"] == 0
    assert report["alerts"] == 11
    assert (report["patients_alerted"], report["share_patients_alerted"]) == (4, 1.0)
    assert not any("without device bindings" in n for n in report["notes"])


async def test_programs_from_the_command_line_replace_stored_programs_and_overrides(
    pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    await enroll(pool, "hf-2", ["hypertension"], {"hf.weight_gain_24h": {"min_change": 1.5}})
    await store(pool, daily_weights(GAINING, "hf-2"))

    stored = await backtest_db(db_url, tmp_path)
    assert stored["per_rule"].get("hf.weight_gain_24h", {"alerts": 0})["alerts"] == 0
    replaced = await backtest_db(db_url, tmp_path, "--programs", "heart_failure")
    assert replaced["per_rule"]["hf.weight_gain_24h"]["alerts"] == 2


async def test_a_period_from_the_database_warms_up_on_the_days_before_it(
    pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    await enroll(pool, "hf-1", ["heart_failure"])
    await enroll(pool, "hf-9", ["heart_failure"])
    await store(pool, daily_weights(GAINING, "hf-1") + daily_weights(GAINING, "hf-9"))

    report = await backtest_db(
        db_url,
        tmp_path,
        "--from",
        "2026-01-05",
        "--to",
        "2026-01-07",
        "--patients",
        "hf-1",
        "--resolve-after-hours",
        "36",
    )

    assert (report["start"], report["end"]) == (
        "2026-01-05T00:00:00+00:00",
        "2026-01-08T00:00:00+00:00",
    )
    assert report["patients"] == 1
    assert report["readings"] == 3  # days 4, 5 and 6; days 0-3 only filled the windows
    # The week's gain on day 5 needs day 0's weight, read as warm-up; day 7 is after --to.
    assert report["per_rule"]["hf.weight_gain_7d"]["alerts"] == 1
    assert report["per_rule"]["hf.weight_gain_24h"]["alerts"] == 1
