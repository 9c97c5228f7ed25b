"""Whose readings: a webhook's device ids in its integration's namespace, readings grouped by
device, and a retraction attributed to the patient its reading belongs to, or refused. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from device_gateways.decoders import Decoded
from rpm.domain import DeviceRecord, RawMessage, Reading, Rejection, RejectReason, Retraction
from rpm.storage.corrections import Correction


def namespaced(decoded: Decoded, integration: str) -> Decoded:
    """Webhook device ids become ``<integration>:<vendor id>``.

    An integration can then only ever report devices enrolled under it, and never
    collide with (or pose as) an MQTT device, whose ids contain no colon.
    """
    return Decoded(
        [replace(r, device_id=f"{integration}:{r.device_id}") for r in decoded.readings],
        decoded.problems,
        {f"{integration}:{k}": v for k, v in decoded.device_status.items()},
        [replace(r, device_id=f"{integration}:{r.device_id}") for r in decoded.retractions],
    )


def by_device(readings: Sequence[Reading]) -> dict[str, list[Reading]]:
    groups: dict[str, list[Reading]] = {}
    for r in readings:
        groups.setdefault(r.device_id, []).append(r)
    return groups


def source_of(raw: RawMessage) -> str:
    """Who retracts: the integration of a webhook, the device of an MQTT topic."""
    if raw.integration is not None:
        return f"integration:{raw.integration}"
    return f"device:{raw.device_id}"


def attribute(
    raw: RawMessage, r: Retraction, device: DeviceRecord | None
) -> Correction | Rejection:
    """The correction a retraction asks for: the reading of this device, metric and measured
    time, attributed like the reading itself (the device's binding at that time). An unknown
    device, or one bound to nobody then, is refused with the reason a reading would get, and
    the payload kept in the quarantine. A retired device may still retract what it sent."""
    if device is None:
        return Rejection(
            RejectReason.UNKNOWN_DEVICE,
            f"retraction: device {r.device_id!r} is not enrolled",
            raw,
            r.device_id,
        )
    patient_id = device.patient_at(r.measured_at)
    if patient_id is None:
        return Rejection(
            RejectReason.UNBOUND_DEVICE,
            f"retraction: device {r.device_id!r} was bound to no patient at "
            f"{r.measured_at.isoformat()}",
            raw,
            r.device_id,
        )
    who = source_of(raw)
    return Correction(
        device_id=r.device_id,
        metric=r.metric.value,
        measured_at=r.measured_at,
        patient_id=patient_id,
        sent_status=r.status,
        source="vendor",
        actor=who,
        reason=f"Observation.status {r.status} sent by {who}",
    )
