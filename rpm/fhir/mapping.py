"""Reading -> FHIR R4 Observation, as plain JSON. Pure.

Codes follow the FHIR R4 vital-signs profiles
(http://hl7.org/fhir/R4/observation-vitalsigns.html): LOINC codes from LOINC
(https://loinc.org), units in UCUM (http://unitsofmeasure.org), interpretation codes from
HL7 v3 ObservationInterpretation. The whole mapping is one table, :data:`SPECS`.

This is a hot path (the API and the EHR push build thousands per second), so it builds
dicts and never validates them; fhir.resources models check conformance in the tests. The
constant parts of an Observation (code, category, meta, interpretation) are built once per
metric and shared by every Observation returned: treat the results as read-only.
"""

from __future__ import annotations

import functools
import hashlib
import re
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
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
VITAL_SIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
# Identifier system of our Observations; the value is the Observation id.
IDENTIFIER_SYSTEM = "urn:rpm:observation"
PULSE = "pulse"  # the part id of a pulse measured alongside another metric
ENTERED_IN_ERROR = "entered-in-error"  # R4 ObservationStatus of a reading marked so


@dataclass(frozen=True, slots=True)
class Coding:
    code: str
    display: str


@dataclass(frozen=True, slots=True)
class ObservationSpec:
    """How one metric (or the pulse measured with it) is recorded."""

    codings: tuple[Coding, ...]
    profile: str | None  # None: not a vital sign (laboratory category)
    component: str | None  # the value's component for single-valued observations
    ucum: str  # the canonical UCUM unit of the value (rpm.domain.METRICS)
    unit_display: str

    @property
    def category(self) -> str:
        return "vital-signs" if self.profile else "laboratory"


# Vital-signs profiles: http://hl7.org/fhir/R4/observation-vitalsigns.html, table of codes
# (LOINC code and UCUM unit per profile).
HEART_RATE = ObservationSpec(
    (Coding("8867-4", "Heart rate"),),
    "http://hl7.org/fhir/StructureDefinition/heartrate",
    "pulse",
    "/min",
    "beats/minute",
)
SPECS: Mapping[Metric, ObservationSpec] = MappingProxyType(
    {
        # Panel 85354-9; its components 8480-6 / 8462-4 are in BP_COMPONENTS.
        Metric.BLOOD_PRESSURE: ObservationSpec(
            (Coding("85354-9", "Blood pressure panel with all children optional"),),
            "http://hl7.org/fhir/StructureDefinition/bp",
            None,
            "mm[Hg]",
            "mmHg",
        ),
        Metric.HEART_RATE: HEART_RATE,
        # The oxygensat profile requires 2708-6; 59408-5 says it was measured by oximetry.
        Metric.SPO2: ObservationSpec(
            (
                Coding("2708-6", "Oxygen saturation in Arterial blood"),
                Coding("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
            ),
            "http://hl7.org/fhir/StructureDefinition/oxygensat",
            "spo2",
            "%",
            "%",
        ),
        Metric.WEIGHT: ObservationSpec(
            (Coding("29463-7", "Body weight"),),
            "http://hl7.org/fhir/StructureDefinition/bodyweight",
            "weight",
            "kg",
            "kg",
        ),
        Metric.BODY_TEMPERATURE: ObservationSpec(
            (Coding("8310-5", "Body temperature"),),
            "http://hl7.org/fhir/StructureDefinition/bodytemp",
            "temperature",
            "Cel",
            "Cel",
        ),
        Metric.RESPIRATORY_RATE: ObservationSpec(
            (Coding("9279-1", "Respiratory rate"),),
            "http://hl7.org/fhir/StructureDefinition/resprate",
            "respiratory_rate",
            "/min",
            "breaths/minute",
        ),
        # Not a vital sign: category laboratory, no vital-signs profile. 2339-0 is blood
        # glucose; 41653-7 says capillary blood by glucometer, which is what a home meter is.
        Metric.GLUCOSE: ObservationSpec(
            (
                Coding("2339-0", "Glucose [Mass/volume] in Blood"),
                Coding("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer"),
            ),
            None,
            "glucose",
            "mg/dL",
            "mg/dL",
        ),
    }
)
# The bp profile requires both components (component:SystolicBP 1..1, DiastolicBP 1..1).
BP_COMPONENTS = (
    ("systolic", Coding("8480-6", "Systolic blood pressure")),
    ("diastolic", Coding("8462-4", "Diastolic blood pressure")),
)
# HL7 v3 ObservationInterpretation (R4 displays); the threshold rules give these codes.
INTERPRETATIONS: Mapping[str, str] = MappingProxyType(
    {"N": "Normal", "H": "High", "L": "Low", "HH": "Critical high", "LL": "Critical low"}
)


def _codeable(system: str, *codings: Coding) -> dict[str, Any]:
    return {
        "coding": [{"system": system, "code": c.code, "display": c.display} for c in codings],
        "text": codings[0].display,
    }


@dataclass(frozen=True, slots=True)
class _Fragments:
    """The JSON every Observation of one spec shares, built once."""

    spec: ObservationSpec
    code: dict[str, Any]
    category: list[dict[str, Any]]
    meta: dict[str, Any] | None


def _fragments(spec: ObservationSpec) -> _Fragments:
    display = "Vital Signs" if spec.profile else "Laboratory"
    category = [
        {
            "coding": [{"system": OBSERVATION_CATEGORY, "code": spec.category, "display": display}],
            "text": display,
        }
    ]
    meta = {"profile": [VITAL_SIGNS_PROFILE, spec.profile]} if spec.profile else None
    return _Fragments(spec, _codeable(LOINC, *spec.codings), category, meta)


_FRAGMENTS: Mapping[Metric, _Fragments] = MappingProxyType(
    {metric: _fragments(spec) for metric, spec in SPECS.items()}
)
_PULSE_FRAGMENTS = _fragments(HEART_RATE)
_BP_CODES = tuple((name, _codeable(LOINC, coding)) for name, coding in BP_COMPONENTS)
_INTERPRETATION_JSON: Mapping[str, list[dict[str, Any]]] = MappingProxyType(
    {
        code: [
            {
                "coding": [{"system": INTERPRETATION_SYSTEM, "code": code, "display": display}],
                "text": display,
            }
        ]
        for code, display in INTERPRETATIONS.items()
    }
)


# R4 datatypes.html#id. Our patient and device ids may hold "_", ":" or "@", or be longer.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
HASHED_ID_PREFIX = "h-"


@functools.lru_cache(maxsize=1 << 16)
def logical_id(key: str) -> str:
    """Our patient or device id as a FHIR id: itself when it is a valid one, else ``h-`` and
    the first 40 hex digits of its SHA-256 (SQL: ``rpm_fhir_id``, migration 0009)."""
    if _FHIR_ID.fullmatch(key):
        return key
    return HASHED_ID_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class RecordedReading:
    """A stored reading as the record needs it: identity, when stored, interpretation."""

    accepted: AcceptedReading
    uid: uuid.UUID
    stored_at: datetime
    interpretation: str | None = None
    entered_in_error_at: datetime | None = None  # marked entered-in-error (a correction)

    @property
    def last_updated(self) -> datetime:
        """When the record last changed: stored, or later marked entered-in-error."""
        return self.entered_in_error_at or self.stored_at

    @property
    def version(self) -> str:
        """``meta.versionId``: 1 as stored, 2 once marked entered-in-error."""
        return "1" if self.entered_in_error_at is None else "2"


def observation_id(reading_uid: uuid.UUID | str, part: str | None = None) -> str:
    """The Observation id: the reading's uid, suffixed for a split-off part (``<uid>-pulse``)."""
    return str(reading_uid) if part is None else f"{reading_uid}-{part}"


def reading_uid_of(obs_id: str) -> tuple[uuid.UUID, str | None]:
    """Inverse of ``observation_id``; raises ValueError for ids we never issue."""
    head, part = obs_id[:36], obs_id[37:] or None
    if len(obs_id) > 36 and (obs_id[36] != "-" or part != PULSE):
        raise ValueError(obs_id)
    return uuid.UUID(head), part


def parts_of(metric: Metric, values: Mapping[str, float]) -> tuple[str | None, ...]:
    """The parts a reading is recorded as: None for the main Observation, ``pulse``."""
    if metric is not Metric.HEART_RATE and PULSE in values:
        return (None, PULSE)
    return (None,)


def observations(
    accepted: AcceptedReading,
    *,
    issued: datetime,
    uid: uuid.UUID | str | None = None,
    interpretation: str | None = None,
) -> list[dict[str, Any]]:
    """The Observations recording one reading (a pulse measured alongside becomes its own).

    ``uid`` is the reading's identity as stored (computed from the reading when None);
    ``interpretation`` (N/H/L/HH/LL, from the threshold rules at ingest) belongs to the main
    Observation: the rules judged the metric, not the pulse measured with it.
    """
    r = accepted.reading
    frag = _FRAGMENTS[r.metric]
    obs_id = str(uid) if uid is not None else str(r.uid)
    subject = {"reference": "Patient/" + logical_id(accepted.patient_id)}
    device = {"reference": "Device/" + logical_id(r.device_id)}
    effective = r.measured_at.isoformat()
    issued_at = issued.isoformat()
    values = r.values
    main = _observation(frag, obs_id, subject, device, effective, issued_at)
    component = frag.spec.component
    if component is None:  # the blood-pressure panel
        try:
            main["component"] = [
                {"code": code, "valueQuantity": _quantity(values[name], "mm[Hg]", "mmHg")}
                for name, code in _BP_CODES
            ]
        except KeyError as exc:
            raise ValueError(f"a blood-pressure panel needs {exc.args[0]}") from None
    else:
        spec = frag.spec
        main["valueQuantity"] = _quantity(values[component], spec.ucum, spec.unit_display)
    if interpretation is not None:
        main["interpretation"] = _INTERPRETATION_JSON[interpretation]
    if r.metric is Metric.HEART_RATE or PULSE not in values:
        return [main]
    pulse = _observation(
        _PULSE_FRAGMENTS, obs_id + "-" + PULSE, subject, device, effective, issued_at
    )
    pulse["valueQuantity"] = _quantity(values[PULSE], "/min", "beats/minute")
    return [main, pulse]


def recorded_observations(rec: RecordedReading) -> list[dict[str, Any]]:
    """``observations`` of a stored reading: its stored uid, time and interpretation; status
    ``entered-in-error`` once marked so (R4 ObservationStatus: "the information should not
    be used"; the values stay, as the record of what was sent)."""
    out = observations(
        rec.accepted, issued=rec.stored_at, uid=rec.uid, interpretation=rec.interpretation
    )
    if rec.entered_in_error_at is not None:
        for obs in out:
            obs["status"] = ENTERED_IN_ERROR
    return out


def served_observations(rec: RecordedReading) -> list[dict[str, Any]]:
    """``recorded_observations`` as our FHIR API serves them, with ``meta.lastUpdated``: when
    the reading was stored, or marked entered-in-error after (what ``_sort=_lastUpdated``
    orders by), and ``meta.versionId`` (1, then 2 once marked), so a client that syncs sees
    the change. The EHR push leaves both out: the receiving server keeps its own."""
    out = recorded_observations(rec)
    meta = {"versionId": rec.version, "lastUpdated": rec.last_updated.isoformat()}
    for obs in out:
        obs["meta"] = {**obs.get("meta", {}), **meta}
    return out


def _observation(
    frag: _Fragments,
    obs_id: str,
    subject: dict[str, str],
    device: dict[str, str],
    effective: str,
    issued: str,
) -> dict[str, Any]:
    obs: dict[str, Any] = {"resourceType": "Observation", "id": obs_id}
    if frag.meta is not None:
        obs["meta"] = frag.meta
    obs["identifier"] = [{"system": IDENTIFIER_SYSTEM, "value": obs_id}]
    obs["status"] = "final"
    obs["category"] = frag.category
    obs["code"] = frag.code
    obs["subject"] = subject
    obs["device"] = device
    obs["effectiveDateTime"] = effective
    obs["issued"] = issued
    return obs


def _quantity(value: float, ucum: str, display: str) -> dict[str, Any]:
    return {"value": value, "unit": display, "system": UCUM, "code": ucum}
