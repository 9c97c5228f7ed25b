"""What the alert timers should do with an alert, given its facts, now and the config. Pure.

Escalation: an open alert nobody acknowledged goes, after its severity's delay, to the
tier-1 on-call nurse of the patient's care team by SMS, and after the same delay again
to tier 2. The delay of a step counts from ``step_started_at``: when the episode opened
(or re-opened), or when the previous tier was sent its SMS. Acknowledging stops it; a
snooze of the alert's kind holds it until the snooze ends; when nobody can be reached
the step is retried every ``retry_after`` (and audited once).

Re-notification: an acknowledged alert whose rule is still firing ``renotify_after``
after the acknowledgement (a reading measured that much later still breaks it, and the
condition has not cleared since) returns to open, and its escalation starts a new
round from tier 1. Severities that never escalate never re-notify.

Auto-resolve: an unresolved alert of a rule with ``auto_resolve_after_hours`` whose
condition has been clear for that long is resolved by the system.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from rpm.domain import Severity

from .lifecycle import AlertState
from .policy import Snooze

TIMERS_ACTOR = "system:timers"

_DEFAULT_DELAYS: Mapping[Severity, timedelta | None] = MappingProxyType(
    {
        Severity.CRITICAL: timedelta(minutes=10),
        Severity.HIGH: timedelta(minutes=30),
        Severity.MEDIUM: timedelta(hours=4),
        Severity.LOW: None,
    }
)


@dataclass(frozen=True, slots=True)
class EscalationConfig:
    """Escalation delays per severity (None: never), retry and re-notification times."""

    delays: Mapping[Severity, timedelta | None] = field(default_factory=lambda: _DEFAULT_DELAYS)
    retry_after: timedelta = timedelta(minutes=5)
    renotify_after: timedelta | None = timedelta(minutes=60)
    tiers: int = 2

    def __post_init__(self) -> None:
        if self.retry_after <= timedelta(0):
            raise ValueError("retry_after must be positive")

    def delay(self, severity: Severity) -> timedelta | None:
        return self.delays.get(severity, _DEFAULT_DELAYS[severity])


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """What the timers know about one unresolved alert."""

    alert_id: int
    patient_id: str
    rule_id: str
    title: str
    severity: Severity
    state: AlertState
    care_team: str | None = None
    round: int = 0  # escalation rounds restart when an acknowledged alert re-opens
    tier: int = 0  # the highest tier sent an SMS in this round (0: none)
    step_started_at: datetime | None = None  # None: silenced (opened while snoozed)
    acknowledged_at: datetime | None = None
    last_fired_at: datetime | None = None  # measured time of the newest firing
    condition_cleared_at: datetime | None = None
    snooze: Snooze | None = None  # the snooze of this patient and episode group, if any
    unreachable_reported: bool = False  # "nobody on call" already audited for this step
    # The patient could not be reached about this alert on any channel (every one failed):
    # the nurse is paged at once, not after the severity's delay.
    patient_unreachable: bool = False

    def snoozed(self, now: datetime) -> bool:
        return (
            self.snooze is not None
            and self.snooze.in_force(now)
            and self.snooze.silences(self.severity)
        )


class Do(enum.StrEnum):
    STOP = "stop"  # nothing more to do: acknowledged, never escalates, or last tier sent
    WAIT = "wait"  # not due (or snoozed): look again at ``next_at``
    PAGE = "page"  # SMS the on-call staff member of ``tier``
    NOBODY = "nobody"  # due, but nobody reachable on call at ``tier``: retry at ``next_at``


@dataclass(frozen=True, slots=True)
class Step:
    do: Do
    next_at: datetime | None
    tier: int = 0
    staff_id: str | None = None
    audit: bool = False


def next_step(
    a: AlertFacts, on_call: Mapping[int, str], now: datetime, config: EscalationConfig
) -> Step:
    """The escalation step due for ``a`` at ``now``; ``on_call`` maps tier -> staff id."""
    delay = config.delay(a.severity)
    if (
        a.state is not AlertState.OPEN
        or a.step_started_at is None
        or delay is None
        or a.tier >= config.tiers
    ):
        return Step(Do.STOP, None)
    if a.snoozed(now):
        assert a.snooze is not None
        return Step(Do.WAIT, a.snooze.until)
    due = a.step_started_at + delay
    if a.patient_unreachable and a.tier == 0:
        due = min(due, now)  # nobody told the patient: tier 1 hears of it now
    if due > now:
        return Step(Do.WAIT, due)
    tier = a.tier + 1
    staff_id = on_call.get(tier)
    if staff_id is None:
        return Step(Do.NOBODY, now + config.retry_after, tier, audit=not a.unreachable_reported)
    last = tier >= config.tiers
    return Step(Do.PAGE, None if last else now + delay, tier, staff_id, audit=True)


def first_due(severity: Severity, now: datetime, config: EscalationConfig) -> datetime | None:
    """When a (re-)opened alert of ``severity`` first escalates, or None for never."""
    delay = config.delay(severity)
    return None if delay is None else now + delay


def should_renotify(a: AlertFacts, now: datetime, config: EscalationConfig) -> bool:
    """An acknowledged alert still firing ``renotify_after`` after its acknowledgement."""
    if (
        config.renotify_after is None
        or a.state is not AlertState.ACKNOWLEDGED
        or config.delay(a.severity) is None
        or a.acknowledged_at is None
        or a.last_fired_at is None
        or a.condition_cleared_at is not None
        or a.snoozed(now)
    ):
        return False
    return a.last_fired_at >= a.acknowledged_at + config.renotify_after


def should_auto_resolve(a: AlertFacts, after_hours: float | None, now: datetime) -> bool:
    """The rule auto-resolves and its condition has been clear for ``after_hours``."""
    return (
        a.state is not AlertState.RESOLVED
        and after_hours is not None
        and a.condition_cleared_at is not None
        and now - a.condition_cleared_at >= timedelta(hours=after_hours)
    )


def staff_sms(a: AlertFacts, step: Step) -> tuple[str, str, dict[str, Any]]:
    """The outbox item (channel, dedupe key, payload) for an escalation SMS to staff.

    No patient name or phone: the SMS worker renders ids, the rule's title and a link.
    The dedupe key names the alert, round and tier, so a retry never sends twice.
    """
    assert step.do is Do.PAGE
    assert step.staff_id is not None
    key = f"sms:alert:{a.alert_id}:escalation:{step.tier}"
    if a.round:
        key += f":round:{a.round}"
    return (
        "sms",
        key,
        {
            "recipient": "staff",
            "staff_id": step.staff_id,
            "patient_id": a.patient_id,
            "alert_id": a.alert_id,
            "template": "escalation",
            "tier": step.tier,
            "severity": a.severity.name,
            "rule_id": a.rule_id,
            "title": a.title,
            "urgent": True,
        },
    )
