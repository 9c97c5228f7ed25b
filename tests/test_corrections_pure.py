"""The decisions behind corrections, without I/O: what a retracting Observation decodes to,
which reading it names, what happens to the alerts a reading entered in error caused, how
/fhir and the EHR push show it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from alerts.lifecycle import Action, AlertState
from alerts.retraction import CitedEvidence, on_entered_in_error
from device_gateways.decoders import fhir as fhir_decoder
from rpm.domain import (
    AcceptedReading,
    Binding,
    DeviceRecord,
    Metric,
    RawMessage,
    Reading,
    Rejection,
    RejectReason,
    Retraction,
    reading_uid,
)
from rpm.domain.errors import DecodeError
from rpm.fhir.bundles import push_entries, transaction
from rpm.fhir.mapping import RecordedReading, served_observations
from rpm.pipeline import namespaced
from rpm.pipeline.attribution import attribute
from rpm.storage.corrections import Correction

pytestmark = pytest.mark.pure

T = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
A, B, C = (str(uuid.uuid4()) for _ in range(3))


def raw(doc: object, integration: str | None = "acme") -> RawMessage:
    return RawMessage("http", "fhir", None, json.dumps(doc).encode(), T, integration=integration)


def bp(status: str, at: str = "2026-11-20T09:30:00+01:00", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "device": {"reference": "Device/SN-9"},
        "effectiveDateTime": at,
        **extra,
    }


# --- decoding: which reading a retraction names ----------------------------------------------


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled"])
def test_a_retracting_observation_names_the_reading_by_device_metric_and_time(
    status: str,
) -> None:
    decoded = fhir_decoder.decode(raw(bp(status)))
    assert decoded.readings == []
    [r] = decoded.retractions
    assert r == Retraction("SN-9", Metric.BLOOD_PRESSURE, T, status)  # 09:30+01:00 is 08:30Z
    # The same identity the original reading was stored under (whatever offset it carried).
    assert r.uid == reading_uid("SN-9", Metric.BLOOD_PRESSURE, T)
    # Webhook device ids are the integration's.
    [mine] = namespaced(decoded, "acme").retractions
    assert mine.device_id == "acme:SN-9"


def test_a_retraction_needs_no_value_but_a_code_and_a_time() -> None:
    doc = bp("entered-in-error")
    del doc["effectiveDateTime"]
    with pytest.raises(DecodeError, match="retraction: no effectiveDateTime"):
        fhir_decoder.decode(raw(doc))
    with pytest.raises(DecodeError, match="retraction: unsupported code"):
        fhir_decoder.decode(
            raw(bp("cancelled", code={"coding": [{"system": "http://loinc.org", "code": "1-8"}]}))
        )


def test_a_bundle_mixes_readings_and_retractions_and_keeps_problems() -> None:
    measured = bp(
        "final",
        at="2026-11-20T08:40:00Z",
        component=[
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": v, "code": "mm[Hg]"},
            }
            for code, v in (("8480-6", 121), ("8462-4", 79))
        ],
    )
    broken = bp("entered-in-error")
    del broken["device"]
    doc = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": bp("entered-in-error")},
            {"resource": measured},
            {"resource": broken},
        ],
    }
    decoded = fhir_decoder.decode(raw(doc, integration=None))
    assert [r.values for r in decoded.readings] == [{"systolic": 121, "diastolic": 79}]
    assert len(decoded.retractions) == 1
    assert len(decoded.problems) == 1
    assert decoded.problems[0].startswith("item 2: retraction:")


# --- attribution: whose reading, or why not -----------------------------------------------------


def test_a_retraction_is_attributed_by_the_binding_at_its_measured_time() -> None:
    r = Retraction("acme:SN-9", Metric.BLOOD_PRESSURE, T, "cancelled")
    message = raw({})
    bound = DeviceRecord("acme:SN-9", True, (Binding("pat-1", T - timedelta(days=3)),))
    correction = attribute(message, r, bound)  # a retired device may still retract
    assert correction == Correction(
        "acme:SN-9",
        "blood_pressure",
        T,
        "pat-1",
        "cancelled",
        "vendor",
        "integration:acme",
        "Observation.status cancelled sent by integration:acme",
    )
    unknown = attribute(message, r, None)
    assert isinstance(unknown, Rejection)
    assert unknown.reason is RejectReason.UNKNOWN_DEVICE
    later = DeviceRecord("acme:SN-9", False, (Binding("pat-1", T + timedelta(hours=1)),))
    unbound = attribute(message, r, later)
    assert isinstance(unbound, Rejection)
    assert unbound.reason is RejectReason.UNBOUND_DEVICE


# --- alerts: withdraw or annotate ---------------------------------------------------------------


def episode(
    first: str | None = A,
    last: str | None = A,
    contributions: tuple[str | None, ...] = (A,),
    occurrences: int = 1,
    state: AlertState = AlertState.OPEN,
) -> CitedEvidence:
    return CitedEvidence(1, state, first, last, contributions, occurrences)


@pytest.mark.parametrize(
    ("ep", "in_error", "action"),
    [
        # One reading, one rule: nothing else made it fire.
        (episode(), {A}, Action.WITHDRAW),
        (episode(state=AlertState.ACKNOWLEDGED), {A}, Action.WITHDRAW),
        # Resolved already: only annotated (nothing leaves resolved).
        (episode(state=AlertState.RESOLVED), {A}, Action.EVIDENCE_ENTERED_IN_ERROR),
        # Two rules fired on the same reading: still only that reading.
        (episode(contributions=(A, A), occurrences=2), {A}, Action.WITHDRAW),
        # A recurrence from B stands.
        (episode(last=B, occurrences=2), {A}, Action.EVIDENCE_ENTERED_IN_ERROR),
        # ... until B is entered in error too.
        (episode(last=B, occurrences=2), {A, B}, Action.WITHDRAW),
        # A recurrence the episode cannot name (A, ?, C): it may stand.
        (episode(last=C, occurrences=3), {A, C}, Action.EVIDENCE_ENTERED_IN_ERROR),
        # Another rule joined on B.
        (episode(contributions=(A, B), occurrences=2), {A}, Action.EVIDENCE_ENTERED_IN_ERROR),
        # A missing-data rule joined (no reading): it does not depend on A.
        (episode(contributions=(A, None), occurrences=2), {A}, Action.EVIDENCE_ENTERED_IN_ERROR),
        # Late evidence counted without a name.
        (episode(occurrences=2), {A}, Action.EVIDENCE_ENTERED_IN_ERROR),
    ],
)
def test_an_episode_is_withdrawn_only_when_nothing_else_made_it_fire(
    ep: CitedEvidence, in_error: set[str], action: Action
) -> None:
    assert on_entered_in_error(ep, frozenset(in_error)) is action


# --- the record: /fhir and the EHR push ---------------------------------------------------------


def recorded(marked: datetime | None) -> RecordedReading:
    reading = Reading("cuff-1", Metric.BLOOD_PRESSURE, {"systolic": 200, "diastolic": 110}, T, T)
    uid = reading_uid("cuff-1", Metric.BLOOD_PRESSURE, T)
    return RecordedReading(AcceptedReading(reading, "pat-1"), uid, T, "HH", marked)


def test_an_observation_entered_in_error_has_its_status_and_a_new_version() -> None:
    [before] = served_observations(recorded(None))
    [after] = served_observations(recorded(T + timedelta(hours=2)))
    assert (before["status"], before["meta"]["versionId"]) == ("final", "1")
    assert (after["status"], after["meta"]["versionId"]) == ("entered-in-error", "2")
    assert after["meta"]["lastUpdated"] == (T + timedelta(hours=2)).isoformat()
    assert after["component"] == before["component"]  # what was sent stays on record
    Observation.model_validate(after)


def test_the_ehr_gets_a_conditional_update_for_a_reading_entered_in_error() -> None:
    entries = push_entries([recorded(None), recorded(T + timedelta(hours=2))], "urn:rpm:patient")
    bundle = transaction(entries)
    create, update = (e["request"] for e in bundle["entry"])
    ident = f"identifier=urn:rpm:observation|{entries[0].observation_id}"
    assert create == {"method": "POST", "url": "Observation", "ifNoneExist": ident}
    assert update == {"method": "PUT", "url": f"Observation?{ident}"}
    assert bundle["entry"][1]["resource"]["status"] == "entered-in-error"
    Bundle.model_validate(bundle)
