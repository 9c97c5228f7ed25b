"""Vendor webhooks over HTTP: authenticated per integration, idempotent on retry, and every
refusal a clear 4xx (with the payload kept in the quarantine when it was authenticated)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from device_gateways.decoders import DECODERS
from device_gateways.webhook_auth import sign
from rpm.server import Server
from tests.helpers import staff_headers


@pytest.fixture
async def api(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    assert server.pool is not None
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.settings.api.port}",
        timeout=15,
        headers=await staff_headers(server.pool),
    ) as client:
        assert (
            await client.post("/api/patients", json={"id": "pat-w", "display_name": "W"})
        ).status_code == 201
        yield client


async def integration(api: httpx.AsyncClient, ident: str, auth: str, formats: list[str]) -> str:
    r = await api.post(
        "/api/integrations", json={"id": ident, "name": ident, "auth": auth, "formats": formats}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["secret"])


async def enroll_vendor_device(api: httpx.AsyncClient, integration_id: str, vendor_id: str) -> None:
    r = await api.post(
        "/api/devices",
        json={
            "id": vendor_id,
            "kind": "bp_cuff",
            "integration": integration_id,
            "patient_id": "pat-w",
            "bound_from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "actor": "admin:test",
        },
    )
    assert r.status_code == 201, r.text
    assert r.json() == {"device_id": f"{integration_id}:{vendor_id}", "mqtt": None}


def body(vendor_id: str, systolic: int = 128) -> bytes:
    at = (datetime.now(UTC) - timedelta(minutes=2)).replace(microsecond=0).isoformat()
    return json.dumps(
        [
            {
                "device_id": vendor_id,
                "metric": "blood_pressure",
                "measured_at": at,
                "values": {"systolic": systolic, "diastolic": 81},
            }
        ]
    ).encode()


def signed(ident: str, secret: str, payload: bytes) -> dict[str, str]:
    return {
        "X-RPM-Integration": ident,
        "X-RPM-Signature": sign(secret, payload, int(time.time())),
        "Content-Type": "application/json",
    }


async def test_signed_webhook_is_stored_once_however_often_it_is_retried(
    api: httpx.AsyncClient,
) -> None:
    secret = await integration(api, "acme-cloud", "hmac", ["canonical"])
    await enroll_vendor_device(api, "acme-cloud", "SN-77")
    payload = body("SN-77")
    first = await api.post(
        "/ingest/canonical", content=payload, headers=signed("acme-cloud", secret, payload)
    )
    assert first.status_code == 200, first.text
    assert first.json() == {"stored": 1, "duplicates": 0, "quarantined": 0, "reasons": {}}
    for _ in range(3):  # the vendor retries (timeouts, its own crash): stored once
        again = await api.post(
            "/ingest/canonical", content=payload, headers=signed("acme-cloud", secret, payload)
        )
        assert again.json()["duplicates"] == 1
    stored = (await api.get("/api/patients/pat-w/readings")).json()
    assert [r["device_id"] for r in stored] == ["acme-cloud:SN-77"]


async def test_bearer_integration(api: httpx.AsyncClient) -> None:
    secret = await integration(api, "bearer-co", "token", ["canonical"])
    await enroll_vendor_device(api, "bearer-co", "D1")
    payload = body("D1")
    headers = {"X-RPM-Integration": "bearer-co", "Authorization": f"Bearer {secret}"}
    assert (
        await api.post("/ingest/canonical", content=payload, headers=headers)
    ).status_code == 200
    headers["Authorization"] = "Bearer wrong"
    assert (
        await api.post("/ingest/canonical", content=payload, headers=headers)
    ).status_code == 401


async def test_refusals_are_clear_4xx(api: httpx.AsyncClient) -> None:
    secret = await integration(api, "strict-co", "hmac", ["canonical"])
    await enroll_vendor_device(api, "strict-co", "D2")
    payload = body("D2")
    cases = [
        ("/ingest/canonical", {}, 401),  # no integration named
        ("/ingest/canonical", {"X-RPM-Integration": "strict-co"}, 401),  # unsigned
        ("/ingest/canonical", {"X-RPM-Integration": "nope", "X-RPM-Signature": "t=1,v1=00"}, 401),
        (
            "/ingest/canonical",
            {
                "X-RPM-Integration": "strict-co",
                "X-RPM-Signature": sign("not-the-secret", payload, int(time.time())),
            },
            401,
        ),
        (
            "/ingest/canonical",
            {
                "X-RPM-Integration": "strict-co",  # replayed an hour later
                "X-RPM-Signature": sign(secret, payload, int(time.time()) - 3600),
            },
            401,
        ),
        ("/ingest/no-such-format", signed("strict-co", secret, payload), 404),
    ]
    for path, headers, status in cases:
        r = await api.post(path, content=payload, headers=headers)
        assert r.status_code == status, (headers, r.text)
        assert r.json()["detail"]
    # Signed, but the body is not what was signed.
    tampered = await api.post(
        "/ingest/canonical", content=body("D2", 199), headers=signed("strict-co", secret, payload)
    )
    assert tampered.status_code == 401
    # Too large, refused before it is read whole.
    big = b"[" + b" " * (1024 * 1024) + b"]"
    r = await api.post("/ingest/canonical", content=big, headers=signed("strict-co", secret, big))
    assert r.status_code == 413


async def test_authenticated_bad_payloads_are_quarantined_with_422(api: httpx.AsyncClient) -> None:
    secret = await integration(api, "sloppy-co", "hmac", ["canonical"])
    await enroll_vendor_device(api, "sloppy-co", "D3")
    junk = b'{"metric": "blood_pressure", "values": '
    r = await api.post("/ingest/canonical", content=junk, headers=signed("sloppy-co", secret, junk))
    assert r.status_code == 422
    assert r.json()["reasons"] == {"malformed": 1}
    stranger = body("NOT-ENROLLED")
    r = await api.post(
        "/ingest/canonical", content=stranger, headers=signed("sloppy-co", secret, stranger)
    )
    assert r.status_code == 422
    assert r.json()["reasons"] == {"unknown_device": 1}
    rows = (await api.get("/api/quarantine")).json()
    assert {(q["reason"], q["device_id"], q["integration"]) for q in rows} == {
        ("malformed", None, "sloppy-co"),
        ("unknown_device", "sloppy-co:NOT-ENROLLED", "sloppy-co"),
    }


async def test_an_integration_cannot_report_another_integrations_device(
    api: httpx.AsyncClient,
) -> None:
    await integration(api, "first-co", "hmac", ["canonical"])
    await enroll_vendor_device(api, "first-co", "SHARED-ID")
    second = await integration(api, "second-co", "hmac", ["canonical"])
    payload = body("SHARED-ID", 199)
    r = await api.post(
        "/ingest/canonical", content=payload, headers=signed("second-co", second, payload)
    )
    assert r.status_code == 422
    assert r.json()["reasons"] == {"unknown_device": 1}
    assert (await api.get("/api/patients/pat-w/readings")).json() == []


async def test_a_format_not_granted_is_forbidden(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/api/integrations", json={"id": "x-co", "name": "x", "formats": ["nonsense"]}
    )
    assert r.status_code == 422
    secret = await integration(api, "narrow-co", "hmac", ["canonical"])
    others = sorted(set(DECODERS) - {"canonical"})
    assert others, "the vendor decoders are registered"
    payload = b"{}"
    for fmt in others:
        r = await api.post(
            f"/ingest/{fmt}", content=payload, headers=signed("narrow-co", secret, payload)
        )
        assert r.status_code == 403, fmt


async def test_a_revoked_integration_is_refused(api: httpx.AsyncClient) -> None:
    secret = await integration(api, "gone-co", "hmac", ["canonical"])
    await enroll_vendor_device(api, "gone-co", "D9")
    payload = body("D9")
    assert (
        await api.post(
            "/ingest/canonical", content=payload, headers=signed("gone-co", secret, payload)
        )
    ).status_code == 200
    assert (await api.post("/api/integrations/gone-co/revoke")).status_code == 200
    later = body("D9", 140)
    r = await api.post("/ingest/canonical", content=later, headers=signed("gone-co", secret, later))
    assert r.status_code == 403
    assert (await api.post("/api/integrations/nobody/revoke")).status_code == 404
