"""Enrollment through the API against the real broker and database: per-device broker
logins that can publish only to their own topic, rotation, retirement, bindings, and
replay of quarantined payloads once their device is enrolled."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from rpm.local_endpoints import ServiceEndpoints
from rpm.server import Server
from tests.helpers import eventually, mosquitto_pub, staff_headers


def publish(
    services: ServiceEndpoints, username: str, password: str, device_id: str, payload: object
) -> subprocess.CompletedProcess[str]:
    """An independent device-side client: mosquitto_pub (MQTT 5) with the given login and
    that login's name as client id (a device login may connect with no other)."""
    result = mosquitto_pub(
        services.mqtt_port,
        username,
        password,
        f"rpm/v1/devices/{device_id}/readings",
        json.dumps(payload).encode(),
        "-V",
        "mqttv5",
        "-i",
        username,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def bp(sys_: int, minutes_ago: int = 1, **extra: object) -> dict[str, object]:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes_ago)
    return {
        "metric": "blood_pressure",
        "measured_at": at.isoformat(),
        "values": {"systolic": sys_, "diastolic": 80},
        **extra,
    }


@pytest.fixture
async def api(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    assert server.pool is not None
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.settings.api.port}",
        timeout=15,
        headers=await staff_headers(server.pool),
    ) as client:
        r = await client.post(
            "/api/patients",
            json={
                "id": "pat-a",
                "display_name": "Pat A",
                "phone": "+15550100007",
                "sms_consent": True,
            },
        )
        assert r.status_code == 201
        r = await client.post("/api/patients", json={"id": "pat-b", "display_name": "Pat B"})
        assert r.status_code == 201
        yield client


async def readings_of(api: httpx.AsyncClient, patient: str) -> list[dict[str, object]]:
    return (await api.get(f"/api/patients/{patient}/readings")).json()  # type: ignore[no-any-return]


async def enroll(api: httpx.AsyncClient, device_id: str, patient: str) -> dict[str, str]:
    r = await api.post(
        "/api/devices",
        json={
            "id": device_id,
            "kind": "bp_cuff",
            "vendor": "Acme",
            "serial": f"SN-{device_id}",
            "patient_id": patient,
            "bound_from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "actor": "admin:test",
        },
    )
    assert r.status_code == 201, r.text
    creds = r.json()["mqtt"]
    assert creds["username"] == device_id
    assert creds["topic"] == f"rpm/v1/devices/{device_id}/readings"
    return creds  # type: ignore[no-any-return]


async def test_a_device_publishes_only_as_itself(
    api: httpx.AsyncClient, services: ServiceEndpoints
) -> None:
    a = await enroll(api, "cuff-a", "pat-a")
    await enroll(api, "cuff-b", "pat-b")

    # Device A tries to publish on device B's topic: the broker refuses (MQTT 5 reason code).
    forged = await asyncio.to_thread(
        publish, services, a["username"], a["password"], "cuff-b", bp(190, minutes_ago=3)
    )
    assert "not authorized" in (forged.stdout + forged.stderr).lower() or forged.returncode != 0
    # Device A names device B inside its payload: the topic wins.
    ok = await asyncio.to_thread(
        publish,
        services,
        a["username"],
        a["password"],
        "cuff-a",
        bp(130, minutes_ago=2, device_id="cuff-b"),
    )
    assert ok.returncode == 0, ok.stderr

    stored = await eventually(lambda: readings_of(api, "pat-a"))
    assert [r["device_id"] for r in stored] == ["cuff-a"]
    assert await readings_of(api, "pat-b") == []
    assert (await api.get("/api/alerts")).json() == []  # the forged crisis never arrived


async def test_rotation_replaces_the_password_and_retirement_locks_the_device_out(
    api: httpx.AsyncClient, services: ServiceEndpoints
) -> None:
    old = await enroll(api, "cuff-r", "pat-a")
    r = await api.post("/api/devices/cuff-r/credentials", json={"actor": "admin:test"})
    assert r.status_code == 200
    new = r.json()
    assert new["password"] != old["password"]

    refused = await asyncio.to_thread(
        publish, services, "cuff-r", old["password"], "cuff-r", bp(120)
    )
    assert refused.returncode != 0
    accepted = await asyncio.to_thread(
        publish, services, "cuff-r", new["password"], "cuff-r", bp(121)
    )
    assert accepted.returncode == 0, accepted.stderr
    await eventually(lambda: readings_of(api, "pat-a"))

    r = await api.post("/api/devices/cuff-r/retire", json={"actor": "admin:test"})
    assert r.status_code == 200
    locked_out = await asyncio.to_thread(
        publish, services, "cuff-r", new["password"], "cuff-r", bp(122, minutes_ago=0)
    )
    assert locked_out.returncode != 0

    device = (await api.get("/api/devices/cuff-r")).json()
    assert device["retired_at"] is not None
    assert device["bindings"][0]["end"] is not None
    assert [e["action"] for e in device["events"]] == [
        "enroll",
        "bind",
        "rotate_credentials",
        "unbind",
        "retire",
    ]
    assert (await api.post("/api/devices/cuff-r/retire", json={"actor": "x"})).status_code == 409


async def test_binding_periods_never_overlap(api: httpx.AsyncClient) -> None:
    await enroll(api, "cuff-o", "pat-a")
    clash = await api.post(
        "/api/devices/cuff-o/bindings", json={"patient_id": "pat-b", "actor": "a"}
    )
    assert clash.status_code == 409
    now = datetime.now(UTC)
    ended = await api.post("/api/devices/cuff-o/unbind", json={"at": now.isoformat(), "actor": "a"})
    assert ended.json() == {"ended": 1}
    handed = await api.post(
        "/api/devices/cuff-o/bindings",
        json={
            "patient_id": "pat-b",
            "start": now.isoformat(),
            "end": (now + timedelta(days=7)).isoformat(),
            "actor": "a",
        },
    )
    assert handed.status_code == 201
    unknown = await api.post(
        "/api/devices/cuff-o/bindings",
        json={"patient_id": "nobody", "start": (now + timedelta(days=9)).isoformat(), "actor": "a"},
    )
    assert unknown.status_code == 422


async def test_enrollment_refuses_bad_ids_and_duplicates(api: httpx.AsyncClient) -> None:
    await enroll(api, "cuff-d", "pat-a")
    dup = await api.post("/api/devices", json={"id": "cuff-d", "kind": "bp_cuff", "actor": "a"})
    assert dup.status_code == 409
    for bad in ("a/b", "a+b", "#", "a:b", ""):
        r = await api.post("/api/devices", json={"id": bad, "kind": "bp_cuff", "actor": "a"})
        assert r.status_code == 422, bad


async def test_a_patients_channels_are_set_at_enrolment_and_kept_when_not_named(
    api: httpx.AsyncClient, server: Server
) -> None:
    assert server.pool is not None
    body = {"id": "pat-w", "display_name": "Pat W", "phone": "+15550100008"}
    r = await api.post(
        "/api/patients",
        json={**body, "preferred_channel": "whatsapp", "channel_fallback": ["sms"]},
    )
    assert r.status_code == 201
    r = await api.post("/api/patients", json={**body, "language": "es"})  # channels unnamed
    assert r.status_code == 201
    async with server.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT preferred_channel, channel_fallback FROM patients WHERE id = 'pat-w'"
        )
        default = await conn.fetchrow(
            "SELECT preferred_channel, channel_fallback FROM patients WHERE id = 'pat-b'"
        )
    assert row is not None
    assert default is not None
    assert (row["preferred_channel"], row["channel_fallback"]) == ("whatsapp", ["sms"])
    assert (default["preferred_channel"], default["channel_fallback"]) == ("sms", ["sms", "voice"])
    for bad in (["sms", "sms"], ["pager"], ["sms", "voice", "whatsapp", "sms"]):
        r = await api.post("/api/patients", json={**body, "channel_fallback": bad})
        assert r.status_code == 422, bad


async def test_quarantined_readings_of_an_unknown_device_replay_after_enrollment(
    api: httpx.AsyncClient, services: ServiceEndpoints
) -> None:
    # The shared fleet login (demo only) may publish as any device, enrolled or not.
    sent = await asyncio.to_thread(
        publish,
        services,
        services.mqtt_device_username,
        services.mqtt_device_password,
        "cuff-late",
        bp(135),
    )
    assert sent.returncode == 0

    async def pending() -> list[dict[str, object]]:
        rows = (await api.get("/api/quarantine", params={"reason": "unknown_device"})).json()
        return [r for r in rows if r["device_id"] == "cuff-late"]  # type: ignore[no-any-return]

    [item] = await eventually(pending)
    assert item["replayed_at"] is None

    await enroll(api, "cuff-late", "pat-b")
    r = await api.post("/api/quarantine/replay", json={"ids": [item["id"]]})
    assert r.status_code == 200
    assert r.json() == {
        "replayed": [item["id"]],
        "result": {"stored": 1, "duplicates": 0, "quarantined": 0, "reasons": {}},
    }
    assert len(await readings_of(api, "pat-b")) == 1
    rows = (await api.get("/api/quarantine", params={"replayed": "true"})).json()
    assert [row["id"] for row in rows] == [item["id"]]
    # Replaying again finds nothing pending.
    again = await api.post("/api/quarantine/replay", json={"ids": [item["id"]]})
    assert again.json()["replayed"] == []


async def test_a_replay_that_still_fails_stays_pending(
    api: httpx.AsyncClient, services: ServiceEndpoints
) -> None:
    await asyncio.to_thread(
        publish,
        services,
        services.mqtt_device_username,
        services.mqtt_device_password,
        "cuff-never",
        bp(135),
    )

    async def pending() -> list[dict[str, object]]:
        rows = (await api.get("/api/quarantine", params={"replayed": "false"})).json()
        return [r for r in rows if r["device_id"] == "cuff-never"]  # type: ignore[no-any-return]

    await eventually(pending)
    r = await api.post("/api/quarantine/replay", json={"reason": "unknown_device"})
    assert r.json()["result"]["quarantined"] == 1
    [still] = await pending()
    assert still["seen_count"] == 2


MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"


async def test_an_ehr_identifier_is_validated_stored_kept_and_removed(
    api: httpx.AsyncClient, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """``ehr_identifier`` ({system, value}, e.g. the hospital's MRN) is how the EHR push names
    the patient (docs/fhir.md, "Push to an EHR"): validated, stored, kept when not named, removed
    by null; another patient's is a conflict; never in a log."""
    assert server.pool is not None
    caplog.set_level("DEBUG")
    body = {"id": "pat-m", "display_name": "Pat M"}

    async def stored(patient: str = "pat-m") -> tuple[str | None, str | None]:
        assert server.pool is not None
        async with server.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT ehr_identifier_system, ehr_identifier_value FROM patients WHERE id = $1",
                patient,
            )
        assert row is not None
        return row["ehr_identifier_system"], row["ehr_identifier_value"]

    mrn = {"system": MRN_SYSTEM, "value": "MRN-0042424"}
    r = await api.post("/api/patients", json={**body, "ehr_identifier": mrn})
    assert r.status_code == 201, r.text
    assert await stored() == (MRN_SYSTEM, "MRN-0042424")
    assert await stored("pat-a") == (None, None)  # none given: pushed by our id

    r = await api.post("/api/patients", json={**body, "language": "es"})  # not named: kept
    assert r.status_code == 201
    assert await stored() == (MRN_SYSTEM, "MRN-0042424")

    for bad in (
        {"system": MRN_SYSTEM, "value": ""},
        {"system": MRN_SYSTEM, "value": "A" * 65},
        {"system": MRN_SYSTEM, "value": "12|34"},
        {"system": MRN_SYSTEM, "value": "12&name=x"},
        {"system": MRN_SYSTEM, "value": "12 34"},
        {"system": "not a uri", "value": "1234"},
        {"system": "hospital-mrn", "value": "1234"},  # no scheme
        {"system": "urn:a|b", "value": "1234"},
        {"system": "", "value": "1234"},
        {"system": MRN_SYSTEM},
        {"value": "1234"},
        "urn:oid:1.2.3|1234",
    ):
        r = await api.post("/api/patients", json={**body, "ehr_identifier": bad})
        assert r.status_code == 422, bad
    assert await stored() == (MRN_SYSTEM, "MRN-0042424")  # nothing refused changed it
    ok = {"system": MRN_SYSTEM, "value": "A" * 64}
    r = await api.post(
        "/api/patients", json={"id": "pat-n", "display_name": "N", "ehr_identifier": ok}
    )
    assert r.status_code == 201
    assert await stored("pat-n") == (MRN_SYSTEM, "A" * 64)

    # Two of our patients under one EHR identifier would mix their records.
    r = await api.post(
        "/api/patients", json={"id": "pat-o", "display_name": "Pat O", "ehr_identifier": mrn}
    )
    assert r.status_code == 409
    assert "MRN-0042424" not in r.text
    async with server.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM patients WHERE id = 'pat-o'") == 0

    r = await api.post("/api/patients", json={**body, "ehr_identifier": None})  # removed
    assert r.status_code == 201
    assert await stored() == (None, None)

    async with server.pool.acquire() as conn:  # the database holds both or neither
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE patients SET ehr_identifier_value = 'x' WHERE id = 'pat-m'")
    assert "MRN-0042424" not in caplog.text
