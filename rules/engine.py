"""The rule engine step: ``(state, new readings, patient contexts, now) -> (state, candidates)``.

No I/O. State is a value that can be rebuilt from the database; threshold rules
need none, later kinds (persistence, trends, baselines) keep their windows here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from rpm.domain import AcceptedReading, Metric

from .candidate import AlertCandidate
from .kinds import KINDS
from .programs import rules_for
from .spec import RuleSpec


@dataclass(frozen=True, slots=True)
class PatientContext:
    """The rule-relevant facts of a patient: programs and per-rule parameter overrides."""

    patient_id: str
    programs: tuple[str, ...] = ()
    overrides: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def rules(self) -> tuple[RuleSpec, ...]:
        return tuple(
            r.with_overrides(self.overrides.get(r.id, {})) for r in rules_for(self.programs)
        )


@dataclass(frozen=True, slots=True)
class EngineState:
    """Per-patient rule state. Empty for stateless rules."""

    patients: Mapping[str, object] = field(default_factory=dict)


def step(
    state: EngineState,
    readings: Sequence[AcceptedReading],
    contexts: Mapping[str, PatientContext],
    now: datetime,
) -> tuple[EngineState, list[AlertCandidate]]:
    """Evaluate new readings in measured-time order; return candidates for the alert policy."""
    del now  # timer-driven kinds (missing data) will use it
    candidates: list[AlertCandidate] = []
    ordered = sorted(readings, key=lambda a: (a.patient_id, a.reading.measured_at))
    # patient -> metric -> that patient's rules for the metric (built once per batch)
    rules_by_patient: dict[str, dict[Metric, list[RuleSpec]]] = {}
    for accepted in ordered:
        pid = accepted.patient_id
        by_metric = rules_by_patient.get(pid)
        if by_metric is None:
            by_metric = {}
            for rule in (contexts.get(pid) or PatientContext(pid)).rules():
                by_metric.setdefault(rule.metric, []).append(rule)
            rules_by_patient[pid] = by_metric
        for rule in by_metric.get(accepted.reading.metric, ()):
            candidate = KINDS[rule.kind](rule, accepted)
            if candidate is not None:
                candidates.append(candidate)
    return state, candidates
