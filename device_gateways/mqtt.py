"""The MQTT transport: the only module that talks to the broker.

Readings arrive at QoS 1 on ``rpm/v1/devices/{device_id}/readings`` through a
persistent session (fixed client id, clean_session false). Messages are
acknowledged to the broker only after the unit of work holding them committed,
so a crash at any point makes the broker redeliver, and the duplicates are
skipped by reading identity. aiomqtt 2.x acknowledges on receipt and has no
public switch for this (aiomqtt issue #345); paho-mqtt underneath it has
``manual_ack``, which we turn on before connecting. The broker's
``max_inflight_messages`` bounds how many unacknowledged messages we can hold,
which is our back-pressure: nothing is dropped, the broker queues the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aiomqtt
import paho.mqtt.client as paho

from rpm.domain import RawMessage
from rpm.errors import StorageError

log = logging.getLogger(__name__)

TOPIC_PREFIX = "rpm/v1/devices/"

ProcessBatch = Callable[[Sequence[RawMessage]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int
    username: str | None
    password: str | None
    client_id: str
    topic: str = "rpm/v1/devices/+/readings"
    batch_max_messages: int = 2000
    batch_max_wait_s: float = 0.02
    reconnect_max_s: float = 5.0
    tls_ca_file: str | None = None  # verify the broker's certificate against this CA


def device_id_from_topic(topic: str) -> str | None:
    """``rpm/v1/devices/{device_id}/readings`` -> device_id; anything else -> None."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    rest = topic[len(TOPIC_PREFIX) :]
    device_id, sep, leaf = rest.partition("/")
    if not sep or leaf != "readings" or not device_id:
        return None
    return device_id


def to_raw(topic: str, payload: bytes, received_at: datetime) -> RawMessage:
    """What the gateway knows of a message: the topic's identity, never the payload's."""
    return RawMessage(
        transport="mqtt",
        payload_format="canonical",
        device_id=device_id_from_topic(topic),
        payload=payload,
        received_at=received_at,
        topic=topic,
    )


class MqttGateway:
    """Consumes readings from the broker in micro-batches, acknowledging after commit."""

    def __init__(self, config: MqttConfig, process: ProcessBatch) -> None:
        self._config = config
        self._process = process
        self.connected = asyncio.Event()
        self.messages_acked = 0

    async def run(self) -> None:
        """Consume forever, reconnecting with backoff when the broker goes away."""
        delay = 0.2
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                log.warning("broker connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._config.reconnect_max_s)
            else:
                return
            if self.connected.is_set():
                delay = 0.2

    async def _session(self) -> None:
        cfg = self._config
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password,
            identifier=cfg.client_id,
            clean_session=False,
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=30,
            tls_params=aiomqtt.TLSParameters(ca_certs=cfg.tls_ca_file) if cfg.tls_ca_file else None,
        )
        # Must be set before CONNECT: a persistent session starts delivering at once.
        paho_client: paho.Client = client._client
        paho_client.manual_ack_set(True)
        queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(maxsize=cfg.batch_max_messages * 4)
        async with client:
            await client.subscribe(cfg.topic, qos=1)
            self.connected.set()
            log.info("subscribed to %s as %s", cfg.topic, cfg.client_id)
            reader = asyncio.create_task(self._read(client, queue))
            try:
                await self._batches(paho_client, queue, reader)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await reader

    async def _read(self, client: aiomqtt.Client, queue: asyncio.Queue[aiomqtt.Message]) -> None:
        async for message in client.messages:
            await queue.put(message)

    async def _batches(
        self,
        paho_client: paho.Client,
        queue: asyncio.Queue[aiomqtt.Message],
        reader: asyncio.Task[None],
    ) -> None:
        cfg = self._config
        loop = asyncio.get_running_loop()
        while True:
            first = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({first, reader}, return_when=asyncio.FIRST_COMPLETED)
            if first not in done:
                first.cancel()
                reader.result()  # raises the broker error that ended the reader
                return
            batch = [first.result()]
            deadline = loop.time() + cfg.batch_max_wait_s
            while len(batch) < cfg.batch_max_messages:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            await self._commit(batch)
            for m in batch:
                if m.qos > 0:
                    paho_client.ack(m.mid, m.qos)
            self.messages_acked += len(batch)

    async def _commit(self, batch: list[aiomqtt.Message]) -> None:
        """Run the unit of work until it commits; the database may be restarting."""
        now = datetime.now(UTC)
        raws = [to_raw(m.topic.value, _payload_bytes(m.payload), now) for m in batch]
        delay = 0.1
        while True:
            try:
                await self._process(raws)
                return
            except StorageError as exc:
                log.warning(
                    "batch of %d not committed (%s); retrying in %.1fs", len(raws), exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return b"" if payload is None else str(payload).encode()
