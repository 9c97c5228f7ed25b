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
import fcntl
import logging
import struct
import termios
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from rpm.domain import RawMessage
from rpm.domain.errors import StorageError

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
    # Several gateways: each subscribes to ``$share/{share_group}/{topic}`` under its own
    # client id, and the broker hands each message to one member of the group (MQTT 5.0
    # section 4.8.2; Mosquitto 2.0 accepts it from MQTT 3.1.1 clients too).
    share_group: str | None = None

    @property
    def subscription(self) -> str:
        """The topic filter subscribed to: shared when a group is set."""
        return f"$share/{self.share_group}/{self.topic}" if self.share_group else self.topic


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


def _refused(granted: int | ReasonCode) -> bool:
    """A SUBACK return code of failure (0x80 and up: MQTT 3.1.1 section 3.9.3, 5.0 3.9.3)."""
    return granted.is_failure if isinstance(granted, ReasonCode) else granted >= 0x80


def _unsent_bytes(sock: object) -> int:
    """Bytes the kernel still holds to send on ``sock`` (Linux SIOCOUTQ); 0 where unknown."""
    fileno = getattr(sock, "fileno", None)
    if fileno is None or not hasattr(termios, "TIOCOUTQ"):
        return 0
    try:
        out = fcntl.ioctl(fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", out)[0])


async def _flushed(paho_client: paho.Client, within: float) -> None:
    """Wait until the PUBACKs written so far have left paho's queue and the kernel's.

    Closing a socket that has unread input resets the connection and discards output not
    yet sent (RFC 2525, 2.17), and the broker keeps sending while we stop: without this wait
    the last batch's acknowledgements can be lost, and its messages redelivered.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        sock = paho_client.socket()
        if sock is None or (not paho_client.want_write() and _unsent_bytes(sock) == 0):
            return
        await asyncio.sleep(0.01)


class MqttGateway:
    """Consumes readings from the broker in micro-batches, acknowledging after commit."""

    def __init__(self, config: MqttConfig, process: ProcessBatch) -> None:
        self._config = config
        self._process = process
        self.connected = asyncio.Event()
        self.messages_acked = 0
        self.max_held = 0  # most messages held unacknowledged at once
        self.pauses = 0  # times reading from the broker was paused to bound that
        self.reconnects = 0  # sessions after the first one
        self._sessions = 0
        self._stopping = asyncio.Event()

    def stop_intake(self) -> None:
        """Graceful stop: finish the batch in flight (commit, then ack), take no more, disconnect.

        Messages received but not in that batch stay unacknowledged: the broker redelivers
        them to the persistent session on the next start.
        """
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``stop_intake``, reconnecting with backoff when the broker goes away."""
        delay = 0.2
        while not self._stopping.is_set():
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                if self.connected.is_set():
                    delay = 0.2  # it was connected: a fresh outage starts the backoff afresh
                self.connected.clear()
                log.warning("broker connection lost (%s); reconnecting in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                delay = min(delay * 2, self._config.reconnect_max_s)
            else:
                break
        self.connected.clear()
        log.info("MQTT intake stopped; disconnected from the broker")

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
        # Private parts of aiomqtt, used here only (see the module docstring):
        # - manual acknowledgement must be on before CONNECT, since a persistent session
        #   starts delivering at once;
        # - messages go straight from paho's callback into our deque, skipping aiomqtt's
        #   Message objects and queue (a quarter of the gateway's CPU when measured);
        # - ``_disconnected`` is the future aiomqtt resolves when the connection ends;
        # - the socket's reader, which we pause to bound the deque (below).
        paho_client: paho.Client = client._client
        paho_client.manual_ack_set(True)
        inbox: deque[paho.MQTTMessage] = deque()
        arrived = asyncio.Event()
        loop = asyncio.get_running_loop()
        # The broker should send at most its in-flight window of unacknowledged messages,
        # but Mosquitto before 2.0.13 stops enforcing it once acknowledgements flow
        # (eclipse/mosquitto#2306; Debian 12 ships 2.0.11). So we bound what we hold
        # ourselves: past two batches we stop reading the socket, and TCP flow control
        # holds the broker back until we are down to one batch.
        high, low = 2 * cfg.batch_max_messages, cfg.batch_max_messages
        paused = False

        def read_socket() -> None:
            """What aiomqtt registers as the socket's reader, re-registered after a pause."""
            try:
                while True:
                    paho_client.loop_read()
                    sock = paho_client.socket()
                    if sock is not None and hasattr(sock, "pending") and sock.pending() > 0:
                        continue
                    break
            except Exception as exc:
                if not client._disconnected.done():
                    client._disconnected.set_exception(exc)

        def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
            nonlocal paused
            inbox.append(message)
            arrived.set()
            self.max_held = max(self.max_held, len(inbox))
            if not paused and len(inbox) >= high and (sock := paho_client.socket()) is not None:
                loop.remove_reader(sock)
                paused = True
                self.pauses += 1

        def resume_if_drained() -> None:
            nonlocal paused
            if paused and len(inbox) < low:
                paused = False
                if (sock := paho_client.socket()) is not None:
                    loop.add_reader(sock, read_socket)

        paho_client.on_message = on_message
        async with client:
            disconnected: asyncio.Future[None] = client._disconnected
            # Batches run from the moment of connection: a persistent session's backlog
            # arrives before the SUBACK, and must be drained for the SUBACK to be read.
            batches = asyncio.create_task(
                self._batches(paho_client, inbox, arrived, disconnected, resume_if_drained)
            )
            try:
                granted = await client.subscribe(cfg.subscription, qos=1)
                if any(_refused(g) for g in granted):
                    raise aiomqtt.MqttError(
                        f"the broker refused the subscription to {cfg.subscription}: "
                        "see the gateway login's ACL (docs/operations.md)"
                    )
                self.connected.set()
                self._sessions += 1
                self.reconnects = self._sessions - 1
                log.info("subscribed to %s as %s", cfg.subscription, cfg.client_id)
                await batches
                await _flushed(paho_client, within=5.0)  # stopping: the last acks must leave
            finally:
                if not batches.done():
                    batches.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await batches

    async def _batches(
        self,
        paho_client: paho.Client,
        inbox: deque[paho.MQTTMessage],
        arrived: asyncio.Event,
        disconnected: asyncio.Future[None],
        resume_if_drained: Callable[[], None],
    ) -> None:
        cfg = self._config
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[Any] = asyncio.ensure_future(asyncio.shield(disconnected))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                while not inbox:
                    arrived.clear()
                    waiter: asyncio.Future[Any] = asyncio.ensure_future(arrived.wait())
                    await asyncio.wait(
                        {waiter, lost, stopping}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if lost.done():
                        waiter.cancel()
                        lost.result()  # raises the broker error that ended the session
                        return
                    if stopping.done():
                        waiter.cancel()
                        return
                # Let a batch fill for at most batch_max_wait_s, unless it is full already.
                deadline = loop.time() + cfg.batch_max_wait_s
                while len(inbox) < cfg.batch_max_messages and not lost.done():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await arrived.wait()
                n = min(len(inbox), cfg.batch_max_messages)
                batch = [inbox.popleft() for _ in range(n)]
                resume_if_drained()
                await self._commit(batch)
                if lost.done():
                    # Acks on a dead session are void: the broker redelivers this batch,
                    # and its readings are recognised as duplicates.
                    lost.result()
                    return
                for m in batch:
                    if m.qos > 0:
                        paho_client.ack(m.mid, m.qos)
                self.messages_acked += len(batch)
        finally:
            lost.cancel()
            stopping.cancel()

    async def _commit(self, batch: list[paho.MQTTMessage]) -> None:
        """Run the unit of work until it commits; the database may be restarting."""
        now = datetime.now(UTC)
        raws = [to_raw(m.topic, bytes(m.payload), now) for m in batch]
        delay = 0.1
        while True:
            try:
                await self._process(raws)
                return
            except StorageError as exc:
                log.warning(
                    "batch of %d not committed (%s); retrying in %.1fs",
                    len(raws),
                    exc,
                    delay,
                    extra={"batch_size": len(raws)},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
