"""What a patient's check-in answers say together with their weights. Pure.

The heart-failure check-in (questionnaire ``hf_symptoms``: breathless lying flat, ankles
swollen) proposes one alert kind, :data:`RULE_ID`, whose severity depends on the answers and
on whether the weight is rising (:data:`SEVERITY`). Like a rule, :func:`propose` only
proposes an :class:`~rpm.domain.AlertCandidate` with its evidence; the alert policy
(``alerts.policy.decide``) opens the episode, or escalates an open one when a later check-in
is worse, and the store audits it.

Why these severities. Orthopnoea is a typical symptom of heart failure and, with peripheral
oedema, a sign of congestion (ESC 2021 heart-failure guideline, Table 5); the AHA's self-check
plan puts "needing more pillows or sleeping sitting up", swelling of the feet, ankles or legs,
and a weight gain of 2 lb (0.9 kg) in a day or 5 lb in a week, in the yellow zone: call the
care team today. A symptom together with a rising weight is the picture of fluid building up,
so it is high (the nurse is told now, escalated if nobody acknowledges within the high
delay). A symptom alone is medium (orthopnoea, more specific) or low (ankle swelling, less
specific, ESC Table 5). Nothing here is critical: the red zone (breathless at rest) is not a
question this check-in asks, and the patient texts are told to call the emergency number for
it in the HELP and reply texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from rpm.domain import AlertCandidate, Severity

RULE_ID = "hf.congestion_reported"
ORTHOPNEA = "orthopnea"
ANKLE_SWELLING = "ankle_swelling"
# Open episodes of these rules of the heart-failure program count as a rising weight.
WEIGHT_RULES = frozenset({"hf.weight_gain_24h", "hf.weight_gain_7d", "hf.weight_trend"})
SOURCE = (
    "McDonagh TA et al. 2021 ESC heart-failure guideline, Eur Heart J 2021;42:3599-3726 "
    "(Table 5; self-care: weight gain and worsening symptoms); AHA 'Self-Check Plan for HF "
    "Management' (yellow zone). Weight rising: program default, see WeightConfig."
)


@dataclass(frozen=True, slots=True)
class WeightConfig:
    """When the weight counts as rising beside a reported symptom.

    Program default, not a guideline limit: a gain of ``min_gain_kg`` (2 lb) within
    ``window`` (3 days), from the lowest weight in the window to the newest, is below the
    alert limits of the heart-failure program (AHA: 2 lb in a day, 5 lb in a week; ESC: 2 kg
    in 3 days) and on its own alerts nobody; beside a symptom it is the second half of the
    picture. Readings older than the window, or a single reading, say nothing.
    """

    min_gain_kg: float = 0.9
    window: timedelta = timedelta(days=3)


# (breathless lying flat, ankles swollen, weight rising) -> severity; None: no alert.
SEVERITY: Mapping[tuple[bool, bool, bool], Severity | None] = MappingProxyType(
    {
        (False, False, False): None,
        (False, False, True): None,  # the weight rules judge the weight alone
        (True, False, False): Severity.MEDIUM,
        (False, True, False): Severity.LOW,
        (True, True, False): Severity.MEDIUM,
        (True, False, True): Severity.HIGH,
        (False, True, True): Severity.HIGH,
        (True, True, True): Severity.HIGH,
    }
)
_TITLES: Mapping[Severity, str] = MappingProxyType(
    {
        Severity.HIGH: "Heart-failure symptoms with rising weight (SMS check-in)",
        Severity.MEDIUM: "Breathless lying flat (SMS check-in)",
        Severity.LOW: "Ankles more swollen (SMS check-in)",
    }
)
ADVICE = "Keep taking your medicines as prescribed and weigh yourself tomorrow morning."
ADVICE_I18N: Mapping[str, str] = MappingProxyType(
    {"es": "Siga tomando sus medicinas como se le indicó y pésese mañana por la mañana."}
)


@dataclass(frozen=True, slots=True)
class Report:
    """A patient's heart-failure check-in answers so far (``"yes"``/``"no"`` by question)."""

    patient_id: str
    response_id: int
    at: datetime  # when the latest answer came
    answers: Mapping[str, str]


def weight_gain(
    weights: Sequence[tuple[datetime, float]], at: datetime, config: WeightConfig
) -> float | None:
    """kg from the lowest weight in the window to the newest (None: fewer than two)."""
    recent = sorted((t, kg) for t, kg in weights if at - config.window <= t <= at)
    if len(recent) < 2:
        return None
    newest = recent[-1][1]
    return round(newest - min(kg for _, kg in recent[:-1]), 2)


def propose(
    report: Report,
    weights: Sequence[tuple[datetime, float]],
    open_rules: Mapping[str, Severity],
    config: WeightConfig = WeightConfig(),
) -> AlertCandidate | None:
    """The alert the answers and weights propose, with their evidence; None for none.

    ``weights``: (measured time, kg) of the patient's recent weights; ``open_rules``: the
    patient's unresolved episodes by rule id.
    """
    orthopnea = report.answers.get(ORTHOPNEA) == "yes"
    swelling = report.answers.get(ANKLE_SWELLING) == "yes"
    gain = weight_gain(weights, report.at, config)
    weight_alerts = sorted(WEIGHT_RULES & set(open_rules))
    rising = bool(weight_alerts) or (gain is not None and gain >= config.min_gain_kg)
    severity = SEVERITY[(orthopnea, swelling, rising)]
    if severity is None:
        return None
    recent = sorted((t, kg) for t, kg in weights if report.at - config.window <= t <= report.at)
    evidence: dict[str, Any] = {
        "check_in": {"response_id": report.response_id, "answers": dict(report.answers)},
        "weights_kg": [{"at": t.isoformat(), "kg": kg} for t, kg in recent],
        "weight_gain_kg": gain,
        "window_days": config.window / timedelta(days=1),
        "min_gain_kg": config.min_gain_kg,
        "open_weight_alerts": weight_alerts,
        "source": SOURCE,
    }
    return AlertCandidate(
        patient_id=report.patient_id,
        rule_id=RULE_ID,
        severity=severity,
        title=_TITLES[severity],
        measured_at=report.at,
        explanation=_explain(orthopnea, swelling, gain, weight_alerts, config),
        evidence=evidence,
        advice=ADVICE,
        advice_i18n=ADVICE_I18N,
    )


def _explain(
    orthopnea: bool,
    swelling: bool,
    gain: float | None,
    weight_alerts: Sequence[str],
    config: WeightConfig,
) -> str:
    said = [
        text
        for yes, text in (
            (orthopnea, "more breathless lying flat"),
            (swelling, "ankles more swollen"),
        )
        if yes
    ]
    parts = [f"Patient answered yes by SMS check-in: {' and '.join(said)}."]
    days = config.window / timedelta(days=1)
    if gain is not None:
        parts.append(f"Weight change in the last {days:g} days: {gain:+.1f} kg.")
    if weight_alerts:
        parts.append(f"Open weight alerts: {', '.join(weight_alerts)}.")
    return " ".join(parts)
