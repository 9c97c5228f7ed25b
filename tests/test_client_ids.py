"""Client ids bound to logins, against the real broker (docs/devices.md, "Client ids").

A device's password login may connect only with its own id as client id (the dynamic-security
plugin's ``clientid``). Mosquitto refuses a CONNECT under another client id with "not
authorised" before it looks for that client's session, so the session it named (the
gateway's, another device's) keeps its connection and its queued messages. A login without the
binding (one made before it) could take such a session over; ``rpm devices bind-client-ids``
binds those.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiomqtt
import httpx
import pytest

from device_gateways import dynsec
from device_gateways.broker_admin import BrokerAdmin
from rpm.device_cli import bind_client_ids
from rpm.local_endpoints import ServiceEndpoints
from rpm.server import Server
from tests.conftest import drop_gateway_session
from tests.helpers import eventually, staff_headers

_sessions = itertools.count()


@pytest.fixture
async def api(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    assert server.pool is not None
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.settings.api.port}",
        timeout=15,
        headers=await staff_headers(server.pool),
    ) as client:
        for patient in ("pat-a", "pat-b"):
            r = await client.post("/api/patients", json={"id": patient, "display_name": patient})
            assert r.status_code == 201
        yield client


async def enroll(api: httpx.AsyncClient, device_id: str, patient: str | None = None) -> str:
    """Enroll a password device; its password."""
    body: dict[str, object] = {"id": device_id, "kind": "bp_cuff"}
    if patient is not None:
        body |= {
            "patient_id": patient,
            "bound_from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        }
    r = await api.post("/api/devices", json=body)
    assert r.status_code == 201, r.text
    return r.json()["mqtt"]["password"]  # type: ignore[no-any-return]


def client(
    services: ServiceEndpoints, username: str, password: str, identifier: str
) -> aiomqtt.Client:
    return aiomqtt.Client(
        services.mqtt_host,
        services.mqtt_port,
        username=username,
        password=password,
        identifier=identifier,
        clean_session=True,
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=10,
    )


def gateway_session(services: ServiceEndpoints, identifier: str) -> aiomqtt.Client:
    """A persistent session under the gateway's login, as the gateway holds one."""
    return aiomqtt.Client(
        services.mqtt_host,
        services.mqtt_port,
        username=services.mqtt_gateway_username,
        password=services.mqtt_gateway_password,
        identifier=identifier,
        clean_session=False,
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=10,
    )


async def refused(services: ServiceEndpoints, username: str, password: str, as_id: str) -> str:
    """Connect ``username`` under client id ``as_id``; the broker's refusal, as text."""
    with pytest.raises(aiomqtt.MqttCodeError) as refusal:
        async with client(services, username, password, as_id):
            pass
    return str(refusal.value).lower()


# Recent enough to be stored (RPM_MAX_AGE_DAYS); fixed, so a reading's bytes never change.
BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)


def reading(n: int) -> bytes:
    at = BASE + timedelta(seconds=n)
    return json.dumps(
        {
            "metric": "blood_pressure",
            "measured_at": at.isoformat(),
            "values": {"systolic": 120 + n, "diastolic": 80},
        }
    ).encode()


def topic(device_id: str) -> str:
    return f"rpm/v1/devices/{device_id}/readings"


async def test_a_device_cannot_connect_as_the_gateway_or_another_device(
    api: httpx.AsyncClient,
    server: Server,
    services: ServiceEndpoints,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="device_gateways.mqtt")
    a = await enroll(api, "cuff-ca", "pat-a")
    b = await enroll(api, "cuff-cb", "pat-b")
    async with client(services, "cuff-cb", b, "cuff-cb") as device_b:
        for taken in (server.settings.mqtt.client_id, "rpm-gateway", "cuff-cb"):
            assert "not authori" in await refused(services, "cuff-ca", a, taken), taken
        # Its own client id is still its own.
        async with client(services, "cuff-ca", a, "cuff-ca") as device_a:
            await device_a.publish(topic("cuff-ca"), reading(1), qos=1)
        # B was not disconnected: it publishes on the same connection (a closed one raises).
        await device_b.publish(topic("cuff-cb"), reading(2), qos=1)

    async def stored(patient: str) -> list[object]:
        return (await api.get(f"/api/patients/{patient}/readings")).json()  # type: ignore[no-any-return]

    assert len(await eventually(lambda: stored("pat-a"))) == 1
    assert len(await eventually(lambda: stored("pat-b"))) == 1
    # The gateway stored B's reading on the connection it had: it never lost it.
    assert not [r for r in caplog.records if "connection lost" in r.getMessage()]


async def backlog(
    services: ServiceEndpoints, session_id: str, device: str, password: str, count: int
) -> None:
    """A persistent gateway session subscribed to ``device``, offline while the device
    publishes ``count`` readings, each acknowledged by the broker."""
    async with gateway_session(services, session_id) as gateway:
        await gateway.subscribe(topic(device), qos=1)
    async with client(services, device, password, device) as sender:
        for n in range(count):
            await sender.publish(topic(device), reading(n), qos=1)


async def received(services: ServiceEndpoints, session_id: str, until: bytes) -> list[bytes]:
    """Reconnect the persistent session; what it receives up to and including ``until``."""
    got: list[bytes] = []
    async with gateway_session(services, session_id) as gateway:
        async with asyncio.timeout(30):
            async for message in gateway.messages:
                assert isinstance(message.payload, bytes)
                got.append(message.payload)
                if message.payload == until:
                    return got
    raise AssertionError("the session ended")


async def test_a_refused_takeover_leaves_the_offline_gateway_its_backlog(
    api: httpx.AsyncClient, services: ServiceEndpoints
) -> None:
    device = await enroll(api, "cuff-co")
    thief = await enroll(api, "cuff-cx")
    session_id = f"rpm-test-clientids-{next(_sessions)}"
    try:
        await backlog(services, session_id, "cuff-co", device, 40)
        assert "not authori" in await refused(services, "cuff-cx", thief, session_id)
        # A marker published after the attempt ends the count: every queued reading first.
        async with client(services, "cuff-co", device, "cuff-co") as sender:
            await sender.publish(topic("cuff-co"), b"marker", qos=1)
        got = await received(services, session_id, b"marker")
        assert got == [reading(n) for n in range(40)] + [b"marker"]
    finally:
        await drop_gateway_session(services, session_id)


async def test_an_unbound_login_could_take_over_until_bound(
    api: httpx.AsyncClient, server: Server, services: ServiceEndpoints
) -> None:
    """Why the binding matters, and the migration: a login made before it (no ``clientid``)
    takes the offline session over and its backlog is lost; ``rpm devices bind-client-ids``
    binds it, after which the same attempt is refused."""
    device = await enroll(api, "cuff-lo")
    legacy = await enroll(api, "cuff-lx")
    admin = BrokerAdmin(server.settings.mqtt.admin())
    # As enrolment made it before client ids were bound: setClientId without one unbinds.
    await admin.apply([{"command": "setClientId", "username": "cuff-lx"}])
    first, second = (f"rpm-test-clientids-{next(_sessions)}" for _ in range(2))
    try:
        await backlog(services, first, "cuff-lo", device, 10)
        async with client(services, "cuff-lx", legacy, first):
            pass  # accepted: the clean session replaced the gateway's
        async with gateway_session(services, first) as gateway:
            await gateway.subscribe(topic("cuff-lo"), qos=1)
        async with client(services, "cuff-lo", device, "cuff-lo") as sender:
            await sender.publish(topic("cuff-lo"), b"marker", qos=1)
        assert await received(services, first, b"marker") == [b"marker"]  # all 10 gone

        assert await bind_client_ids(server.settings) == 0
        assert server.pool is not None
        audited = await server.pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE role = 'cli' AND resource = 'device'"
            " AND action = 'update'"
        )
        assert audited == 1
        await backlog(services, second, "cuff-lo", device, 10)
        assert "not authori" in await refused(services, "cuff-lx", legacy, second)
        async with client(services, "cuff-lo", device, "cuff-lo") as sender:
            await sender.publish(topic("cuff-lo"), b"marker", qos=1)
        got = await received(services, second, b"marker")
        assert got == [reading(n) for n in range(10)] + [b"marker"]
    finally:
        for session_id in (first, second):
            await drop_gateway_session(services, session_id)


async def test_a_device_reads_nothing_from_the_broker(
    api: httpx.AsyncClient, services: ServiceEndpoints
) -> None:
    """A stolen device's login cannot subscribe: not to other devices' readings, not to its
    own, not to the broker's control topics (SUBACK 0x80, failure, for each)."""
    password = await enroll(api, "cuff-cr")
    filters = ["rpm/#", topic("cuff-cr"), "rpm/v1/devices/+/readings", "$CONTROL/#", "$SYS/#"]
    async with client(services, "cuff-cr", password, "cuff-cr") as device:
        for wanted in filters:
            granted = await device.subscribe(wanted, qos=1)
            assert [getattr(g, "value", g) for g in granted] == [0x80], wanted


async def test_a_device_may_not_take_a_deployment_login_name(api: httpx.AsyncClient) -> None:
    for reserved in ("rpm-gateway", "rpm-broker-admin", "rpm-fleet", "rpm-anything"):
        r = await api.post("/api/devices", json={"id": reserved, "kind": "bp_cuff"})
        assert r.status_code == 422, reserved
        assert "reserved" in r.text


@pytest.mark.pure
def test_a_device_login_is_made_bound_to_its_own_client_id() -> None:
    [_, create] = dynsec.provision_device("cuff-1", "secret")
    assert (create["username"], create["clientid"]) == ("cuff-1", "cuff-1")
    assert dynsec.bind_client_id("cuff-1") == [
        {"command": "setClientId", "username": "cuff-1", "clientid": "cuff-1"}
    ]
