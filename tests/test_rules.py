"""Threshold rules of the default programs: table-driven vectors at the thresholds."""

from __future__ import annotations

import pytest

from rpm.domain import Metric
from rules import PatientContext, Severity, step
from rules.engine import EngineState
from rules.programs import PROGRAMS, rules_for
from tests.helpers import T0, bp, single

GENERAL = {"pat-1": PatientContext("pat-1", ("hypertension",))}


def fired(readings, contexts=GENERAL):  # type: ignore[no-untyped-def]
    _, candidates = step(EngineState(), readings, contexts, T0)
    return [(c.rule_id, c.severity) for c in candidates]


@pytest.mark.parametrize(
    ("systolic", "diastolic", "fires"),
    [
        (180, 110, False),  # ACC/AHA 2017: crisis is > 180 and/or > 120
        (181, 110, True),
        (170, 120, False),
        (170, 121, True),
        (220, 130, True),
        (120, 80, False),
    ],
)
def test_hypertensive_crisis_vectors(systolic: float, diastolic: float, fires: bool) -> None:
    expected = [("bp.hypertensive_crisis", Severity.CRITICAL)] if fires else []
    assert fired([bp(systolic, diastolic)]) == expected


@pytest.mark.parametrize(("spo2", "fires"), [(88, False), (87, True), (80, True), (97, False)])
def test_low_spo2_vectors(spo2: float, fires: bool) -> None:
    expected = [("spo2.below_88", Severity.CRITICAL)] if fires else []
    assert fired([single(Metric.SPO2, "spo2", spo2)]) == expected


def test_a_rule_ignores_other_metrics() -> None:
    assert fired([single(Metric.WEIGHT, "weight", 250)]) == []


def test_per_patient_override_changes_the_threshold() -> None:
    contexts = {
        "pat-1": PatientContext("pat-1", (), {"bp.hypertensive_crisis": {"systolic_above": 170}})
    }
    assert fired([bp(175, 100)], contexts) == [("bp.hypertensive_crisis", Severity.CRITICAL)]
    assert fired([bp(175, 100)]) == []


def test_override_of_an_unknown_parameter_is_refused() -> None:
    rule = rules_for(())[0]
    with pytest.raises(ValueError, match="no parameters"):
        rule.with_overrides({"sistolic_above": 170})


def test_explanation_names_values_threshold_and_source() -> None:
    _, [cand] = step(EngineState(), [bp(192, 124)], GENERAL, T0)
    assert "192/124 mmHg" in cand.explanation
    assert "systolic 192 > 180 mmHg" in cand.explanation
    assert "diastolic 124 > 120 mmHg" in cand.explanation
    assert "Whelton" in cand.explanation
    assert cand.evidence["breached"] == {
        "systolic": {"value": 192.0, "op": ">", "threshold": 180.0},
        "diastolic": {"value": 124.0, "op": ">", "threshold": 120.0},
    }
    assert cand.advice


def test_readings_are_evaluated_in_measured_time_order() -> None:
    from datetime import timedelta

    late = bp(190, 100, at=T0)
    early = bp(200, 100, at=T0 - timedelta(hours=1))
    _, cands = step(EngineState(), [late, early], GENERAL, T0)
    assert [c.measured_at for c in cands] == [early.reading.measured_at, late.reading.measured_at]


def test_every_default_rule_cites_a_source() -> None:
    for program in PROGRAMS.values():
        for rule in program.rules:
            assert len(rule.source) > 40, rule.id
