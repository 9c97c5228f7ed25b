"""Open mHealth data points: one data point, or a list of them.

::

    {"header": {"id": "9e4c...", "creation_date_time": "2026-11-23T08:00:05Z",
                "schema_id": {"namespace": "omh", "name": "blood-pressure", "version": "3.0"},
                "acquisition_provenance": {"source_name": "Omron Connect", "modality": "sensed",
                                           "device_id": "omron-bp-4411"}},
     "body": {"systolic_blood_pressure": {"value": 142, "unit": "mmHg"},
              "diastolic_blood_pressure": {"value": 91, "unit": "mmHg"},
              "effective_time_frame": {"date_time": "2026-11-23T08:00:00Z"}}}

Schemas (namespace ``omh``, any version; https://www.openmhealth.org/documentation/#/schema-docs/
schema-library): blood-pressure, heart-rate, oxygen-saturation, body-weight, body-temperature,
blood-glucose, respiratory-rate. A heart rate measured with a pressure or a saturation arrives
as its own heart-rate data point and is stored as a heart-rate reading.

Device id: ``header.acquisition_provenance.device_id``. Open mHealth has no standard field for
the device, and ``source_name`` names a product or app ("Omron Connect"), shared by every
patient's device, so it is never used as an identity: the posting integration must add
``device_id`` there. A data point without it is a problem. When the transport vouches for a
device, every reading gets that id instead.

Time: ``body.effective_time_frame.date_time``, or the end of its ``time_interval``
(``end_date_time``, or ``start_date_time`` plus ``duration``). A data point with a
``descriptive_statistic`` (an average, a maximum, ...) summarises several measurements; it is
not a measurement and is reported as a problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from rpm.domain import Metric, RawMessage, Reading
from rpm.domain.errors import DecodeError

from . import _fields as f
from .base import Decoded


@dataclass(frozen=True, slots=True)
class _Schema:
    """A supported schema: its metric and ``{component: body property}``."""

    metric: Metric
    properties: Mapping[str, str]


_SCHEMAS: Mapping[str, _Schema] = MappingProxyType(
    {
        "blood-pressure": _Schema(
            Metric.BLOOD_PRESSURE,
            {"systolic": "systolic_blood_pressure", "diastolic": "diastolic_blood_pressure"},
        ),
        "heart-rate": _Schema(Metric.HEART_RATE, {"pulse": "heart_rate"}),
        "oxygen-saturation": _Schema(Metric.SPO2, {"spo2": "oxygen_saturation"}),
        "body-weight": _Schema(Metric.WEIGHT, {"weight": "body_weight"}),
        "body-temperature": _Schema(Metric.BODY_TEMPERATURE, {"temperature": "body_temperature"}),
        "blood-glucose": _Schema(Metric.GLUCOSE, {"glucose": "blood_glucose"}),
        "respiratory-rate": _Schema(
            Metric.RESPIRATORY_RATE, {"respiratory_rate": "respiratory_rate"}
        ),
    }
)
# Open mHealth unit symbols (its unit-value schemas) -> UCUM codes.
_UNITS: Mapping[str, str] = MappingProxyType(
    {
        "mmHg": "mm[Hg]",
        "kPa": "kPa",
        "beats/min": "/min",
        "breaths/min": "/min",
        "%": "%",
        "kg": "kg",
        "g": "g",
        "lb": "[lb_av]",
        "C": "Cel",
        "F": "[degF]",
        "K": "K",
        "mg/dL": "mg/dL",
        "mmol/L": "mmol/L",
    }
)
# Open mHealth duration units -> seconds.
_SECONDS: Mapping[str, float] = MappingProxyType(
    {
        "ps": 1e-12,
        "ns": 1e-9,
        "us": 1e-6,
        "ms": 1e-3,
        "sec": 1.0,
        "min": 60.0,
        "h": 3600.0,
        "d": 86400.0,
        "wk": 604800.0,
    }
)
_MAX_DURATION_S = 366 * 86400.0


def decode(raw: RawMessage) -> Decoded:
    """Decode Open mHealth data points; raise ``DecodeError`` when nothing in them is usable."""
    doc = f.load_json(raw.payload)
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise DecodeError("expected a data point or a non-empty list of them")
    readings, problems = f.collect(items, lambda item: [_reading(item, raw)])
    return f.finish(readings, problems)


def _reading(point: object, raw: RawMessage) -> Reading:
    if not isinstance(point, dict):
        raise DecodeError("a data point must be a JSON object")
    header, body = point.get("header"), point.get("body")
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise DecodeError("a data point needs a 'header' object and a 'body' object")
    schema = _schema(header.get("schema_id"))
    if "descriptive_statistic" in body:
        stat = body["descriptive_statistic"]
        raise DecodeError(f"{f.show(stat)} summarises measurements; it is not a measurement")
    provenance = header.get("acquisition_provenance")
    found = f.identifier(provenance.get("device_id")) if isinstance(provenance, dict) else None
    device = f.device_id(raw, found, "header.acquisition_provenance.device_id")
    quantities = {name: _quantity(body.get(prop), prop) for name, prop in schema.properties.items()}
    return f.reading(
        raw, device, schema.metric, _time(body.get("effective_time_frame")), quantities
    )


def _schema(schema_id: object) -> _Schema:
    if not isinstance(schema_id, dict):
        raise DecodeError("header.schema_id must be an object")
    namespace, name = schema_id.get("namespace"), schema_id.get("name")
    schema = _SCHEMAS.get(name) if isinstance(name, str) and namespace == "omh" else None
    if schema is None:
        raise DecodeError(f"unsupported schema {f.show(namespace)}:{f.show(name)}")
    return schema


def _quantity(value: object, prop: str) -> tuple[float, str]:
    if not isinstance(value, dict):
        raise DecodeError(f"{prop} must be an object with 'value' and 'unit'")
    unit = value.get("unit")
    ucum = _UNITS.get(unit) if isinstance(unit, str) else None
    if ucum is None:
        raise DecodeError(f"{prop}: unsupported unit {f.show(unit)}")
    return f.number(value.get("value"), f"{prop}.value"), ucum


def _time(frame: object) -> datetime:
    if not isinstance(frame, dict):
        raise DecodeError("body.effective_time_frame must be an object")
    if "date_time" in frame:
        return f.iso_time(frame["date_time"], "effective_time_frame.date_time")
    interval = frame.get("time_interval")
    if not isinstance(interval, dict):
        raise DecodeError("effective_time_frame needs 'date_time' or 'time_interval'")
    if "end_date_time" in interval:
        return f.iso_time(interval["end_date_time"], "time_interval.end_date_time")
    start = f.iso_time(interval.get("start_date_time"), "time_interval.start_date_time")
    duration = interval.get("duration")
    if not isinstance(duration, dict):
        raise DecodeError("time_interval needs 'end_date_time' or 'start_date_time' and 'duration'")
    unit = duration.get("unit")
    scale = _SECONDS.get(unit) if isinstance(unit, str) else None
    if scale is None:
        raise DecodeError(f"time_interval.duration: unsupported unit {f.show(unit)}")
    seconds = f.number(duration.get("value"), "time_interval.duration.value") * scale
    if not 0 <= seconds <= _MAX_DURATION_S:
        raise DecodeError("time_interval.duration must be between 0 and a year")
    try:
        return start + timedelta(seconds=seconds)
    except OverflowError:
        raise DecodeError("time_interval ends out of range") from None
