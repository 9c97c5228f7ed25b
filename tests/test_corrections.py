"""Corrections end to end: a vendor retracts a reading at /ingest/fhir (an Observation with
status entered-in-error or cancelled), or a nurse marks one entered-in-error through the API.
The reading is kept and marked, audited; the alerts it caused are withdrawn or annotated;
/fhir shows the status with a new version; the EHR stand-in (simulators/fhir_server.py) gets
a conditional update through the push outbox. The real server over HTTP throughout."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from rpm.domain import reading_uid
from rpm.server import Server
from rpm.settings import Settings
from simulators.fhir_server import FhirServer
from tests.dashboard_helpers import TEAM, add_nurse, form_token, sign_in
from tests.helpers import eventually, staff_headers

PATIENT = "pat-c"
VENDOR = "vendor-x"
SECRET = "vendor-x-bearer-secret-0123456789"
DEVICE = "SN-1"
OUR_DEVICE = f"{VENDOR}:{DEVICE}"
# Measured times relative to now: the validation's clock sanity checks them against the
# server's clock (max age, max skew), as a vendor's real readings are.
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@dataclass
class Clinic:
    server: Server
    api: httpx.AsyncClient  # an admin
    ehr: FhirServer
    secret: str  # the vendor integration's bearer secret
    nurse: dict[str, str]  # headers of a nurse of the patient's team


@pytest.fixture
async def clinic(server_settings: Settings) -> AsyncIterator[Clinic]:
    ehr = FhirServer()
    await ehr.start()
    settings = server_settings.updated(
        ehr={"fhir_base_url": ehr.base_url, "bearer_token": None, "timeout_s": 2.0}
    )
    server = Server(settings)
    await server.start()
    try:
        assert server.pool is not None
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.api.port}",
            timeout=15,
            headers=await staff_headers(server.pool),
        ) as api:
            r = await api.post("/api/patients", json={"id": PATIENT, "display_name": "C"})
            assert r.status_code == 201, r.text
            # The patient's care team ("north", created with its nurse).
            nurse = await staff_headers(server.pool, "nurse.n", "nurse", ["north"])
            r = await api.put(f"/api/patients/{PATIENT}/care-team", json={"team": "north"})
            assert r.status_code == 200, r.text
            r = await api.post(
                "/api/integrations",
                json={"id": VENDOR, "name": VENDOR, "auth": "token", "formats": ["fhir"]},
            )
            assert r.status_code == 201, r.text
            secret = r.json()["secret"]
            r = await api.post(
                "/api/devices",
                json={
                    "id": DEVICE,
                    "kind": "bp_cuff",
                    "integration": VENDOR,
                    "patient_id": PATIENT,
                    "bound_from": (START - timedelta(days=1)).isoformat(),
                    "actor": "admin:test",
                },
            )
            assert r.status_code == 201, r.text
            yield Clinic(server, api, ehr, secret, nurse)
    finally:
        await server.stop()
        await ehr.stop()


def observation(
    at: datetime, systolic: float = 200, diastolic: float = 110, status: str = "final"
) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "device": {"reference": f"Device/{DEVICE}"},
        "effectiveDateTime": at.isoformat(),
    }
    if status not in ("entered-in-error", "cancelled"):
        obs["component"] = [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": systolic, "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {"value": diastolic, "code": "mm[Hg]"},
            },
        ]
    return obs


async def post(c: Clinic, doc: dict[str, Any]) -> httpx.Response:
    headers = {
        "X-RPM-Integration": VENDOR,
        "Authorization": f"Bearer {c.secret}",
        "Content-Type": "application/fhir+json",
    }
    async with httpx.AsyncClient(base_url=str(c.api.base_url), timeout=15) as vendor:
        return await vendor.post("/ingest/fhir", content=json.dumps(doc), headers=headers)


def uid_at(at: datetime) -> str:
    return str(reading_uid(OUR_DEVICE, "blood_pressure", at))


async def alerts(c: Clinic) -> list[dict[str, Any]]:
    r = await c.api.get(
        "/api/alerts", params={"patient": PATIENT, "state": ["open", "acknowledged", "resolved"]}
    )
    assert r.status_code == 200, r.text
    return list(r.json())


async def alert(c: Clinic, alert_id: int) -> dict[str, Any]:
    r = await c.api.get(f"/api/alerts/{alert_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def readings(c: Clinic) -> list[dict[str, Any]]:
    r = await c.api.get(f"/api/patients/{PATIENT}/readings")
    assert r.status_code == 200, r.text
    return list(r.json())


async def fhir(c: Clinic, uid: str) -> dict[str, Any]:
    r = await c.api.get(f"/fhir/Observation/{uid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def at_ehr(c: Clinic, uid: str) -> dict[str, Any] | None:
    for obs in c.ehr.observations.values():
        if {"system": "urn:rpm:observation", "value": uid} in obs.get("identifier", []):
            return obs
    return None


async def days(c: Clinic) -> list[tuple[Any, int]]:
    assert c.server.pool is not None
    async with c.server.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT day, readings FROM patient_days WHERE patient_id = $1 ORDER BY day", PATIENT
        )
    return [(r["day"], r["readings"]) for r in rows]


# --- the vendor's path ---------------------------------------------------------------------------


async def test_a_vendor_retraction_marks_the_reading_withdraws_its_alert_and_updates_the_ehr(
    clinic: Clinic,
) -> None:
    c = clinic
    at = START
    uid = uid_at(at)
    r = await post(c, observation(at))
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 1
    [opened] = await alerts(c)
    assert opened["state"] == "open"
    assert str(opened["first_reading_uid"]) == uid
    before = await fhir(c, uid)
    assert before["status"] == "final"
    assert before["meta"]["versionId"] == "1"
    await eventually(lambda: _async(at_ehr(c, uid) is not None))

    retraction = observation(at, status="entered-in-error")
    r = await post(c, retraction)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "stored": 0,
        "duplicates": 0,
        "quarantined": 0,
        "reasons": {},
        "retracted": 1,
        "retractions_pending": 0,
    }
    # Kept, marked, never deleted.
    [kept] = await readings(c)
    assert kept["status"] == "entered-in-error"
    assert kept["values"] == {"systolic": 200, "diastolic": 110}
    # The alert stood on that reading alone: withdrawn by the system, saying why.
    withdrawn = await alert(c, opened["id"])
    assert withdrawn["state"] == "resolved"
    assert withdrawn["resolved_by"] == "system"
    assert "entered in error" in withdrawn["resolution_note"]
    assert [e["action"] for e in withdrawn["events"]][-1] == "withdraw"
    assert f"integration:{VENDOR}" in withdrawn["events"][-1]["note"]
    # /fhir: the status, a new version, a later lastUpdated.
    after = await fhir(c, uid)
    assert after["status"] == "entered-in-error"
    assert after["meta"]["versionId"] == "2"
    assert after["meta"]["lastUpdated"] > before["meta"]["lastUpdated"]
    # The day no longer counts (billing, adherence).
    assert await days(c) == []
    # The EHR's copy is updated in place (a conditional update), not duplicated.
    await eventually(lambda: _async((at_ehr(c, uid) or {}).get("status") == "entered-in-error"))
    ehr_copy = at_ehr(c, uid)
    assert ehr_copy is not None
    assert ehr_copy["meta"]["versionId"] == "2"
    assert c.ehr.duplicates() == {}
    assert c.ehr.updated == 1

    # A retry changes nothing more: same answer, no second event, no second push.
    events = len(withdrawn["events"])
    again = await post(c, retraction)
    assert again.json()["retracted"] == 1
    assert len((await alert(c, opened["id"]))["events"]) == events
    assert (await fhir(c, uid))["meta"] == after["meta"]
    assert c.server.pool is not None
    async with c.server.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM reading_corrections")
        pushes = await conn.fetchval("SELECT count(*) FROM outbox WHERE channel = 'fhir'")
        updated = await conn.fetchval(
            "SELECT result->'updated' FROM outbox WHERE dedupe_key LIKE 'fhir:corrections:%'"
        )
    assert updated == 1
    assert row["actor"] == f"integration:{VENDOR}"
    assert row["sent_status"] == "entered-in-error"
    assert row["source"] == "vendor"
    assert pushes == 2  # the reading, then its correction


async def test_a_retraction_before_its_reading_marks_it_when_it_arrives(clinic: Clinic) -> None:
    c = clinic
    at = START + timedelta(minutes=5)
    early = await post(c, observation(at, status="cancelled"))
    assert early.status_code == 200, early.text
    assert early.json()["retractions_pending"] == 1
    assert await readings(c) == []
    # Kept, and visible to admins, until its reading comes.
    [kept] = (await c.api.get("/api/readings/corrections", params={"pending": "true"})).json()
    assert (kept["uid"], kept["sent_status"], kept["reading_stored"]) == (
        uid_at(at),
        "cancelled",
        False,
    )
    r = await post(c, observation(at))
    assert r.json()["stored"] == 1
    assert (await c.api.get("/api/readings/corrections", params={"pending": "true"})).json() == []
    [done] = (await c.api.get("/api/readings/corrections")).json()
    assert done["reading_stored"] is True
    nurse = await c.api.get("/api/readings/corrections", headers=c.nurse)
    assert nurse.status_code == 403
    [stored] = await readings(c)
    assert stored["status"] == "entered-in-error"
    # Never evaluated: no alert from a value entered in error, no day counted.
    assert await alerts(c) == []
    assert await days(c) == []
    assert (await fhir(c, uid_at(at)))["status"] == "entered-in-error"


async def test_a_bundle_retracts_one_reading_and_stores_another(clinic: Clinic) -> None:
    c = clinic
    first, second = START + timedelta(minutes=10), START + timedelta(minutes=11)
    assert (await post(c, observation(first, 120, 80))).json()["stored"] == 1
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": observation(first, status="entered-in-error")},
            {"resource": observation(second, 121, 79)},
        ],
    }
    r = await post(c, bundle)
    assert r.status_code == 200, r.text
    assert (r.json()["stored"], r.json()["retracted"]) == (1, 1)
    statuses = {x["measured_at"]: x["status"] for x in await readings(c)}
    assert sorted(statuses.values()) == ["entered-in-error", "final"]
    assert [n for _, n in await days(c)] == [1]


async def test_a_retraction_from_an_unknown_device_is_refused_and_kept(clinic: Clinic) -> None:
    c = clinic
    doc = observation(START, status="entered-in-error")
    doc["device"] = {"reference": "Device/NOT-OURS"}
    r = await post(c, doc)
    assert r.status_code == 422, r.text
    assert r.json()["reasons"] == {"unknown_device": 1}
    q = await c.api.get("/api/quarantine", params={"reason": "unknown_device"})
    assert "retraction" in q.json()[0]["detail"]
    # Without its code or time it names no reading: malformed, kept, 422.
    bad = observation(START, status="entered-in-error")
    del bad["effectiveDateTime"]
    r = await post(c, bad)
    assert r.status_code == 422
    assert r.json()["reasons"] == {"malformed": 1}


# --- the staff path ------------------------------------------------------------------------------


async def test_a_nurse_marks_a_reading_and_the_alert_keeps_its_other_evidence(
    clinic: Clinic,
) -> None:
    c = clinic
    a, b = START + timedelta(minutes=20), START + timedelta(minutes=30)
    assert (await post(c, observation(a, 200, 110))).json()["stored"] == 1
    assert (await post(c, observation(b, 205, 112))).json()["stored"] == 1
    [episode] = await alerts(c)
    assert episode["occurrences"] == 2
    assert c.server.pool is not None
    nurse = c.nurse
    stranger = await staff_headers(c.server.pool, "nurse.s", "nurse", ["south"])
    path = f"/api/readings/{uid_at(a)}/entered-in-error"
    reason = {"reason": "cuff put on the wrong patient"}

    r = await c.api.post(path, json=reason, headers=stranger)
    assert r.status_code == 404  # another team's patient looks like no reading
    r = await c.api.post(path, json={"reason": "  "}, headers=nurse)
    assert r.status_code == 422
    r = await c.api.post(
        f"/api/readings/{uid_at(a + timedelta(seconds=1))}/entered-in-error",
        json=reason,
        headers=nurse,
    )
    assert r.status_code == 404

    r = await c.api.post(path, json=reason, headers=nurse)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["status"], out["by"], out["already"]) == (
        "entered-in-error",
        "staff:nurse.n",
        False,
    )
    again = await c.api.post(path, json={"reason": "something else"}, headers=nurse)
    assert again.json() == {**out, "already": True}
    # The other reading still stands: annotated, still open, the nurse sees why.
    annotated = await alert(c, episode["id"])
    assert annotated["state"] == "open"
    [event] = [e for e in annotated["events"] if e["action"] == "evidence_entered_in_error"]
    assert "cuff put on the wrong patient" in event["note"]
    assert event["actor"] == "system"
    # Audited: who marked which reading of which patient.
    audit = await c.api.get("/api/audit", params={"patient": PATIENT, "action": "update"})
    assert audit.status_code == 200, audit.text
    assert any(
        e["actor"] == "staff:nurse.n" and e["action"] == "update" and e["resource_id"] == uid_at(a)
        for e in audit.json()
    )

    # Now the other one: nothing is left that made it fire, so the system withdraws it.
    r = await c.api.post(f"/api/readings/{uid_at(b)}/entered-in-error", json=reason, headers=nurse)
    assert r.status_code == 200
    assert (await alert(c, episode["id"]))["state"] == "resolved"
    # /fhir, newest change first: both entered in error.
    search = await c.api.get(
        "/fhir/Observation", params={"patient": PATIENT, "_sort": "-_lastUpdated"}
    )
    statuses = [e["resource"]["status"] for e in search.json()["entry"]]
    assert statuses == ["entered-in-error", "entered-in-error"]


async def test_the_rule_state_forgets_a_retracted_value(clinic: Clinic) -> None:
    c = clinic
    at = START + timedelta(minutes=40)
    assert (await post(c, observation(at, 130, 85))).json()["stored"] == 1
    pipeline = c.server.pipeline
    assert pipeline is not None
    assert pipeline.engine.knows(PATIENT)
    assert (await post(c, observation(at, status="entered-in-error"))).json()["retracted"] == 1
    # Dropped from memory, rebuilt from storage (which leaves the reading out) when needed.
    assert not pipeline.engine.knows(PATIENT)
    assert c.server.pool is not None
    from rpm.storage import rule_state

    async with c.server.pool.acquire() as conn:
        history = await rule_state.history(
            conn, [PATIENT], START - timedelta(days=1), pipeline.engine.capacity
        )
        last = await conn.fetchval(
            "SELECT count(*) FROM patient_metric_last WHERE patient_id = $1", PATIENT
        )
    assert history == []
    assert last == 0


async def _async(value: bool) -> bool:
    return value


# --- the dashboard -------------------------------------------------------------------------------


async def test_a_nurse_marks_a_reading_from_the_patient_page(clinic: Clinic) -> None:
    c = clinic
    assert c.server.pool is not None
    await add_nurse(c.server.pool)  # nina.nurse, of TEAM
    r = await c.api.put(f"/api/patients/{PATIENT}/care-team", json={"team": TEAM})
    assert r.status_code == 200, r.text
    at = START + timedelta(minutes=50)
    assert (await post(c, observation(at, 200, 110))).json()["stored"] == 1
    page_url = f"/dashboard/patients/{PATIENT}"
    async with httpx.AsyncClient(base_url=str(c.api.base_url), timeout=15) as browser:
        assert (await sign_in(browser)).status_code == 303
        page = await browser.get(page_url, headers={"Accept": "text/html"})
        assert page.status_code == 200
        action = f"/dashboard/readings/{uid_at(at)}/entered-in-error"
        assert f'action="{action}"' in page.text
        csrf = form_token(page.text, "csrf-token")
        refused = await browser.post(action, data={"csrf_token": "wrong", "reason": "x"})
        assert refused.status_code == 403
        blank = await browser.post(
            action, data={"csrf_token": csrf, "reason": " ", "next": page_url}
        )
        assert blank.headers["location"].endswith("problem=reason")
        done = await browser.post(
            action, data={"csrf_token": csrf, "reason": "wrong patient", "next": page_url}
        )
        assert done.status_code == 303
        assert done.headers["location"] == f"{page_url}?done=entered-in-error"
        after = await browser.get(done.headers["location"], headers={"Accept": "text/html"})
    assert "Reading marked entered in error" in after.text
    assert 'class="entered-in-error"><td>' in after.text
    assert f'action="{action}"' not in after.text  # nothing left to mark
    [episode] = await alerts(c)
    assert episode["state"] == "resolved"
    detail = await alert(c, episode["id"])
    assert "staff:nina.nurse" in detail["events"][-1]["note"]
