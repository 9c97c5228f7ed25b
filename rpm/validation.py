"""Validation of decoded readings: identity, plausibility, clock sanity. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .domain import (
    METRICS,
    AcceptedReading,
    DeviceRecord,
    Metric,
    RawMessage,
    Reading,
    Rejection,
    RejectReason,
)
from .domain.trusted import trusted

_accepted = trusted(AcceptedReading)  # a reading and the patient id found for it, both checked


@dataclass(frozen=True, slots=True)
class ClockPolicy:
    """How far ahead a device clock may run, and how old a reading may be."""

    max_skew: timedelta = timedelta(minutes=5)
    max_age: timedelta = timedelta(days=30)


def validate(
    raw: RawMessage,
    readings: Iterable[Reading],
    device: DeviceRecord | None,
    now: datetime,
    clock: ClockPolicy,
) -> tuple[list[AcceptedReading], list[Rejection]]:
    """Split readings into accepted (attributed to a patient) and rejected (with reasons)."""
    accepted: list[AcceptedReading] = []
    rejected: list[Rejection] = []
    for reading in readings:
        outcome = _attribute(reading, device, now, clock)
        if isinstance(outcome, str):
            accepted.append(_accepted(reading, outcome))
        else:
            rejected.append(Rejection(outcome[0], outcome[1], raw, reading.device_id))
    return accepted, rejected


def _attribute(
    reading: Reading, device: DeviceRecord | None, now: datetime, clock: ClockPolicy
) -> str | tuple[RejectReason, str]:
    """The patient the reading belongs to, or why it is refused."""
    if device is None:
        return RejectReason.UNKNOWN_DEVICE, f"device {reading.device_id!r} is not enrolled"
    if device.retired:
        return RejectReason.RETIRED_DEVICE, f"device {device.device_id!r} is retired"
    problem = implausibility(reading)
    if problem is not None:
        return RejectReason.IMPLAUSIBLE_VALUE, problem
    if reading.measured_at > now + clock.max_skew:
        return (
            RejectReason.FUTURE_TIMESTAMP,
            f"measured_at {reading.measured_at.isoformat()} is ahead of the server clock "
            f"by more than {clock.max_skew}",
        )
    if reading.measured_at < now - clock.max_age:
        return (
            RejectReason.STALE_TIMESTAMP,
            f"measured_at {reading.measured_at.isoformat()} is older than {clock.max_age}",
        )
    patient_id = device.patient_at(reading.measured_at)
    if patient_id is None:
        return (
            RejectReason.UNBOUND_DEVICE,
            f"device {device.device_id!r} was bound to no patient at "
            f"{reading.measured_at.isoformat()}",
        )
    return patient_id


# metric -> component -> Component, for one lookup per value on the hot path.
_COMPONENTS = {m: {c.name: c for c in spec.components} for m, spec in METRICS.items()}


def implausibility(reading: Reading) -> str | None:
    """Say why a reading cannot be physiological, or None when it can."""
    components = _COMPONENTS[reading.metric]
    for name, value in reading.values.items():
        component = components.get(name)
        if component is None:
            return f"{reading.metric.value} has no component {name!r}"
        if not component.low <= value <= component.high:
            return (
                f"{name} {value:g} {component.ucum} outside the plausible range "
                f"{component.low:g}-{component.high:g}"
            )
    v = reading.values
    if reading.metric is Metric.BLOOD_PRESSURE and v["systolic"] <= v["diastolic"]:
        return "systolic must be higher than diastolic"
    return None
