"""What a step of the rule engine (``rules.engine``) gives back. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from rpm.domain import AlertCandidate


@dataclass(frozen=True, slots=True)
class Clear:
    """The newest reading shows a fired rule's condition is over (input to auto-resolve)."""

    patient_id: str
    rule_id: str
    measured_at: datetime


@dataclass(slots=True)
class StepResult:
    candidates: list[AlertCandidate] = field(default_factory=list)
    clears: list[Clear] = field(default_factory=list)
