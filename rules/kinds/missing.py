"""Missing data: no reading of a metric for a number of hours, evaluated on a timer.

Spec: ``severity``; param ``after_hours``. A reading of the metric shows the
condition is over. The timer (``evaluate_missing``) tells a device that went
silent (no message of any kind, heartbeats included, for as long) from a patient
who stopped measuring (the device still checks in).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from ..spec import RuleSpec
from .base import (
    HOUR,
    Facts,
    Outcome,
    OwnMetric,
    Window,
    base_evidence,
    not_positive,
    short_source,
    span,
    when,
)


@dataclass(frozen=True, slots=True)
class Silence:
    """What the timer knows about one patient and metric."""

    patient_id: str
    last_reading_at: datetime | None  # newest reading of the metric
    watched_since: datetime  # when monitoring of the metric began (first binding)
    device_last_seen_at: datetime | None  # newest message of any kind from the devices


class Missing(OwnMetric):
    name = "missing"
    required_params = frozenset({"after_hours"})

    def check(self, rule: RuleSpec) -> list[str]:
        problems = []
        if rule.severity is None:
            problems.append("a missing-data rule needs a severity")
        problems.extend(not_positive(rule, "after_hours"))
        return problems

    def varying(self, rule: RuleSpec) -> frozenset[str]:
        return frozenset()

    def lookback_s(self, rule: RuleSpec) -> float:
        return 0.0

    def evaluate(self, rule: RuleSpec, w: Window) -> Outcome:
        # A reading arrived: whatever silence there was is over.
        return Outcome(np.zeros(len(w), np.int8), np.ones(len(w), np.bool_))

    def explain(self, rule: RuleSpec, facts: Facts) -> tuple[str, dict[str, object]]:
        d = facts.detail
        silent_s = d["silent_s"]
        metric = rule.metric.value.replace("_", " ")
        last = f"last one {when(d['last_reading_t'])}" if d["last_reading_t"] > 0 else "none yet"
        if d["device_silent"]:
            cause = (
                f"the device has not been heard from for {span(d['device_silent_s'])}: it may be "
                "switched off, out of battery or out of signal"
            )
        else:
            cause = (
                f"the device checked in {span(d['device_silent_s'])} ago, so it works: "
                "the patient has stopped measuring"
            )
        text = (
            f"No {metric} reading for {span(silent_s)} ({last}); {cause} "
            f"(limit {rule.p('after_hours'):g} h; {short_source(rule.source)})."
        )
        evidence = {
            **base_evidence(rule, facts),
            "silent_hours": round(silent_s / HOUR, 1),
            "cause": "device_silent" if d["device_silent"] else "patient_not_measuring",
        }
        return text, evidence


def evaluate_missing(rule: RuleSpec, s: Silence, now: datetime) -> dict[str, float] | None:
    """The facts of a missing-data alert for one patient, or None when data is flowing."""
    since = s.last_reading_at or s.watched_since
    silent_s = (now - since).total_seconds()
    if silent_s < rule.p("after_hours") * HOUR:
        return None
    heard = s.device_last_seen_at
    device_silent_s = (now - heard).total_seconds() if heard else silent_s
    return {
        "silent_s": silent_s,
        "last_reading_t": s.last_reading_at.timestamp() if s.last_reading_at else 0.0,
        "device_silent_s": device_silent_s,
        "device_silent": float(device_silent_s >= rule.p("after_hours") * HOUR),
    }


KIND = Missing()
