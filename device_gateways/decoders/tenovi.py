"""Tenovi measurement webhooks: one measurement object, or a list of them ("post as array").

One measurement (numbers may arrive as strings)::

    {"metric": "weight", "device_name": "Tenovi Scale", "hwi_device_id": "7c1e...",
     "patient_id": "p-204", "hardware_uuid": "fed091a643ff", "sensor_code": "12",
     "value_1": "180.4", "value_2": null, "created": "2026-11-23T08:00:41Z",
     "timestamp": "2026-11-23T08:00:00Z", "timezone_offset": -5, "estimated_timestamp": false}

Device id: ``hwi_device_id``, Tenovi's id of the activated device. Never ``hardware_uuid``
(the cellular gateway, which changes when the gateway is replaced) nor ``patient_id``.
When the transport vouches for a device, every reading gets that id instead.

Time: ``timestamp`` (ISO 8601); one without offset is taken as UTC, and ``timezone_offset``
(the patient's local offset) is not used. ``estimated_timestamp: true`` (the device clock
was unknown and the gateway estimated the time) is kept in ``Reading.original``.

Values by metric (Tenovi's units): ``blood_pressure`` value_1 systolic, value_2 diastolic
(mmHg); ``pulse`` value_1 (/min) becomes a heart-rate reading, so a cuff's pulse is stored the
same way whether Tenovi posts it alone or in an array beside the pressure; ``spO2`` value_1
SpO2 (%), value_2 pulse (optional); ``weight`` value_1 in lb; ``temperature`` value_1 in °F;
``glucose`` value_1 in mg/dL. Other metrics (e.g. ``perfusion_index``) are reported as problems.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from rpm.domain import Metric, RawMessage, Reading
from rpm.domain.errors import DecodeError

from . import _fields as f
from .base import Decoded

DEVICE_ID_FIELD = "hwi_device_id"


@dataclass(frozen=True, slots=True)
class _Shape:
    """What ``value_1`` and ``value_2`` of one Tenovi metric hold: (component, UCUM unit)."""

    metric: Metric
    value_1: tuple[str, str]
    value_2: tuple[str, str] | None = None


_SHAPES: Mapping[str, _Shape] = MappingProxyType(
    {
        "blood_pressure": _Shape(
            Metric.BLOOD_PRESSURE, ("systolic", "mm[Hg]"), ("diastolic", "mm[Hg]")
        ),
        "pulse": _Shape(Metric.HEART_RATE, ("pulse", "/min")),
        "spo2": _Shape(Metric.SPO2, ("spo2", "%"), ("pulse", "/min")),
        "weight": _Shape(Metric.WEIGHT, ("weight", "[lb_av]")),
        "temperature": _Shape(Metric.BODY_TEMPERATURE, ("temperature", "[degF]")),
        "glucose": _Shape(Metric.GLUCOSE, ("glucose", "mg/dL")),
    }
)


def decode(raw: RawMessage) -> Decoded:
    """Decode a Tenovi measurement webhook; raise ``DecodeError`` when nothing in it is usable."""
    doc = f.load_json(raw.payload)
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise DecodeError("expected a measurement object or a non-empty list of them")
    readings, problems = f.collect(items, lambda item: [_reading(item, raw)])
    return f.finish(readings, problems)


def _reading(item: object, raw: RawMessage) -> Reading:
    if not isinstance(item, dict):
        raise DecodeError("a measurement must be a JSON object")
    name = item.get("metric")
    shape = _SHAPES.get(name.strip().lower()) if isinstance(name, str) else None
    if shape is None:
        raise DecodeError(f"unsupported metric {f.show(name)}")
    device = f.device_id(raw, f.identifier(item.get(DEVICE_ID_FIELD)), DEVICE_ID_FIELD)
    quantities = {shape.value_1[0]: (_value(item, "value_1"), shape.value_1[1])}
    if shape.value_2 is not None:
        raw_2 = item.get("value_2")
        if raw_2 is not None and raw_2 != "":
            quantities[shape.value_2[0]] = (_value(item, "value_2"), shape.value_2[1])
    measured_at = f.iso_time(item.get("timestamp"), "timestamp", naive_is_utc=True)
    extra = {"estimated_timestamp": True} if item.get("estimated_timestamp") is True else None
    return f.reading(raw, device, shape.metric, measured_at, quantities, extra)


def _value(item: dict[str, object], key: str) -> float:
    return f.number(item.get(key), key, strings=True)
