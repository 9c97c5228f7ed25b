"""What a backtest finds: the alert episodes of one rule set over one period, their burden
per patient-month and nurse-day, per rule, and the comparison of two rule sets."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rpm.domain import Severity
from rpm.domain.severity import BY_URGENCY

DAY = timedelta(days=1)
MONTH_DAYS = 365.25 / 12
SEVERITIES = BY_URGENCY  # critical first, as nurses triage


@dataclass(frozen=True, slots=True)
class Options:
    """What to replay and how; ``None`` start/end: UTC midnights around the readings."""

    start: datetime | None = None
    end: datetime | None = None  # exclusive
    step: timedelta = timedelta(hours=1)
    resolve_after: timedelta = timedelta(hours=24)
    patients_per_nurse: int = 100

    def __post_init__(self) -> None:
        for t in (self.start, self.end):
            if t is not None and t.tzinfo is None:
                raise ValueError("backtest start and end must be timezone-aware")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("the backtest period ends before it starts")
        if self.step <= timedelta(0) or self.step > DAY:
            raise ValueError("the step must be positive and at most a day")
        if self.resolve_after < timedelta(0):
            raise ValueError("resolve_after cannot be negative")
        if self.patients_per_nurse < 1:
            raise ValueError("patients_per_nurse must be at least 1")


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert episode the replay opened in the period."""

    alert_id: int
    patient_id: str
    rule_id: str
    opened_at: datetime
    severity: Severity  # the highest it reached
    opened_severity: Severity
    escalations: int
    recurrences: int
    auto_resolved: bool = False


@dataclass(frozen=True, slots=True)
class ConfirmStats:
    """Confirm before paging, for one rule: first readings held (no page at once), those a
    repeat did not confirm, and the delay added to the pages (first reading to page)."""

    held: int
    not_confirmed: int
    delay_median_min: float | None
    delay_p95_min: float | None
    avoided: int = 0  # alerts the rule would have opened without confirmation, less its own

    def as_json(self) -> dict[str, Any]:
        return {
            "held": self.held,
            "not_confirmed": self.not_confirmed,
            "avoided": self.avoided,
            "delay_median_min": self.delay_median_min,
            "delay_p95_min": self.delay_p95_min,
        }


@dataclass(frozen=True, slots=True)
class RuleBurden:
    """The alerts of one rule over the period."""

    rule_id: str
    program: str
    title: str
    alerts: int
    by_severity: Mapping[str, int]  # severity name -> episodes that reached it at most
    patients: int  # patients with at least one alert of the rule
    candidates: int  # proposals the policy folded into those (and earlier) episodes
    escalations: int
    auto_resolved: int = 0
    confirm: ConfirmStats | None = None  # None: the rule pages at once


@dataclass(frozen=True, slots=True)
class Burden:
    """The alert burden of one rule set over one period: the backtest's answer."""

    start: datetime
    end: datetime
    options: Options
    patients: int
    readings: int
    alerts: tuple[Alert, ...]
    per_rule: Mapping[str, RuleBurden]
    rule_set: Mapping[str, str]  # program -> digest of the spec replayed
    notes: tuple[str, ...] = ()
    # Episodes the period would have opened with one episode per rule (before grouping the
    # rules that see one clinical event); None: not counted.
    ungrouped: int | None = None

    @property
    def days(self) -> float:
        return (self.end - self.start) / DAY

    @property
    def nurses(self) -> int:
        return math.ceil(self.patients / self.options.patients_per_nurse)

    @property
    def patient_months(self) -> float:
        return self.patients * self.days / MONTH_DAYS

    @property
    def alerts_per_patient_month(self) -> float:
        return len(self.alerts) / self.patient_months if self.patient_months else 0.0

    @property
    def ungrouped_per_patient_month(self) -> float | None:
        """Alerts per patient-month before grouping (one episode per rule)."""
        if self.ungrouped is None:
            return None
        return self.ungrouped / self.patient_months if self.patient_months else 0.0

    @property
    def alerts_per_nurse_day(self) -> float:
        return len(self.alerts) / self.days / self.nurses if self.nurses and self.days else 0.0

    @property
    def patients_alerted(self) -> int:
        return len({a.patient_id for a in self.alerts})

    @property
    def share_patients_alerted(self) -> float:
        return self.patients_alerted / self.patients if self.patients else 0.0

    def by_severity(self) -> dict[str, int]:
        counts = Counter(a.severity for a in self.alerts)
        return {s.name.lower(): counts[s] for s in SEVERITIES}

    def _grouping_json(self) -> dict[str, Any] | None:
        before = self.ungrouped_per_patient_month
        if self.ungrouped is None or before is None:
            return None
        return {
            "alerts_before": self.ungrouped,
            "alerts_after": len(self.alerts),
            "alerts_per_patient_month_before": round(before, 4),
            "alerts_per_patient_month_after": round(self.alerts_per_patient_month, 4),
        }

    def as_json(self) -> dict[str, Any]:
        """The figures as JSON-ready values (what ``--json`` writes)."""
        months = self.patient_months
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "days": round(self.days, 3),
            "patients": self.patients,
            "readings": self.readings,
            "nurses": self.nurses,
            "patients_per_nurse": self.options.patients_per_nurse,
            "resolve_after_hours": self.options.resolve_after / timedelta(hours=1),
            "step_minutes": self.options.step / timedelta(minutes=1),
            "alerts": len(self.alerts),
            "by_severity": self.by_severity(),
            "alerts_per_patient_month": round(self.alerts_per_patient_month, 4),
            "alerts_per_nurse_day": round(self.alerts_per_nurse_day, 4),
            "grouping": self._grouping_json(),
            "patients_alerted": self.patients_alerted,
            "share_patients_alerted": round(self.share_patients_alerted, 4),
            "per_rule": {
                r.rule_id: {
                    "program": r.program,
                    "title": r.title,
                    "alerts": r.alerts,
                    "by_severity": dict(r.by_severity),
                    "alerts_per_patient_month": round(r.alerts / months, 4) if months else 0.0,
                    "patients": r.patients,
                    "candidates": r.candidates,
                    "escalations": r.escalations,
                    "auto_resolved": r.auto_resolved,
                    "confirmation": r.confirm.as_json() if r.confirm else None,
                }
                for r in sorted(self.per_rule.values(), key=lambda r: r.rule_id)
            },
            "rule_set": dict(self.rule_set),
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    """The same readings replayed through a baseline and a candidate rule set."""

    baseline: Burden
    candidate: Burden
    labels: tuple[str, str] = ("baseline", "candidate")

    def rule_ids(self) -> list[str]:
        return sorted(set(self.baseline.per_rule) | set(self.candidate.per_rule))

    def as_json(self) -> dict[str, Any]:
        b, c = self.baseline, self.candidate

        def alerts_of(burden: Burden, rule_id: str) -> int:
            r = burden.per_rule.get(rule_id)
            return r.alerts if r else 0

        return {
            "baseline": b.as_json(),
            "candidate": c.as_json(),
            "labels": list(self.labels),
            "delta": {
                "alerts": len(c.alerts) - len(b.alerts),
                "alerts_per_patient_month": round(
                    c.alerts_per_patient_month - b.alerts_per_patient_month, 4
                ),
                "alerts_per_nurse_day": round(c.alerts_per_nurse_day - b.alerts_per_nurse_day, 4),
                "patients_alerted": c.patients_alerted - b.patients_alerted,
                "per_rule": {
                    r: alerts_of(c, r) - alerts_of(b, r)
                    for r in self.rule_ids()
                    if alerts_of(c, r) != alerts_of(b, r)
                },
            },
        }
