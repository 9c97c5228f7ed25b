"""The built-in care programs: every rule at its clinical thresholds, overrides, and sources.

A vector names a patient's programs, a series of readings ``(hours after T0, metric,
values)`` delivered one per batch in time order, and what one rule says of the last
reading. ``COVERED`` collects the rule ids the vectors exercise; a test checks that no
built-in rule is left without one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from rpm.domain import METRICS, AcceptedReading, Metric, Reading, Severity
from rules.engine import Engine, PatientContext
from rules.kinds import KINDS, Facts
from rules.kinds.missing import Silence, evaluate_missing
from rules.programs import GENERAL, RuleBook, builtin_programs, parse_document
from rules.spec import parse_program
from tests.helpers import T0

pytestmark = pytest.mark.pure

BOOK = RuleBook.builtin()
BP = Metric.BLOOD_PRESSURE
SPO2 = Metric.SPO2
WEIGHT = Metric.WEIGHT
GLUCOSE = Metric.GLUCOSE
RR = Metric.RESPIRATORY_RATE
TEMP = Metric.BODY_TEMPERATURE

Point = tuple[float, Metric, Mapping[str, float]]


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def accepted(hours: float, metric: Metric, values: Mapping[str, float]) -> AcceptedReading:
    t = at(hours)
    return AcceptedReading(Reading("dev-1", metric, dict(values), t, t), "pat-1")


def severity_at_last(
    programs: Sequence[str],
    points: Sequence[Point],
    rule_id: str,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
) -> Severity | None:
    """What ``rule_id`` says of the last reading, delivered one reading per batch."""
    engine = Engine(BOOK)
    contexts = {"pat-1": PatientContext("pat-1", tuple(programs), overrides or {})}
    candidates = []
    for hours, metric, values in points:
        candidates = engine.step([accepted(hours, metric, values)], contexts).candidates
    last = at(points[-1][0])
    found = [c.severity for c in candidates if c.rule_id == rule_id and c.measured_at == last]
    assert len(found) <= 1
    return found[0] if found else None


def bp(sys_: float, dia: float, hours: float = 0) -> Point:
    return (hours, BP, {"systolic": sys_, "diastolic": dia})


def one(metric: Metric, value: float, hours: float = 0) -> Point:
    return (hours, metric, {METRICS[metric].components[0].name: value})


def daily(metric: Metric, *values: float, start_day: float = 0) -> list[Point]:
    return [one(metric, v, 24 * (start_day + i)) for i, v in enumerate(values)]


def bps_daily(*systolic: float) -> list[Point]:
    return [bp(s, 80, 24 * i) for i, s in enumerate(systolic)]


C, H, M, L = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW
COVERED: set[str] = set()


def vectors(
    rule_id: str, programs: Sequence[str], *cases: tuple[str, Sequence[Point], Severity | None]
) -> list[object]:
    COVERED.add(rule_id)
    return [
        pytest.param(tuple(programs), points, rule_id, expected, id=f"{rule_id}: {name}")
        for name, points, expected in cases
    ]


HTN = ("hypertension",)
HF = ("heart_failure",)
COPD = ("copd",)
DM = ("diabetes",)


# NEWS2 helpers: other parameters an hour before the SpO2 reading that triggers the score.
def news(spo2: float, *others: Point) -> list[Point]:
    return [*others, one(SPO2, spo2)]


RR16, RR22 = one(RR, 16, -1), one(RR, 22, -1)  # 0 and 2 points
T38_5, T39_5 = one(TEMP, 38.5, -1), one(TEMP, 39.5, -1)  # 1 and 2 points

VECTORS = [
    # ACC/AHA 2017: hypertensive crisis is SBP > 180 and/or DBP > 120 mm Hg.
    *vectors(
        "bp.hypertensive_crisis",
        (),
        ("180/110", [bp(180, 110)], None),
        ("181/110", [bp(181, 110)], C),
        ("170/120", [bp(170, 120)], None),
        ("170/121", [bp(170, 121)], C),
        ("220/130", [bp(220, 130)], C),
        ("120/80", [bp(120, 80)], None),
    ),
    # BTS 2017: 88% is the lower end of every target range.
    *vectors(
        "spo2.below_88",
        (),
        ("88", [one(SPO2, 88)], None),
        ("87", [one(SPO2, 87)], C),
    ),
    # COPD: below 88% is the target range's floor, not an emergency; < 84% is (NEWS2 scale 2).
    *vectors("spo2.below_88", COPD, ("87 is not critical for COPD", [one(SPO2, 87)], None)),
    *vectors(
        "copd.spo2_critical",
        COPD,
        ("84", [one(SPO2, 84)], None),
        ("83", [one(SPO2, 83)], C),
    ),
    # RCP NEWS2 2017, SpO2 scale 1: aggregate 5-6 urgent, >= 7 emergency, and a single
    # parameter scoring 3 (a red score) urgent on its own, whatever the other parameters.
    *vectors(
        "news2.partial",
        (),
        ("SpO2 91 scores 3 alone", news(91, RR16), H),
        ("SpO2 92 scores 2", news(92, RR16), None),
        ("4 points", news(93, RR22), None),
        ("5 points", news(93, RR22, T38_5), H),
        ("6 points", news(92, RR22, T39_5), H),
        ("7 points", news(91, RR22, T39_5), C),
        ("SpO2 80 alone: a single red score", news(80), H),
        ("SpO2 92 alone: 2 points, one parameter", news(92), None),
        ("a stale parameter does not count: SpO2 93 alone", news(93, one(RR, 22, -12.5)), None),
    ),
    # RCP NEWS2 2017 chart 1: every parameter the server measures, alone, at its red
    # boundary (3 points: alert) and one step inside it (no alert). Consciousness (ACVPU)
    # and supplemental oxygen are not reported by home devices.
    *vectors(
        "news2.partial",
        (),
        ("respiration 8: <= 8 scores 3", [one(RR, 8)], H),
        ("respiration 9: 1 point", [one(RR, 9)], None),
        ("respiration 24: 2 points", [one(RR, 24)], None),
        ("respiration 25: >= 25 scores 3", [one(RR, 25)], H),
        ("SpO2 91 on scale 1: <= 91 scores 3", [one(SPO2, 91)], H),
        ("SpO2 92 on scale 1: 2 points", [one(SPO2, 92)], None),
        ("systolic 90: <= 90 scores 3", [bp(90, 60)], H),
        ("systolic 91: 2 points", [bp(91, 60)], None),
        ("systolic 219: 0 points", [bp(219, 100)], None),
        ("systolic 220: >= 220 scores 3", [bp(220, 100)], H),
        ("heart rate 40: <= 40 scores 3", [one(Metric.HEART_RATE, 40)], H),
        ("heart rate 41: 1 point", [one(Metric.HEART_RATE, 41)], None),
        ("heart rate 130: 2 points", [one(Metric.HEART_RATE, 130)], None),
        ("heart rate 131: >= 131 scores 3", [one(Metric.HEART_RATE, 131)], H),
        ("a cuff's pulse 40", [(0, BP, {"systolic": 120, "diastolic": 80, "pulse": 40})], H),
        ("a cuff's pulse 41", [(0, BP, {"systolic": 120, "diastolic": 80, "pulse": 41})], None),
        ("an oximeter's pulse 131", [(0, SPO2, {"spo2": 97, "pulse": 131})], H),
        ("an oximeter's pulse 130", [(0, SPO2, {"spo2": 97, "pulse": 130})], None),
        ("temperature 35.0: <= 35.0 scores 3", [one(TEMP, 35.0)], H),
        ("temperature 35.1: 1 point", [one(TEMP, 35.1)], None),
        ("temperature 39.1: 2 points, the chart's highest", [one(TEMP, 39.1)], None),
    ),
    # The same single red scores on SpO2 scale 2 (COPD): every parameter but SpO2 scores
    # as on scale 1; SpO2 scores 3 only at 83% or less.
    *vectors(
        "news2.partial",
        COPD,
        ("COPD: SpO2 83 on scale 2: <= 83 scores 3", [one(SPO2, 83)], H),
        ("COPD: SpO2 84 on scale 2: 2 points", [one(SPO2, 84)], None),
        ("COPD: SpO2 87 on scale 2: 1 point", [one(SPO2, 87)], None),
        ("COPD: SpO2 88 on scale 2: 0 points", [one(SPO2, 88)], None),
        ("COPD: SpO2 92 on scale 2: 0 points", [one(SPO2, 92)], None),
        ("COPD: SpO2 93 on air, scale 2: 0 points", [one(SPO2, 93)], None),
        ("COPD: systolic 90", [bp(90, 60)], H),
        ("COPD: temperature 35.0", [one(TEMP, 35.0)], H),
    ),
    # ACC/AHA 2017 stage 2 (>= 140 or >= 90) in 3 of the last 5 readings.
    *vectors(
        "htn.stage2_persistent",
        HTN,
        ("3 of 3", [bp(140, 80, 0), bp(120, 90, 1), bp(141, 70, 2)], M),
        (
            "3 of 5",
            [bp(140, 85, 0), bp(120, 70, 1), bp(130, 90, 2), bp(125, 75, 3), bp(150, 95, 4)],
            M,
        ),
        ("just under", [bp(139, 89, 0), bp(139, 89, 1), bp(139, 89, 2)], None),
        (
            "2 of 5",
            [bp(150, 95, 0), bp(120, 70, 1), bp(120, 70, 2), bp(120, 70, 3), bp(150, 95, 4)],
            None,
        ),
    ),
    *vectors(
        "htn.stage2_persistent",
        (),
        ("not for general patients", [bp(150, 95, 0), bp(150, 95, 1), bp(150, 95, 2)], None),
    ),
    *vectors(
        "htn.low_bp",
        HTN,
        ("90", [bp(90, 60)], None),
        ("89", [bp(89, 60)], H),
    ),
    # Program default: 1 mm Hg per day over 14 days, at least 10 readings spanning 13 days:
    # the ESH judges home pressure on the mean of a 7-day series (Stergiou GS et al. 2021 ESH
    # practice guidelines, J Hypertens 2021;39:1293-1302), so a rise is a change between two
    # such weeks; a one-week slope is within day-to-day variation (docs/clinical.md).
    *vectors(
        "htn.systolic_trend",
        HTN,
        ("14 readings, 1 per day", bps_daily(*range(120, 134)), L),
        ("10 readings over 9 days", bps_daily(*range(120, 130)), None),
        ("10 readings over 13 days", [bp(120 + i, 80, 24 * i) for i in (0, *range(5, 14))], L),
        ("9 readings over 13 days", [bp(120 + i, 80, 24 * i) for i in (0, *range(6, 14))], None),
        ("0.9 per day", bps_daily(*(120 + 0.9 * i for i in range(14))), None),
    ),
    # AHA self-check plan: 2 lb (0.9 kg) in a day, 5 lb (2.3 kg) in a week.
    *vectors(
        "hf.weight_gain_24h",
        HF,
        ("+0.9 kg in 24 h", [one(WEIGHT, 81.0, 0), one(WEIGHT, 81.9, 24)], H),
        ("+0.89 kg in 24 h", [one(WEIGHT, 81.0, 0), one(WEIGHT, 81.89, 24)], None),
        (
            "+0.9 kg in 25 h (yesterday's weighing)",
            [one(WEIGHT, 81.0, 0), one(WEIGHT, 81.9, 25)],
            H,
        ),
        ("+0.9 kg in 27 h", [one(WEIGHT, 81.0, 0), one(WEIGHT, 81.9, 27)], None),
    ),
    *vectors(
        "hf.weight_gain_7d",
        HF,
        ("+2.3 kg in 7 days", daily(WEIGHT, 80.0, 80.4, 80.8, 81.2, 81.5, 81.8, 82.0, 82.3), H),
        ("+5.0 lb in 7 days", daily(WEIGHT, 80.0, *([81.0] * 6), 80.0 + 5.0 * 0.45359237), H),
        ("+2.25 kg in 7 days", daily(WEIGHT, 80.0, *([81.0] * 6), 82.25), None),
        ("+2.3 kg in 8 days", daily(WEIGHT, 80.0, *([81.0] * 7), 82.3), None),
    ),
    *vectors(
        "hf.over_diuresis",
        HF,
        (
            "-0.9 kg in 48 h",
            [one(WEIGHT, 82.0, 0), one(WEIGHT, 81.5, 24), one(WEIGHT, 81.1, 48)],
            M,
        ),
        ("-0.89 kg in 48 h", [one(WEIGHT, 82.0, 0), one(WEIGHT, 81.11, 48)], None),
        ("-0.9 kg in 49 h", [one(WEIGHT, 82.0, 0), one(WEIGHT, 81.1, 49)], None),
    ),
    # Program default: 0.2 kg per day over 7 days, at least 5 readings.
    *vectors(
        "hf.weight_trend",
        HF,
        ("0.2 kg per day, 5 readings", daily(WEIGHT, 80.0, 80.2, 80.4, 80.6, 80.8), L),
        ("4 readings", daily(WEIGHT, 80.0, 80.2, 80.4, 80.6), None),
        ("0.15 kg per day", daily(WEIGHT, 80.0, 80.15, 80.3, 80.45, 80.6), None),
    ),
    # Program default: 4 points below the 14-day median (7 readings), beyond 3 robust SDs.
    *vectors(
        "copd.spo2_below_baseline",
        COPD,
        ("4 below the median", [*daily(SPO2, *[94] * 7, start_day=-7), one(SPO2, 90)], H),
        ("3 below the median", [*daily(SPO2, *[94] * 7, start_day=-7), one(SPO2, 91)], None),
        ("6 baseline readings", [*daily(SPO2, *[94] * 6, start_day=-6), one(SPO2, 80)], None),
        (
            "a noisy baseline raises the bar",
            [*daily(SPO2, 92, 96, 92, 96, 92, 96, 94, start_day=-7), one(SPO2, 89)],
            None,
        ),
        (
            "past the raised bar",
            [*daily(SPO2, 92, 96, 92, 96, 92, 96, 94, start_day=-7), one(SPO2, 85)],
            H,
        ),
    ),
    *vectors(
        "copd.spo2_below_baseline",
        (),
        ("not for general patients", [*daily(SPO2, *[94] * 7, start_day=-7), one(SPO2, 90)], None),
    ),
    # BTS 2017 (O'Driscoll BR et al. Thorax 2017;72:i1-i90): target 88-92% for patients at
    # risk of hypercapnic respiratory failure; one reading below it alerts at once.
    *vectors(
        "copd.spo2_below_target",
        COPD,
        ("87: below the target", [one(SPO2, 87)], H),
        ("88: the target's floor", [one(SPO2, 88)], None),
        ("92: the target's top", [one(SPO2, 92)], None),
        ("93: above the target", [one(SPO2, 93)], None),
        ("84: the issue's single COPD reading", [one(SPO2, 84)], H),
        ("83 is copd.spo2_critical's, and below the target too", [one(SPO2, 83)], H),
        ("a second low reading is a recurrence", [one(SPO2, 87, 0), one(SPO2, 86, 1)], H),
    ),
    *vectors(
        "copd.spo2_below_target",
        (),
        ("not for general patients", [one(SPO2, 87)], None),
    ),
    # ADA 2024 table 6.4: level 1 < 70, level 2 < 54 mg/dL.
    *vectors(
        "dm.glucose_low",
        DM,
        ("70", [one(GLUCOSE, 70)], None),
        ("69", [one(GLUCOSE, 69)], H),
        ("54", [one(GLUCOSE, 54)], H),
        ("53", [one(GLUCOSE, 53)], C),
    ),
    *vectors(
        "dm.glucose_high",
        DM,
        ("250", [one(GLUCOSE, 250)], None),
        ("251", [one(GLUCOSE, 251)], M),
        ("400", [one(GLUCOSE, 400)], M),
        ("401", [one(GLUCOSE, 401)], H),
    ),
]


@pytest.mark.parametrize(("programs", "points", "rule_id", "expected"), VECTORS)
def test_builtin_rule_vectors(
    programs: tuple[str, ...], points: list[Point], rule_id: str, expected: Severity | None
) -> None:
    assert severity_at_last(programs, points, rule_id) == expected


def test_a_rule_ignores_other_metrics() -> None:
    engine = Engine(BOOK)
    contexts = {"pat-1": PatientContext("pat-1", ("hypertension", "diabetes"))}
    assert engine.step([accepted(0, WEIGHT, {"weight": 250})], contexts).candidates == []


# NEWS2 SpO2 scale 2 (COPD, target 88-92%) replaces scale 1 under the same rule id.
@pytest.mark.parametrize(
    ("spo2", "others", "scale_1", "scale_2"),
    [
        pytest.param(91, [RR16], H, None, id="91: 3 points on scale 1, 0 on scale 2"),
        pytest.param(88, [RR16], H, None, id="88: 0 on scale 2"),
        pytest.param(87, [RR16], H, None, id="87: 1 on scale 2"),
        pytest.param(83, [RR16], H, H, id="83: 3 on both"),
        pytest.param(85, [RR22, T38_5], H, H, id="85 + 3 points: 2 on scale 2"),
        pytest.param(86, [RR22, T38_5], H, None, id="86 + 3 points: 1 on scale 2"),
        pytest.param(83, [RR22, T39_5], C, C, id="83 + 4 points"),
    ],
)
def test_copd_news2_uses_spo2_scale_2(
    spo2: float, others: list[Point], scale_1: Severity | None, scale_2: Severity | None
) -> None:
    assert severity_at_last((), news(spo2, *others), "news2.partial") == scale_1
    assert severity_at_last(COPD, news(spo2, *others), "news2.partial") == scale_2


def test_the_same_spo2_scores_3_on_scale_1_and_0_on_scale_2() -> None:
    points = news(91, one(RR, 25, -1), T39_5)  # respiration 3 points, temperature 2
    scale_1 = candidate_text((), points, "news2.partial")
    scale_2 = candidate_text(COPD, points, "news2.partial")
    assert "score 8 from 3 of 5 parameters" in scale_1
    assert "SpO2 91% (3)" in scale_1
    assert "SpO2 scale 1" in scale_1
    assert "score 5 from 3 of 5 parameters" in scale_2
    assert "SpO2 91% (0)" in scale_2
    assert "SpO2 scale 2" in scale_2


# The two cases, one reading each and no pulse: what fires, at which severity, and
# the source the explanation cites.
def test_a_single_spo2_of_89_outside_copd_alerts_as_a_news2_red_score() -> None:
    engine = Engine(BOOK)
    [cand] = engine.step([accepted(0, SPO2, {"spo2": 89})], {}).candidates
    assert (cand.rule_id, cand.severity) == ("news2.partial", H)  # RCP NEWS2 2017, scale 1
    assert cand.explanation == (
        "Early warning score (NEWS2 SpO2 scale 1, partial): score 3 from 1 of 5 parameters at "
        "2026-11-23 08:00 UTC: SpO2 89% (3); SpO2 89% scores 3 on its own "
        "(single-parameter limit 3) (Royal College of Physicians)."
    )
    assert "single parameter scoring" in str(cand.evidence["source"])


def test_a_single_spo2_of_84_in_copd_alerts_below_the_bts_target() -> None:
    engine = Engine(BOOK)
    contexts = {"pat-1": PatientContext("pat-1", COPD)}
    [cand] = engine.step([accepted(0, SPO2, {"spo2": 84})], contexts).candidates
    assert (cand.rule_id, cand.severity) == ("copd.spo2_below_target", H)  # BTS 2017
    assert cand.explanation == (
        "Oxygen saturation below the 88-92% target: SpO2 84% at 2026-11-23 08:00 UTC; "
        "SpO2 84% < 88 (O'Driscoll BR et al)."
    )
    assert "Thorax 2017;72:i1-i90" in str(cand.evidence["source"])


def test_copd_replaces_the_general_news2_rule() -> None:
    general = BOOK.rule("news2.partial")
    copd = BOOK.rule("news2.partial", COPD)
    assert general is not None
    assert copd is not None
    assert general.program == GENERAL
    assert copd.program == "copd"
    ids = [r.id for r in BOOK.rules_for(COPD)]
    assert ids.count("news2.partial") == 1
    assert ids[:2] == ["bp.hypertensive_crisis", "news2.partial"]
    assert "spo2.below_88" not in ids  # switched off by the COPD program (disables)
    assert "copd.spo2_critical" in ids


# --- missing data (a timer, not a reading) -------------------------------------------

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
MISSING = [
    ("htn.bp_missing", "hypertension", 72),  # CMS RPM: 16 days of readings in 30
    ("hf.weight_missing", "heart_failure", 36),  # one missed morning weight
    ("copd.spo2_missing", "copd", 48),
    ("dm.glucose_missing", "diabetes", 48),
]
COVERED.update(rule_id for rule_id, _, _ in MISSING)


@pytest.mark.parametrize(("rule_id", "program", "after_hours"), MISSING)
def test_missing_data_rules_fire_at_their_hours(
    rule_id: str, program: str, after_hours: float
) -> None:
    rule = BOOK.rule(rule_id, (program,))
    assert rule is not None

    def silence(hours: float) -> Silence:
        last = NOW - timedelta(hours=hours)
        return Silence("pat-1", last, NOW - timedelta(days=60), last)

    assert evaluate_missing(rule, silence(after_hours - 0.01), NOW) is None
    facts = evaluate_missing(rule, silence(after_hours), NOW)
    assert facts is not None
    assert rule.severity is not None
    text, evidence = KINDS["missing"].explain(rule, Facts(NOW, {}, facts, rule.severity))
    assert f"limit {after_hours} h" in text
    assert evidence["cause"] == "device_silent"


# --- explanations --------------------------------------------------------------------


def candidate_text(programs: Sequence[str], points: Sequence[Point], rule_id: str) -> str:
    engine = Engine(BOOK)
    contexts = {"pat-1": PatientContext("pat-1", tuple(programs))}
    texts = []
    for hours, metric, values in points:
        result = engine.step([accepted(hours, metric, values)], contexts)
        texts = [c.explanation for c in result.candidates if c.rule_id == rule_id]
    [text] = texts
    return text


def test_crisis_explanation_names_values_thresholds_and_source() -> None:
    engine = Engine(BOOK)
    [cand] = engine.step([accepted(0, BP, {"systolic": 192, "diastolic": 124})], {}).candidates
    assert cand.explanation == (
        "Hypertensive crisis: blood pressure 192/124 mmHg at 2026-11-23 08:00 UTC; "
        "systolic 192 mmHg > 180; diastolic 124 mmHg > 120 (Whelton PK et al)."
    )
    assert cand.evidence["breached"] == ["systolic 192 mmHg > 180", "diastolic 124 mmHg > 120"]
    assert "Hypertension 2018;71:e13-e115" in str(cand.evidence["source"])
    assert cand.advice.startswith("Your blood pressure is very high. Rest 5 minutes")


def test_weight_gain_explanation_is_in_kilograms_and_pounds() -> None:
    text = candidate_text(HF, [one(WEIGHT, 81.0, 0), one(WEIGHT, 82.2, 22)], "hf.weight_gain_24h")
    assert text.startswith("Weight up 1.2 kg (2.6 lb) in 22 h: 81.0 kg → 82.2 kg")
    assert "limit 0.9 kg (2.0 lb) within 26 h" in text


def test_news2_explanation_says_the_score_is_partial() -> None:
    text = candidate_text((), news(91, RR22, T39_5), "news2.partial")
    assert text.startswith(
        "Early warning score (NEWS2 SpO2 scale 1, partial): score 7 from 3 of 5 parameters"
    )
    assert "SpO2 91% (3)" in text
    assert "respiratory rate 22 /min (2)" in text
    assert "temperature 39.5 °C (2)" in text


# --- per-patient overrides -----------------------------------------------------------


@pytest.mark.parametrize(
    ("programs", "points", "rule_id", "overrides", "default", "overridden"),
    [
        pytest.param(
            (), [bp(175, 100)], "bp.hypertensive_crisis", {"systolic_above": 170}, None, C,
            id="lower crisis limit",
        ),
        pytest.param(
            (), [bp(185, 100)], "bp.hypertensive_crisis", {"systolic_above": 190}, C, None,
            id="higher crisis limit",
        ),
        pytest.param(
            HF, [one(WEIGHT, 81.0, 0), one(WEIGHT, 82.2, 22)], "hf.weight_gain_24h",
            {"min_change": 1.5}, H, None, id="larger weight gain",
        ),
        pytest.param(
            HTN, [bp(150, 80, 0), bp(150, 80, 1)], "htn.stage2_persistent", {"k": 2}, None, M,
            id="2 of 5",
        ),
        pytest.param(
            COPD, [one(SPO2, 85)], "copd.spo2_critical", {"spo2_below": 86}, None, C,
            id="higher SpO2 floor",
        ),
        pytest.param(
            DM, [one(GLUCOSE, 75)], "dm.glucose_low", {"level1_below": 80}, None, H,
            id="higher glucose floor",
        ),
    ],
)  # fmt: skip
def test_a_patient_override_changes_a_threshold(
    programs: tuple[str, ...],
    points: list[Point],
    rule_id: str,
    overrides: dict[str, float],
    default: Severity | None,
    overridden: Severity | None,
) -> None:
    assert severity_at_last(programs, points, rule_id) == default
    assert severity_at_last(programs, points, rule_id, {rule_id: overrides}) == overridden


@pytest.mark.parametrize(
    ("rule_id", "programs", "overrides", "message"),
    [
        ("bp.hypertensive_crisis", (), {"sistolic_above": 170}, "no parameters"),
        ("htn.stage2_persistent", HTN, {"k": 6}, "1 <= k <= n"),
        ("hf.weight_trend", HF, {"min_readings": 2}, "min_readings must be at least 3"),
        ("hf.weight_gain_24h", HF, {"window_hours": 0}, "window_hours must be positive"),
        ("spo2.below_88", (), {"hysteresis": -1}, "hysteresis cannot be negative"),
        ("hf.weight_missing", HF, {"after_hours": 0}, "after_hours must be positive"),
        ("hf.over_diuresis", HF, {"min_change": -0.9}, "min_change and min_change_pct must be"),
        ("news2.partial", (), {"freshness_hours": -1}, "freshness_hours must be positive"),
    ],
)
def test_invalid_overrides_are_refused(
    rule_id: str, programs: tuple[str, ...], overrides: dict[str, float], message: str
) -> None:
    rule = BOOK.rule(rule_id, programs)
    assert rule is not None
    with pytest.raises(ValueError, match=message):
        rule.with_overrides(overrides)


def test_a_nan_override_is_refused() -> None:
    rule = BOOK.rule("bp.hypertensive_crisis")
    assert rule is not None
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic words it; any refusal will do
        rule.with_overrides({"systolic_above": math.nan})


def test_the_engine_keeps_the_default_rule_when_a_stored_override_is_invalid() -> None:
    bad = {"bp.hypertensive_crisis": {"sistolic_above": 170}}
    assert severity_at_last((), [bp(175, 100)], "bp.hypertensive_crisis", bad) is None
    assert severity_at_last((), [bp(181, 100)], "bp.hypertensive_crisis", bad) is C


def test_an_override_leaves_the_program_and_other_patients_alone() -> None:
    engine = Engine(BOOK)
    contexts = {
        "pat-1": PatientContext("pat-1", (), {"bp.hypertensive_crisis": {"systolic_above": 170}}),
        "pat-2": PatientContext("pat-2"),
    }
    readings = [accepted(0, BP, {"systolic": 175, "diastolic": 90})]
    readings.append(AcceptedReading(readings[0].reading, "pat-2"))
    fired = {c.patient_id for c in engine.step(readings, contexts).candidates}
    assert fired == {"pat-1"}
    rule = BOOK.rule("bp.hypertensive_crisis")
    assert rule is not None
    assert rule.p("systolic_above") == 180


# --- the programs themselves ---------------------------------------------------------


def test_every_builtin_rule_has_vectors() -> None:
    every = {r.id for p in builtin_programs().values() for r in p.rules}
    assert every - COVERED == set()


def test_every_builtin_rule_cites_a_source() -> None:
    for program in builtin_programs().values():
        for rule in program.rules:
            assert rule.source.strip(), rule.id
            assert len(rule.source) > 40, rule.id


def test_the_builtin_programs_validate_and_round_trip() -> None:
    programs = builtin_programs()
    assert set(programs) == {"general", "hypertension", "heart_failure", "copd", "diabetes"}
    for name, program in programs.items():
        assert program.program == name
        assert all(r.program == name for r in program.rules)
        again = parse_document(program.canonical_json())
        assert again == program
        assert again.digest == program.digest


def test_a_program_repeating_a_rule_id_is_refused() -> None:
    rule = {
        "id": "x.low",
        "kind": "threshold",
        "metric": "spo2",
        "title": "Low",
        "source": "Test vector, not a clinical limit.",
        "tiers": [{"severity": "high", "any": [{"component": "spo2", "op": "<", "param": "b"}]}],
        "params": {"b": 90},
    }
    with pytest.raises(ValueError, match="repeats rule ids"):
        parse_program({"program": "x", "title": "X", "rules": [rule, rule]})


def test_unknown_programs_are_ignored_and_general_always_applies() -> None:
    general = [r.id for r in BOOK.rules_for(())]
    assert [r.id for r in BOOK.rules_for(("no_such_program",))] == general
    assert set(general) <= {r.id for r in BOOK.rules_for(HF)}
