"""Reading -> FHIR R4 Observation, and our other records as FHIR resources: every output
validates with fhir.resources (R4B models), and the vital-signs profile invariants that the
models do not check are checked here."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient

from rpm.domain import METRICS, AcceptedReading, Metric, Reading
from rpm.fhir import resources
from rpm.fhir.bundles import operation_outcome, searchset
from rpm.fhir.mapping import (
    INTERPRETATION_SYSTEM,
    OBSERVATION_CATEGORY,
    UCUM,
    VITAL_SIGNS_PROFILE,
    RecordedReading,
    logical_id,
    observations,
    reading_uid_of,
    recorded_observations,
)
from tests.helpers import T0, bp, single

pytestmark = pytest.mark.pure

LOINC = "http://loinc.org"
# R4 vital-signs profiles (observation-vitalsigns.html): the LOINC code each one requires and
# the UCUM code its valueQuantity must carry.
PROFILES = {
    "http://hl7.org/fhir/StructureDefinition/bp": ("85354-9", None),
    "http://hl7.org/fhir/StructureDefinition/heartrate": ("8867-4", "/min"),
    "http://hl7.org/fhir/StructureDefinition/resprate": ("9279-1", "/min"),
    "http://hl7.org/fhir/StructureDefinition/oxygensat": ("2708-6", "%"),
    "http://hl7.org/fhir/StructureDefinition/bodyweight": ("29463-7", "kg"),
    "http://hl7.org/fhir/StructureDefinition/bodytemp": ("8310-5", "Cel"),
}
OBSERVATION_STATUS = {
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
}
DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def codes(obs: dict[str, Any]) -> list[str]:
    return [c["code"] for c in obs["code"]["coding"]]


def check_quantity(q: dict[str, Any], ucum: str | None) -> None:
    assert isinstance(q["value"], int | float)
    assert q["unit"]
    assert q["system"] == UCUM
    if ucum is not None:
        assert q["code"] == ucum


def check_vital_signs(obs: dict[str, Any]) -> None:
    """The R4 vitalsigns profile and the specific profile ``meta.profile`` claims."""
    assert obs["status"] in OBSERVATION_STATUS
    categories = [c for cc in obs["category"] for c in cc["coding"]]
    assert {"system": OBSERVATION_CATEGORY, "code": "vital-signs"}.items() <= categories[0].items()
    assert obs["subject"]["reference"].startswith("Patient/")
    # vs-1: an effectiveDateTime is precise to the day (ours: to the second, with offset).
    assert DATE_TIME.fullmatch(obs["effectiveDateTime"])
    assert DATE_TIME.fullmatch(obs["issued"])
    [profile] = [p for p in obs["meta"]["profile"] if p != VITAL_SIGNS_PROFILE]
    assert VITAL_SIGNS_PROFILE in obs["meta"]["profile"]
    code, ucum = PROFILES[profile]
    assert code in codes(obs)
    assert all(c["system"] == LOINC for c in obs["code"]["coding"])
    if "component" in obs:
        # vs-3: every component has a value (or a dataAbsentReason).
        for component in obs["component"]:
            check_quantity(component["valueQuantity"], "mm[Hg]")
    else:
        # vs-2: without component or hasMember, a value (or a dataAbsentReason).
        check_quantity(obs["valueQuantity"], ucum)
    if profile.endswith("/bp"):
        # The bp profile: exactly one systolic (8480-6) and one diastolic (8462-4) component.
        component_codes = sorted(c["code"]["coding"][0]["code"] for c in obs["component"])
        assert component_codes == ["8462-4", "8480-6"]
        assert "valueQuantity" not in obs


def reading_of(metric: Metric) -> AcceptedReading:
    spec = METRICS[metric]
    values = {c.name: (c.low + c.high) / 2 for c in spec.components}
    if metric is Metric.BLOOD_PRESSURE:
        values = {"systolic": 130, "diastolic": 85, "pulse": 70}
    return AcceptedReading(Reading("dev-9", metric, values, T0, T0), "pat-9")


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize("interpretation", [None, "N", "H", "L", "HH", "LL"])
def test_every_metric_maps_to_a_valid_observation(
    metric: Metric, interpretation: str | None
) -> None:
    accepted = reading_of(metric)
    stored = T0 + timedelta(seconds=3)
    rec = RecordedReading(accepted, accepted.reading.uid, stored, interpretation)
    for obs in recorded_observations(rec):
        model = Observation.model_validate(obs)
        assert model.status == "final"
        assert obs["subject"] == {"reference": "Patient/pat-9"}
        assert obs["device"] == {"reference": "Device/dev-9"}
        assert obs["effectiveDateTime"] == "2026-11-23T08:00:00+00:00"
        assert obs["issued"] == "2026-11-23T08:00:03+00:00"
        assert obs["identifier"] == [{"system": "urn:rpm:observation", "value": obs["id"]}]
        if metric is Metric.GLUCOSE:
            assert obs["category"][0]["coding"][0]["code"] == "laboratory"
            assert "meta" not in obs
        else:
            check_vital_signs(obs)
    main = recorded_observations(rec)[0]
    if interpretation is None:
        assert "interpretation" not in main
    else:
        [coding] = main["interpretation"][0]["coding"]
        assert coding["system"] == INTERPRETATION_SYSTEM
        assert coding["code"] == interpretation


def test_the_stored_uid_is_the_identity_and_matches_the_computed_one() -> None:
    accepted = bp(142, 91)
    computed = observations(accepted, issued=T0)
    given = observations(accepted, issued=T0, uid=accepted.reading.uid)
    assert computed == given
    assert computed[0]["id"] == str(accepted.reading.uid)


def test_blood_pressure_is_a_panel_with_both_components() -> None:
    [panel, pulse] = observations(bp(142, 91, pulse=77), issued=T0, interpretation="H")
    assert codes(panel) == ["85354-9"]
    assert "valueQuantity" not in panel
    comp = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in panel["component"]}
    assert comp["8480-6"] == {
        "value": 142,
        "unit": "mmHg",
        "system": "http://unitsofmeasure.org",
        "code": "mm[Hg]",
    }
    assert comp["8462-4"]["value"] == 91
    assert panel["category"][0]["coding"][0]["code"] == "vital-signs"
    assert panel["meta"]["profile"][-1] == "http://hl7.org/fhir/StructureDefinition/bp"
    assert panel["interpretation"][0]["coding"][0]["code"] == "H"
    # The pulse measured by the cuff becomes its own heart-rate Observation, which the
    # blood-pressure rules did not judge.
    assert codes(pulse) == ["8867-4"]
    assert pulse["valueQuantity"]["code"] == "/min"
    assert pulse["id"] == f"{panel['id']}-pulse"
    assert "interpretation" not in pulse
    assert reading_uid_of(pulse["id"]) == (reading_uid_of(panel["id"])[0], "pulse")
    check_vital_signs(pulse)


def test_a_blood_pressure_panel_without_both_components_is_never_made() -> None:
    only_systolic = AcceptedReading(
        Reading("dev-1", Metric.BLOOD_PRESSURE, {"systolic": 120}, T0, T0), "pat-1"
    )
    with pytest.raises(ValueError, match="diastolic"):
        observations(only_systolic, issued=T0)


def test_reading_uid_of_refuses_ids_we_never_issue() -> None:
    uid = uuid.uuid4()
    assert reading_uid_of(str(uid)) == (uid, None)
    for bad in ("nope", f"{uid}-weight", f"{uid}xpulse", f"{uid}-"):
        with pytest.raises(ValueError, match=r"."):
            reading_uid_of(bad)


def test_spo2_carries_both_loinc_codes() -> None:
    [obs] = observations(single(Metric.SPO2, "spo2", 94), issued=T0)
    assert codes(obs) == ["2708-6", "59408-5"]
    assert obs["valueQuantity"]["code"] == "%"


def test_weight_uses_kg_and_glucose_is_laboratory() -> None:
    [w] = observations(single(Metric.WEIGHT, "weight", 81.2), issued=T0)
    assert codes(w) == ["29463-7"]
    assert w["valueQuantity"]["code"] == "kg"
    [g] = observations(single(Metric.GLUCOSE, "glucose", 110), issued=T0)
    assert codes(g) == ["2339-0", "41653-7"]
    assert g["valueQuantity"]["code"] == "mg/dL"
    assert g["category"][0]["coding"][0]["code"] == "laboratory"
    assert "meta" not in g


def test_ids_that_are_not_fhir_ids_become_stable_hashed_ones() -> None:
    assert logical_id("pat-42") == "pat-42"
    assert logical_id("p.1") == "p.1"
    for ours in ("p00001-bp_cuff", "acme-cloud:dev@1", "x" * 65):
        fhir_id = logical_id(ours)
        assert re.fullmatch(r"h-[0-9a-f]{40}", fhir_id)
        assert logical_id(ours) == fhir_id
    [obs] = observations(
        AcceptedReading(Reading("acme:dev_1", Metric.WEIGHT, {"weight": 80.0}, T0, T0), "pat_1"),
        issued=T0,
    )
    assert obs["device"]["reference"] == "Device/" + logical_id("acme:dev_1")
    assert obs["subject"]["reference"] == "Patient/" + logical_id("pat_1")
    Observation.model_validate(obs)


def test_searchset_bundle_and_operation_outcome_validate() -> None:
    entries = observations(bp(142, 91), issued=T0)
    bundle = searchset(
        entries,
        "http://127.0.0.1/fhir",
        "http://127.0.0.1/fhir/Observation?patient=pat-1",
        next_url="http://127.0.0.1/fhir/Observation?patient=pat-1&_cursor=x",
    )
    Bundle.model_validate(bundle)
    assert [link["relation"] for link in bundle["link"]] == ["self", "next"]
    OperationOutcome.model_validate(
        operation_outcome("invalid", "bad date", expression="Observation.effective")
    )


# --- patients, devices, alerts and SMS ---------------------------------------------------------


def test_patient_and_device_validate() -> None:
    p = resources.patient(
        {"id": "pat_7", "display_name": "Ada Example", "phone": "+15550100007", "language": "es"}
    )
    Patient.model_validate(p)
    assert p["id"] == logical_id("pat_7")
    assert p["identifier"] == [{"system": "urn:rpm:patient", "value": "pat_7"}]
    assert p["telecom"][0] == {"system": "sms", "value": "+15550100007", "use": "mobile"}
    d = resources.device(
        {
            "id": "acme-cloud:v-1",
            "kind": "bp_cuff",
            "vendor": "Acme",
            "serial": "SN1",
            "retired_at": None,
            "patient_id": "pat_7",
        }
    )
    Device.model_validate(d)
    assert d["status"] == "active"
    assert d["patient"] == {"reference": "Patient/" + logical_id("pat_7")}
    retired = resources.device({"id": "c-2", "kind": "scale", "retired_at": T0, "patient_id": None})
    Device.model_validate(retired)
    assert retired["status"] == "inactive"
    assert "patient" not in retired


def alert_row(**changes: Any) -> dict[str, Any]:
    uid = bp(192, 124).reading.uid
    row: dict[str, Any] = {
        "id": 5,
        "patient_id": "pat-1",
        "rule_id": "bp.hypertensive_crisis",
        "severity": "CRITICAL",
        "state": "open",
        "title": "Hypertensive crisis",
        "explanation": "192/124 mmHg above 180/120",
        "first_reading_uid": uid,
        "last_reading_uid": uid,
        "opened_at": T0,
        "acknowledged_at": None,
        "acknowledged_by": None,
        "resolved_at": None,
        "resolved_by": None,
        "resolution_note": None,
    }
    return row | changes


def test_an_alert_is_a_detected_issue_citing_its_observations() -> None:
    issue = resources.detected_issue(alert_row())
    DetectedIssue.model_validate(issue)
    assert issue["status"] == "preliminary"
    assert issue["severity"] == "high"
    assert issue["patient"] == {"reference": "Patient/pat-1"}
    uid = bp(192, 124).reading.uid
    assert issue["evidence"] == [{"detail": [{"reference": f"Observation/{uid}"}]}]
    assert "mitigation" not in issue
    later = T0 + timedelta(minutes=5)
    done = resources.detected_issue(
        alert_row(
            state="resolved",
            acknowledged_at=later,
            acknowledged_by="nurse:jo",
            resolved_at=later,
            resolved_by="nurse:jo",
            resolution_note="called, repeat 150/90",
            severity="MEDIUM",
            first_reading_uid=None,
            last_reading_uid=None,
        )
    )
    DetectedIssue.model_validate(done)
    assert done["status"] == "final"
    assert done["severity"] == "moderate"
    assert [m["action"]["coding"][0]["code"] for m in done["mitigation"]] == [
        "acknowledged",
        "resolved",
    ]
    assert "evidence" not in done  # a missing-data alert has no reading


def test_one_clinical_event_is_one_detected_issue_with_every_rule_as_evidence() -> None:
    # A low SBP fires htn.low_bp and scores NEWS2 (RCP 2017): one episode, one resource.
    uid = str(bp(84, 52).reading.uid)
    contributions = [
        {
            "rule_id": "htn.low_bp",
            "severity": "HIGH",
            "title": "Low blood pressure",
            "explanation": "84/52 mmHg, systolic < 90",
            "measured_at": T0.isoformat(),
            "reading_uid": uid,
        },
        {
            "rule_id": "news2.partial",
            "severity": "HIGH",
            "title": "Early warning score (NEWS2, partial)",
            "explanation": "score 5 from 2 of 5 parameters",
            "measured_at": T0.isoformat(),
            "reading_uid": uid,
        },
    ]
    issue = resources.detected_issue(
        alert_row(
            rule_id="htn.low_bp",
            title="Low blood pressure",
            explanation="84/52 mmHg, systolic < 90",
            contributions=contributions,
        )
    )
    DetectedIssue.model_validate(issue)
    assert issue["code"]["coding"][0]["code"] == "htn.low_bp"
    coded = [e["code"][0]["coding"][0]["code"] for e in issue["evidence"] if "code" in e]
    assert coded == ["htn.low_bp", "news2.partial"]
    assert issue["evidence"][-1]["detail"] == [{"reference": f"Observation/{uid}"}]
    assert issue["detail"].startswith("84/52 mmHg")
    assert "Also: Early warning score (NEWS2, partial): score 5" in issue["detail"]
    # A lone rule's alert is unchanged: no coded evidence, its explanation as the detail.
    alone = resources.detected_issue(
        alert_row(rule_id="htn.low_bp", contributions=contributions[:1])
    )
    assert all("code" not in e for e in alone["evidence"])


@pytest.mark.parametrize(
    ("direction", "status", "fhir_status"),
    [
        ("outbound", "delivered", "completed"),
        ("outbound", "sent", "in-progress"),
        ("outbound", "failed", "not-done"),
        ("outbound", "undelivered", "stopped"),
        ("inbound", "received", "completed"),
    ],
)
def test_a_patient_sms_is_a_communication(direction: str, status: str, fhir_status: str) -> None:
    at = datetime(2026, 11, 23, 8, 1, tzinfo=UTC)
    message = {
        "id": 12,
        "direction": direction,
        "patient_id": "pat-1",
        "alert_id": 5 if direction == "outbound" else None,
        "twilio_sid": "SM" + "0" * 32,
        "status": status,
        "error_code": 30003 if status == "undelivered" else None,
        "body": "Your blood pressure is in the danger range.",
        "created_at": at,
        "updated_at": at + timedelta(seconds=4),
    }
    comm = resources.communication(message)
    Communication.model_validate(comm)
    assert comm["status"] == fhir_status
    assert comm["subject"] == {"reference": "Patient/pat-1"}
    if direction == "outbound":
        assert comm["recipient"] == [{"reference": "Patient/pat-1"}]
        assert comm["about"] == [{"reference": "DetectedIssue/5"}]
        assert comm["sent"] == at.isoformat()
    else:
        assert comm["sender"] == {"reference": "Patient/pat-1"}
        assert comm["received"] == at.isoformat()
    if status == "undelivered":
        assert "30003" in comm["statusReason"]["text"]
