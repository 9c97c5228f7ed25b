"""Default care programs. Every clinical number cites its source next to it.

Patients belong to one or more programs; the ``general`` program applies to all.
Per-patient parameter overrides are stored with the patient (``rule_overrides``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from rpm.domain import Metric

from .spec import Condition, Program, RuleSpec, Severity

ACC_AHA_2017 = (
    "Whelton PK et al. 2017 ACC/AHA Guideline for the Prevention, Detection, Evaluation, "
    "and Management of High Blood Pressure in Adults. Hypertension 2018;71:e13-e115, "
    "section 11.2: hypertensive crisis is SBP > 180 and/or DBP > 120 mm Hg."
)
BTS_2017_NEWS2 = (
    "O'Driscoll BR et al. BTS guideline for oxygen use in adults in healthcare and emergency "
    "settings. Thorax 2017;72:i1-i90 (target 88-92% in those at risk of hypercapnic failure, "
    "94-98% otherwise); RCP NEWS2 (2017) scores SpO2 <= 91% (scale 1) and <= 83% (scale 2) as 3."
)

HYPERTENSIVE_CRISIS = RuleSpec(
    id="bp.hypertensive_crisis",
    kind="threshold",
    program="general",
    metric=Metric.BLOOD_PRESSURE,
    title="Hypertensive crisis",
    severity=Severity.CRITICAL,
    params=MappingProxyType({"systolic_above": 180.0, "diastolic_above": 120.0}),
    conditions=(
        Condition("systolic", ">", "systolic_above"),
        Condition("diastolic", ">", "diastolic_above"),
    ),
    source=ACC_AHA_2017,
    advice=(
        "Rest for 5 minutes and measure again. If you have chest pain, shortness of breath, "
        "back pain, numbness, weakness, change in vision or difficulty speaking, call 911."
    ),
)

SEVERE_HYPOXAEMIA = RuleSpec(
    id="spo2.below_88",
    kind="threshold",
    program="general",
    metric=Metric.SPO2,
    title="Low blood oxygen",
    severity=Severity.CRITICAL,
    params=MappingProxyType({"spo2_below": 88.0}),
    conditions=(Condition("spo2", "<", "spo2_below"),),
    source=BTS_2017_NEWS2,
    advice=(
        "Sit upright, rest, and measure again with a warm finger. If you are short of breath, "
        "confused or your lips look blue, call 911."
    ),
)

PROGRAMS: Mapping[str, Program] = MappingProxyType(
    {
        "general": Program(
            "general", "Applies to every patient", (HYPERTENSIVE_CRISIS, SEVERE_HYPOXAEMIA)
        ),
        "hypertension": Program("hypertension", "Hypertension"),
        "heart_failure": Program("heart_failure", "Heart failure"),
        "copd": Program("copd", "COPD"),
        "diabetes": Program("diabetes", "Diabetes"),
    }
)


def rules_for(programs: tuple[str, ...]) -> tuple[RuleSpec, ...]:
    """The rules of the general program plus those of each named program, without repeats."""
    seen: dict[str, RuleSpec] = {}
    for name in ("general", *programs):
        program = PROGRAMS.get(name)
        if program is None:
            continue
        for rule in program.rules:
            seen.setdefault(rule.id, rule)
    return tuple(seen.values())
