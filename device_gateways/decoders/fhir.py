"""FHIR R4 Observations posted by an app: one Observation, or a Bundle (any type) of them.

Parsed as plain JSON, not with fhir.resources models: this is the hot path, and a decoder must
answer every input with readings or a ``DecodeError``, never a validation traceback.

Mapped by LOINC code (https://loinc.org; the R4 vital-signs profiles,
http://hl7.org/fhir/R4/observation-vitalsigns.html): 85354-9 blood-pressure panel with
components 8480-6 systolic, 8462-4 diastolic and optionally 8867-4 heart rate; 8867-4 heart
rate; 2708-6 or 59408-5 SpO2; 29463-7 body weight; 8310-5 body temperature; 9279-1
respiratory rate; 2339-0, 41653-7 or 15074-8 glucose. Only codings with the LOINC system (or
none) count. Quantities are read by UCUM code (``valueQuantity.code``, annotations such as
``{beats}`` dropped; ``unit`` when there is no code) and converted to canonical units.

Time: ``effectiveDateTime``, ``effectiveInstant``, or ``effectivePeriod.end`` (``start`` when
the period has no end). A date without a time of day, or a time without offset, is refused.

Device id: ``device.reference`` as ``Device/{id}`` (relative, absolute, or with
``/_history/``); a ``urn:uuid:`` reference is resolved to the Device entry of the Bundle with
that ``fullUrl`` and gives its first ``identifier.value`` (else its ``id``); otherwise
``device.identifier.value``. When the transport vouches for a device, every reading gets that
id instead.

Retractions: an Observation with status ``entered-in-error`` or ``cancelled`` says a reading
sent before was not a measurement. It names that reading by the same code, device and
effective time as the original (a value is not needed), and decodes to a ``Retraction``.

Skipped: Bundle entries that are not Observations (Patient, Device, ...) silently;
Observations with an unsupported code, or without a value, as problems.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

from device_gateways.units import without_annotations
from rpm.domain import RETRACTING_STATUSES, Metric, RawMessage, Reading, Retraction
from rpm.domain.errors import DecodeError

from . import _fields as f
from .base import Decoded

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
BP_PANEL = "85354-9"

# LOINC code -> (metric, component of a single-valued Observation; None for the panel).
_CODES: Mapping[str, tuple[Metric, str | None]] = MappingProxyType(
    {
        BP_PANEL: (Metric.BLOOD_PRESSURE, None),
        "8867-4": (Metric.HEART_RATE, "pulse"),
        "2708-6": (Metric.SPO2, "spo2"),
        "59408-5": (Metric.SPO2, "spo2"),
        "29463-7": (Metric.WEIGHT, "weight"),
        "8310-5": (Metric.BODY_TEMPERATURE, "temperature"),
        "9279-1": (Metric.RESPIRATORY_RATE, "respiratory_rate"),
        "2339-0": (Metric.GLUCOSE, "glucose"),  # Glucose [Mass/volume] in Blood
        "41653-7": (
            Metric.GLUCOSE,
            "glucose",
        ),  # Glucose [Mass/volume] in Capillary blood by Glucometer
        "15074-8": (Metric.GLUCOSE, "glucose"),  # Glucose [Moles/volume] in Blood
    }
)
# Components of the blood-pressure panel.
_BP_COMPONENTS: Mapping[str, str] = MappingProxyType(
    {"8480-6": "systolic", "8462-4": "diastolic", "8867-4": "pulse"}
)


def decode(raw: RawMessage) -> Decoded:
    """Decode an Observation or a Bundle of them; raise ``DecodeError`` when none is usable."""
    doc = f.load_json(raw.payload)
    if not isinstance(doc, dict):
        raise DecodeError("expected a FHIR Observation or Bundle object")
    kind = doc.get("resourceType")
    if kind == "Observation":
        observations: list[object] = [doc]
        devices: dict[str, dict[str, object]] = {}
    elif kind == "Bundle":
        observations, devices = _bundle(doc)
    else:
        raise DecodeError(f"expected resourceType Observation or Bundle, not {f.show(kind)}")
    if not any(_retracts(o) for o in observations):
        readings, problems = f.collect(observations, lambda obs: [_reading(obs, devices, raw)])
        return f.finish(readings, problems)
    # Retractions among them: decoded in place, so problems keep the entries' positions.
    retractions: list[Retraction] = []

    def item(obs: object) -> list[Reading]:
        if _retracts(obs):
            try:
                retractions.append(_retraction(obs, devices, raw))
            except DecodeError as exc:
                raise DecodeError(f"retraction: {exc}") from None
            return []
        return [_reading(obs, devices, raw)]

    readings, problems = f.collect(observations, item)
    if not retractions:
        return f.finish(readings, problems)
    return Decoded(readings, problems, retractions=retractions)


def _retracts(obs: object) -> bool:
    if not isinstance(obs, dict):
        return False
    status = obs.get("status")
    return isinstance(status, str) and status in RETRACTING_STATUSES


def _retraction(
    obs: object, devices: Mapping[str, dict[str, object]], raw: RawMessage
) -> Retraction:
    """The reading an ``entered-in-error`` or ``cancelled`` Observation takes back: the one
    with the same code, device and effective time."""
    assert isinstance(obs, dict)  # _retracts checked it
    code = _loinc(obs.get("code"), _CODES)
    if code is None:
        raise DecodeError(f"unsupported code {_first_code(obs.get('code'))}")
    metric, _ = _CODES[code]
    device = f.device_id(raw, _device(obs.get("device"), devices), "device")
    return Retraction(device, metric, _effective(obs), str(obs["status"]))


def _bundle(bundle: dict[str, object]) -> tuple[list[object], dict[str, dict[str, object]]]:
    """The Bundle's Observations, and its Device resources by ``fullUrl``."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        raise DecodeError("a Bundle needs an 'entry' list")
    if len(entries) > f.MAX_ITEMS:
        raise DecodeError(f"more than {f.MAX_ITEMS} entries in one Bundle")
    observations: list[object] = []
    devices: dict[str, dict[str, object]] = {}
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            observations.append(resource)  # reported as a problem of its own
            continue
        kind = resource.get("resourceType")
        if kind == "Observation":
            observations.append(resource)
        elif kind == "Device" and isinstance(url := entry.get("fullUrl"), str):
            devices[url] = resource
    if not observations:
        raise DecodeError("the Bundle holds no Observation")
    return observations, devices


def _reading(obs: object, devices: Mapping[str, dict[str, object]], raw: RawMessage) -> Reading:
    if not isinstance(obs, dict):
        raise DecodeError("a Bundle entry needs a 'resource' object")
    if obs.get("resourceType") != "Observation":
        raise DecodeError("not an Observation")
    code = _loinc(obs.get("code"), _CODES)
    if code is None:
        raise DecodeError(f"unsupported code {_first_code(obs.get('code'))}")
    metric, component = _CODES[code]
    device = f.device_id(raw, _device(obs.get("device"), devices), "device")
    measured_at = _effective(obs)
    if component is None:
        quantities = _panel(obs.get("component"))
    else:
        quantities = {component: _quantity(obs, "Observation")}
    return f.reading(raw, device, metric, measured_at, quantities)


def _loinc(concept: object, table: Mapping[str, object]) -> str | None:
    """The first LOINC code of a CodeableConcept that ``table`` knows."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return None
    for coding in codings:
        if not isinstance(coding, dict) or coding.get("system", LOINC) != LOINC:
            continue
        code = coding.get("code")
        if isinstance(code, str) and code in table:
            return code
    return None


def _first_code(concept: object) -> str:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if isinstance(codings, list) and codings and isinstance(codings[0], dict):
        return f.show(codings[0].get("code"))
    return "(none)"


def _panel(components: object) -> dict[str, tuple[float, str]]:
    if not isinstance(components, list):
        raise DecodeError("a blood-pressure panel needs a 'component' list")
    quantities: dict[str, tuple[float, str]] = {}
    for part in components:
        if not isinstance(part, dict):
            raise DecodeError("a component must be an object")
        code = _loinc(part.get("code"), _BP_COMPONENTS)
        if code is None:
            continue  # e.g. mean arterial pressure: not ours
        name = _BP_COMPONENTS[code]
        if name in quantities:
            raise DecodeError(f"component {code} appears twice")
        quantities[name] = _quantity(part, f"component {code}")
    return quantities


def _quantity(holder: dict[str, object], what: str) -> tuple[float, str]:
    quantity = holder.get("valueQuantity")
    if not isinstance(quantity, dict):
        reason = " (dataAbsentReason)" if "dataAbsentReason" in holder else ""
        raise DecodeError(f"{what}: no valueQuantity{reason}")
    system = quantity.get("system", UCUM)
    code = quantity.get("code") if system == UCUM else None
    unit = code if isinstance(code, str) else quantity.get("unit")
    if not isinstance(unit, str) or not unit.strip():
        raise DecodeError(f"{what}: no UCUM unit")
    return f.number(quantity.get("value"), f"{what} value"), without_annotations(unit.strip())


def _effective(obs: dict[str, object]) -> datetime:
    for key in ("effectiveDateTime", "effectiveInstant"):
        if key in obs:
            return f.iso_time(obs[key], key)
    period = obs.get("effectivePeriod")
    if isinstance(period, dict):
        key = "end" if "end" in period else "start"
        return f.iso_time(period.get(key), f"effectivePeriod.{key}")
    raise DecodeError("no effectiveDateTime, effectiveInstant or effectivePeriod")


def _device(ref: object, devices: Mapping[str, dict[str, object]]) -> str | None:
    """The device id a ``device`` Reference names, when it names one."""
    if not isinstance(ref, dict):
        return None
    reference = ref.get("reference")
    if isinstance(reference, str):
        if reference.startswith("urn:uuid:"):
            device = devices.get(reference)
            if device is not None:
                return _first_identifier(device.get("identifier")) or f.identifier(device.get("id"))
        else:
            parts = reference.split("/_history/")[0].split("/")
            if len(parts) >= 2 and parts[-2] == "Device":
                return f.identifier(parts[-1])
    identifier = ref.get("identifier")
    return f.identifier(identifier.get("value")) if isinstance(identifier, dict) else None


def _first_identifier(identifiers: object) -> str | None:
    if isinstance(identifiers, list) and identifiers and isinstance(identifiers[0], dict):
        return f.identifier(identifiers[0].get("value"))
    return None
