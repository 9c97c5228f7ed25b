"""Hostile input on the ingestion paths: oversized bodies (also when Content-Length lies or
the body is chunked), JSON nested a hundred thousand deep, floods from one integration and
failed logins from one address, and oversized MQTT messages. Each gets a clear 4xx/429 or
is refused by the broker, and the traffic of others still goes through."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_gateways.webhook_auth import sign
from rpm.json_depth import max_depth
from rpm.local_endpoints import ServiceEndpoints
from rpm.rate_limit import TokenBuckets
from rpm.server import Server
from rpm.settings import Settings
from tests.helpers import eventually, mosquitto_pub, staff_headers

BURST = 5
# A rate so slow that no token comes back during a test: results do not depend on timing.
CRAWL = 0.0001

# --- pure parts ----------------------------------------------------------------------


def test_token_bucket_grants_a_burst_then_refills_at_its_rate() -> None:
    b = TokenBuckets(rate=2.0, burst=3)
    assert [b.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("a", 100.0) == pytest.approx(0.5)  # one token back in 1/2 s
    assert b.wait("b", 100.0) == 0.0  # keys are independent
    assert b.wait("a", 100.25) == pytest.approx(0.25)
    assert b.take("a", 100.5) == 0.0
    assert b.take("a", 1000.0) == 0.0  # refilled, but never beyond the burst
    assert [b.take("a", 1000.0) for _ in range(3)][-1] > 0


def test_token_buckets_forget_idle_keys_and_can_be_off() -> None:
    b = TokenBuckets(rate=1.0, burst=1, max_keys=2)
    for key in ("a", "b", "c"):
        assert b.take(key, 0.0) == 0.0
    assert b.take("c", 0.0) > 0  # still remembered
    assert b.take("a", 0.0) == 0.0  # forgotten: starts full again
    off = TokenBuckets(rate=0.0, burst=1)
    assert all(off.take("x", 0.0) == 0.0 for _ in range(100))


@pytest.mark.parametrize(
    ("doc", "depth"),
    [
        (b"", 0),
        (b"42", 0),
        (b'"[[[["', 0),
        (b"[]", 1),
        (b'{"a": [{"b": "]]]]"}]}', 3),
        (b'["\\"[[[", [[]]]', 3),  # an escaped quote does not end the string
        (b'["\\\\", [[]]]', 3),  # an escaped backslash does not escape the quote
        (b'["\\\\\\"[[", []]', 2),
        (b"[" * 100_000, 100_000),  # not even closed: still measured, not parsed
    ],
)
def test_json_depth_counts_brackets_outside_strings(doc: bytes, depth: int) -> None:
    assert max_depth(doc) == depth


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


tricky_text = st.text(alphabet='[]{}"\\ab\n\u00e9', max_size=12)
json_values = st.recursive(
    st.none() | st.integers() | tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=40,
)


@given(value=json_values, ascii_only=st.booleans())
def test_json_depth_agrees_with_a_parser(value: object, ascii_only: bool) -> None:
    doc = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert max_depth(doc) == _depth(json.loads(doc))


# --- the running server ----------------------------------------------------------------


async def admin_headers(server: Server) -> dict[str, str]:
    """An admin's bearer token for the server's database (the API requires a principal)."""
    assert server.pool is not None
    return await staff_headers(server.pool)


@pytest.fixture
def server_settings(server_settings: Settings) -> Settings:
    return server_settings.updated(
        ingest={
            "rate_per_s": CRAWL,
            "burst": BURST,
            "unauth_rate_per_s": CRAWL,
            "unauth_burst": BURST,
        }
    )


@pytest.fixture
async def api(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.settings.api.port}",
        timeout=30,
        headers=await admin_headers(server),
    ) as client:
        r = await client.post("/api/patients", json={"id": "pat-h", "display_name": "H"})
        assert r.status_code == 201
        yield client


async def new_vendor(api: httpx.AsyncClient, ident: str) -> str:
    r = await api.post(
        "/api/integrations", json={"id": ident, "name": ident, "formats": ["canonical"]}
    )
    assert r.status_code == 201, r.text
    secret = str(r.json()["secret"])
    r = await api.post(
        "/api/devices",
        json={
            "id": f"D-{ident}",
            "kind": "bp_cuff",
            "integration": ident,
            "patient_id": "pat-h",
            "bound_from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "actor": "admin:test",
        },
    )
    assert r.status_code == 201, r.text
    return secret


def reading(ident: str, minutes_ago: int) -> bytes:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes_ago)
    return json.dumps(
        {
            "device_id": f"D-{ident}",
            "metric": "blood_pressure",
            "measured_at": at.isoformat(),
            "values": {"systolic": 120, "diastolic": 80},
        }
    ).encode()


def signed(ident: str, secret: str, body: bytes) -> dict[str, str]:
    return {
        "X-RPM-Integration": ident,
        "X-RPM-Signature": sign(secret, body, int(time.time())),
        "Content-Type": "application/json",
    }


async def post(api: httpx.AsyncClient, ident: str, secret: str, body: bytes) -> httpx.Response:
    return await api.post("/ingest/canonical", content=body, headers=signed(ident, secret, body))


async def test_a_flooding_integration_is_throttled_while_another_gets_through(
    api: httpx.AsyncClient,
) -> None:
    flood_secret = await new_vendor(api, "flood-co")
    calm_secret = await new_vendor(api, "calm-co")
    flood = [post(api, "flood-co", flood_secret, reading("flood-co", m)) for m in range(1, 41)]
    calm = [post(api, "calm-co", calm_secret, reading("calm-co", m)) for m in range(1, BURST + 1)]
    answers = await asyncio.gather(*flood, *calm)
    flooded, quiet = answers[: len(flood)], answers[len(flood) :]
    assert sorted(r.status_code for r in flooded) == [200] * BURST + [429] * (40 - BURST)
    assert [r.status_code for r in quiet] == [200] * BURST
    for r in flooded:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert "too many requests" in r.json()["detail"]
    stored = (await api.get("/api/patients/pat-h/readings", params={"limit": 100})).json()
    by_device: dict[str, int] = {}
    for s in stored:
        by_device[s["device_id"]] = by_device.get(s["device_id"], 0) + 1
    assert by_device == {"flood-co:D-flood-co": BURST, "calm-co:D-calm-co": BURST}
    # Throttled requests were not half-processed: nothing of them is in the quarantine.
    assert (await api.get("/api/quarantine")).json() == []


async def test_failed_logins_from_one_address_are_throttled_before_the_body_is_read(
    api: httpx.AsyncClient,
) -> None:
    secret = await new_vendor(api, "real-co")
    body = reading("real-co", 1)
    wrong = signed("real-co", "not-the-secret", body)
    answers = [
        (await api.post("/ingest/canonical", content=body, headers=wrong)).status_code
        for _ in range(BURST + 3)
    ]
    assert answers == [401] * BURST + [429] * 3
    # Spoofing another integration's name costs that integration nothing: it is the
    # address that is throttled, and the integration's own bucket is untouched (it is
    # charged only after authentication).
    r = await post(api, "real-co", secret, body)
    assert r.status_code == 429
    assert r.headers["Retry-After"]


async def raw_request(port: int, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send bytes as they are (a lying Content-Length needs no client's help)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for part in body_parts:
            writer.write(part)
            try:
                await writer.drain()
            except ConnectionError:
                break  # the server answered and closed while we were still sending
        return await reader.read(65536)
    except ConnectionError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_oversized_bodies_get_413_however_they_are_sent(
    api: httpx.AsyncClient, server: Server
) -> None:
    secret = await new_vendor(api, "big-co")
    port = server.settings.api.port
    # Content-Length claims more than the limit: refused before a byte of body is read.
    head = (
        b"POST /ingest/canonical HTTP/1.1\r\nHost: x\r\nX-RPM-Integration: big-co\r\n"
        b"Content-Type: application/json\r\nContent-Length: 999999999999\r\n\r\n"
    )
    answer = await raw_request(port, head, [b"[]"])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Chunked, no Content-Length at all: counted while it streams in.
    two_mib = [b"[" + b" " * 65536] + [b" " * 65536] * 32

    async def chunks() -> AsyncIterator[bytes]:
        for part in two_mib:
            yield part

    r = await api.post(
        "/ingest/canonical",
        content=chunks(),
        headers={"X-RPM-Integration": "big-co", "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert "larger than 1048576 bytes" in r.json()["detail"]
    # Content-Length understates the body: the server reads only what was declared; the rest
    # is taken for a next request, which the HTTP parser refuses with 400 and a closed
    # connection. Depending on how the bytes arrive, the declared request was answered
    # first or not at all (a retry is harmless: readings are idempotent).
    small = reading("big-co", 2)
    head = (
        b"POST /ingest/canonical HTTP/1.1\r\nHost: x\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in signed("big-co", secret, small).items()).encode()
        + f"Content-Length: {len(small)}\r\n\r\n".encode()
    )
    answer = await raw_request(port, head, [small + b"X" * 100])
    assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400")), answer[:200]
    assert (await api.get("/api/quarantine")).json() == []  # the extra bytes went nowhere
    # Others are served all along.
    assert (await post(api, "big-co", secret, reading("big-co", 3))).status_code == 200


async def test_deep_json_is_quarantined_with_its_reason_and_others_are_served(
    api: httpx.AsyncClient,
) -> None:
    secret = await new_vendor(api, "deep-co")
    deep = b"[" * 100_000 + b"]" * 100_000
    slow, health = await asyncio.gather(post(api, "deep-co", secret, deep), api.get("/healthz"))
    assert health.status_code == 200
    assert slow.status_code == 422, slow.text
    assert slow.json()["reasons"] == {"malformed": 1}
    assert "nested 100000 levels deep; at most 64" in slow.json()["detail"]
    (kept,) = (await api.get("/api/quarantine")).json()
    assert kept["reason"] == "malformed"
    assert kept["integration"] == "deep-co"
    assert kept["payload"].encode() == deep  # nothing lost: the bytes, as they came
    # Unclosed, and past the parsers' own recursion limits: the same clear answer.
    r = await post(api, "deep-co", secret, b"{" * 300_000)
    assert r.status_code == 422
    assert "nested 300000 levels deep" in r.json()["detail"]
    assert (await post(api, "deep-co", secret, reading("deep-co", 1))).status_code == 200


async def test_an_oversized_mqtt_message_is_refused_by_the_broker_and_harms_no_one(
    api: httpx.AsyncClient, services: ServiceEndpoints
) -> None:
    creds = {}
    for device in ("cuff-big", "cuff-ok"):
        r = await api.post(
            "/api/devices",
            json={
                "id": device,
                "kind": "bp_cuff",
                "patient_id": "pat-h",
                "bound_from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
                "actor": "admin:test",
            },
        )
        assert r.status_code == 201, r.text
        creds[device] = r.json()["mqtt"]

    def publish(device: str, payload: bytes, version: str) -> tuple[int, str]:
        c = creds[device]
        out = mosquitto_pub(
            services.mqtt_port,
            c["username"],
            c["password"],
            c["topic"],
            payload,
            "-V",
            version,
            "-i",
            c["username"],
        )
        return out.returncode, (out.stdout + out.stderr).decode()

    big = b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    # MQTT 3.1.1: the broker's max_packet_size (1 MiB) makes it drop the sender's connection.
    code, said = await asyncio.to_thread(publish, "cuff-big", big, "mqttv311")
    assert code != 0
    assert "connection was lost" in said
    # MQTT 5: the broker announces the limit in CONNACK (Maximum Packet Size) and the
    # client library does not send the packet at all (mosquitto_pub then exits quietly).
    await asyncio.to_thread(publish, "cuff-big", big, "mqttv5")
    ok = {
        "metric": "blood_pressure",
        "measured_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "values": {"systolic": 121, "diastolic": 79},
    }
    code, said = await asyncio.to_thread(publish, "cuff-ok", json.dumps(ok).encode(), "mqttv5")
    assert code == 0, said

    async def stored() -> list[dict[str, object]]:
        return (await api.get("/api/patients/pat-h/readings")).json()  # type: ignore[no-any-return]

    readings = await eventually(stored)
    assert [r["device_id"] for r in readings] == ["cuff-ok"]
    assert (await api.get("/api/quarantine")).json() == []  # never reached the gateway
