"""Reading -> FHIR R4 Observation, as plain JSON. Pure.

Codes follow the FHIR R4 vital-signs profiles
(http://hl7.org/fhir/R4/observation-vitalsigns.html): LOINC codes from LOINC
(https://loinc.org), units in UCUM (http://unitsofmeasure.org). The hot path
builds dicts; fhir.resources models check conformance in the tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from rpm.domain import AcceptedReading, Metric

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
VITAL_SIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
# Identifier system of our Observations; the value is the Observation id.
IDENTIFIER_SYSTEM = "urn:rpm:observation"


@dataclass(frozen=True, slots=True)
class Coding:
    code: str
    display: str


@dataclass(frozen=True, slots=True)
class ObservationSpec:
    """How one metric (or one component of it) is recorded."""

    codings: tuple[Coding, ...]
    profile: str | None  # None: not a vital sign (laboratory category)
    component: str | None  # the value's component for single-valued observations
    unit_display: str


# Vital-signs profiles: http://hl7.org/fhir/R4/observation-vitalsigns.html, table of codes.
HEART_RATE = ObservationSpec(
    (Coding("8867-4", "Heart rate"),),
    "http://hl7.org/fhir/StructureDefinition/heartrate",
    "pulse",
    "beats/minute",
)
SPECS: Mapping[Metric, ObservationSpec] = MappingProxyType(
    {
        Metric.BLOOD_PRESSURE: ObservationSpec(
            (Coding("85354-9", "Blood pressure panel with all children optional"),),
            "http://hl7.org/fhir/StructureDefinition/bp",
            None,
            "mmHg",
        ),
        Metric.HEART_RATE: HEART_RATE,
        Metric.SPO2: ObservationSpec(
            (
                Coding("2708-6", "Oxygen saturation in Arterial blood"),
                Coding("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
            ),
            "http://hl7.org/fhir/StructureDefinition/oxygensat",
            "spo2",
            "%",
        ),
        Metric.WEIGHT: ObservationSpec(
            (Coding("29463-7", "Body weight"),),
            "http://hl7.org/fhir/StructureDefinition/bodyweight",
            "weight",
            "kg",
        ),
        Metric.BODY_TEMPERATURE: ObservationSpec(
            (Coding("8310-5", "Body temperature"),),
            "http://hl7.org/fhir/StructureDefinition/bodytemp",
            "temperature",
            "Cel",
        ),
        Metric.RESPIRATORY_RATE: ObservationSpec(
            (Coding("9279-1", "Respiratory rate"),),
            "http://hl7.org/fhir/StructureDefinition/resprate",
            "respiratory_rate",
            "breaths/minute",
        ),
        # Not a vital sign: category laboratory, no vital-signs profile.
        Metric.GLUCOSE: ObservationSpec(
            (Coding("2339-0", "Glucose [Mass/volume] in Blood"),), None, "glucose", "mg/dL"
        ),
    }
)
BP_COMPONENTS = (
    ("systolic", Coding("8480-6", "Systolic blood pressure")),
    ("diastolic", Coding("8462-4", "Diastolic blood pressure")),
)
UCUM_BY_COMPONENT = {
    "systolic": "mm[Hg]",
    "diastolic": "mm[Hg]",
    "pulse": "/min",
    "spo2": "%",
    "weight": "kg",
    "temperature": "Cel",
    "respiratory_rate": "/min",
    "glucose": "mg/dL",
}
UNIT_DISPLAY = {"mm[Hg]": "mmHg", "/min": "/min", "%": "%", "kg": "kg", "Cel": "Cel"}


def observation_id(reading_uid: uuid.UUID, part: str | None = None) -> str:
    """The Observation id: the reading's uid, suffixed for a split-off part (``<uid>-pulse``)."""
    return str(reading_uid) if part is None else f"{reading_uid}-{part}"


def reading_uid_of(obs_id: str) -> tuple[uuid.UUID, str | None]:
    """Inverse of ``observation_id``; raises ValueError for ids we never issue."""
    head, part = obs_id[:36], obs_id[37:] or None
    if len(obs_id) > 36 and obs_id[36] != "-":
        raise ValueError(obs_id)
    return uuid.UUID(head), part


def observations(accepted: AcceptedReading, *, issued: datetime) -> list[dict[str, Any]]:
    """The Observations recording one reading (a pulse measured alongside becomes its own)."""
    r = accepted.reading
    spec = SPECS[r.metric]
    main = _base(accepted, spec, observation_id(r.uid), issued)
    if r.metric is Metric.BLOOD_PRESSURE:
        main["component"] = [
            {
                "code": _code(coding),
                "valueQuantity": _quantity(r.values[name], UCUM_BY_COMPONENT[name]),
            }
            for name, coding in BP_COMPONENTS
            if name in r.values
        ]
    else:
        assert spec.component is not None
        main["valueQuantity"] = _quantity(
            r.values[spec.component], UCUM_BY_COMPONENT[spec.component]
        )
    out = [main]
    if r.metric is not Metric.HEART_RATE and "pulse" in r.values:
        pulse = _base(accepted, HEART_RATE, observation_id(r.uid, "pulse"), issued)
        pulse["valueQuantity"] = _quantity(r.values["pulse"], "/min")
        out.append(pulse)
    return out


def _base(
    accepted: AcceptedReading, spec: ObservationSpec, obs_id: str, issued: datetime
) -> dict[str, Any]:
    r = accepted.reading
    category = "vital-signs" if spec.profile else "laboratory"
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": obs_id}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": OBSERVATION_CATEGORY,
                        "code": category,
                        "display": "Vital Signs" if spec.profile else "Laboratory",
                    }
                ],
                "text": "Vital Signs" if spec.profile else "Laboratory",
            }
        ],
        "code": _code(*spec.codings),
        "subject": {"reference": f"Patient/{accepted.patient_id}"},
        "device": {"reference": f"Device/{r.device_id}"},
        "effectiveDateTime": r.measured_at.isoformat(),
        "issued": issued.isoformat(),
    }
    if spec.profile:
        obs["meta"] = {"profile": [VITAL_SIGNS_PROFILE, spec.profile]}
    return obs


def _code(*codings: Coding) -> dict[str, Any]:
    return {
        "coding": [{"system": LOINC, "code": c.code, "display": c.display} for c in codings],
        "text": codings[0].display,
    }


def _quantity(value: float, ucum: str) -> dict[str, Any]:
    return {"value": value, "unit": UNIT_DISPLAY.get(ucum, ucum), "system": UCUM, "code": ucum}


def searchset(entries: list[dict[str, Any]], base_url: str, self_url: str) -> dict[str, Any]:
    """A searchset Bundle of resources."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(entries),
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {
                "fullUrl": f"{base_url}/{e['resourceType']}/{e['id']}",
                "resource": e,
                "search": {"mode": "match"},
            }
            for e in entries
        ],
    }


def operation_outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
