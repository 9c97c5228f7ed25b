"""``device_gateways.paho_session`` against the real broker: paho driven through its public
API reads bursts, pauses and resumes without losing or reordering a message, acknowledges
only when told, and fails at once, with a clear error, when the broker refuses it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import paho.mqtt.client as paho
import pytest

from device_gateways.paho_session import CONNECT_TIMEOUT_S, PahoSession
from rpm.domain.errors import BrokerConnectionError
from rpm.local_endpoints import ServiceEndpoints
from tests.helpers import eventually, mosquitto_pub

TOPIC = "rpm/v1/devices/session-dev/readings"


def _session(
    services: ServiceEndpoints, client_id: str, on_message: Callable[[paho.MQTTMessage], None]
) -> PahoSession:
    return PahoSession(
        host=services.mqtt_host,
        port=services.mqtt_port,
        client_id=client_id,
        username=services.mqtt_gateway_username,
        password=services.mqtt_gateway_password,
        on_message=on_message,
    )


async def _publish(services: ServiceEndpoints, numbers: range) -> None:
    lines = "\n".join(json.dumps({"n": i}) for i in numbers) + "\n"
    sent = await asyncio.to_thread(
        mosquitto_pub,
        services.mqtt_port,
        services.mqtt_device_username,
        services.mqtt_device_password,
        TOPIC,
        lines.encode(),
        stdin_mode="-l",
    )
    assert sent.returncode == 0, sent.stderr


def _count(got: list[paho.MQTTMessage], n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(got) == n

    return check


def _flushed(session: PahoSession) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not session.unsent()

    return check


async def test_a_paused_session_reads_nothing_and_resumes_in_order(
    services: ServiceEndpoints,
) -> None:
    got: list[paho.MQTTMessage] = []
    async with _session(services, "rpm-session-pause", got.append) as session:
        granted = await session.subscribe(TOPIC, qos=1)
        assert [g.value for g in granted] == [1]
        await _publish(services, range(0, 500))
        await eventually(_count(got, 500), within=20)
        session.pause()
        await _publish(services, range(500, 1000))
        await asyncio.sleep(0.5)  # the broker sent them: they wait in the socket, unread
        assert len(got) == 500
        session.resume()
        await eventually(_count(got, 1000), within=20)
        assert [json.loads(m.payload)["n"] for m in got] == list(range(1000))
        for m in got[:600]:
            session.ack(m.mid, m.qos)
        await eventually(_flushed(session))
    # The 400 never acknowledged come back to the persistent session, and only they (acked
    # as they come: the broker's in-flight window may hold the rest back until then).
    again: list[paho.MQTTMessage] = []

    def ack_on_arrival(m: paho.MQTTMessage) -> None:
        again.append(m)
        resumed.ack(m.mid, m.qos)

    resumed = _session(services, "rpm-session-pause", ack_on_arrival)
    async with resumed:
        await resumed.subscribe(TOPIC, qos=1)
        await eventually(_count(again, 400), within=20)
        await asyncio.sleep(0.3)
        assert sorted(json.loads(m.payload)["n"] for m in again) == list(range(600, 1000))
        await eventually(_flushed(resumed))


async def test_a_refused_login_fails_the_connect_at_once(services: ServiceEndpoints) -> None:
    session = PahoSession(
        host=services.mqtt_host,
        port=services.mqtt_port,
        client_id="rpm-session-refused",
        username=services.mqtt_gateway_username,
        password="not-the-password",
        on_message=lambda m: None,
    )
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="refused the connection"):
        async with session:
            pass
    assert time.monotonic() - started < CONNECT_TIMEOUT_S  # the CONNACK said so, no timeout
    assert session.client.socket() is None


async def test_no_broker_is_a_broker_error(services: ServiceEndpoints) -> None:
    session = PahoSession(
        host="127.0.0.1",
        port=1,  # nothing listens on a privileged port here
        client_id="rpm-session-nobody",
        username=None,
        password=None,
        on_message=lambda m: None,
    )
    with pytest.raises(BrokerConnectionError, match="cannot connect"):
        async with session:
            pass
