"""Our canonical JSON payload: one reading object, a list of them, or ``{"readings": [...]}``.

One reading::

    {"metric": "blood_pressure", "measured_at": "2026-11-23T08:00:00Z",
     "values": {"systolic": 142, "diastolic": 91, "pulse": 77},
     "device": {"battery": 81}}

Values are in the canonical UCUM unit of each component (see ``rpm.domain.METRICS``).
Over MQTT any ``device_id`` inside the payload is ignored: identity comes from the topic.
Over HTTP (an integration's webhook) each reading names its ``device_id``, which the
pipeline scopes to the integration.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import orjson

from rpm.domain import METRICS, Metric, RawMessage, Reading
from rpm.domain.errors import DecodeError
from rpm.domain.trusted import trusted

from ._fields import identifier
from .base import Decoded

MAX_READINGS_PER_PAYLOAD = 1000
# metric name -> (metric, component names, required component names), for the hot path.
_SHAPES: dict[str, tuple[Metric, frozenset[str], tuple[str, ...]]] = {
    m.value: (
        m,
        frozenset(c.name for c in spec.components),
        tuple(c.name for c in spec.components if c.required),
    )
    for m, spec in METRICS.items()
}
_STATUS_FIELDS = ("battery", "signal")
# Fields checked here, the tz-awareness Reading checks included: no second check per reading.
_trusted_reading = trusted(Reading)
_decoded = trusted(Decoded)


def decode(raw: RawMessage) -> Decoded:
    """Decode canonical JSON; raise ``DecodeError`` when nothing in it is usable."""
    try:
        # orjson: strict RFC 8259 (no NaN), UTF-8 only, nesting and integer size bounded.
        doc = orjson.loads(raw.payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    items: Any
    if isinstance(doc, list):
        items = doc
    elif isinstance(doc, dict) and "readings" in doc:
        items = doc["readings"]
    else:
        items = [doc]
    if not isinstance(items, list) or not items:
        raise DecodeError("expected a reading object, a non-empty list, or {'readings': [...]}")
    if len(items) > MAX_READINGS_PER_PAYLOAD:
        raise DecodeError(f"more than {MAX_READINGS_PER_PAYLOAD} readings in one payload")
    readings: list[Reading] = []
    problems: list[str] = []
    status: dict[str, dict[str, float]] = {}
    for index, item in enumerate(items):
        try:
            reading = _reading(item, raw)
            readings.append(reading)
            if device := _device_status(item):
                status.setdefault(reading.device_id, {}).update(device)
        except DecodeError as exc:
            problems.append(f"item {index}: {exc}" if len(items) > 1 else str(exc))
    if not readings:
        raise DecodeError("; ".join(problems))
    return _decoded(readings, problems, status, [])  # readings, problems, status, retractions


def _reading(item: object, raw: RawMessage) -> Reading:
    if not isinstance(item, dict):
        raise DecodeError("a reading must be a JSON object")
    name_in = item.get("metric")
    shape = _SHAPES.get(name_in) if isinstance(name_in, str) else None
    if shape is None:
        raise DecodeError(f"unknown metric {name_in!r}")
    metric, known, required = shape
    values_in = item.get("values")
    if not isinstance(values_in, dict) or not values_in:
        raise DecodeError("'values' must be a non-empty object")
    values: dict[str, float] = {}
    for name, value in values_in.items():
        if name not in known:
            raise DecodeError(f"{metric.value} has no component {name!r}")
        number = _finite(value)
        if number is None:
            raise DecodeError(f"{name} must be a finite number")
        values[name] = number
    missing = [c for c in required if c not in values]
    if missing:
        raise DecodeError(f"{metric.value} lacks {', '.join(missing)}")
    device_id = raw.device_id
    if device_id is None:
        # A usable id: printable (PostgreSQL text refuses NUL) and of reasonable length.
        named = item.get("device_id")
        named = identifier(named) if isinstance(named, str) else None
        if named is None:
            raise DecodeError("'device_id' is required when the transport does not name one")
        device_id = named
    measured_at = _timestamp(item.get("measured_at"))  # aware: checked there
    if raw.received_at.tzinfo is None:  # Reading's own check says so
        return Reading(device_id, metric, values, measured_at, raw.received_at)
    return _trusted_reading(device_id, metric, values, measured_at, raw.received_at, {})


def _timestamp(value: object) -> datetime:
    if not isinstance(value, str):
        raise DecodeError("'measured_at' must be an ISO 8601 string with a UTC offset")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise DecodeError(f"'measured_at' is not ISO 8601: {value[:40]!r}") from None
    if t.tzinfo is None:
        raise DecodeError("'measured_at' needs a UTC offset (e.g. 'Z'); local time is ambiguous")
    return t


def _device_status(item: dict[str, Any]) -> dict[str, float]:
    device = item.get("device")
    if not isinstance(device, dict):
        return {}
    return {k: v for k in _STATUS_FIELDS if (v := _finite(device.get(k))) is not None}


def _finite(value: object) -> float | None:
    """``value`` as a float when it is a finite JSON number (a huge integer is not)."""
    if type(value) is not float and type(value) is not int:  # exact: a bool is not a number
        return None
    assert isinstance(value, int | float)
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
