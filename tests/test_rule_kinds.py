"""Each rule kind on its own: table-driven vectors from small ad-hoc specs.

A vector is a series of ``(hours after T0, value)`` readings and what the rule says of
the last one: whether it fires and at which severity. The specs here are not clinical
(the built-in programs have their own vectors in ``test_rule_programs``); their numbers
are round so that a vector sits exactly at, or just past, a limit. Every vector runs
through the engine twice, one reading per batch and all readings in one batch, and both
must agree about the last reading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rpm.domain import METRICS, AcceptedReading, Metric, Reading, Severity
from rules.engine import Engine, PatientContext, StepResult
from rules.kinds import KINDS, Facts
from rules.kinds.missing import Silence, evaluate_missing
from rules.programs import RuleBook
from rules.spec import ProgramSpec, RuleSpec, parse_program
from tests.helpers import T0

pytestmark = pytest.mark.pure

SOURCE = "Test vector. Not a clinical limit."
CTX = {"pat-1": PatientContext("pat-1", ("test",))}


def spec(kind: str, metric: str, **fields: Any) -> RuleSpec:
    """A one-rule program, validated as a real one is."""
    rule = {"id": f"test.{kind}", "kind": kind, "metric": metric, "title": f"Test {kind}"}
    document = {"program": "test", "title": "Test", "rules": [{**rule, "source": SOURCE, **fields}]}
    return parse_program(document).rules[0]


def cond(component: str, op: str, param: str) -> dict[str, str]:
    return {"component": component, "op": op, "param": param}


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def reading(metric: Metric, hours: float, values: Mapping[str, float]) -> AcceptedReading:
    t = at(hours)
    return AcceptedReading(Reading("dev-1", metric, dict(values), t, t), "pat-1")


Value = float | Mapping[str, float]


def series(rule: RuleSpec, *points: tuple[float, Value]) -> list[AcceptedReading]:
    """Readings of the rule's metric; a bare number is the value of its one component."""
    component = rule.component or METRICS[rule.metric].components[0].name
    out = []
    for hours, value in points:
        values = value if isinstance(value, Mapping) else {component: value}
        out.append(reading(rule.metric, hours, values))
    return out


def engine_for(rule: RuleSpec) -> Engine:
    return Engine(RuleBook({"test": ProgramSpec(program="test", title="Test", rules=(rule,))}))


@dataclass(frozen=True)
class Last:
    """What the rule said of the last reading."""

    severity: Severity | None
    explanation: str
    cleared: bool
    evidence: Mapping[str, object]


def of_last(rule: RuleSpec, readings: Sequence[AcceptedReading], result: StepResult) -> Last:
    last = readings[-1].reading.measured_at
    mine = [c for c in result.candidates if c.rule_id == rule.id and c.measured_at == last]
    assert len(mine) <= 1, mine
    cleared = any(c.rule_id == rule.id for c in result.clears)
    if not mine:
        return Last(None, "", cleared, {})
    return Last(mine[0].severity, mine[0].explanation, cleared, mine[0].evidence)


def run(rule: RuleSpec, readings: Sequence[AcceptedReading]) -> Last:
    """Deliver one reading per batch, in order; check one batch of all says the same."""
    engine = engine_for(rule)
    result = StepResult()
    for r in readings:
        result = engine.step([r], CTX)
    one_by_one = of_last(rule, readings, result)
    at_once = of_last(rule, readings, engine_for(rule).step(readings, CTX))
    assert at_once.severity == one_by_one.severity
    return one_by_one


# --- threshold ----------------------------------------------------------------------

GLUCOSE_LOW = spec(
    "threshold",
    "glucose",
    tiers=[
        {"severity": "critical", "any": [cond("glucose", "<", "critical_below")]},
        {"severity": "high", "any": [cond("glucose", "<", "low_below")]},
    ],
    params={"critical_below": 50, "low_below": 70, "hysteresis": 5},
)
BP_HIGH = spec(
    "threshold",
    "blood_pressure",
    tiers=[
        {"severity": "critical", "any": [cond("systolic", ">", "systolic_critical")]},
        {
            "severity": "medium",
            "any": [cond("systolic", ">", "systolic_above"), cond("diastolic", ">", "dia_above")],
        },
    ],
    params={"systolic_critical": 200, "systolic_above": 160, "dia_above": 100, "hysteresis": 5},
)
PULSE_INCLUSIVE = spec(
    "threshold",
    "heart_rate",
    tiers=[
        {"severity": "low", "any": [cond("pulse", ">=", "at_least")]},
        {"severity": "low", "any": [cond("pulse", "<=", "at_most")]},
    ],
    params={"at_least": 120, "at_most": 40},
)


def bpv(systolic: float, diastolic: float) -> dict[str, float]:
    return {"systolic": systolic, "diastolic": diastolic}


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        pytest.param(GLUCOSE_LOW, 70, None, id="at the lower limit: not below"),
        pytest.param(GLUCOSE_LOW, 69.99, Severity.HIGH, id="just below"),
        pytest.param(GLUCOSE_LOW, 50, Severity.HIGH, id="at the critical limit"),
        pytest.param(GLUCOSE_LOW, 49.99, Severity.CRITICAL, id="just below critical"),
        pytest.param(GLUCOSE_LOW, 20, Severity.CRITICAL, id="far below"),
        pytest.param(BP_HIGH, bpv(160, 100), None, id="both at their limits"),
        pytest.param(BP_HIGH, bpv(161, 80), Severity.MEDIUM, id="systolic past"),
        pytest.param(BP_HIGH, bpv(120, 101), Severity.MEDIUM, id="diastolic past"),
        pytest.param(BP_HIGH, bpv(200, 120), Severity.MEDIUM, id="at the critical limit"),
        pytest.param(BP_HIGH, bpv(201, 60), Severity.CRITICAL, id="highest tier wins"),
        pytest.param(PULSE_INCLUSIVE, 120, Severity.LOW, id=">= at the limit"),
        pytest.param(PULSE_INCLUSIVE, 119.99, None, id=">= just under"),
        pytest.param(PULSE_INCLUSIVE, 40, Severity.LOW, id="<= at the limit"),
        pytest.param(PULSE_INCLUSIVE, 40.01, None, id="<= just over"),
    ],
)
def test_threshold_vectors(rule: RuleSpec, value: Value, expected: Severity | None) -> None:
    assert run(rule, series(rule, (0, value))).severity == expected


@pytest.mark.parametrize(
    ("rule", "points", "clears"),
    [
        pytest.param(GLUCOSE_LOW, [(0, 60), (1, 72)], False, id="between limit and limit+h"),
        pytest.param(GLUCOSE_LOW, [(0, 60), (1, 74.99)], False, id="just short of limit+h"),
        pytest.param(GLUCOSE_LOW, [(0, 60), (1, 75)], True, id="at limit+h"),
        pytest.param(GLUCOSE_LOW, [(0, 60), (1, 110)], True, id="well past"),
        pytest.param(GLUCOSE_LOW, [(0, 40), (1, 60)], False, id="critical to high"),
        pytest.param(GLUCOSE_LOW, [(0, 60), (1, 80), (2, 90)], False, id="clears once"),
        pytest.param(GLUCOSE_LOW, [(0, 90), (1, 95)], False, id="never fired"),
        pytest.param(BP_HIGH, [(0, bpv(170, 80)), (1, bpv(158, 80))], False, id="upper, inside h"),
        pytest.param(BP_HIGH, [(0, bpv(170, 80)), (1, bpv(155, 80))], True, id="upper, at limit-h"),
        pytest.param(
            BP_HIGH, [(0, bpv(170, 80)), (1, bpv(150, 97))], False, id="other component inside h"
        ),
        pytest.param(BP_HIGH, [(0, bpv(170, 80)), (1, bpv(150, 95))], True, id="every value back"),
        pytest.param(
            PULSE_INCLUSIVE, [(0, {"pulse": 130}), (1, {"pulse": 119})], True, id="no hysteresis"
        ),
    ],
)
def test_threshold_hysteresis(
    rule: RuleSpec, points: list[tuple[float, Value]], clears: bool
) -> None:
    assert run(rule, series(rule, *points)).cleared is clears


def test_threshold_explanation_names_values_limits_and_source() -> None:
    last = run(BP_HIGH, series(BP_HIGH, (0, bpv(205, 104))))
    assert last.explanation == (
        "Test threshold: blood pressure 205/104 mmHg at 2026-11-23 08:00 UTC; "
        "systolic 205 mmHg > 200; systolic 205 mmHg > 160; diastolic 104 mmHg > 100 (Test vector)."
    )
    assert last.evidence["breached"] == [
        "systolic 205 mmHg > 200",
        "systolic 205 mmHg > 160",
        "diastolic 104 mmHg > 100",
    ]
    assert last.evidence["source"] == SOURCE


# --- persistence ---------------------------------------------------------------------

SPO2_3_OF_5 = spec(
    "persistence",
    "spo2",
    tiers=[{"severity": "medium", "any": [cond("spo2", "<", "below")]}],
    params={"below": 90, "k": 3, "n": 5},
)
SPO2_SUSTAINED = spec(
    "persistence",
    "spo2",
    tiers=[{"severity": "high", "any": [cond("spo2", "<", "below")]}],
    params={"below": 88, "sustained_hours": 2},
)


def spo2s(*points: tuple[float, float]) -> list[AcceptedReading]:
    return [reading(Metric.SPO2, h, {"spo2": v}) for h, v in points]


def hourly(*values: float) -> list[AcceptedReading]:
    return spo2s(*enumerate(map(float, values)))


@pytest.mark.parametrize(
    ("values", "fires"),
    [
        pytest.param((89, 89, 89), True, id="exactly k, fewer than n readings"),
        pytest.param((89, 95, 89, 95, 89), True, id="exactly k of n"),
        pytest.param((89, 95, 89), False, id="k-1"),
        pytest.param((89, 89, 95, 95, 95, 89), False, id="a breach that left the last n"),
        pytest.param((89, 95, 95, 89, 89, 95, 89), True, id="3 of the last 5 after normal ones"),
        pytest.param((89, 89, 89, 95), False, id="the reading itself must breach"),
        pytest.param((90, 90, 90), False, id="at the limit: not below"),
    ],
)
def test_persistence_k_of_n(values: tuple[float, ...], fires: bool) -> None:
    last = run(SPO2_3_OF_5, hourly(*values))
    assert last.severity == (Severity.MEDIUM if fires else None)


@pytest.mark.parametrize(
    ("points", "fires"),
    [
        pytest.param([(0, 87), (2, 87)], True, id="exactly the sustained hours"),
        pytest.param([(0, 87), (1.99, 87)], False, id="just short"),
        pytest.param([(0, 87), (1, 87), (2.5, 85)], True, id="longer"),
        pytest.param([(0, 87), (1, 88), (2, 87)], False, id="run broken at the limit"),
        pytest.param([(-5, 95), (0, 87), (1, 87), (2, 87)], True, id="run starts after normal"),
        pytest.param([(0, 87), (2, 88)], False, id="the reading itself must breach"),
        pytest.param([(0, 80)], False, id="one reading spans nothing"),
    ],
)
def test_persistence_sustained(points: list[tuple[float, float]], fires: bool) -> None:
    last = run(SPO2_SUSTAINED, spo2s(*points))
    assert last.severity == (Severity.HIGH if fires else None)


def test_persistence_explanations_count_and_span() -> None:
    counted = run(SPO2_3_OF_5, hourly(89, 95, 88, 95, 87))
    assert counted.explanation.startswith(
        "Test persistence: 3 of the last 5 readings met SpO2 87% < 90; latest SpO2 87% at "
        "2026-11-23 12:00 UTC"
    )
    sustained = run(SPO2_SUSTAINED, spo2s((0, 87), (1, 86), (3, 85)))
    assert "every reading for 3 h met SpO2 85% < 88" in sustained.explanation


def test_persistence_clears_when_the_reading_no_longer_breaches() -> None:
    assert run(SPO2_3_OF_5, hourly(89, 89, 89, 90)).cleared
    assert not run(SPO2_3_OF_5, hourly(89, 89, 89, 89)).cleared


# --- change --------------------------------------------------------------------------

WEIGHT_GAIN = spec(
    "change",
    "weight",
    component="weight",
    direction="rise",
    severity="high",
    params={"window_hours": 24, "min_change": 0.9},
)
WEIGHT_LOSS = spec(
    "change",
    "weight",
    component="weight",
    direction="fall",
    severity="medium",
    params={"window_hours": 48, "min_change": 0.9},
)
GLUCOSE_RISE_PCT = spec(
    "change",
    "glucose",
    component="glucose",
    direction="rise",
    severity="low",
    params={"window_hours": 24, "min_change_pct": 10},
)
GLUCOSE_RISE_EITHER = spec(
    "change",
    "glucose",
    component="glucose",
    direction="rise",
    severity="low",
    params={"window_hours": 24, "min_change": 50, "min_change_pct": 50},
)


@pytest.mark.parametrize(
    ("rule", "points", "fires"),
    [
        pytest.param(WEIGHT_GAIN, [(0, 81.0), (22, 82.2)], True, id="gain past the limit"),
        pytest.param(WEIGHT_GAIN, [(0, 81.0), (22, 81.9)], True, id="gain exactly min_change"),
        pytest.param(WEIGHT_GAIN, [(0, 81.1), (22, 82.0)], True, id="exactly, binary float"),
        pytest.param(WEIGHT_GAIN, [(0, 81.0), (22, 81.89)], False, id="0.01 below min_change"),
        pytest.param(WEIGHT_GAIN, [(0, 81.0), (24, 81.9)], True, id="reference at the window edge"),
        pytest.param(WEIGHT_GAIN, [(0, 81.0), (24.01, 82.5)], False, id="reference outside"),
        pytest.param(
            WEIGHT_GAIN, [(0, 80.0), (10, 81.5), (20, 80.95)], True, id="lowest in window"
        ),
        pytest.param(WEIGHT_GAIN, [(0, 82.0), (22, 80.0)], False, id="a fall is not a gain"),
        pytest.param(WEIGHT_GAIN, [(0, 95.0)], False, id="no reference"),
        pytest.param(WEIGHT_LOSS, [(0, 82.0), (40, 81.1)], True, id="loss exactly min_change"),
        pytest.param(WEIGHT_LOSS, [(0, 82.0), (40, 81.11)], False, id="loss 0.01 short"),
        pytest.param(WEIGHT_LOSS, [(0, 82.0), (30, 83.0), (47, 82.1)], True, id="from highest"),
        pytest.param(WEIGHT_LOSS, [(0, 82.0), (49, 80.0)], False, id="loss outside window"),
        pytest.param(GLUCOSE_RISE_PCT, [(0, 100), (5, 110)], True, id="relative exactly"),
        pytest.param(GLUCOSE_RISE_PCT, [(0, 100), (5, 109.99)], False, id="relative short"),
        pytest.param(GLUCOSE_RISE_EITHER, [(0, 200), (5, 250)], True, id="absolute of either"),
        pytest.param(GLUCOSE_RISE_EITHER, [(0, 60), (5, 90)], True, id="relative of either"),
        pytest.param(GLUCOSE_RISE_EITHER, [(0, 120), (5, 169)], False, id="neither"),
    ],
)
def test_change_vectors(rule: RuleSpec, points: list[tuple[float, float]], fires: bool) -> None:
    last = run(rule, series(rule, *points))
    assert last.severity == (rule.severity if fires else None)


def test_change_explanation_shows_the_numbers() -> None:
    gain = run(WEIGHT_GAIN, series(WEIGHT_GAIN, (0, 81.0), (22, 82.2)))
    assert gain.explanation == (
        "Weight up 1.2 kg (2.6 lb) in 22 h: 81.0 kg → 82.2 kg (from 2026-11-23 08:00 UTC to "
        "2026-11-24 06:00 UTC; limit 0.9 kg (2.0 lb) within 24 h; Test vector)."
    )
    assert gain.evidence["reference"] == {"value": 81.0, "measured_at": "2026-11-23 08:00 UTC"}
    loss = run(WEIGHT_LOSS, series(WEIGHT_LOSS, (0, 82.0), (30, 83.0), (47, 82.1)))
    assert loss.explanation.startswith("Weight down 0.9 kg (2.0 lb) in 17 h: 83.0 kg → 82.1 kg")
    pct = run(GLUCOSE_RISE_PCT, series(GLUCOSE_RISE_PCT, (0, 100), (5, 110)))
    assert pct.explanation.startswith("Glucose up 10 mg/dL in 5 h: 100 mg/dL → 110 mg/dL")
    assert "limit 10% of the earlier value within 24 h" in pct.explanation


def test_change_clears_when_the_change_is_under_the_limit() -> None:
    assert run(WEIGHT_GAIN, series(WEIGHT_GAIN, (0, 81.0), (20, 82.0), (40, 82.1))).cleared


# --- trend ---------------------------------------------------------------------------

WEIGHT_TREND = spec(
    "trend",
    "weight",
    component="weight",
    direction="rise",
    severity="low",
    params={"window_days": 7, "min_readings": 5, "min_slope_per_day": 0.2},
)
WEIGHT_TREND_SPANNED = spec(
    "trend",
    "weight",
    component="weight",
    direction="rise",
    severity="low",
    params={"window_days": 7, "min_readings": 5, "min_span_days": 4, "min_slope_per_day": 0.2},
)
SYSTOLIC_FALLING = spec(
    "trend",
    "blood_pressure",
    component="systolic",
    direction="fall",
    severity="medium",
    params={"window_days": 14, "min_readings": 4, "min_slope_per_day": 2},
)


def daily(rule: RuleSpec, *values: Value, start_day: float = 0) -> list[AcceptedReading]:
    return series(rule, *((24 * (start_day + i), v) for i, v in enumerate(values)))


@pytest.mark.parametrize(
    ("rule", "readings", "fires"),
    [
        pytest.param(
            WEIGHT_TREND, daily(WEIGHT_TREND, 80.0, 80.2, 80.4, 80.6, 80.8), True, id="slope exact"
        ),
        pytest.param(
            WEIGHT_TREND, daily(WEIGHT_TREND, 80.0, 80.19, 80.38, 80.57, 80.76), False, id="short"
        ),
        pytest.param(
            WEIGHT_TREND, daily(WEIGHT_TREND, 80.0, 81.0, 82.0, 83.0), False, id="min_readings - 1"
        ),
        pytest.param(
            WEIGHT_TREND,
            [*daily(WEIGHT_TREND, 60.0), *daily(WEIGHT_TREND, 80, 80, 80, 80, start_day=8)],
            False,
            id="old reading outside the window",
        ),
        pytest.param(
            WEIGHT_TREND,
            daily(WEIGHT_TREND, 80.0, 81.0, 79.0, 82.0, 80.5, 81.5),
            True,
            id="noisy rise",
        ),
        pytest.param(
            WEIGHT_TREND, daily(WEIGHT_TREND, 80.8, 80.6, 80.4, 80.2, 80.0), False, id="a fall"
        ),
        pytest.param(
            WEIGHT_TREND,
            series(WEIGHT_TREND, *((0, v) for v in (80.0, 81.0, 82.0, 83.0, 84.0))),
            False,
            id="all at one time: no slope",
        ),
        pytest.param(
            WEIGHT_TREND_SPANNED,
            series(WEIGHT_TREND_SPANNED, *((h, 80.0 + 0.1 * h) for h in range(6))),
            False,
            id="a burst over 5 hours: no slope per day (min_span_days)",
        ),
        pytest.param(
            WEIGHT_TREND_SPANNED,
            daily(WEIGHT_TREND_SPANNED, 80.0, 80.2, 80.4, 80.6, 80.8),
            True,
            id="span exactly min_span_days",
        ),
        pytest.param(
            WEIGHT_TREND_SPANNED,
            series(WEIGHT_TREND_SPANNED, *((20 * i, 80.0 + 0.2 * 20 * i / 24) for i in range(5))),
            False,
            id="span 80 h < 4 days",
        ),
        pytest.param(
            SYSTOLIC_FALLING,
            daily(SYSTOLIC_FALLING, *(bpv(150 - 2 * i, 80) for i in range(4))),
            True,
            id="falling exactly",
        ),
        pytest.param(
            SYSTOLIC_FALLING,
            daily(SYSTOLIC_FALLING, *(bpv(150 - 1.9 * i, 80) for i in range(6))),
            False,
            id="falling too slowly",
        ),
    ],
)
def test_trend_vectors(rule: RuleSpec, readings: list[AcceptedReading], fires: bool) -> None:
    assert run(rule, readings).severity == (rule.severity if fires else None)


def test_trend_explanation_shows_slope_span_and_count() -> None:
    last = run(WEIGHT_TREND, daily(WEIGHT_TREND, 80.0, 80.2, 80.4, 80.6, 80.8))
    assert last.explanation.startswith(
        "Weight rising 0.2 kg (0.4 lb) per day over 4 days (5 readings, least-squares fit; "
        "latest 80.8 kg (1"
    )
    assert "limit 0.2 kg (0.4 lb) per day over 7 days" in last.explanation
    assert last.evidence["slope_per_day"] == pytest.approx(0.2)


# --- baseline ------------------------------------------------------------------------

BASELINE = {
    "component": "spo2",
    "direction": "fall",
    "severity": "high",
}
SPO2_BASELINE = spec(
    "baseline",
    "spo2",
    **BASELINE,
    params={"window_days": 14, "min_readings": 5, "min_deviation": 4},
)
SPO2_BASELINE_MAD = spec(
    "baseline",
    "spo2",
    **BASELINE,
    params={"window_days": 14, "min_readings": 5, "min_deviation": 4, "mad_multiplier": 3},
)
SPO2_BASELINE_SKIP = spec(
    "baseline",
    "spo2",
    **BASELINE,
    params={"window_days": 14, "min_readings": 5, "min_deviation": 4, "skip_recent_hours": 12},
)
PULSE_ABOVE_BASELINE = spec(
    "baseline",
    "heart_rate",
    component="pulse",
    direction="rise",
    severity="medium",
    params={"window_days": 7, "min_readings": 3, "min_deviation": 20},
)


def baseline_then(rule: RuleSpec, history: Sequence[float], now: float) -> list[AcceptedReading]:
    """One reading a day for the history, then ``now`` a day after the last one."""
    return daily(rule, *history, now, start_day=-len(history))


@pytest.mark.parametrize(
    ("rule", "readings", "fires"),
    [
        pytest.param(
            SPO2_BASELINE, baseline_then(SPO2_BASELINE, [96] * 5, 92), True, id="min_deviation"
        ),
        pytest.param(
            SPO2_BASELINE, baseline_then(SPO2_BASELINE, [96] * 5, 92.01), False, id="0.01 short"
        ),
        pytest.param(
            SPO2_BASELINE, baseline_then(SPO2_BASELINE, [96] * 4, 80), False, id="min_readings - 1"
        ),
        pytest.param(
            SPO2_BASELINE,
            baseline_then(SPO2_BASELINE, [96, 97, 60, 95, 96], 92),
            True,
            id="median ignores an outlier",
        ),
        pytest.param(
            SPO2_BASELINE,
            [*daily(SPO2_BASELINE, 99, 99, 99, 99, 99, start_day=-20), *daily(SPO2_BASELINE, 95)],
            False,
            id="baseline older than the window",
        ),
        pytest.param(
            SPO2_BASELINE, baseline_then(SPO2_BASELINE, [96] * 5, 100), False, id="wrong direction"
        ),
        pytest.param(
            SPO2_BASELINE,
            baseline_then(SPO2_BASELINE, [94, 98, 94, 98, 96], 92),
            True,
            id="spread baseline, no MAD multiplier",
        ),
        pytest.param(
            SPO2_BASELINE_MAD,
            baseline_then(SPO2_BASELINE_MAD, [94, 98, 94, 98, 96], 92),
            False,
            id="MAD multiplier raises the bar",
        ),
        pytest.param(
            SPO2_BASELINE_MAD,
            baseline_then(SPO2_BASELINE_MAD, [94, 98, 94, 98, 96], 87.2),
            False,
            id="just short of the MAD bar (3 x 1.4826 x 2 = 8.9)",
        ),
        pytest.param(
            SPO2_BASELINE_MAD,
            baseline_then(SPO2_BASELINE_MAD, [94, 98, 94, 98, 96], 87.1),
            True,
            id="past the MAD bar",
        ),
        pytest.param(
            SPO2_BASELINE_MAD,
            baseline_then(SPO2_BASELINE_MAD, [96] * 5, 92),
            True,
            id="MAD zero: min_deviation rules",
        ),
        pytest.param(
            PULSE_ABOVE_BASELINE,
            baseline_then(PULSE_ABOVE_BASELINE, [70, 72, 68], 90),
            True,
            id="a rise",
        ),
    ],
)
def test_baseline_vectors(rule: RuleSpec, readings: list[AcceptedReading], fires: bool) -> None:
    assert run(rule, readings).severity == (rule.severity if fires else None)


def test_baseline_skips_recent_hours_so_a_slow_fall_is_not_its_own_reference() -> None:
    # Five days at 96, then five readings at 90 in the last 10 hours: their median is 93
    # with them, 96 without them.
    history = [(24.0 * d, 96.0) for d in range(-5, 0)] + [(-2.0 * h, 90.0) for h in range(5, 0, -1)]
    assert run(SPO2_BASELINE, spo2s(*history, (0, 91))).severity is None
    assert run(SPO2_BASELINE_SKIP, spo2s(*history, (0, 91))).severity is Severity.HIGH


def test_baseline_explanation_shows_median_mad_and_limit() -> None:
    last = run(SPO2_BASELINE_MAD, baseline_then(SPO2_BASELINE_MAD, [94, 98, 94, 98, 96], 87))
    assert last.explanation.startswith(
        "SpO2 87% is 9 percentage points below this patient's 14-day median of 96% "
        "(MAD 2 percentage points, 5 readings); limit 8.9 percentage points (Test vector)."
    )
    assert last.evidence["needed"] == pytest.approx(3 * 1.4826 * 2)


# --- composite -----------------------------------------------------------------------

SCORE = spec(
    "composite",
    "spo2",
    params={"freshness_hours": 12, "min_parameters": 2, "urgent": 4, "red": 3},
    score_tiers=[
        {"severity": "high", "any": [cond("total", ">=", "urgent")]},
        {"severity": "medium", "any": [cond("single", ">=", "red")]},
    ],
    scored=[
        {
            "sources": [{"metric": "spo2", "component": "spo2"}],
            "bands": [
                {"high": 90, "points": 3},
                {"low": 90, "high": 95, "points": 1},
                {"low": 95, "points": 0},
            ],
        },
        {
            "sources": [{"metric": "respiratory_rate", "component": "respiratory_rate"}],
            "bands": [{"high": 25, "points": 0}, {"low": 25, "points": 3}],
        },
        {
            "sources": [
                {"metric": "heart_rate", "component": "pulse"},
                {"metric": "spo2", "component": "pulse"},
            ],
            "bands": [
                {"high": 111, "points": 0},
                {"low": 111, "high": 131, "points": 1},
                {"low": 131, "points": 3},
            ],
        },
    ],
)


def rr(hours: float, value: float) -> AcceptedReading:
    return reading(Metric.RESPIRATORY_RATE, hours, {"respiratory_rate": value})


def hr(hours: float, value: float) -> AcceptedReading:
    return reading(Metric.HEART_RATE, hours, {"pulse": value})


def ox(hours: float, spo2: float, pulse: float | None = None) -> AcceptedReading:
    values = {"spo2": spo2} if pulse is None else {"spo2": spo2, "pulse": pulse}
    return reading(Metric.SPO2, hours, values)


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        pytest.param([ox(0, 85)], Severity.MEDIUM, id="a single red needs no other parameter"),
        pytest.param([ox(0, 92)], None, id="one parameter below red: no total either"),
        pytest.param([rr(0, 25)], Severity.MEDIUM, id="single red from another metric alone"),
        pytest.param([ox(0, 96, pulse=131)], Severity.MEDIUM, id="one reading, two parameters"),
        pytest.param([rr(-1, 16), ox(0, 85)], Severity.MEDIUM, id="single parameter red"),
        pytest.param([rr(-1, 16), ox(0, 90)], None, id="band edge: 90 scores 1"),
        pytest.param([rr(-1, 16), ox(0, 89.9)], Severity.MEDIUM, id="just under the band edge"),
        pytest.param([rr(-1, 26), ox(0, 92)], Severity.HIGH, id="total at urgent"),
        pytest.param([rr(-1, 24.9), ox(0, 92)], None, id="total under urgent"),
        pytest.param([rr(-12, 26), ox(0, 92)], Severity.HIGH, id="other parameter just fresh"),
        pytest.param([rr(-12.01, 26), ox(0, 92)], None, id="other parameter stale"),
        pytest.param([rr(1, 26), ox(0, 92)], None, id="a newer reading does not count"),
        pytest.param([hr(-1, 135), ox(0, 96, pulse=80)], None, id="freshest source wins"),
        pytest.param([hr(-1, 135), ox(0, 96)], Severity.MEDIUM, id="the other source"),
        pytest.param([hr(-1, 80), ox(-2, 92, pulse=130), rr(0, 26)], Severity.HIGH, id="3 params"),
        pytest.param([ox(-1, 85), rr(0, 26)], Severity.HIGH, id="triggered by another metric"),
    ],
)
def test_composite_vectors(readings: list[AcceptedReading], expected: Severity | None) -> None:
    assert run(SCORE, readings).severity == expected


def test_composite_explanation_lists_each_parameter_and_its_points() -> None:
    last = run(SCORE, [rr(-1, 26), ox(0, 92, pulse=115)])
    assert last.explanation == (
        "Test composite: score 5 from 3 of 3 parameters at 2026-11-23 08:00 UTC: SpO2 92% (1), "
        "respiratory rate 26 /min (3), pulse 115 /min (1); total 5 (limit 4) (Test vector)."
    )
    assert last.evidence["total"] == 5
    assert last.evidence["parameters"] == {
        "spo2": {"value": 92.0, "points": 1},
        "respiratory_rate": {"value": 26.0, "points": 3},
        "pulse": {"value": 115.0, "points": 1},
    }


def test_a_single_red_explanation_names_the_parameter_that_scored_it_alone() -> None:
    last = run(SCORE, [ox(0, 85)])
    assert last.explanation == (
        "Test composite: score 3 from 1 of 3 parameters at 2026-11-23 08:00 UTC: SpO2 85% (3); "
        "SpO2 85% scores 3 on its own (single-parameter limit 3) (Test vector)."
    )
    assert last.evidence["single"] == 3


# A difference of two percentages is in percentage points, never "%" (SpO2 90% is 4 points
# below 94%, which is 4.3% of 94).
SPO2_FALL = spec(
    "change",
    "spo2",
    component="spo2",
    direction="fall",
    severity="high",
    params={"window_hours": 24, "min_change": 4},
)
SPO2_FALLING = spec(
    "trend",
    "spo2",
    component="spo2",
    direction="fall",
    severity="low",
    params={"window_days": 7, "min_readings": 3, "min_span_days": 2, "min_slope_per_day": 1},
)


def test_spo2_differences_are_in_percentage_points() -> None:
    fall = run(SPO2_FALL, spo2s((0, 94), (5, 90)))
    assert fall.explanation.startswith("SpO2 down 4 percentage points in 5 h: 94% → 90%")
    assert "limit 4 percentage points within 24 h" in fall.explanation
    trend = run(SPO2_FALLING, spo2s((0, 96), (24, 94), (48, 92)))
    assert trend.explanation.startswith("SpO2 falling 2 percentage points per day over 2 days")
    assert "limit 1 percentage point per day" in trend.explanation
    for text in (fall.explanation, trend.explanation):
        assert "% below" not in text
        assert "% per day" not in text


# --- missing -------------------------------------------------------------------------

WEIGHT_MISSING = spec("missing", "weight", severity="medium", params={"after_hours": 36})
NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def silence(last_hours_ago: float | None, seen_hours_ago: float | None) -> Silence:
    last = None if last_hours_ago is None else NOW - timedelta(hours=last_hours_ago)
    seen = None if seen_hours_ago is None else NOW - timedelta(hours=seen_hours_ago)
    return Silence("pat-1", last, NOW - timedelta(days=30), seen)


@pytest.mark.parametrize(
    ("last", "seen", "cause"),
    [
        pytest.param(35.99, 35.99, None, id="just short of after_hours"),
        pytest.param(36, 36, "device_silent", id="exactly after_hours, device silent too"),
        pytest.param(50, None, "device_silent", id="never heard from since"),
        pytest.param(50, 1, "patient_not_measuring", id="device checks in"),
        pytest.param(50, 35.99, "patient_not_measuring", id="heard just within the limit"),
        pytest.param(None, 2, "patient_not_measuring", id="never measured"),
    ],
)
def test_missing_vectors(last: float | None, seen: float | None, cause: str | None) -> None:
    facts = evaluate_missing(WEIGHT_MISSING, silence(last, seen), NOW)
    if cause is None:
        assert facts is None
        return
    assert facts is not None
    _, evidence = KINDS["missing"].explain(WEIGHT_MISSING, Facts(NOW, {}, facts, 2))
    assert evidence["cause"] == cause


def test_missing_explanations_tell_a_silent_device_from_a_patient_not_measuring() -> None:
    def explain(s: Silence) -> str:
        facts = evaluate_missing(WEIGHT_MISSING, s, NOW)
        assert facts is not None
        return KINDS["missing"].explain(WEIGHT_MISSING, Facts(NOW, {}, facts, 2))[0]

    silent = explain(silence(50, 49))
    assert silent.startswith(
        "No weight reading for 2.1 days (last one 2026-11-23 06:00 UTC); the device has not "
        "been heard from for 2 days: it may be switched off"
    )
    assert "limit 36 h" in silent
    quiet = explain(silence(50, 0.5))
    assert "the device checked in 30 min ago, so it works: the patient has stopped measuring" in (
        quiet
    )
    never = explain(silence(None, 3))
    assert never.startswith("No weight reading for 30 days (none yet)")


def test_a_reading_clears_an_armed_missing_rule() -> None:
    engine = engine_for(WEIGHT_MISSING)
    engine.arm("pat-1", WEIGHT_MISSING.id)
    result = engine.step(series(WEIGHT_MISSING, (0, {"weight": 80.0})), CTX)
    assert result.candidates == []
    assert [c.rule_id for c in result.clears] == [WEIGHT_MISSING.id]


# --- specs a kind refuses ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "sometimes", "metric": "spo2"}, "unknown rule kind"),
        ({"kind": "threshold", "metric": "spo2"}, "needs at least one tier"),
        (
            {
                "kind": "threshold",
                "metric": "spo2",
                "tiers": [{"severity": "high", "any": [cond("spo2", "<", "below")]}],
                "params": {"below": 88, "hysteresis": -1},
            },
            "hysteresis cannot be negative",
        ),
        (
            {
                "kind": "threshold",
                "metric": "spo2",
                "tiers": [{"severity": "high", "any": [cond("spo2", "<", "below")]}],
            },
            "undefined param 'below'",
        ),
        (
            {
                "kind": "threshold",
                "metric": "spo2",
                "tiers": [{"severity": "high", "any": [cond("systolic", "<", "below")]}],
                "params": {"below": 88},
            },
            "spo2 has no component 'systolic'",
        ),
        (
            {
                "kind": "threshold",
                "metric": "spo2",
                "tiers": [{"severity": "urgent", "any": [cond("spo2", "<", "below")]}],
                "params": {"below": 88},
            },
            "unknown severity",
        ),
        (
            {
                "kind": "persistence",
                "metric": "spo2",
                "tiers": [{"severity": "high", "any": [cond("spo2", "<", "below")]}],
                "params": {"below": 88, "k": 3, "n": 5, "sustained_hours": 2},
            },
            "either k and n, or sustained_hours",
        ),
        (
            {
                "kind": "persistence",
                "metric": "spo2",
                "tiers": [{"severity": "high", "any": [cond("spo2", "<", "below")]}],
                "params": {"below": 88, "k": 6, "n": 5},
            },
            "1 <= k <= n <= 64",
        ),
        (
            {
                "kind": "change",
                "metric": "weight",
                "component": "weight",
                "direction": "rise",
                "severity": "high",
                "params": {"window_hours": 24},
            },
            "min_change and/or min_change_pct",
        ),
        (
            {"kind": "change", "metric": "weight", "params": {"window_hours": 24, "min_change": 1}},
            "needs component, direction and severity",
        ),
        (
            {
                "kind": "trend",
                "metric": "weight",
                "component": "weight",
                "direction": "rise",
                "severity": "low",
                "params": {"window_days": 7, "min_readings": 2, "min_slope_per_day": 0.2},
            },
            "min_readings must be at least 3",
        ),
        (
            {
                "kind": "baseline",
                "metric": "spo2",
                **BASELINE,
                "params": {"window_days": 0, "min_readings": 5, "min_deviation": 4},
            },
            "window_days must be positive",
        ),
        (
            {
                "kind": "composite",
                "metric": "spo2",
                "params": {"freshness_hours": 12, "min_parameters": 1, "x": 3},
                "scored": [
                    {"sources": [{"metric": "spo2", "component": "spo2"}], "bands": [{"points": 0}]}
                ],
                "score_tiers": [{"severity": "high", "any": [cond("spo2", ">=", "x")]}],
            },
            "score tiers test 'total' or 'single'",
        ),
        (
            {"kind": "missing", "metric": "weight", "params": {"after_hours": 36}},
            "needs a severity",
        ),
        ({"kind": "missing", "metric": "weight", "severity": "low"}, "needs params"),
    ],
)
def test_invalid_specs_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**fields)
