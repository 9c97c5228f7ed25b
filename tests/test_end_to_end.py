"""The whole flow through real parts: an independent MQTT client (mosquitto_pub) publishes a
crisis reading; the test sees it stored, the alert at the API and on the live stream, the SMS
request at the fake Twilio, and the FHIR Observation, valid per fhir.resources."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from rpm.local_endpoints import ServiceEndpoints
from rpm.server import Server
from rpm.storage import registry
from simulators.twilio_sink import TwilioSink
from tests import helpers
from tests.helpers import eventually, staff_headers


def mosquitto_pub(services: ServiceEndpoints, device_id: str, payload: bytes) -> None:
    result = helpers.mosquitto_pub(
        services.mqtt_port,
        services.mqtt_device_username,
        services.mqtt_device_password,
        f"rpm/v1/devices/{device_id}/readings",
        payload,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
async def patient(server: Server) -> str:
    assert server.pool is not None
    async with server.pool.acquire() as conn:
        await registry.upsert_patient(
            conn,
            patient_id="pat-e2e",
            display_name="Grace Example",
            phone="+15550100042",
            sms_consent=True,
            programs=["hypertension"],
        )
        await registry.enroll_device(
            conn,
            device_id="cuff-e2e",
            kind="bp_cuff",
            patient_id="pat-e2e",
            since=datetime.now(UTC) - timedelta(days=1),
        )
    return "pat-e2e"


async def test_crisis_reading_flows_to_api_stream_sms_and_fhir(
    server: Server, services: ServiceEndpoints, twilio: TwilioSink, patient: str
) -> None:
    api = f"http://127.0.0.1:{server.settings.api.port}"
    measured = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    reading = {
        "metric": "blood_pressure",
        "measured_at": measured.isoformat(),
        "values": {"systolic": 192, "diastolic": 124, "pulse": 88},
    }

    assert server.pool is not None
    admin = await staff_headers(server.pool)
    async with httpx.AsyncClient(base_url=api, timeout=10, headers=admin) as http:
        stream_events: list[dict[str, object]] = []
        stream_open = asyncio.Event()

        async def listen() -> None:
            async with http.stream("GET", "/api/alerts/stream") as resp:
                assert resp.headers["content-type"].startswith("text/event-stream")
                stream_open.set()
                event = None
                async for line in resp.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "alert":
                        stream_events.append(json.loads(line[6:]))
                        return

        listener = asyncio.create_task(listen())
        await asyncio.wait_for(stream_open.wait(), 5)
        await asyncio.to_thread(mosquitto_pub, services, "cuff-e2e", json.dumps(reading).encode())

        # 1. Stored.
        assert server.pool is not None

        async def stored() -> int:
            async with server.pool.acquire() as conn:  # type: ignore[union-attr]
                return int(
                    await conn.fetchval(
                        "SELECT count(*) FROM readings WHERE patient_id = $1", patient
                    )
                )

        assert await eventually(stored) == 1

        # 2. The alert at the API, with its explanation, and pushed on the live stream.
        async def alerts() -> list[dict[str, object]]:
            return (await http.get("/api/alerts")).json()  # type: ignore[no-any-return]

        [alert] = await eventually(alerts)
        assert alert["patient_id"] == patient
        assert alert["rule_id"] == "bp.hypertensive_crisis"
        assert alert["severity"] == "CRITICAL"
        assert alert["state"] == "open"
        assert "192/124 mmHg" in str(alert["explanation"])
        await asyncio.wait_for(listener, 5)
        assert stream_events[0]["alert_id"] == alert["id"]
        assert stream_events[0]["action"] == "open"

        # 3. The SMS request reached (fake) Twilio through the official client.
        [sms] = await twilio.wait_for(1, timeout=10)
        assert sms.to == "+15550100042"
        assert sms.body is not None
        assert "danger range" in sms.body
        assert "nurse" in sms.body
        assert sms.validity_period is None  # a critical alert's text never expires

        # 4. The record: FHIR Observations, valid R4.
        resp = await http.get("/fhir/Observation", params={"patient": patient})
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/fhir+json")
        bundle = resp.json()
        Bundle.model_validate(bundle)
        panel = next(
            e["resource"]
            for e in bundle["entry"]
            if e["resource"]["code"]["coding"][0]["code"] == "85354-9"
        )
        Observation.model_validate(panel)
        assert panel["category"][0]["coding"][0]["code"] == "vital-signs"
        comps = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in panel["component"]}
        assert comps["8480-6"]["value"] == 192
        assert comps["8480-6"]["code"] == "mm[Hg]"
        read = await http.get(f"/fhir/Observation/{panel['id']}")
        assert read.status_code == 200
        assert read.json() == panel

        # 5. The nurse acknowledges, then resolves with a note; both audited.
        ack = await http.post(f"/api/alerts/{alert['id']}/acknowledge", json={"actor": "nurse:n1"})
        assert ack.status_code == 200
        assert ack.json()["state"] == "acknowledged"
        again = await http.post(
            f"/api/alerts/{alert['id']}/acknowledge", json={"actor": "nurse:n1"}
        )
        assert again.status_code == 409
        res = await http.post(
            f"/api/alerts/{alert['id']}/resolve",
            json={"actor": "nurse:n1", "note": "Called patient; repeat 150/90."},
        )
        assert res.json()["state"] == "resolved"
        detail = (await http.get(f"/api/alerts/{alert['id']}")).json()
        assert [(e["action"], e["actor"]) for e in detail["events"]] == [
            ("open", "system:rules"),
            ("acknowledge", "staff:test.admin"),
            ("resolve", "staff:test.admin"),
        ]


async def test_malformed_and_unknown_device_are_quarantined_and_the_gateway_keeps_going(
    server: Server, services: ServiceEndpoints, patient: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    await asyncio.to_thread(mosquitto_pub, services, "cuff-e2e", b"{not json")
    await asyncio.to_thread(
        mosquitto_pub,
        services,
        "nobody-7",
        json.dumps({"metric": "spo2", "measured_at": now, "values": {"spo2": 97}}).encode(),
    )
    await asyncio.to_thread(
        mosquitto_pub,
        services,
        "cuff-e2e",
        json.dumps(
            {
                "metric": "blood_pressure",
                "measured_at": now,
                "values": {"systolic": 128, "diastolic": 79},
            }
        ).encode(),
    )
    api = f"http://127.0.0.1:{server.settings.api.port}"
    assert server.pool is not None
    admin = await staff_headers(server.pool)
    async with httpx.AsyncClient(base_url=api, headers=admin) as http:

        async def quarantined() -> list[dict[str, object]]:
            rows = (await http.get("/api/quarantine")).json()
            return rows if len(rows) >= 2 else []  # type: ignore[no-any-return]

        rows = await eventually(quarantined)
        assert {r["reason"] for r in rows} == {"malformed", "unknown_device"}
        assert any(r["payload"] == "{not json" for r in rows)
        readings = await eventually(lambda: _json(http.get(f"/api/patients/{patient}/readings")))
        assert readings[0]["values"] == {"systolic": 128.0, "diastolic": 79.0}


async def _json(request):  # type: ignore[no-untyped-def]
    return (await request).json()


async def test_readings_published_while_the_gateway_is_down_arrive_after_restart(
    server: Server, services: ServiceEndpoints, patient: str
) -> None:
    """Persistent session at QoS 1: the broker keeps what arrives while we are away."""
    settings = server.settings
    await server.stop()
    base = datetime.now(UTC).replace(microsecond=0)
    for i in range(5):
        payload = {
            "metric": "blood_pressure",
            "measured_at": (base - timedelta(minutes=i)).isoformat(),
            "values": {"systolic": 120 + i, "diastolic": 80},
        }
        await asyncio.to_thread(mosquitto_pub, services, "cuff-e2e", json.dumps(payload).encode())
    again = Server(settings)
    await again.start()
    try:

        async def stored() -> bool:
            async with again.pool.acquire() as conn:  # type: ignore[union-attr]
                return int(await conn.fetchval("SELECT count(*) FROM readings")) == 5

        assert await eventually(stored)
    finally:
        await again.stop()
