"""Confirm before paging: a first reading of a rule marked ``confirm`` waits for a repeat. Pure.

A rule's ``confirm`` block (rule programs; ``rules.spec.ConfirmSpec``) names the tiers
whose first reading does not page: the patient is asked to rest and measure again within
the window, and the candidate waits as a *pending confirmation*. Then, judged by measured
time (whenever the readings arrive):

- the first reading of the rule's metric measured after the first one and at the latest at
  the window's end (``t0 < t <= t0 + window``) decides: it still meets the rule → the
  episode opens and pages as it would have, its explanation naming the repeat reading
  (``confirmed``); it does not → the confirmation ends ``not_confirmed``, nobody is paged,
  and the row stays in the patient's history;
- no such reading → at the window's end the nurse is paged, the explanation saying that no
  repeat reading arrived (``no_repeat``; ``expire``, run by a timer);
- a candidate of the same episode key that is not confirmed (a crisis tier, another rule of
  the group) pages at once and ends the pending confirmation (``superseded``).

A first reading that arrives after its repeat (a late delivery) is decided at once by the
stored repeat, so the outcome does not depend on the delivery order. A repeat delivered
after the window's end was already paged cannot un-page it; it is recorded as usual.

Candidates whose episode is already unresolved are not held: the nurse is on it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from rpm.domain import AlertCandidate, Severity

from .policy import EpisodeKey, Grouping


class Outcome(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    NOT_CONFIRMED = "not_confirmed"
    NO_REPEAT = "no_repeat"
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class ConfirmRule:
    """One patient's rule as confirmation reads it (from the rule spec, with overrides)."""

    rule_id: str
    metric: str
    window: timedelta
    severities: frozenset[Severity]  # the tiers whose first reading waits
    # The tier one reading's values meet (None: the rule does not hold for them).
    level: Callable[[Mapping[str, float]], Severity | None]
    show: Callable[[Mapping[str, float]], str]  # the values as a nurse reads them

    def holds(self, values: Mapping[str, float]) -> bool:
        return self.level(values) is not None


@dataclass(frozen=True, slots=True)
class Measured:
    """A reading that may be a repeat: a patient's metric at a measured time."""

    patient_id: str
    metric: str
    measured_at: datetime
    uid: UUID
    values: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Pending:
    """A first reading waiting for its repeat (``id`` 0: opened by this batch)."""

    id: int
    key: EpisodeKey
    candidate: AlertCandidate
    deadline: datetime
    values: Mapping[str, float] = field(default_factory=dict)

    @property
    def measured_at(self) -> datetime:
        return self.candidate.measured_at

    def covers(self, at: datetime) -> bool:
        """True when a reading measured at ``at`` is this one's repeat (``t0 < at <= end``)."""
        return self.measured_at < at <= self.deadline


@dataclass(frozen=True, slots=True)
class Closing:
    """How a confirmation ended: its outcome, when (measured time) and the deciding reading."""

    pending: Pending
    outcome: Outcome
    at: datetime
    note: str
    reading: Measured | None = None


@dataclass(slots=True)
class Gated:
    """What the gate passes to the alert policy, and the confirmations it opens and ends."""

    candidates: list[AlertCandidate] = field(default_factory=list)
    opened: list[Pending] = field(default_factory=list)
    closed: list[Closing] = field(default_factory=list)


def _stamp(t: datetime) -> str:
    return t.isoformat(timespec="minutes")


def _minutes(window: timedelta) -> str:
    return f"{window.total_seconds() / 60:g} min"


def _amended(c: AlertCandidate, text: str, evidence: Mapping[str, object]) -> AlertCandidate:
    return AlertCandidate(
        patient_id=c.patient_id,
        rule_id=c.rule_id,
        severity=c.severity,
        title=c.title,
        measured_at=c.measured_at,
        explanation=f"{text} {c.explanation}",
        evidence={**c.evidence, "confirmation": evidence},
        reading_uid=c.reading_uid,
        advice=c.advice,
        advice_i18n=c.advice_i18n,
    )


def confirmed(p: Pending, rule: ConfirmRule, repeat: Measured) -> AlertCandidate:
    """The first reading's candidate, its explanation naming the repeat that confirmed it."""
    text = (
        f"Confirmed by a repeat reading: {rule.show(repeat.values)} at {_stamp(repeat.measured_at)}"
        f" (first {rule.show(p.values)} at {_stamp(p.measured_at)}; re-measured within "
        f"{_minutes(rule.window)})."
    )
    evidence = {
        "outcome": Outcome.CONFIRMED.value,
        "first_measured_at": p.measured_at.isoformat(),
        "repeat_measured_at": repeat.measured_at.isoformat(),
        "repeat_reading_uid": str(repeat.uid),
        "repeat_values": dict(repeat.values),
        "window_minutes": rule.window.total_seconds() / 60,
    }
    return _amended(p.candidate, text, evidence)


def no_repeat(p: Pending) -> AlertCandidate:
    """The first reading's candidate, paged at the window's end: no repeat was measured."""
    minutes = _minutes(p.deadline - p.measured_at)
    text = (
        f"No repeat reading within {minutes} (asked to re-measure by {_stamp(p.deadline)}): "
        "paged at the window's end."
    )
    evidence = {
        "outcome": Outcome.NO_REPEAT.value,
        "first_measured_at": p.measured_at.isoformat(),
        "deadline": p.deadline.isoformat(),
    }
    return _amended(p.candidate, text, evidence)


def gate(
    candidates: Iterable[AlertCandidate],
    readings: Iterable[Measured],
    pending: Mapping[EpisodeKey, Pending],
    unresolved: Iterable[EpisodeKey],
    rules: Callable[[str, str], ConfirmRule | None],
    values: Mapping[UUID, Mapping[str, float]],
    grouping: Grouping,
) -> Gated:
    """Hold the first readings of confirmed rules; decide pending confirmations.

    ``readings``: the patients' readings of the confirmed metrics that can decide (the
    batch's and the stored ones, measured within the windows concerned). ``pending``: the
    open confirmation of each episode key; ``unresolved``: the keys with an unresolved
    episode. ``rules(patient, rule_id)``: the patient's confirmation of a rule (None: it
    pages at once). ``values``: the values of the candidates' readings, by uid.
    """
    out = Gated()
    by_patient: dict[tuple[str, str], list[Measured]] = {}
    for r in sorted(readings, key=lambda r: r.measured_at):
        by_patient.setdefault((r.patient_id, r.metric), []).append(r)

    def first_repeat(patient: str, metric: str, after: datetime, end: datetime) -> Measured | None:
        for r in by_patient.get((patient, metric), ()):
            if after < r.measured_at <= end:
                return r
        return None

    live: dict[EpisodeKey, Pending] = dict(pending)
    busy = set(unresolved)
    ordered = sorted(candidates, key=lambda c: (c.measured_at, -int(c.severity)))
    keys = grouping.keys(ordered)

    # Open confirmations decided by a repeat among the readings.
    p: Pending | None = None
    for key, waiting in list(live.items()):
        p = waiting
        rule = rules(p.candidate.patient_id, p.candidate.rule_id)
        first = (
            None if rule is None else first_repeat(key[0], rule.metric, p.measured_at, p.deadline)
        )
        jumps = [
            c
            for c, k in zip(ordered, keys, strict=True)
            if k == key
            and p.covers(c.measured_at)
            and not _held(c, rules)
            and (first is None or c.measured_at <= first.measured_at)
        ]
        if jumps:
            continue  # superseded below, when the more severe candidate is reached
        if rule is None or first is None:
            continue
        del live[key]
        if rule.holds(first.values):
            out.candidates.append(confirmed(p, rule, first))
            out.closed.append(Closing(p, Outcome.CONFIRMED, first.measured_at, "", first))
            busy.add(key)
        else:
            note = (
                f"not confirmed: repeat {rule.show(first.values)} at {_stamp(first.measured_at)}"
                " no longer meets the rule"
            )
            out.closed.append(Closing(p, Outcome.NOT_CONFIRMED, first.measured_at, note, first))

    for c, key in zip(ordered, keys, strict=True):
        p = live.get(key)
        if p is not None and c.measured_at > p.deadline:
            del live[key]  # its window ended before this reading: it pages now
            out.candidates.append(no_repeat(p))
            out.closed.append(Closing(p, Outcome.NO_REPEAT, p.deadline, "no repeat reading"))
            busy.add(key)
            p = None
        if key in busy:
            out.candidates.append(c)
            continue
        rule = rules(c.patient_id, c.rule_id)
        if rule is None or c.severity not in rule.severities:
            out.candidates.append(c)
            busy.add(key)
            if p is not None:
                del live[key]
                note = (
                    f"superseded: {c.severity.name.lower()} reading at {_stamp(c.measured_at)}"
                    " paged at once"
                )
                out.closed.append(Closing(p, Outcome.SUPERSEDED, c.measured_at, note))
            continue
        if p is not None and p.measured_at <= c.measured_at:
            continue  # the same first reading (another rule of its group), or its window
        start = c.measured_at
        own = values.get(c.reading_uid) if c.reading_uid is not None else None
        mine = Pending(0, key, c, start + rule.window, own or {})
        repeat = first_repeat(c.patient_id, rule.metric, start, mine.deadline)
        if repeat is None and p is not None:
            # A late first reading whose window ended before the waiting one began: no
            # repeat came in time, so it pages, and the later one joins its episode.
            del live[key]
            out.candidates.append(no_repeat(mine))
            out.closed.append(Closing(mine, Outcome.NO_REPEAT, mine.deadline, "no repeat reading"))
            note = "superseded: an earlier reading paged without a repeat"
            out.closed.append(Closing(p, Outcome.SUPERSEDED, mine.deadline, note))
            busy.add(key)
            continue
        if repeat is None:
            live[key] = mine
            out.opened.append(mine)
            continue
        if rule.holds(repeat.values):
            out.candidates.append(confirmed(mine, rule, repeat))
            out.closed.append(Closing(mine, Outcome.CONFIRMED, repeat.measured_at, "", repeat))
            busy.add(key)
            if p is not None:  # a later first reading: the same event, now confirmed
                del live[key]
                out.closed.append(
                    Closing(
                        p,
                        Outcome.CONFIRMED,
                        repeat.measured_at,
                        "confirmed with an earlier reading",
                        repeat,
                    )
                )
        else:
            note = (
                f"not confirmed: repeat {rule.show(repeat.values)} at "
                f"{_stamp(repeat.measured_at)} no longer meets the rule"
            )
            out.closed.append(
                Closing(mine, Outcome.NOT_CONFIRMED, repeat.measured_at, note, repeat)
            )
    return out


def _held(c: AlertCandidate, rules: Callable[[str, str], ConfirmRule | None]) -> bool:
    rule = rules(c.patient_id, c.rule_id)
    return rule is not None and c.severity in rule.severities


def expire(pending: Sequence[Pending], now: datetime) -> list[Closing]:
    """The confirmations whose window has ended by ``now`` with no repeat: page them."""
    return [
        Closing(p, Outcome.NO_REPEAT, p.deadline, "no repeat reading")
        for p in pending
        if p.deadline <= now
    ]
