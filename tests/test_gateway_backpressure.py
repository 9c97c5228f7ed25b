"""The gateway bounds what it holds: with a slow unit of work and a broker backlog, it stops
reading the socket past two batches (TCP back-pressure holds the broker) and still receives
every message exactly as the broker sends them, acknowledging only after each batch."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

from device_gateways.mqtt import MqttConfig, MqttGateway
from rpm.domain import RawMessage
from rpm.local_endpoints import ServiceEndpoints
from tests.helpers import mosquitto_pub

MESSAGES = 3000
BATCH = 100


async def test_a_slow_consumer_holds_at_most_two_batches(services: ServiceEndpoints) -> None:
    got: list[RawMessage] = []
    all_in = asyncio.Event()

    async def slow_process(batch: Sequence[RawMessage]) -> None:
        await asyncio.sleep(0.02)  # a slow database
        got.extend(batch)
        if len(got) >= MESSAGES:
            all_in.set()

    gateway = MqttGateway(
        MqttConfig(
            host=services.mqtt_host,
            port=services.mqtt_port,
            username=services.mqtt_gateway_username,
            password=services.mqtt_gateway_password,
            client_id="rpm-backpressure-test",
            topic="rpm/v1/devices/bp-dev/readings",
            batch_max_messages=BATCH,
            batch_max_wait_s=0.001,
        ),
        slow_process,
    )
    task = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(gateway.connected.wait(), 10)
        lines = "\n".join(json.dumps({"n": i}) for i in range(MESSAGES)) + "\n"
        sent = await asyncio.to_thread(
            mosquitto_pub,
            services.mqtt_port,
            services.mqtt_device_username,
            services.mqtt_device_password,
            "rpm/v1/devices/bp-dev/readings",
            lines.encode(),
            stdin_mode="-l",
        )
        assert sent.returncode == 0, sent.stderr
        await asyncio.wait_for(all_in.wait(), 60)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sorted(json.loads(r.payload)["n"] for r in got) == list(range(MESSAGES))
    assert gateway.pauses > 0, "the backlog never made the gateway pause: the test proves nothing"
    # Two batches, plus what one read of the socket can still hand over after the pause.
    assert gateway.max_held <= 2 * BATCH + 50, gateway.max_held
