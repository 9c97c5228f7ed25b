"""What a rule proposes. The alert policy decides what becomes of it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .spec import Severity


@dataclass(frozen=True, slots=True)
class AlertCandidate:
    """A rule's proposal to alert, with everything that made it fire."""

    patient_id: str
    rule_id: str
    severity: Severity
    title: str
    explanation: str
    evidence: Mapping[str, object]
    measured_at: datetime
    reading_uid: uuid.UUID | None  # None for alerts about absent data
    advice: str = ""
    advice_i18n: Mapping[str, str] = field(default_factory=dict)
