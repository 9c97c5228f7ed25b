"""Withings measures in the shape of the Measure - Getmeas answer, or its ``body`` alone.

::

    {"status": 0, "body": {"updatetime": 1795420900, "timezone": "Europe/Paris",
     "measuregrps": [{"grpid": 5741, "attrib": 0, "date": 1795420800, "created": 1795420860,
       "category": 1, "deviceid": "a4c1...", "hash_deviceid": "a4c1...",
       "measures": [{"value": 142, "type": 10, "unit": 0}, {"value": 91, "type": 9, "unit": 0},
                    {"value": 77, "type": 11, "unit": 0}]}]}}

Withings' notification only says that data changed; the integration fetches Getmeas and
posts the answer here. A measure's value is ``value * 10**unit`` (65750, -3 is 65.75 kg).

Device id: the group's ``deviceid``, else its ``hash_deviceid``; a group without one (a
measure entered by hand in the app) is reported as a problem. When the transport vouches for
a device, every reading gets that id instead.

Time: the group's ``date`` (Unix seconds, UTC); ``timezone`` is only the user's zone.

Measure types used (Withings' units are already canonical, so nothing is converted):
1 weight (kg), 9 diastolic, 10 systolic (mmHg), 11 heart pulse (bpm), 54 SpO2 (%), 71 body
temperature (°C). In a group, 9 and 10 make one blood-pressure reading with 11 as its pulse;
54 with 11 makes an SpO2 reading with pulse; an 11 not taken by either is a heart-rate reading.
Other types (fat ratio, bone mass, ...) are not ours and are left out silently, and so are
groups of category 2 (user objectives, not measurements). A non-zero ``status`` is an error
answer and raises ``DecodeError``; an empty ``measuregrps`` decodes to no readings.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from rpm.domain import Metric, RawMessage, Reading
from rpm.domain.errors import DecodeError

from . import _fields as f
from .base import Decoded

CATEGORY_MEASURE = 1
CATEGORY_OBJECTIVE = 2
_MAX_EXPONENT = 20


@dataclass(frozen=True, slots=True)
class _Grouping:
    """A reading made from measure types of one group: ``{component: type}``."""

    metric: Metric
    required: Mapping[str, int]
    optional: Mapping[str, int]


# Withings measure types: https://developer.withings.com/api-reference#tag/measure (Getmeas,
# "meastype"). Order matters: pulse (11) goes to the first reading that takes it.
_GROUPINGS = (
    _Grouping(Metric.BLOOD_PRESSURE, {"systolic": 10, "diastolic": 9}, {"pulse": 11}),
    _Grouping(Metric.SPO2, {"spo2": 54}, {"pulse": 11}),
    _Grouping(Metric.WEIGHT, {"weight": 1}, {}),
    _Grouping(Metric.BODY_TEMPERATURE, {"temperature": 71}, {}),
    _Grouping(Metric.HEART_RATE, {"pulse": 11}, {}),
)
# Withings' unit of each type, as UCUM: all already canonical.
_UNITS: Mapping[int, str] = MappingProxyType(
    {1: "kg", 9: "mm[Hg]", 10: "mm[Hg]", 11: "/min", 54: "%", 71: "Cel"}
)


def decode(raw: RawMessage) -> Decoded:
    """Decode a Withings Getmeas answer; raise ``DecodeError`` when nothing in it is usable."""
    doc = f.load_json(raw.payload)
    if not isinstance(doc, dict):
        raise DecodeError("expected a Getmeas answer object")
    body: object = doc
    if "status" in doc:
        status = doc["status"]
        if status != 0 or isinstance(status, bool):
            raise DecodeError(
                f"Withings answered status {f.show(status)} ({f.show(doc.get('error'))})"
            )
        body = doc.get("body")
    if not isinstance(body, dict) or not isinstance(groups := body.get("measuregrps"), list):
        raise DecodeError("expected 'measuregrps', a list of measure groups")
    readings, problems = f.collect(groups, lambda group: _readings(group, raw))
    return f.finish(readings, problems, empty_ok=True)


def _readings(group: object, raw: RawMessage) -> list[Reading]:
    if not isinstance(group, dict):
        raise DecodeError("a measure group must be a JSON object")
    category = group.get("category", CATEGORY_MEASURE)
    if category == CATEGORY_OBJECTIVE and not isinstance(category, bool):
        return []
    if category != CATEGORY_MEASURE or isinstance(category, bool):
        raise DecodeError(f"unknown category {f.show(category)}")
    measures = _measures(group.get("measures"))
    wanted = [g for g in _GROUPINGS if any(t in measures for t in g.required.values())]
    if not wanted:
        return []
    found = f.identifier(group.get("deviceid")) or f.identifier(group.get("hash_deviceid"))
    device = f.device_id(raw, found, "'deviceid' or 'hash_deviceid'")
    measured_at = f.unix_time(group.get("date"), "date")
    return _group_readings(raw, device, measured_at, measures, wanted)


def _group_readings(
    raw: RawMessage,
    device: str,
    measured_at: datetime,
    measures: dict[int, float],
    wanted: list[_Grouping],
) -> list[Reading]:
    out: list[Reading] = []
    taken: set[int] = set()
    for grouping in wanted:
        if grouping.metric is Metric.HEART_RATE and 11 in taken:
            continue
        quantities: dict[str, tuple[float, str]] = {}
        for component, meas_type in grouping.required.items():
            if meas_type not in measures:
                raise DecodeError(f"{grouping.metric.value} lacks {component} (type {meas_type})")
            quantities[component] = (measures[meas_type], _UNITS[meas_type])
            taken.add(meas_type)
        for component, meas_type in grouping.optional.items():
            if meas_type in measures and meas_type not in taken:
                quantities[component] = (measures[meas_type], _UNITS[meas_type])
                taken.add(meas_type)
        out.append(f.reading(raw, device, grouping.metric, measured_at, quantities))
    return out


def _measures(value: object) -> dict[int, float]:
    """``{type: value}`` of the measure types we use; other types are skipped unread."""
    if not isinstance(value, list):
        raise DecodeError("'measures' must be a list")
    out: dict[int, float] = {}
    for measure in value:
        if not isinstance(measure, dict):
            raise DecodeError("a measure must be a JSON object")
        meas_type = measure.get("type")
        if not isinstance(meas_type, int) or isinstance(meas_type, bool):
            raise DecodeError(f"measure type must be an integer, not {f.show(meas_type)}")
        if meas_type not in _UNITS:
            continue
        if meas_type in out:
            raise DecodeError(f"measure type {meas_type} appears twice in one group")
        out[meas_type] = _scaled(measure.get("value"), measure.get("unit"), meas_type)
    return out


def _scaled(value: object, exponent: object, meas_type: int) -> float:
    """``value * 10**exponent``, in decimal so that 65750 and -3 give exactly 65.75."""
    what = f"measure type {meas_type}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"{what}: value must be a number, not {f.show(value)}")
    if isinstance(exponent, bool) or not isinstance(exponent, int):
        raise DecodeError(f"{what}: unit must be an integer power of ten, not {f.show(exponent)}")
    if abs(exponent) > _MAX_EXPONENT:
        raise DecodeError(f"{what}: unit {exponent} is out of range")
    number = f.number(value, f"{what} value")
    return f.number(float(decimal.Decimal(number).scaleb(exponent)), f"{what} value")
