"""Every alert is expected (a scenario or a label) or non-actionable, for a stated reason; the
efficacy figures are computed from the run they report on. Pure (engine and policy replay)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from rpm.backtest.burden import MONTH_DAYS, Alert
from rpm.domain import AcceptedReading, Metric, Reading, Severity
from simulators.cohort import cohort_config, figures, merge, run_cohort
from simulators.efficacy import Readings, Verdict, classify, misses, observed
from simulators.labels import PatientLabels
from simulators.physiology import draw_person
from simulators.scenarios import GroundTruth, default_scenarios
from simulators.traffic import Plan, SimConfig, SimDevice, SimPatient

pytestmark = pytest.mark.pure

T0 = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)  # a Monday


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def _patient(pid: str, program: str, kinds: tuple[str, ...]) -> SimPatient:
    devices = tuple(SimDevice(f"{pid}-{k}", k, "canonical", "mqtt") for k in kinds)
    return SimPatient(pid, "Ada Alder", "+12125550100", "America/New_York", "en",
                      (program,), devices)  # fmt: skip


def _labels(pid: str, program: str, *names: str, **person: float) -> PatientLabels:
    p = replace(draw_person(program, np.random.default_rng(0)), **person)
    return PatientLabels(pid, program, ("skips_days", *names), p)


def _reading(pid: str, kind: str, metric: Metric, at: datetime, **values: float) -> AcceptedReading:
    return AcceptedReading(Reading(f"{pid}-{kind}", metric, values, at, at), pid)


def _alert(pid: str, rule: str, at: datetime, escalations: int = 0) -> Alert:
    return Alert(0, pid, rule, at, Severity.HIGH, Severity.HIGH, escalations, 0)


@pytest.fixture
def world() -> tuple[Plan, Readings]:
    """Four patients: a quiet HF patient, an HF patient whose weight gain begins at 48 h, an
    uncontrolled stage-2 hypertensive and a weekend-skipping hypertensive."""
    patients = (
        _patient("quiet", "heart_failure", ("scale", "bp_cuff")),
        _patient("hf", "heart_failure", ("scale", "bp_cuff")),
        _patient("stage2", "hypertension", ("bp_cuff",)),
        _patient("weekend", "heart_failure", ("scale", "bp_cuff")),
    )
    labels = {
        "quiet": _labels("quiet", "heart_failure", weight=80.0),
        "hf": _labels("hf", "heart_failure"),
        "stage2": _labels("stage2", "hypertension", "htn_stage2_uncontrolled", sbp=150.0),
        "weekend": _labels("weekend", "heart_failure", "weekend_skipper"),
    }
    spec = next(s for s in default_scenarios() if s.name == "hf_weight_gain")
    truth = (GroundTruth("hf", spec.name, spec.kind, h(48), frozenset(spec.detected_by)),)
    cfg = SimConfig(4, T0, h(24 * 7), scenarios=(spec,))
    plan = Plan(cfg, patients, (), truth, labels)
    rows = [
        _reading("quiet", "scale", Metric.WEIGHT, h(0), weight=80.0),
        _reading("quiet", "scale", Metric.WEIGHT, h(24), weight=81.1),
        _reading("quiet", "scale", Metric.WEIGHT, h(48), weight=80.1),
        _reading("hf", "scale", Metric.WEIGHT, h(72), weight=82.0),
        _reading("stage2", "bp_cuff", Metric.BLOOD_PRESSURE, h(10), systolic=152, diastolic=88),
        # Friday 07:00 New York, then nothing until Monday.
        _reading("weekend", "scale", Metric.WEIGHT, h(24 * 4 + 7), weight=70.0),
        _reading("weekend", "scale", Metric.WEIGHT, h(24 * 7 + 7), weight=70.2),
    ]
    return plan, Readings(rows)


def _one(plan: Plan, readings: Readings, alert: Alert) -> Verdict:
    (v,) = classify(plan, [alert], readings)
    return v


def test_alerts_of_a_scenario_after_its_onset_are_expected(world: tuple[Plan, Readings]) -> None:
    plan, readings = world
    v = _one(plan, readings, _alert("hf", "hf.weight_gain_24h", h(72)))
    assert (v.cls, v.cause) == ("scenario", "hf_weight_gain")
    # Before the onset the same rule is noise, and the verdict says so.
    v = _one(plan, readings, _alert("hf", "hf.weight_gain_24h", h(12)))
    assert v.cls == "non_actionable"
    assert "before the hf_decompensation began" in v.why
    # An episode opened a little before the onset that escalated after it is the event's.
    v = _one(plan, readings, _alert("hf", "hf.weight_gain_7d", h(40), escalations=1))
    assert v.cls == "scenario"


def test_a_value_alert_a_label_expects_is_expected_with_its_cadence(
    world: tuple[Plan, Readings],
) -> None:
    plan, readings = world
    v = _one(plan, readings, _alert("stage2", "htn.stage2_persistent", h(10)))
    assert (v.cls, v.cause) == ("label", "htn_stage2_uncontrolled")
    assert "daily" in v.why
    assert v.values == {"systolic": 152, "diastolic": 88}
    # The same label does not explain a rule it does not name.
    v = _one(plan, readings, _alert("stage2", "htn.low_bp", h(10)))
    assert v.cls == "non_actionable"


def test_a_value_alert_on_quiet_physiology_is_non_actionable_with_its_values(
    world: tuple[Plan, Readings],
) -> None:
    plan, readings = world
    v = _one(plan, readings, _alert("quiet", "hf.weight_gain_24h", h(24)))
    assert (v.cls, v.cause, v.values) == ("non_actionable", "", {"weight": 81.1})
    assert "no fluid change simulated" in v.why


def test_missing_data_alerts_are_expected_only_after_a_true_gap(
    world: tuple[Plan, Readings],
) -> None:
    plan, readings = world
    # 36 h after the last weight: a missed day (skips_days, which every patient carries).
    v = _one(plan, readings, _alert("quiet", "hf.weight_missing", h(48 + 37)))
    assert (v.cls, v.cause) == ("label", "skips_days")
    assert "no weight reading for 37 h" in v.why
    # The weekend skipper's gap spans Saturday: the label that made it is named.
    v = _one(plan, readings, _alert("weekend", "hf.weight_missing", h(24 * 6 + 5)))
    assert (v.cls, v.cause) == ("label", "weekend_skipper")
    # A missing-data alert with a reading 12 h before is noise.
    v = _one(plan, readings, _alert("quiet", "hf.weight_missing", h(60)))
    assert v.cls == "non_actionable"
    assert "12 h before" in v.why


def test_a_missed_event_without_a_reading_of_its_device_is_unobserved(
    world: tuple[Plan, Readings],
) -> None:
    plan, readings = world
    (truth,) = plan.truth
    assert observed(plan, truth, readings)  # a weight at 72 h, after the onset at 48 h
    assert misses(plan, [], readings) == [(truth, True)]
    hit = Verdict("hf", "hf.weight_trend", h(72), "scenario", "hf_weight_gain", "")
    assert misses(plan, [hit], readings) == []
    # An episode open at the onset that the event escalated caught it (no delay known); a
    # noise alert before the onset did not.
    escalated = Verdict("hf", "hf.weight_gain_7d", h(40), "scenario", "hf_weight_gain", "")
    assert misses(plan, [escalated], readings) == []
    noise = Verdict("hf", "hf.weight_gain_7d", h(40), "non_actionable", "", "")
    assert misses(plan, [noise], readings) == [(truth, True)]
    silent = Readings([])
    assert misses(plan, [], silent) == [(truth, False)]


@pytest.fixture(scope="module")
def small_run() -> tuple[Plan, list[Verdict], dict[str, object]]:
    scenarios = [s.model_copy(update={"share": 0.5}) for s in default_scenarios()]
    cfg = cohort_config(80, 10.0, 5, T0, scenarios=scenarios)
    return run_cohort(cfg, T0)


def test_a_small_run_tallies_figures_from_its_own_alerts(
    small_run: tuple[Plan, list[Verdict], dict[str, object]],
) -> None:
    plan, verdicts, tallied = small_run
    assert tallied["alerts"] == len(verdicts) > 0
    by_class = tallied["by_class"]
    assert isinstance(by_class, dict)
    assert sum(by_class.values()) == len(verdicts)
    assert by_class.get("scenario", 0) > 0
    assert by_class.get("label", 0) > 0
    non = [v for v in verdicts if v.cls == "non_actionable"]
    assert sum(tallied["nonactionable_by_rule"].values()) == len(non)  # type: ignore[attr-defined]
    assert set(tallied["examples"]) == {v.rule_id for v in non}  # type: ignore[call-overload]
    assert tallied["cases"] == {
        s: sum(t.scenario == s for t in plan.truth) for s in {t.scenario for t in plan.truth}
    }
    f = figures(merge([tallied]))
    assert f["seeds"] == 1
    assert f["patients"] == 80
    assert f["days"] == 10.0
    assert f["nonactionable_per_patient_month"] == round(len(non) / (80 * 10 / MONTH_DAYS), 4)
    for name, s in f["scenarios"].items():
        assert s["sensitivity"] == round(tallied["caught"][name] / s["patients"], 4)  # type: ignore[index]
    assert f["sensitivity_min"] == min(s["sensitivity"] for s in f["scenarios"].values())
    # Two seeds: counts add up, and the figures move with the run.
    other = run_cohort(cohort_config(80, 10.0, 6, T0, scenarios=default_scenarios()), T0)[2]
    both = figures(merge([tallied, other]))
    assert both["seeds"] == 2
    assert sum(both["by_class"].values()) == tallied["alerts"] + other["alerts"]  # type: ignore[operator]


def test_the_benchmark_ends_with_one_json_line_of_its_figures() -> None:
    script = Path(__file__).parent.parent / "benchmarks" / "efficacy.py"
    args = ["--patients", "40", "--days", "6", "--seeds", "1", "--jobs", "1", "--first-seed", "3"]
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, check=True
    )
    *table, last = out.stdout.strip().splitlines()
    figures_ = json.loads(last)
    keys = {"patients", "seeds", "sensitivity_min", "detection_delay_median_h", "scenarios",
            "nonactionable_per_patient_month", "nonactionable_by_rule"}  # fmt: skip
    assert keys <= set(figures_)
    assert (figures_["patients"], figures_["seeds"]) == (40, 1)
    assert any("non-actionable" in line for line in table)
