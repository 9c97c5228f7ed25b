"""What a rule proposes. The alert policy decides what becomes of it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .severity import Severity

Rendering = tuple[str, Mapping[str, Any]]


class AlertCandidate:
    """A rule's proposal to alert, with everything that made it fire.

    Most candidates only recur on an episode that is already open, and those never show
    their explanation: the rule engine's candidates build the text, evidence and reading
    identity only when something reads them.
    """

    __slots__ = (
        "_rendered",
        "_uid",
        "advice",
        "advice_i18n",
        "measured_at",
        "patient_id",
        "rule_id",
        "severity",
        "title",
    )

    def __init__(
        self,
        *,
        patient_id: str,
        rule_id: str,
        severity: Severity,
        title: str,
        measured_at: datetime,
        explanation: str | None,
        evidence: Mapping[str, Any] | None = None,
        reading_uid: uuid.UUID | None = None,
        advice: str = "",
        advice_i18n: Mapping[str, str] | None = None,
    ) -> None:
        self.patient_id = patient_id
        self.rule_id = rule_id
        self.severity = severity
        self.title = title
        self.measured_at = measured_at
        self.advice = advice
        self.advice_i18n = advice_i18n if advice_i18n is not None else {}
        # None: a subclass renders it when read (the rule engine's lazily rendered candidates)
        self._rendered: Rendering | None = (
            None if explanation is None else (explanation, evidence or {})
        )
        self._uid = reading_uid

    def _rendering(self) -> Rendering:
        assert self._rendered is not None
        return self._rendered

    @property
    def explanation(self) -> str:
        return self._rendering()[0]

    @property
    def evidence(self) -> Mapping[str, Any]:
        return self._rendering()[1]

    @property
    def reading_uid(self) -> uuid.UUID | None:
        """The reading that made the rule fire (None for alerts about absent data)."""
        return self._uid

    def __repr__(self) -> str:
        return (
            f"AlertCandidate({self.patient_id!r}, {self.rule_id!r}, {self.severity.name}, "
            f"{self.measured_at.isoformat()})"
        )
