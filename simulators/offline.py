"""A plan through the real decoders, validation and rule replay, without servers. Pure.

For tests and calibration: what the gateway makes of every send, and the alerts the rules
would open over the readings it stores (``rpm.backtest.replay``, the engine and alert policy).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from device_gateways.decoders import DECODERS, Decoded
from device_gateways.mqtt import to_raw
from rpm.backtest.replay import Alert, Burden, Options, backtest
from rpm.domain import AcceptedReading, Binding, DeviceRecord, RawMessage, Rejection
from rpm.domain.errors import DecodeError
from rpm.validation import ClockPolicy, validate
from rules.engine import PatientContext
from rules.programs import RuleBook
from simulators.traffic import Plan, Send


@dataclass(slots=True)
class Outcome:
    """One send through the decoders and validation (``error`` when it did not decode)."""

    decoded: Decoded | None
    error: str | None
    accepted: list[AcceptedReading] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def raw_message(send: Send) -> RawMessage:
    """The send as its transport hands it to the gateway."""
    if send.transport == "mqtt":
        return to_raw(f"rpm/v1/devices/{send.device_id}/readings", send.payload, send.at)
    return RawMessage("http", send.payload_format, None, send.payload, send.at, integration="sim")


def records(plan: Plan) -> dict[str, DeviceRecord]:
    """Every device of the plan, bound to its patient from the start of the plan."""
    return {
        d.device_id: DeviceRecord(d.device_id, False, (Binding(p.patient_id, plan.config.start),))
        for p in plan.patients
        for d in p.devices
    }


def through_gateway(send: Send, devices: dict[str, DeviceRecord]) -> Outcome:
    raw = raw_message(send)
    try:
        decoded = DECODERS[send.payload_format](raw)
    except DecodeError as exc:
        return Outcome(None, str(exc))
    out = Outcome(decoded, None)
    for reading in decoded.readings:
        accepted, rejected = validate(
            raw, [reading], devices.get(reading.device_id), send.at, ClockPolicy()
        )
        out.accepted.extend(accepted)
        out.rejected.extend(rejected)
    return out


def stored_readings(plan: Plan) -> list[AcceptedReading]:
    """The readings the server stores from the plan (first copy of each identity)."""
    devices = records(plan)
    seen: set[tuple[str, str, datetime]] = set()
    out = []
    for send in plan.sends:
        for a in through_gateway(send, devices).accepted:
            key = (a.reading.device_id, a.reading.metric.value, a.reading.measured_at)
            if key not in seen:
                seen.add(key)
                out.append(a)
    return out


def replay(plan: Plan, count_from: datetime, stored: list[AcceptedReading] | None = None) -> Burden:
    """The alerts the built-in rules open over the plan's stored readings from ``count_from``
    (earlier readings warm the rules up; the backtest's missing-data timer only watches a
    patient once it has seen one of their readings). ``stored``: ``stored_readings(plan)``
    when the caller has it already."""
    contexts = {p.patient_id: PatientContext(p.patient_id, p.programs) for p in plan.patients}
    return backtest(
        RuleBook.builtin(),
        stored_readings(plan) if stored is None else stored,
        contexts,
        Options(start=count_from, end=plan.config.end),
        watch={p.patient_id: [(plan.config.start, None)] for p in plan.patients},
    )


@dataclass(frozen=True, slots=True)
class Score:
    """Detection of each scenario and the alerts of quiet patients, from one replay."""

    cases: Mapping[str, int]  # scenario -> patients
    caught: Mapping[str, int]  # scenario -> patients with a detected_by alert after began_at
    delays_h: Mapping[str, tuple[float, ...]]  # scenario -> hours from began_at to the alert
    early: int  # scenario patients with a value rule of theirs firing before began_at
    quiet_patients: int
    quiet_alerts: Mapping[str, int]  # rule id -> alerts on patients without a scenario
    days: float

    @property
    def quiet_per_patient_day(self) -> tuple[float, float]:
        """(value-rule alerts, missing-data alerts) per quiet patient-day."""
        missing = sum(n for r, n in self.quiet_alerts.items() if r.endswith("_missing"))
        other = sum(self.quiet_alerts.values()) - missing
        exposure = self.quiet_patients * self.days or 1.0
        return other / exposure, missing / exposure


def score(plan: Plan, burden: Burden, held: timedelta = timedelta(hours=24)) -> Score:
    """How well the replayed rules caught the plan's scenarios, and what else they raised.

    An event is caught by a ``detected_by`` alert opened at or after its onset (the delay is
    the first such), or, with no delay known, by an episode of such a rule already open at
    the onset (opened less than ``held``, the backtest's ``resolve_after``, before it) that
    escalated: one row per clinical event, so a crisis on a patient whose stage-2 episode is
    open escalates that episode to critical instead of opening one (docs/alerts.md), as
    ``rpm simulate``'s report counts an episode that recurs after the onset."""
    by_patient: dict[str, list[Alert]] = {}
    for a in burden.alerts:
        by_patient.setdefault(a.patient_id, []).append(a)
    cases: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    delays: dict[str, list[float]] = {}
    early = 0
    for truth in plan.truth:
        cases[truth.scenario] += 1
        named = [a for a in by_patient.get(truth.patient_id, []) if a.rule_id in truth.detected_by]
        after = [a.opened_at for a in named if a.opened_at >= truth.began_at]
        if after:
            caught[truth.scenario] += 1
            delays.setdefault(truth.scenario, []).append(
                (min(after) - truth.began_at).total_seconds() / 3600.0
            )
        elif any(
            a.escalations > 0 and a.opened_at < truth.began_at < a.opened_at + held for a in named
        ):
            caught[truth.scenario] += 1
        early += any(
            a.opened_at < truth.began_at and not a.rule_id.endswith("_missing") for a in named
        )
    eventful = {t.patient_id for t in plan.truth}
    quiet = Counter(a.rule_id for a in burden.alerts if a.patient_id not in eventful)
    return Score(
        cases=dict(cases),
        caught={s: caught[s] for s in cases},
        delays_h={s: tuple(sorted(d)) for s, d in delays.items()},
        early=early,
        quiet_patients=sum(1 for p in plan.patients if p.patient_id not in eventful),
        quiet_alerts=dict(quiet),
        days=burden.days,
    )
