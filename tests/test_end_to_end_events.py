"""Issue 17 through the running server: readings over MQTT (mosquitto_pub), the nurse over the
API. A crisis reading measured before the nurse resolved its episode but arriving after is
late evidence on it (no new alert, no SMS, in its history); one low blood pressure is one
alert, one SMS and one FHIR DetectedIssue listing both rules that saw it."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fhir.resources.R4B.detectedissue import DetectedIssue

from rpm.local_endpoints import ServiceEndpoints
from rpm.server import Server
from rpm.storage import registry
from simulators.twilio_sink import TwilioSink
from tests import helpers
from tests.helpers import eventually, staff_headers

PATIENT = "pat-events"
CUFF = "cuff-events"


def publish(services: ServiceEndpoints, reading: dict[str, Any]) -> None:
    result = helpers.mosquitto_pub(
        services.mqtt_port,
        services.mqtt_device_username,
        services.mqtt_device_password,
        f"rpm/v1/devices/{CUFF}/readings",
        json.dumps(reading).encode(),
    )
    assert result.returncode == 0, result.stderr


def bp(systolic: int, diastolic: int, at: datetime, pulse: int = 80) -> dict[str, Any]:
    return {
        "metric": "blood_pressure",
        "measured_at": at.isoformat(),
        "values": {"systolic": systolic, "diastolic": diastolic, "pulse": pulse},
    }


async def test_late_evidence_and_one_row_per_event_through_mqtt_and_the_api(
    server: Server, services: ServiceEndpoints, twilio: TwilioSink
) -> None:
    assert server.pool is not None
    pool = server.pool
    now = datetime.now(UTC).replace(microsecond=0)
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn,
            patient_id=PATIENT,
            display_name="Ada Example",
            phone="+15550100043",
            sms_consent=True,
            programs=["hypertension"],
        )
        await registry.enroll_device(
            conn, device_id=CUFF, kind="bp_cuff", patient_id=PATIENT, since=now - timedelta(days=1)
        )

    async def stored(n: int) -> int:
        async with pool.acquire() as conn:
            count = int(
                await conn.fetchval("SELECT count(*) FROM readings WHERE patient_id = $1", PATIENT)
            )
        return count if count >= n else 0

    async def patient_sms() -> list[str]:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT dedupe_key FROM outbox WHERE payload->>'patient_id' = $1"
                " AND payload->>'recipient' = 'patient' ORDER BY id",
                PATIENT,
            )
        return [r["dedupe_key"] for r in rows]

    api = f"http://127.0.0.1:{server.settings.api.port}"
    admin = await staff_headers(pool)
    async with httpx.AsyncClient(base_url=api, timeout=10, headers=admin) as http:

        async def alerts(**params: str) -> list[dict[str, Any]]:
            got = await http.get("/api/alerts", params={"patient": PATIENT, **params})
            return got.json()  # type: ignore[no-any-return]

        # 1. A crisis (SBP > 180, ACC/AHA 2017 §11.2) measured 4 h ago opens an alert.
        await asyncio.to_thread(publish, services, bp(192, 124, now - timedelta(hours=4)))
        [crisis] = await eventually(alerts)
        assert crisis["severity"] == "CRITICAL"
        assert crisis["rule_id"] == "bp.hypertensive_crisis"
        assert crisis["rules"] == ["bp.hypertensive_crisis"]
        await twilio.wait_for(1, timeout=10)

        # 2. The nurse resolves it.
        done = await http.post(
            f"/api/alerts/{crisis['id']}/resolve", json={"note": "Called; repeat 150/90."}
        )
        assert done.json()["state"] == "resolved"

        # 3. A crisis reading measured 3 h ago, before the resolution, arrives now (a phone
        # that synced late): stored, attached to the resolved alert, nothing new.
        await asyncio.to_thread(publish, services, bp(210, 130, now - timedelta(hours=3)))
        await eventually(lambda: stored(2))

        async def late_history() -> list[dict[str, Any]]:
            detail = (await http.get(f"/api/alerts/{crisis['id']}")).json()
            events: list[dict[str, Any]] = detail["events"]
            return events if events[-1]["action"] == "late_evidence" else []

        history = await eventually(late_history)
        assert [e["action"] for e in history] == ["open", "resolve", "late_evidence"]
        assert "before the resolution" in history[-1]["note"]
        assert await alerts(state="open") == []
        assert await patient_sms() == [f"sms:alert:{crisis['id']}:open"]
        async with pool.acquire() as conn:
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM alerts WHERE patient_id = $1 AND next_escalation_at"
                    " IS NOT NULL",
                    PATIENT,
                )
                == 0
            )

        # 4. One low blood pressure (SBP 84 < 90; NEWS2 scores it 3, the pulse of 112 2:
        # RCP 2017): one alert listing both rules, one SMS, one DetectedIssue.
        await asyncio.to_thread(publish, services, bp(84, 52, now, pulse=112))
        [low] = await eventually(lambda: alerts(state="open"))
        assert low["rule_id"] == "htn.low_bp"
        assert low["rules"] == ["htn.low_bp", "news2.partial"]
        assert [c["rule_id"] for c in low["contributions"]] == low["rules"]
        [_, sms] = await twilio.wait_for(2, timeout=10)
        assert sms.body is not None
        assert "NEWS2" not in sms.body  # the SMS speaks of the event once, as low pressure
        assert await patient_sms() == [
            f"sms:alert:{crisis['id']}:open",
            f"sms:alert:{low['id']}:open",
        ]
        issue = (await http.get(f"/fhir/DetectedIssue/{low['id']}")).json()
        DetectedIssue.model_validate(issue)
        assert issue["code"]["coding"][0]["code"] == "htn.low_bp"
        coded = [e["code"][0]["coding"][0]["code"] for e in issue["evidence"] if "code" in e]
        assert coded == ["htn.low_bp", "news2.partial"]
        assert "NEWS2" in issue["detail"]
        search = (await http.get("/fhir/DetectedIssue", params={"patient": PATIENT})).json()
        assert len(search["entry"]) == 2
