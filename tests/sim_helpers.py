"""What the real gateway makes of a simulated plan: decode and validate every send. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from device_gateways.decoders import DECODERS, Decoded
from device_gateways.mqtt import to_raw
from rpm.domain import AcceptedReading, Binding, DeviceRecord, RawMessage, Rejection
from rpm.errors import DecodeError
from rpm.validation import ClockPolicy, validate
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
