"""One MQTT 5 connection of the gateway, on the event loop: the ``mqtt5`` codec's packets over
an asyncio transport.

Every byte on the wire is read and written by ``mqtt5`` (the Rust codec aiomqtt 3 builds on,
``mqtt5.read`` and ``Packet.write``); this module only holds the client's side of the
conversation the way the gateway needs it, and nothing else:

- CONNECT with ``clean_start`` off and a session that never expires (a persistent session,
  MQTT 5.0 section 3.1.2.11), CONNACK awaited; a refusal fails the connect at once;
- SUBSCRIBE, the SUBACK's reason codes returned;
- PUBLISH delivered to ``on_message`` unacknowledged: the PUBACK goes when the gateway says,
  after the commit (``ack``), all of a batch's PUBACKs in one write;
- the keep-alive (PINGREQ when idle, a silent broker is a lost connection, section 3.1.2.10);
- ``pause()``/``resume()``: stop reading, so TCP flow control holds the broker back. Mosquitto
  before 2.0.13 overruns the in-flight window (Receive Maximum) once acknowledgements flow
  (eclipse/mosquitto#2306; Debian 12 ships 2.0.11), so the gateway bounds what it holds itself.

We subscribe at QoS 1 at most and accept no topic aliases, so the broker sends neither QoS 2
nor aliases; anything we did not ask for ends the connection as a protocol error.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import ssl
import struct
import termios
from collections.abc import Callable
from typing import Any, cast

import mqtt5

from rpm.domain.errors import BrokerConnectionError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
NEVER_EXPIRES = 0xFFFFFFFF  # session expiry interval: the session outlives any disconnection
Message = mqtt5.PublishPacket


def _unsent_bytes(transport: asyncio.BaseTransport | None) -> int:
    """Bytes the kernel still holds to send on the transport's socket (Linux SIOCOUTQ)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or not hasattr(termios, "TIOCOUTQ"):
        return 0
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", out)[0])


class MqttSession(asyncio.Protocol):
    """The gateway's connection to the broker; ``async with`` connects and disconnects.

    ``lost`` resolves when the connection ends: with ``None`` after our own disconnect, with
    a ``BrokerConnectionError`` otherwise.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None,
        password: str | None,
        on_message: Callable[[Message], None],
        tls_ca_file: str | None = None,
        keepalive: int = 30,
        clean_start: bool = False,
    ) -> None:
        self._host, self._port, self._tls_ca_file = host, port, tls_ca_file
        self._deliver = on_message
        self._connect = mqtt5.ConnectPacket(
            client_id,
            username=username,
            password=password.encode() if password is not None else None,
            clean_start=clean_start,
            keep_alive=keepalive,
            session_expiry_interval=0 if clean_start else NEVER_EXPIRES,
            # Receive Maximum stays the codec's 65535: the broker's own in-flight limit
            # (max_inflight_messages) stays the window, and the pause bounds what we hold.
        )
        self._keepalive = keepalive
        self._loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = self._loop.create_future()
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._rest = b""  # bytes of a packet not yet whole
        self._paused = False
        self._acks: list[bytes] = []
        self._subscribing: dict[int, asyncio.Future[list[int]]] = {}
        self._packet_ids = itertools.cycle(range(1, 65536))
        self._last_out = self._last_in = self._loop.time()
        self._pinged = float("-inf")  # when the last PINGREQ went
        self.session_present = False  # the broker still had our session (CONNACK)
        self._closing = False
        self._timer: asyncio.Task[None] | None = None

    # -- the application's side --------------------------------------------------------

    async def __aenter__(self) -> MqttSession:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                try:
                    tls = await self._tls_context()
                except OSError as exc:  # ssl.SSLError among them
                    raise BrokerConnectionError(f"cannot load the broker's CA: {exc}") from exc
                try:
                    await self._loop.create_connection(
                        lambda: self, self._host, self._port, ssl=tls
                    )
                except OSError as exc:  # ssl.SSLError among them
                    raise BrokerConnectionError(f"cannot connect to the broker: {exc}") from exc
                await asyncio.shield(self.connected)
        except TimeoutError:
            self._close()
            raise BrokerConnectionError(
                f"the broker did not answer (CONNACK) within {CONNECT_TIMEOUT_S:.0f} s"
            ) from None
        except BaseException:
            self._close()
            raise
        self._timer = asyncio.create_task(self._keep_alive())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if not self.lost.done() and self._transport is not None:
                self._closing = True
                self._send_acks()  # acknowledgements not yet written go first
                self._send(mqtt5.DisconnectPacket().write())
                self._transport.close()  # after the buffered bytes are written
                with contextlib.suppress(TimeoutError, BrokerConnectionError):
                    async with asyncio.timeout(5):
                        await asyncio.shield(self.lost)
        finally:
            self._close()

    async def subscribe(self, topic: str, qos: int) -> list[int]:
        """Subscribe and wait for the SUBACK's reason codes (or the connection's end): the
        QoS granted, or 0x80 and up for a refusal (MQTT 5.0 section 3.9.3)."""
        packet_id = next(self._packet_ids)
        granted: asyncio.Future[list[int]] = self._loop.create_future()
        self._subscribing[packet_id] = granted
        try:
            wanted = mqtt5.TopicFilter(topic, max_qos=mqtt5.QoS(qos))
            self._send(mqtt5.SubscribePacket(packet_id, [wanted]).write())
            waiting: set[asyncio.Future[Any]] = {granted, self.lost}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._subscribing.pop(packet_id, None)
        if not granted.done():
            self.lost.result()  # raises why the connection ended
            raise BrokerConnectionError("disconnected before the SUBACK")
        return granted.result()

    def ack(self, packet_id: int) -> None:
        """Acknowledge a QoS 1 message. The acknowledgements of one event-loop turn leave in
        one write."""
        if not self._acks:
            self._loop.call_soon(self._send_acks)
        self._acks.append(mqtt5.PubAckPacket(packet_id).write())

    def pause(self) -> None:
        """Stop reading: the broker's further messages wait in TCP's buffers."""
        if not self._paused:
            self._paused = True
            if self._transport is not None and not self._transport.is_closing():
                self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._last_in = self._loop.time()  # the broker's silence counts from now
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
            if self._rest:  # whole packets read before the pause: deliver them now
                self._loop.call_soon(self.data_received, b"")

    @property
    def paused(self) -> bool:
        return self._paused

    def unsent(self) -> bool:
        """Packets not yet handed to the kernel (acknowledgements, say)."""
        t = self._transport
        return bool(self._acks) or (t is not None and t.get_write_buffer_size() > 0)

    async def flushed(self, within: float) -> None:
        """Wait until the packets written so far have left our buffers and the kernel's.

        Closing a socket that has unread input resets the connection and discards output not
        yet sent (RFC 2525, 2.17), and the broker keeps sending while a consumer stops:
        without this wait its last acknowledgements can be lost, and their messages
        redelivered.
        """
        deadline = self._loop.time() + within
        while self._loop.time() < deadline:
            t = self._transport
            if t is None or t.is_closing() or (not self.unsent() and _unsent_bytes(t) == 0):
                return
            await asyncio.sleep(0.01)

    # -- asyncio's protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send(self._connect.write())

    def data_received(self, data: bytes) -> None:
        self._last_in = self._loop.time()
        buf = self._rest + data if self._rest else data
        view = memoryview(buf)
        end, at = len(buf), 0
        try:
            while at < end and not self._paused and not self.lost.done():
                try:
                    packet, size = mqtt5.read(view[at:])
                except IndexError:  # "not enough bytes": the rest comes with the next read
                    break
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # the codec's own panic is one
                    # A malformed packet: ValueError (UnicodeDecodeError among them), or, for
                    # some, a panic of the codec (pyo3's PanicException derives from
                    # BaseException). A compliant broker forwards none of them.
                    self._protocol_error(f"a malformed packet ({exc!r})")
                    return
                at += size
                if type(packet) is mqtt5.PublishPacket:
                    if packet.qos.value > 1 or packet.topic_alias is not None:
                        self._protocol_error("a PUBLISH with QoS 2 or a topic alias")
                        return
                    self._deliver(packet)
                elif not self._control(packet):
                    self._protocol_error(f"a {type(packet).__name__}, never asked for")
                    return
        finally:
            view.release()
        self._rest = buf[at:] if at < end else b""

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost says why

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._closing and exc is None:
            if not self.lost.done():
                self.lost.set_result(None)
        else:
            self._fail(BrokerConnectionError(f"the connection to the broker ended: {exc or 'EOF'}"))

    # -- packets -----------------------------------------------------------------------

    def _control(self, packet: object) -> bool:
        """Handle a packet other than PUBLISH; False for one a client never receives."""
        if isinstance(packet, mqtt5.ConnAckPacket):
            if packet.reason_code.value >= 0x80:
                name = packet.reason_code.name.lower().replace("_", " ")
                self._fail(BrokerConnectionError(f"the broker refused the connection: {name}"))
                self._abort()
            elif not self.connected.done():
                self.session_present = packet.session_present
                if packet.server_keep_alive is not None:  # the server's word wins (3.2.2.3.14)
                    self._keepalive = packet.server_keep_alive
                self.connected.set_result(None)
        elif isinstance(packet, mqtt5.SubAckPacket):
            granted = self._subscribing.get(packet.packet_id)
            if granted is not None and not granted.done():
                granted.set_result([code.value for code in packet.reason_codes])
        elif isinstance(packet, mqtt5.DisconnectPacket):
            name = packet.reason_code.name.lower().replace("_", " ")
            self._fail(BrokerConnectionError(f"the broker disconnected us: {name}"))
            self._abort()
        else:
            return isinstance(packet, mqtt5.PingRespPacket)
        return True

    def _protocol_error(self, what: str) -> None:
        self._fail(BrokerConnectionError(f"protocol error from the broker: {what}"))
        self._abort()

    # -- writing and timers ------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(data)
            self._last_out = self._loop.time()

    def _send_acks(self) -> None:
        acks, self._acks = self._acks, []
        if acks:
            self._send(b"".join(acks))  # acks on a lost connection are void: redelivered

    async def _keep_alive(self) -> None:
        """PINGREQ after half the keep-alive with nothing written, or with nothing read and no
        PINGREQ waiting for its answer; no packet from the broker for one and a half
        keep-alives (section 3.1.2.10's grace for the server, from our side) is a loss,
        unless we are not reading: a pause (the database down, say) may last minutes."""
        if self._keepalive <= 0:
            return
        half = self._keepalive / 2
        while not self.lost.done():
            await asyncio.sleep(min(1.0, self._keepalive / 4))
            now = self._loop.time()
            if not self._paused and now - self._last_in > 1.5 * self._keepalive:
                self._fail(BrokerConnectionError("the broker stopped answering (keep-alive)"))
                self._abort()
                return
            answered = self._pinged <= self._last_in
            if now - self._last_out >= half or (now - self._last_in >= half and answered):
                self._send(mqtt5.PingReqPacket().write())
                self._pinged = now

    async def _tls_context(self) -> ssl.SSLContext | None:
        if self._tls_ca_file is None:
            return None
        # Verifies the broker's certificate and host name; reading the CA file blocks.
        return await asyncio.to_thread(ssl.create_default_context, cafile=self._tls_ca_file)

    def _fail(self, exc: BrokerConnectionError) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc)
            self.connected.exception()  # retrieved: the connect may have given up already
        if not self.lost.done():
            self.lost.set_exception(exc)
            self.lost.exception()  # retrieved: not every session waits on it

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._abort()
        if not self.lost.done():
            self.lost.set_result(None)
