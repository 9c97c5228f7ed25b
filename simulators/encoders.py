"""Simulated devices in every supported payload format: readings -> payload bytes. Pure.

The inverse of ``device_gateways.decoders``, for round-trip tests and for fleets that speak a
vendor's format: ``encode(format, readings, device_id)``. Vendor formats carry their vendor's
units (Tenovi: lb and °F), so a round trip is exact up to the rounding of conversions.
Payloads follow the shapes documented in each decoder's module; identifiers a vendor would
invent (message ids, gateway ids) are derived from the reading, so encoding is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from rpm.domain import Metric, Reading
from rpm.domain.errors import UnsupportedReading

Encoder = Callable[[Sequence[Reading], str], bytes]

_LB_PER_KG = 1 / 0.45359237  # NIST SP 811, appendix B.8


def encode(payload_format: str, readings: Sequence[Reading], device_id: str) -> bytes:
    """``readings`` of ``device_id`` as one payload in ``payload_format``."""
    encoder = ENCODERS.get(payload_format)
    if encoder is None:
        raise ValueError(f"no encoder for {payload_format!r}")
    return encoder(readings, device_id)


def from_canonical(item: Mapping[str, Any], device_id: str, received_at: datetime) -> Reading:
    """A reading from one canonical dict as ``simulators.fleet.reading`` makes it."""
    return Reading(
        device_id=device_id,
        metric=Metric(item["metric"]),
        values={k: float(v) for k, v in item["values"].items()},
        measured_at=datetime.fromisoformat(item["measured_at"]),
        received_at=received_at,
    )


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _whole(value: float) -> int | float:
    """Whole numbers as JSON integers, the way devices send counts and mmHg."""
    return int(value) if float(value).is_integer() else value


def _message_id(r: Reading, part: str = "") -> str:
    return str(uuid.uuid5(r.uid, part or r.metric.value))


# --- canonical ---------------------------------------------------------------------------


def encode_canonical(readings: Sequence[Reading], device_id: str) -> bytes:
    items = [
        {
            "metric": r.metric.value,
            "measured_at": _iso(r.measured_at),
            "values": {k: _whole(v) for k, v in r.values.items()},
        }
        for r in readings
    ]
    return _dumps(items[0] if len(items) == 1 else {"readings": items})


# --- Tenovi ------------------------------------------------------------------------------

# metric -> (Tenovi metric, device name, sensor code); the sensor codes are the simulator's own.
_TENOVI: Mapping[Metric, tuple[str, str, str]] = MappingProxyType(
    {
        Metric.BLOOD_PRESSURE: ("blood_pressure", "Tenovi BPM", "10"),
        Metric.HEART_RATE: ("pulse", "Tenovi BPM", "10"),
        Metric.SPO2: ("spO2", "Tenovi Pulse Ox", "11"),
        Metric.WEIGHT: ("weight", "Tenovi Scale", "12"),
        Metric.BODY_TEMPERATURE: ("temperature", "Tenovi Thermometer", "13"),
        Metric.GLUCOSE: ("glucose", "Tenovi Glucometer", "14"),
    }
)


def _tenovi_values(r: Reading) -> list[tuple[Metric, str, str | None]]:
    """(metric, value_1, value_2) items as Tenovi posts them: strings, in its units."""
    v = r.values
    if r.metric is Metric.BLOOD_PRESSURE:
        items: list[tuple[Metric, str, str | None]] = [
            (r.metric, f"{v['systolic']:g}", f"{v['diastolic']:g}")
        ]
        if "pulse" in v:  # a cuff's pulse is a measurement of its own at Tenovi
            items.append((Metric.HEART_RATE, f"{v['pulse']:g}", None))
        return items
    if r.metric is Metric.SPO2:
        pulse = f"{v['pulse']:g}" if "pulse" in v else None
        return [(r.metric, f"{v['spo2']:g}", pulse)]
    if r.metric is Metric.WEIGHT:
        return [(r.metric, f"{v['weight'] * _LB_PER_KG:.1f}", None)]
    if r.metric is Metric.BODY_TEMPERATURE:
        return [(r.metric, f"{v['temperature'] * 9 / 5 + 32:.1f}", None)]
    if r.metric in (Metric.HEART_RATE, Metric.GLUCOSE):
        return [(r.metric, f"{next(iter(v.values())):g}", None)]
    raise UnsupportedReading(f"Tenovi has no {r.metric.value} device")


def encode_tenovi(readings: Sequence[Reading], device_id: str) -> bytes:
    gateway = hashlib.sha256(device_id.encode()).hexdigest()[:12]
    items = []
    for r in readings:
        for metric, value_1, value_2 in _tenovi_values(r):
            name, device_name, sensor_code = _TENOVI[metric]
            items.append(
                {
                    "metric": name,
                    "device_name": device_name,
                    "hwi_device_id": device_id,
                    "patient_id": "",
                    "hardware_uuid": gateway,
                    "sensor_code": sensor_code,
                    "value_1": value_1,
                    "value_2": value_2,
                    "created": _iso(r.measured_at + timedelta(seconds=41)),
                    "timestamp": _iso(r.measured_at),
                    "timezone_offset": 0,
                    "estimated_timestamp": False,
                }
            )
    return _dumps(items)


# --- Withings ----------------------------------------------------------------------------

# component -> (Withings measure type, decimals kept: value * 10**decimals, unit -decimals)
_WITHINGS_TYPES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "weight": (1, 3),
        "diastolic": (9, 0),
        "systolic": (10, 0),
        "pulse": (11, 0),
        "spo2": (54, 0),
        "temperature": (71, 2),
    }
)
_WITHINGS_METRICS = frozenset(
    {Metric.BLOOD_PRESSURE, Metric.HEART_RATE, Metric.SPO2, Metric.WEIGHT, Metric.BODY_TEMPERATURE}
)


def encode_withings(readings: Sequence[Reading], device_id: str) -> bytes:
    groups: list[dict[str, Any]] = []
    updated = 0
    for r in readings:
        if r.metric not in _WITHINGS_METRICS:
            raise UnsupportedReading(f"Withings Getmeas has no {r.metric.value}")
        date = int(r.measured_at.timestamp())
        updated = max(updated, date + 60)
        measures = []
        for component, value in r.values.items():
            meas_type, decimals = _WITHINGS_TYPES[component]
            measures.append(
                {"value": round(value * 10**decimals), "type": meas_type, "unit": -decimals}
            )
        groups.append(
            {
                "grpid": uuid.uuid5(r.uid, "withings").int % 10**10,
                "attrib": 0,
                "date": date,
                "created": date + 60,
                "modified": date + 60,
                "category": 1,
                "deviceid": device_id,
                "hash_deviceid": device_id,
                "measures": measures,
            }
        )
    return _dumps(
        {"status": 0, "body": {"updatetime": updated, "timezone": "UTC", "measuregrps": groups}}
    )


# --- Open mHealth ------------------------------------------------------------------------

# metric -> (schema name, version, {component: (body property, unit)})
_OMH: Mapping[Metric, tuple[str, str, Mapping[str, tuple[str, str]]]] = MappingProxyType(
    {
        Metric.BLOOD_PRESSURE: (
            "blood-pressure",
            "3.0",
            {
                "systolic": ("systolic_blood_pressure", "mmHg"),
                "diastolic": ("diastolic_blood_pressure", "mmHg"),
            },
        ),
        Metric.HEART_RATE: ("heart-rate", "2.0", {"pulse": ("heart_rate", "beats/min")}),
        Metric.SPO2: ("oxygen-saturation", "2.0", {"spo2": ("oxygen_saturation", "%")}),
        Metric.WEIGHT: ("body-weight", "2.0", {"weight": ("body_weight", "kg")}),
        Metric.BODY_TEMPERATURE: (
            "body-temperature",
            "3.0",
            {"temperature": ("body_temperature", "C")},
        ),
        Metric.GLUCOSE: ("blood-glucose", "3.0", {"glucose": ("blood_glucose", "mg/dL")}),
        Metric.RESPIRATORY_RATE: (
            "respiratory-rate",
            "2.0",
            {"respiratory_rate": ("respiratory_rate", "breaths/min")},
        ),
    }
)


def _omh_point(r: Reading, metric: Metric, values: Mapping[str, float], device_id: str) -> Any:
    name, version, properties = _OMH[metric]
    body: dict[str, Any] = {
        prop: {"value": _whole(values[component]), "unit": unit}
        for component, (prop, unit) in properties.items()
    }
    body["effective_time_frame"] = {"date_time": _iso(r.measured_at)}
    return {
        "header": {
            "id": _message_id(r, name),
            "creation_date_time": _iso(r.measured_at + timedelta(seconds=5)),
            "schema_id": {"namespace": "omh", "name": name, "version": version},
            "acquisition_provenance": {
                "source_name": "RPM simulator",
                "modality": "sensed",
                "device_id": device_id,
            },
        },
        "body": body,
    }


def encode_openmhealth(readings: Sequence[Reading], device_id: str) -> bytes:
    points = []
    for r in readings:
        points.append(_omh_point(r, r.metric, r.values, device_id))
        if r.metric is not Metric.HEART_RATE and "pulse" in r.values:
            # Open mHealth's pressure and saturation schemas have no pulse: it is its own point.
            points.append(_omh_point(r, Metric.HEART_RATE, r.values, device_id))
    return _dumps(points[0] if len(points) == 1 else points)


# --- FHIR R4 -----------------------------------------------------------------------------

_LOINC = "http://loinc.org"
_UCUM = "http://unitsofmeasure.org"
# metric -> LOINC codes of the Observation; components of a single value and their UCUM units.
_FHIR_CODES: Mapping[Metric, tuple[str, ...]] = MappingProxyType(
    {
        Metric.BLOOD_PRESSURE: ("85354-9",),
        Metric.HEART_RATE: ("8867-4",),
        Metric.SPO2: ("2708-6", "59408-5"),
        Metric.WEIGHT: ("29463-7",),
        Metric.BODY_TEMPERATURE: ("8310-5",),
        Metric.RESPIRATORY_RATE: ("9279-1",),
        Metric.GLUCOSE: ("2339-0",),
    }
)
_FHIR_COMPONENTS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "systolic": ("8480-6", "mm[Hg]"),
        "diastolic": ("8462-4", "mm[Hg]"),
        "pulse": ("8867-4", "/min"),
        "spo2": ("2708-6", "%"),
        "weight": ("29463-7", "kg"),
        "temperature": ("8310-5", "Cel"),
        "respiratory_rate": ("9279-1", "/min"),
        "glucose": ("2339-0", "mg/dL"),
    }
)


def _fhir_quantity(value: float, ucum: str) -> dict[str, Any]:
    return {"value": _whole(value), "unit": ucum, "system": _UCUM, "code": ucum}


def _fhir_observation(
    r: Reading, metric: Metric, values: Mapping[str, float], device_id: str
) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _message_id(r, metric.value),
        "status": "final",
        "code": {"coding": [{"system": _LOINC, "code": c} for c in _FHIR_CODES[metric]]},
        "effectiveDateTime": _iso(r.measured_at),
        "device": {"reference": f"Device/{device_id}"},
    }
    if metric is Metric.BLOOD_PRESSURE:
        obs["component"] = [
            {
                "code": {"coding": [{"system": _LOINC, "code": _FHIR_COMPONENTS[name][0]}]},
                "valueQuantity": _fhir_quantity(value, _FHIR_COMPONENTS[name][1]),
            }
            for name, value in values.items()
        ]
    else:
        name = "pulse" if metric is Metric.HEART_RATE else next(iter(values))
        obs["valueQuantity"] = _fhir_quantity(values[name], _FHIR_COMPONENTS[name][1])
    return obs


def encode_fhir(readings: Sequence[Reading], device_id: str) -> bytes:
    observations = []
    for r in readings:
        if r.metric is Metric.SPO2 and "pulse" in r.values:
            # The pulse oximetry profile has no pulse component: it is an Observation of its own.
            observations.append(
                _fhir_observation(r, r.metric, {"spo2": r.values["spo2"]}, device_id)
            )
            observations.append(
                _fhir_observation(r, Metric.HEART_RATE, {"pulse": r.values["pulse"]}, device_id)
            )
        else:
            observations.append(_fhir_observation(r, r.metric, r.values, device_id))
    if len(observations) == 1:
        return _dumps(observations[0])
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{obs['id']}", "resource": obs} for obs in observations],
    }
    return _dumps(bundle)


ENCODERS: Mapping[str, Encoder] = MappingProxyType(
    {
        "canonical": encode_canonical,
        "tenovi": encode_tenovi,
        "withings": encode_withings,
        "openmhealth": encode_openmhealth,
        "fhir": encode_fhir,
    }
)
