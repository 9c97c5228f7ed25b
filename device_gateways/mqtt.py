"""The MQTT transport: the only module that consumes from the broker.

Readings arrive at QoS 1 on ``rpm/v1/devices/{device_id}/readings`` through a
persistent session (fixed client id, clean start off, no expiry). Messages are
acknowledged to the broker only after the unit of work holding them committed,
so a crash at any point makes the broker redeliver, and the duplicates are
skipped by reading identity. The connection is MQTT 5 on the ``mqtt5`` codec
(``device_gateways.mqtt_session``; why that client: docs/performance.md, "The MQTT
client"). We bound how many unacknowledged messages we hold ourselves, by not reading
the socket past two batches: nothing is dropped, TCP flow control holds the broker back
and it queues the rest. (The broker's in-flight window, ``max_inflight_messages`` in
Mosquitto, should bound it, but Mosquitto before 2.0.13 overruns it once
acknowledgements flow: eclipse/mosquitto#2306.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from device_gateways.mqtt_session import Message, MqttSession
from rpm.domain import RawMessage
from rpm.domain.errors import BrokerConnectionError, StorageError
from rpm.domain.trusted import trusted

log = logging.getLogger(__name__)

TOPIC_PREFIX = "rpm/v1/devices/"

ProcessBatch = Callable[[Sequence[RawMessage]], Awaitable[object]]
StageBatch = Callable[[Sequence[RawMessage]], Awaitable[None]]


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
    # section 4.8.2).
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


_raw_message = trusted(RawMessage)


def to_raw(topic: str, payload: bytes, received_at: datetime) -> RawMessage:
    """What the gateway knows of a message: the topic's identity, never the payload's."""
    # transport, payload_format, device_id, payload, received_at, topic, integration
    return _raw_message(
        "mqtt", "canonical", device_id_from_topic(topic), payload, received_at, topic, None
    )


def _refused(granted: int) -> bool:
    """A SUBACK reason code of failure (0x80 and up: MQTT 5.0 section 3.9.3)."""
    return granted >= 0x80


class MqttGateway:
    """Consumes readings from the broker in micro-batches, acknowledging after commit."""

    def __init__(
        self, config: MqttConfig, process: ProcessBatch, stage: StageBatch | None = None
    ) -> None:
        """``process`` commits a batch; ``stage``, when given, prepares the next batch while
        the one before it commits (``IngestPipeline.stage``), ``process`` of that same batch
        then finishing it."""
        self._config = config
        self._process = process
        self._stage = stage
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
            except BrokerConnectionError as exc:
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
        inbox: deque[Message] = deque()
        arrived = asyncio.Event()
        # The broker should send at most its in-flight window of unacknowledged messages,
        # but Mosquitto before 2.0.13 stops enforcing it once acknowledgements flow
        # (eclipse/mosquitto#2306; Debian 12 ships 2.0.11). So we bound what we hold
        # ourselves: with two batches waiting we stop reading the socket, and TCP flow
        # control holds the broker back until one is left. Besides those, the gateway holds
        # the batch taken (staged) and the one committing: four batches at most.
        high, low = 2 * cfg.batch_max_messages, cfg.batch_max_messages

        def on_message(message: Message) -> None:
            inbox.append(message)
            arrived.set()
            self.max_held = max(self.max_held, len(inbox))
            if not session.paused and len(inbox) >= high:
                session.pause()
                self.pauses += 1

        def resume_if_drained() -> None:
            if session.paused and len(inbox) < low:
                session.resume()

        session = MqttSession(
            host=cfg.host,
            port=cfg.port,
            client_id=cfg.client_id,
            username=cfg.username,
            password=cfg.password,
            on_message=on_message,
            tls_ca_file=cfg.tls_ca_file,
            keepalive=30,
        )
        async with session:
            # Batches run from the moment of connection: a persistent session's backlog
            # arrives before the SUBACK, and must be drained for the SUBACK to be read.
            batches = asyncio.create_task(self._batches(session, inbox, arrived, resume_if_drained))
            subscribing = asyncio.create_task(session.subscribe(cfg.subscription, qos=1))
            try:
                # A batch that fails before the SUBACK (reading paused past two batches, the
                # SUBACK unread behind them) must end the session, not leave it waiting.
                await asyncio.wait({subscribing, batches}, return_when=asyncio.FIRST_COMPLETED)
                if not subscribing.done():
                    batches.result()  # raises what ended the batches
                    return  # stopping before the SUBACK
                granted = subscribing.result()
                if any(_refused(g) for g in granted):
                    raise BrokerConnectionError(
                        f"the broker refused the subscription to {cfg.subscription}: "
                        "see the gateway login's ACL (docs/operations.md)"
                    )
                if self._sessions and not session.session_present:
                    log.warning(
                        "the broker had no session for %s: messages it kept for this gateway "
                        "while it was away, if any, are gone (a broker restarted without "
                        "persistence?)",
                        cfg.client_id,
                    )
                self.connected.set()
                self._sessions += 1
                self.reconnects = self._sessions - 1
                log.info("subscribed to %s as %s", cfg.subscription, cfg.client_id)
                await batches
                await session.flushed(within=5.0)  # stopping: the last acks must leave
            finally:
                for task in (subscribing, batches):
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                    elif not task.cancelled():
                        task.exception()  # retrieved: the session's end says why

    async def _batches(
        self,
        session: MqttSession,
        inbox: deque[Message],
        arrived: asyncio.Event,
        resume_if_drained: Callable[[], None],
    ) -> None:
        """Commit batches in order, acknowledging each after its commit; the next batch is
        taken (and staged) meanwhile, one at most."""
        lost: asyncio.Future[Any] = asyncio.ensure_future(asyncio.shield(session.lost))
        stopping = asyncio.ensure_future(self._stopping.wait())
        ready: asyncio.Queue[tuple[list[Message], list[RawMessage]]] = asyncio.Queue(1)
        taking = asyncio.create_task(
            self._take(inbox, arrived, lost, stopping, resume_if_drained, ready)
        )
        try:
            while not self._stopping.is_set():
                got = asyncio.ensure_future(ready.get())
                await asyncio.wait({got, taking}, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    taking.result()  # raises the broker error that ended the session
                    return  # stopping
                ready.task_done()  # the taker may take the next batch
                batch, raws = got.result()
                await self._commit(raws)
                if lost.done():
                    # Acks on a dead session are void: the broker redelivers this batch,
                    # and its readings are recognised as duplicates.
                    lost.result()
                    return
                for m in batch:
                    if m.packet_id is not None:  # QoS 1 (QoS 0 has none)
                        session.ack(m.packet_id)
                self.messages_acked += len(batch)
        finally:
            # A batch taken and not committed stays unacknowledged: redelivered.
            taking.cancel()
            with contextlib.suppress(asyncio.CancelledError, BrokerConnectionError):
                await taking
            lost.cancel()
            stopping.cancel()

    async def _take(
        self,
        inbox: deque[Message],
        arrived: asyncio.Event,
        lost: asyncio.Future[Any],
        stopping: asyncio.Future[Any],
        resume_if_drained: Callable[[], None],
        ready: asyncio.Queue[tuple[list[Message], list[RawMessage]]],
    ) -> None:
        """Form batches (full, or what came within ``batch_max_wait_s``) and stage each."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            while not inbox:
                arrived.clear()
                waiter: asyncio.Future[Any] = asyncio.ensure_future(arrived.wait())
                await asyncio.wait({waiter, lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
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
            now = datetime.now(UTC)
            raws = [to_raw(m.topic, m.payload, now) for m in batch]
            if self._stage is not None:
                await self._stage(raws)
            await ready.put((batch, raws))
            await ready.join()  # taken for its commit: only then the next one

    async def _commit(self, raws: list[RawMessage]) -> None:
        """Run the unit of work until it commits; the database may be restarting."""
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
