"""Device quirks and payloads on the wire: formats, battery, clock skew, duplicates, bad input.

Pure. ``payload`` writes a session's readings in a device's format (canonical with the
device's battery; vendor formats through ``simulators.encoders``); ``stored_keys`` says which
readings the gateway will make of them (some formats carry a pulse as its own heart-rate
reading); ``MALFORMED`` builds the bad payloads a fleet sends, each with the quarantine
reason the gateway gives it (``rpm.domain.RejectReason`` values).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import numpy as np

from rpm.domain import Metric, Reading
from rpm.validation import ClockPolicy
from simulators.encoders import encode

# Format -> metrics whose "pulse" component arrives as a heart-rate reading of its own
# (see simulators/encoders.py: Tenovi posts a cuff's pulse as its own measurement, Open
# mHealth's pressure and saturation schemas and the FHIR pulse-oximetry profile have no pulse).
PULSE_APART: Mapping[str, frozenset[Metric]] = MappingProxyType(
    {
        "canonical": frozenset(),
        "tenovi": frozenset({Metric.BLOOD_PRESSURE}),
        "withings": frozenset(),
        "openmhealth": frozenset({Metric.BLOOD_PRESSURE, Metric.SPO2}),
        "fhir": frozenset({Metric.SPO2}),
    }
)
# Format -> metrics it cannot carry (Withings Getmeas has no glucose).
CANNOT_CARRY: Mapping[str, frozenset[Metric]] = MappingProxyType(
    {"withings": frozenset({Metric.GLUCOSE})}
)

# Device clocks: most are set by their gateway or phone; some drift. Skews within the
# gateway's limit (rpm.validation.ClockPolicy.max_skew, 5 min ahead) are stored as sent.
SMALL_SKEW_SHARE, SMALL_SKEW_SD_S = 0.3, 60.0
MAX_STORED_SKEW_S = ClockPolicy().max_skew.total_seconds() - 60.0
# A device whose clock battery died restarts at its factory date: far past ClockPolicy's
# max_age (30 days), so the gateway quarantines the reading as stale.
FACTORY_CLOCK = datetime(2000, 1, 1, tzinfo=UTC)
LOW_BATTERY = 15.0  # % at which devices show a low-battery sign (simulator's choice)


def draw_skew(rng: np.random.Generator) -> float:
    """A device's clock offset in seconds (positive: ahead), within the stored limit."""
    if rng.random() >= SMALL_SKEW_SHARE:
        return 0.0
    return float(np.clip(rng.normal(0.0, SMALL_SKEW_SD_S), -MAX_STORED_SKEW_S, MAX_STORED_SKEW_S))


def draw_battery(rng: np.random.Generator) -> tuple[float, float]:
    """(battery % at the start, drain % per day); one device in twenty starts nearly empty."""
    start = rng.uniform(5.0, 20.0) if rng.random() < 0.05 else rng.uniform(35.0, 100.0)
    return float(start), float(rng.uniform(0.3, 2.0))


def stored_keys(payload_format: str, readings: Sequence[Reading]) -> list[tuple[str, datetime]]:
    """(metric, measured_at) of each reading the gateway decodes from ``readings``."""
    apart = PULSE_APART[payload_format]
    keys = []
    for r in readings:
        keys.append((r.metric.value, r.measured_at))
        if r.metric in apart and "pulse" in r.values:
            keys.append((Metric.HEART_RATE.value, r.measured_at))
    return keys


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def canonical_items(
    readings: Sequence[Reading], device_id: str | None, battery: float | None
) -> list[dict[str, Any]]:
    """Canonical reading objects; ``device_id`` written only when the transport does not
    vouch for it (an integration's webhook)."""
    items = []
    for r in readings:
        item: dict[str, Any] = {
            "metric": r.metric.value,
            "measured_at": _iso(r.measured_at),
            "values": {k: _whole(v) for k, v in r.values.items()},
        }
        if device_id is not None:
            item["device_id"] = device_id
        if battery is not None:
            item["device"] = {"battery": round(battery)}
        items.append(item)
    return items


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def payload(
    payload_format: str,
    http: bool,
    readings: Sequence[Reading],
    device_id: str,
    battery: float | None,
) -> bytes:
    """The bytes a device (MQTT) or its vendor cloud (HTTP) sends for one session."""
    if payload_format != "canonical":
        return encode(payload_format, readings, device_id)
    items = canonical_items(readings, device_id if http else None, battery)
    return _dumps(items[0] if len(items) == 1 else {"readings": items})


# --- bad input ----------------------------------------------------------------------------


def _truncated(fmt: str, http: bool, r: Reading, device_id: str) -> bytes | None:
    # A connection cut mid-upload: the first half of the document.
    whole = payload(fmt, http, [r], device_id, None)
    return whole[: len(whole) // 2]


def _alone(r: Reading) -> Reading:
    """``r`` without a pulse beside its own value: one reading, one object in any format."""
    if r.metric is Metric.HEART_RATE or "pulse" not in r.values:
        return r
    values = {k: v for k, v in r.values.items() if k != "pulse"}
    return Reading(r.device_id, r.metric, values, r.measured_at, r.received_at)


def _doc(fmt: str, http: bool, r: Reading, device_id: str) -> Any:
    return json.loads(payload(fmt, http, [_alone(r)], device_id, None))


def _text_for_number(fmt: str, doc: Any) -> None:
    """A firmware bug writes a number as text the decoder cannot read."""
    if fmt == "canonical":
        doc["values"][next(iter(doc["values"]))] = "high"
    elif fmt == "tenovi":
        doc[0]["value_1"] = "n/a"
    elif fmt == "withings":
        for group in doc["body"]["measuregrps"]:
            for measure in group["measures"]:
                measure["value"] = "n/a"
    elif fmt == "openmhealth":
        for value in doc["body"].values():
            if isinstance(value, dict) and "value" in value:
                value["value"] = "n/a"
    else:  # fhir: the value, or every component's
        quantity = doc.get("valueQuantity")
        for q in [quantity] if quantity else [c["valueQuantity"] for c in doc["component"]]:
            q["value"] = "n/a"


# Format -> how its document names a metric we do not measure (a device model the vendor
# knows: ketones, steps, height). Withings leaves unknown measure types out silently, so a
# Withings payload cannot carry one to quarantine.
_UNKNOWN_METRIC: Mapping[str, Callable[[Any], None]] = MappingProxyType(
    {
        "canonical": lambda doc: doc.update(metric="blood_ketones"),
        "tenovi": lambda doc: doc[0].update(metric="perfusion_index"),
        "openmhealth": lambda doc: doc["header"]["schema_id"].update(name="step-count"),
        "fhir": lambda doc: doc["code"].update(
            coding=[{"system": "http://loinc.org", "code": "8302-2"}]  # body height
        ),
    }
)


def _wrong_type(fmt: str, http: bool, r: Reading, device_id: str) -> bytes | None:
    doc = _doc(fmt, http, r, device_id)
    _text_for_number(fmt, doc)
    return _dumps(doc)


def _unknown_metric(fmt: str, http: bool, r: Reading, device_id: str) -> bytes | None:
    rename = _UNKNOWN_METRIC.get(fmt)
    if rename is None:
        return None
    doc = _doc(fmt, http, r, device_id)
    rename(doc)
    return _dumps(doc)


# Metric -> values no living patient's device reports (outside rpm.domain.METRICS ranges).
_IMPLAUSIBLE: Mapping[Metric, Mapping[str, float]] = MappingProxyType(
    {
        Metric.BLOOD_PRESSURE: {"systolic": 310.0, "diastolic": 95.0},
        Metric.SPO2: {"spo2": 30.0},
        Metric.WEIGHT: {"weight": 0.5},
        Metric.BODY_TEMPERATURE: {"temperature": 46.0},
        Metric.GLUCOSE: {"glucose": 1500.0},
        Metric.HEART_RATE: {"pulse": 300.0},
    }
)


def implausible(r: Reading) -> Reading:
    """``r`` with a sensor fault's value (and no pulse, which would be stored apart)."""
    values = _IMPLAUSIBLE[r.metric]
    return Reading(r.device_id, r.metric, dict(values), r.measured_at, r.received_at)


def _implausible(fmt: str, http: bool, r: Reading, device_id: str) -> bytes | None:
    return payload(fmt, http, [implausible(r)], device_id, None)


def factory_clock(r: Reading) -> Reading:
    """``r`` as a device whose clock restarted at its factory date stamps it."""
    since_midnight = r.measured_at - r.measured_at.replace(hour=0, minute=0, second=0)
    t = FACTORY_CLOCK + since_midnight
    return Reading(r.device_id, r.metric, dict(r.values), t, r.received_at)


def _stale_clock(fmt: str, http: bool, r: Reading, device_id: str) -> bytes | None:
    return payload(fmt, http, [factory_clock(r)], device_id, None)


BadPayload = Callable[[str, bool, Reading, str], "bytes | None"]


@dataclass(frozen=True, slots=True)
class Bad:
    """One kind of bad input: how to make it, the quarantine reason, whether readings decode."""

    make: BadPayload
    reason: str
    decodes: bool  # True: the payload decodes, validation refuses the reading


MALFORMED: Mapping[str, Bad] = MappingProxyType(
    {
        "truncated_json": Bad(_truncated, "malformed", False),
        "wrong_type": Bad(_wrong_type, "malformed", False),
        "unknown_metric": Bad(_unknown_metric, "malformed", False),
        "implausible_value": Bad(_implausible, "implausible_value", True),
        "clock_reset": Bad(_stale_clock, "stale_timestamp", True),
    }
)
