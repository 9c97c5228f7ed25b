"""The MQTT transport: the only module that talks to the broker.

Readings arrive at QoS 1 on ``rpm/v1/devices/{device_id}/readings`` through a
persistent session (fixed client id, clean_session false). Messages are
acknowledged to the broker only after the unit of work holding them committed,
so a crash at any point makes the broker redeliver, and the duplicates are
skipped by reading identity. aiomqtt 2.x acknowledges on receipt and has no
public switch for this (aiomqtt issue #345); paho-mqtt underneath it has
``manual_ack``, which we turn on before connecting. We bound how many
unacknowledged messages we hold ourselves, by not reading the socket past two
batches: nothing is dropped, TCP flow control holds the broker back and it queues
the rest. (The broker's in-flight window should bound it, but Mosquitto before
2.0.13 overruns its window, MQTT 5 Receive Maximum included, once acknowledgements
flow: eclipse/mosquitto#2306. That is also why the gateway is not on gmqtt, whose
only public bound is Receive Maximum: docs/performance.md, "The MQTT client".)
paho reads the socket through ``BufferedSocket`` (64 KiB per ``recv``) and hands messages to
the gateway's deque directly (``deliver_to``): the protocol stays paho's.
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
from rpm.domain.trusted import trusted

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


_raw_message = trusted(RawMessage)


def to_raw(topic: str, payload: bytes, received_at: datetime) -> RawMessage:
    """What the gateway knows of a message: the topic's identity, never the payload's."""
    # transport, payload_format, device_id, payload, received_at, topic, integration
    return _raw_message(
        "mqtt", "canonical", device_id_from_topic(topic), payload, received_at, topic, None
    )


def _refused(granted: int | ReasonCode) -> bool:
    """A SUBACK return code of failure (0x80 and up: MQTT 3.1.1 section 3.9.3, 5.0 3.9.3)."""
    return granted.is_failure if isinstance(granted, ReasonCode) else granted >= 0x80


class BufferedSocket:
    """paho's socket, read 64 KiB at a time instead of three ``recv`` calls per packet.

    paho reads a packet as its command byte, its length bytes and its body, each with a
    ``recv`` of its own, and aiomqtt's reader reads one packet per readiness callback: about
    four system calls and an event-loop turn per message, a large part of paho's share of
    the gateway's CPU (docs/performance.md). This wrapper serves those reads from one buffer;
    ``pending()`` (the call paho and aiomqtt already make for TLS sockets, whose records hold
    decoded bytes) says a packet may be waiting without the socket being readable. Bytes only
    pass through: the MQTT protocol stays paho's.
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._buf):
            # Raises BlockingIOError (or ssl.SSLWantReadError) when nothing is there: paho's
            # "try again"; b"" is the peer closing, passed on as such.
            data = self._sock.recv(max(bufsize, _READ_SIZE))
            if len(data) <= bufsize:
                return bytes(data)
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + bufsize, len(self._buf))
        return self._buf[start : self._pos]

    def pending(self) -> int:
        """Bytes read from the socket and not yet handed to paho (and TLS's own)."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


_READ_SIZE = 65536


def _pending(sock: object) -> int:
    """Bytes a ``BufferedSocket`` (or a TLS socket) holds already read; 0 for others."""
    pending = getattr(sock, "pending", None)
    return int(pending()) if pending is not None else 0


def read_buffered(client: aiomqtt.Client) -> None:
    """Make paho read ``client``'s connections through a ``BufferedSocket`` (before connecting)."""
    paho_client: paho.Client = client._client
    create = paho_client._create_socket

    def create_buffered() -> Any:
        return BufferedSocket(create())

    paho_client._create_socket = create_buffered  # type: ignore[method-assign]


def deliver_to(paho_client: paho.Client, on_message: Callable[[paho.MQTTMessage], None]) -> None:
    """Hand each message paho decoded straight to ``on_message``.

    paho's own dispatch first matches every topic against its table of per-topic callbacks
    (we add none) under a lock: a seventh of paho's time in the gateway's profile.
    """
    paho_client._handle_on_message = on_message  # type: ignore[method-assign,assignment]


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
        #   Message objects and queue (a quarter of the gateway's CPU when measured), and
        #   paho's per-topic callback table (``deliver``);
        # - ``_disconnected`` is the future aiomqtt resolves when the connection ends;
        # - the socket's reader, ours in place of aiomqtt's (same error handling), which we
        #   pause to bound the deque (below), reading through a ``BufferedSocket``.
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
            """The socket's reader (aiomqtt's, stopping at a pause): packets until none is
            left in the buffer (``BufferedSocket``)."""
            try:
                while True:
                    paho_client.loop_read()
                    sock = paho_client.socket()
                    if not paused and sock is not None and _pending(sock) > 0:
                        continue
                    break
            except Exception as exc:
                if not client._disconnected.done():
                    client._disconnected.set_exception(exc)

        def on_message(message: paho.MQTTMessage) -> None:
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
                    if _pending(sock) > 0:  # read already, so the socket may never be ready
                        loop.call_soon(read_socket)

        aiomqtt_open = paho_client.on_socket_open
        assert aiomqtt_open is not None

        def on_socket_open(c: paho.Client, userdata: Any, sock: Any) -> None:
            aiomqtt_open(c, userdata, sock)
            # Called on paho's connect thread; after aiomqtt's registration, so ours wins.
            loop.call_soon_threadsafe(loop.add_reader, sock.fileno(), read_socket)

        paho_client.on_socket_open = on_socket_open
        read_buffered(client)
        deliver_to(paho_client, on_message)
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
