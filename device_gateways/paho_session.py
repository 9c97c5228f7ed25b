"""One MQTT connection: paho-mqtt driven by the asyncio event loop through paho's public API.

paho documents how to run it inside another event loop (paho-mqtt 2.x, "External event loop
support"): the application watches ``socket()`` and calls ``loop_read``, ``loop_write`` and
``loop_misc``, and paho says when its socket opens, closes and has bytes to write
(``on_socket_open``, ``on_socket_close``, ``on_socket_register_write``,
``on_socket_unregister_write``). aiomqtt 2.x drives paho the same way, but has no public
switch for manual acknowledgement (aiomqtt issue #345) and no way to stop reading; paho has
both (``manual_ack_set``, ``ack``; not calling ``loop_read``). This module uses nothing but
those calls: the MQTT protocol, the session and the keep-alive stay paho's.

What it adds to aiomqtt's way of driving paho:
- **reading in bursts**: each time the socket is readable, ``loop_read`` runs until a call
  delivers no message (paho reads one packet a call), so a burst of PUBLISH packets costs one
  event-loop callback instead of one each;
- **pausing**: ``pause()`` stops reading (TCP flow control then holds the broker back),
  ``resume()`` starts again;
- a connection lost before CONNACK fails the connect at once (aiomqtt waits out its timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import struct
import termios
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from rpm.domain.errors import BrokerConnectionError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READS_PER_TURN = 512  # packets read in one callback at most, so other tasks get their turn


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


class PahoSession:
    """A paho client on the running event loop; ``async with`` connects and disconnects.

    Messages go to ``on_message`` as paho decoded them, unacknowledged (manual
    acknowledgement: ``ack`` after they are durable). ``lost`` resolves when the connection
    ends: with ``None`` after our own disconnect, with a ``BrokerConnectionError`` otherwise.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None,
        password: str | None,
        on_message: Callable[[paho.MQTTMessage], None],
        tls_ca_file: str | None = None,
        keepalive: int = 30,
        clean_session: bool = False,
    ) -> None:
        self._host, self._port, self._keepalive = host, port, keepalive
        self._tls_ca_file = tls_ca_file
        self._deliver = on_message
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.connected: asyncio.Future[None] = self._loop.create_future()
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self._subscribing: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._fd: int | None = None
        self._reading = False
        self._paused = False
        self._delivered = 0
        self._misc: asyncio.Task[None] | None = None
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=clean_session,
            reconnect_on_failure=False,
        )
        c.manual_ack_set(True)  # before CONNECT: a persistent session delivers at once
        if username is not None:
            c.username_pw_set(username, password)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_socket_register_write
        c.on_socket_unregister_write = self._on_socket_unregister_write
        self.client = c

    # -- the application's side --------------------------------------------------------

    async def __aenter__(self) -> PahoSession:
        try:
            try:
                # connect() resolves the name, opens the socket and (TLS) loads the CA file:
                # blocking calls, so on a thread, as aiomqtt does.
                await self._loop.run_in_executor(None, self._connect_blocking)
            except (OSError, ValueError) as exc:
                raise BrokerConnectionError(f"cannot connect to the broker: {exc}") from exc
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await asyncio.shield(self.connected)
            except TimeoutError:
                raise BrokerConnectionError("no CONNACK from the broker in time") from None
        except BaseException:
            self._close()
            raise
        self._misc = asyncio.create_task(self._keep_alive())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if not self.lost.done() and self.client.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                with contextlib.suppress(TimeoutError, BrokerConnectionError):
                    async with asyncio.timeout(5):
                        await asyncio.shield(self.lost)
        finally:
            self._close()

    async def subscribe(self, topic: str, qos: int) -> list[ReasonCode]:
        """Subscribe and wait for the SUBACK's reason codes (or the connection's end)."""
        rc, mid = self.client.subscribe(topic, qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerConnectionError(f"cannot subscribe to {topic}: {paho.error_string(rc)}")
        granted: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subscribing[mid] = granted
        try:
            waiting: set[asyncio.Future[Any]] = {granted, self.lost}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._subscribing.pop(mid, None)
        if not granted.done():
            self.lost.result()  # raises why the connection ended
            raise BrokerConnectionError("disconnected before the SUBACK")
        return granted.result()

    def ack(self, mid: int, qos: int) -> None:
        self.client.ack(mid, qos)

    def pause(self) -> None:
        """Stop reading the socket: the broker's further messages wait in TCP's buffers."""
        self._paused = True
        self._stop_reading()

    def resume(self) -> None:
        self._paused = False
        self._start_reading()

    @property
    def paused(self) -> bool:
        return self._paused

    def unsent(self) -> bool:
        """paho still holds packets to write (acknowledgements, say)."""
        return self.client.want_write()

    async def flushed(self, within: float) -> None:
        """Wait until the packets written so far have left paho's queue and the kernel's.

        Closing a socket that has unread input resets the connection and discards output not
        yet sent (RFC 2525, 2.17), and the broker keeps sending while a consumer stops:
        without this wait its last acknowledgements can be lost, and their messages
        redelivered.
        """
        deadline = self._loop.time() + within
        while self._loop.time() < deadline:
            sock = self.client.socket()
            if sock is None or (not self.unsent() and _unsent_bytes(sock) == 0):
                return
            await asyncio.sleep(0.01)

    # -- driving paho ------------------------------------------------------------------

    def _connect_blocking(self) -> None:
        if self._tls_ca_file is not None:
            self.client.tls_set(ca_certs=self._tls_ca_file)
        self.client.connect(self._host, self._port, self._keepalive)

    def _readable(self) -> None:
        """paho reads one packet a ``loop_read``: read until a call brings no message."""
        client = self.client
        try:
            for _ in range(READS_PER_TURN):
                before = self._delivered
                if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or self._paused:
                    return
                if self._delivered == before:
                    break
            # A TLS socket may hold decrypted bytes while the socket itself is not readable.
            sock = client.socket()
            pending = getattr(sock, "pending", None)
            if pending is not None and pending() > 0 and not self._paused:
                self._loop.call_soon(self._readable)
        except Exception as exc:  # a broken connection surfaces here as OSError and kin
            self._fail(BrokerConnectionError(f"reading from the broker failed: {exc!r}"))

    def _writable(self) -> None:
        try:
            self.client.loop_write()
        except Exception as exc:
            self._fail(BrokerConnectionError(f"writing to the broker failed: {exc!r}"))

    async def _keep_alive(self) -> None:
        """paho's timers: PINGREQ when idle, and a lost broker noticed (``loop_misc``)."""
        while self.client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 (a timer)
            await asyncio.sleep(1)

    def _start_reading(self) -> None:
        if self._fd is not None and not self._reading and not self._paused:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._fd is not None and self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _fail(self, exc: BaseException) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc)
        if not self.lost.done():
            self.lost.set_exception(exc)
            self.lost.exception()  # retrieved: not every session waits on it

    def _close(self) -> None:
        self._stop_reading()
        if self._misc is not None:
            self._misc.cancel()
        if self._fd is not None:
            self._loop.remove_writer(self._fd)
        sock = self.client.socket()
        if sock is not None:  # still open after a failed connect or a disconnect not sent
            sock.close()
        if not self.lost.done():
            self.lost.set_result(None)

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the event loop: paho calls back from ``connect``'s thread too."""
        if threading.get_ident() == self._thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    # -- paho's callbacks --------------------------------------------------------------

    def _on_connect(
        self, _c: paho.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any = None
    ) -> None:
        def settle() -> None:
            if self.connected.done():
                return
            if reason.is_failure:
                self._fail(BrokerConnectionError(f"the broker refused the connection: {reason}"))
            else:
                self.connected.set_result(None)

        self._on_loop(settle)

    def _on_disconnect(
        self, _c: paho.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any = None
    ) -> None:
        def settle() -> None:
            if not self.connected.done() or reason.value != 0:  # 0: our own disconnect
                self._fail(BrokerConnectionError(f"the connection to the broker ended: {reason}"))
            elif not self.lost.done():
                self.lost.set_result(None)

        self._on_loop(settle)

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, mid: int, codes: list[ReasonCode], _props: Any = None
    ) -> None:
        granted = self._subscribing.get(mid)
        if granted is not None and not granted.done():
            granted.set_result(codes)

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        self._delivered += 1
        self._deliver(message)

    def _on_socket_open(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        fd = sock.fileno()

        def opened() -> None:
            self._fd = fd
            self._start_reading()

        self._on_loop(opened)

    def _on_socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        def closed() -> None:
            self._stop_reading()
            if self._fd is not None:
                self._loop.remove_writer(self._fd)
            self._fd = None

        self._on_loop(closed)

    def _on_socket_register_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._on_loop(lambda: self._loop.add_writer(fd, self._writable))

    def _on_socket_unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        fd = sock.fileno()

        def unregister() -> None:
            self._loop.remove_writer(fd)

        self._on_loop(unregister)
