"""Exactly-once effect under failure, against a real ``rpm serve`` process.

The gateway runs as its own process (``.venv/bin/rpm serve``), fed by a device-side paho
client publishing 20,000 distinct readings at QoS 1, plus device retransmits of some of them.
Mid-stream we kill -9 the gateway, restart PostgreSQL, or restart Mosquitto; in every case
each reading must be stored once and evaluated once: exactly 20,000 rows, and for each patient
with crisis readings exactly one alert episode whose ``occurrences`` equals the number of
those readings. Two more show back-pressure: with the database down, the gateway holds exactly
the broker's in-flight window, acknowledges nothing, and the broker keeps the rest, nothing
dropped; and a gateway coming back to a backlog is never handed more than that window (which
Mosquitto < 2.0.13 breaks: that test is an expected failure there, with the reason).

The gateway reaches the broker through :class:`MqttTap`, a TCP relay in the test that reads
the MQTT packets going by. It lets the test check the promise itself, all along the stream:
every message the gateway has PUBACKed holds a reading already committed (a count of the
distinct acknowledged readings never exceeds the count of stored ones); and it measures what
the gateway holds unacknowledged.

How the test knows the gateway is done: after every reading got its PUBACK from the broker,
the publisher sends one sentinel payload from an unknown device. The gateway commits batches
one after another in delivery order and the broker delivers a session's messages in order
(redeliveries first), so once the sentinel is in the quarantine and its PUBACK went by,
everything published before it has been through a committed and acknowledged unit of work.

These tests stop and start the session-wide PostgreSQL and Mosquitto; the ``local`` fixture
puts both back. They use their own database fixture, which holds no connection across the
test, because a PostgreSQL restart ends every session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from rpm.local_endpoints import ServiceEndpoints, settings_for_local
from rpm.settings import Group, Settings, env_name
from rpm.storage import registry
from simulators.active_active import GatewayProcess
from simulators.localservices import LOOPBACK, LocalServices, free_port
from simulators.twilio_sink import TwilioSink
from tests.conftest import (
    TEMPLATE_DB,
    TWILIO_SID,
    TWILIO_TOKEN,
    drop_gateway_session,
    with_database,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

PATIENTS = 200
READINGS_PER_DEVICE = 100
READINGS = PATIENTS * READINGS_PER_DEVICE  # 20,000 distinct readings
RATE_PER_S = 5_000.0  # the publisher's pace: the stream lasts about four seconds
FAULT_AT = 4_000  # stored readings before the fault is injected
SENTINEL_DEVICE = "sentinel-unknown"
_numbers = itertools.count()


# --- the stream --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stream:
    """What the fleet publishes, in order, and what the database must end up holding."""

    messages: list[tuple[str, bytes]]  # (topic, payload), retransmits included
    crisis: dict[str, int]  # patient -> crisis readings among the distinct ones


def patient_id(p: int) -> str:
    return f"pat-{p:03d}"


def device_id(p: int) -> str:
    return f"cuff-{p:03d}"


def topic(device: str) -> str:
    return f"rpm/v1/devices/{device}/readings"


def make_stream(end: datetime) -> Stream:
    """20,000 distinct blood pressures, device by device round-robin, one per minute per device
    ending at ``end``. Every 10th patient has 1-4 crisis readings (systolic 190). A device
    retransmits every 40th message and every crisis reading 1,000 messages later, as a cuff
    that missed its PUBACK would."""
    crisis_slots = (10, 35, 60, 85)
    crisis: dict[str, int] = {}
    messages: list[tuple[str, bytes]] = []
    later: dict[int, list[tuple[str, bytes]]] = {}
    for i in range(READINGS_PER_DEVICE):
        measured = end - timedelta(minutes=READINGS_PER_DEVICE - 1 - i)
        for p in range(PATIENTS):
            is_crisis = p % 10 == 0 and i in crisis_slots[: 1 + (p // 10) % 4]
            if is_crisis:
                crisis[patient_id(p)] = crisis.get(patient_id(p), 0) + 1
                values = {"systolic": 190, "diastolic": 100, "pulse": 95}
            else:
                values = {
                    "systolic": 110 + (7 * i + p) % 40,
                    "diastolic": 70 + (3 * i + p) % 20,
                    "pulse": 60 + (i + p) % 30,
                }
            doc = {
                "metric": "blood_pressure",
                "measured_at": measured.isoformat().replace("+00:00", "Z"),
                "values": values,
                "device": {"battery": 90 - i % 50},
            }
            message = (topic(device_id(p)), json.dumps(doc).encode())
            k = len(messages)
            messages.append(message)
            if is_crisis or k % 40 == 0:
                later.setdefault(k + 1_000, []).append(message)
            messages.extend(later.pop(k, []))
    for rest in later.values():
        messages.extend(rest)
    return Stream(messages, crisis)


def sentinel(at: datetime) -> tuple[str, bytes]:
    """A reading from a device nobody enrolled: it ends up in the quarantine, not in readings."""
    doc = {"metric": "heart_rate", "measured_at": at.isoformat(), "values": {"pulse": 70}}
    return topic(SENTINEL_DEVICE), json.dumps(doc).encode()


# --- the device side ---------------------------------------------------------------------------


class Publisher:
    """A device-side client that loses nothing: QoS 1 on a persistent session, paho resends
    what has no PUBACK when it reconnects, and :meth:`wait_all_acked` publishes again whatever
    is still unacknowledged after a quiet spell. Duplicates are allowed; losses are not."""

    def __init__(self, services: ServiceEndpoints, client_id: str, rate_per_s: float) -> None:
        self._rate = rate_per_s
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        self._client.username_pw_set(services.mqtt_device_username, services.mqtt_device_password)
        self._client.max_inflight_messages_set(1_000)
        self._client.reconnect_delay_set(1, 2)
        # PUBACKs by packet id. The callback runs in paho's thread; a set's add is atomic.
        self._acked: set[int] = set()
        self._client.on_publish = lambda _c, _u, mid, _rc, _p: self._acked.add(mid)
        self._client.connect(services.mqtt_host, services.mqtt_port, keepalive=10)
        self._client.loop_start()
        self._messages: list[tuple[str, bytes]] = []
        self._mids: list[int | None] = []  # packet id of each message's latest publish
        self._sent = 0  # publishes on this client: packet ids must not wrap around
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.published = 0  # messages handed to paho so far
        self.republished = 0

    def start(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish ``messages`` in order at the configured rate, in a thread."""
        self._messages = messages
        self._mids = [None] * len(messages)
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            start = time.monotonic()
            for k, (t, payload) in enumerate(self._messages):
                ahead = start + k / self._rate - time.monotonic()
                if ahead > 0.005:
                    time.sleep(ahead)
                self._mids[k] = self._publish(t, payload)
                self.published = k + 1
        except BaseException as exc:  # re-raised in the test by wait_all_acked
            self._error = exc

    def _publish(self, t: str, payload: bytes) -> int:
        # Disconnected is fine: paho keeps a QoS 1 message and sends it on reconnect.
        info = self._client.publish(t, payload, qos=1)
        assert info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN), info.rc
        self._sent += 1
        assert self._sent < 65_000, "packet ids would wrap: acks could be misattributed"
        return info.mid

    @property
    def finished(self) -> bool:
        return self.published == len(self._messages)

    def unacked(self) -> list[int]:
        return [k for k, mid in enumerate(self._mids) if mid is None or mid not in self._acked]

    async def wait_all_acked(self, within: float, quiet_s: float = 5.0) -> None:
        """Return once the broker acknowledged every message; re-publish stragglers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last_progress, last_count = loop.time(), -1
        while True:
            if self._error is not None:
                raise AssertionError(f"publisher failed: {self._error!r}") from self._error
            pending = self.unacked()
            if not pending and self.finished:
                return
            now = loop.time()
            if len(pending) != last_count:
                last_progress, last_count = now, len(pending)
            elif self.finished and now - last_progress > quiet_s:
                for k in pending:  # nothing moved for a while: send them again
                    self._mids[k] = self._publish(*self._messages[k])
                    self.republished += 1
                last_progress = now
            if now > deadline:
                raise AssertionError(
                    f"the broker did not acknowledge {len(pending)} of {len(self._messages)} "
                    f"messages within {within:.0f} s"
                )
            await asyncio.sleep(0.1)

    async def publish_one(self, message: tuple[str, bytes], within: float = 15.0) -> None:
        mid = self._publish(*message)

        async def acked() -> bool:
            return mid in self._acked

        await eventually(acked, within, "the broker's PUBACK")

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._client.disconnect()
        self._client.loop_stop()


# --- between the gateway and the broker --------------------------------------------------------

_PUBLISH, _PUBACK = 3, 4  # MQTT 3.1.1 control packet types (section 2.2.1)


class _Packets:
    """Splits a byte stream into MQTT control packets: (type, flags, body)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, int, bytes]]:
        self._buffer += data
        while True:
            # Fixed header: type and flags, then the remaining length, 7 bits a byte (2.2.3).
            length, multiplier, pos = 0, 1, 1
            while True:
                if pos >= len(self._buffer):
                    return
                byte = self._buffer[pos]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                pos += 1
                if not byte & 0x80:
                    break
            if len(self._buffer) < pos + length:
                return
            first = self._buffer[0]
            body = bytes(self._buffer[pos : pos + length])
            del self._buffer[: pos + length]
            yield first >> 4, first & 0x0F, body


class MqttTap:
    """A TCP relay between the gateway and the broker that reads the packets going by: the
    QoS 1 PUBLISHes the broker delivers and the PUBACKs the gateway answers with."""

    def __init__(self, broker_host: str, broker_port: int) -> None:
        self._broker = (broker_host, broker_port)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.port = 0
        self.delivered = 0  # PUBLISH packets to the gateway, redeliveries included
        self.acks = 0  # PUBACK packets from the gateway
        self.acked: set[tuple[str, bytes]] = set()  # distinct (topic, payload) acknowledged
        self.max_unacked = 0  # most messages the gateway held unacknowledged on one connection
        self.sentinel_acked = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pump in list(self._pumps):  # each connection then closes both its sides
            pump.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    def unacked_now(self) -> int:
        return self.delivered - self.acks

    async def _accept(
        self, gw_reader: asyncio.StreamReader, gw_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        writers = [gw_writer]
        # While the broker restarts, hold the gateway's connection (its CONNECT waits in the
        # socket) rather than close it before CONNACK: aiomqtt would wait out its 10 s timeout.
        deadline = asyncio.get_running_loop().time() + 8
        while True:
            try:
                broker_reader, broker_writer = await asyncio.open_connection(*self._broker)
                break
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    gw_writer.close()
                    self._connections.discard(task)
                    return
                await asyncio.sleep(0.05)
        writers.append(broker_writer)
        inflight: dict[int, tuple[str, bytes]] = {}  # packet id -> delivered, not yet acked
        pumps = [
            asyncio.create_task(self._pump(broker_reader, gw_writer, self._down(inflight))),
            asyncio.create_task(self._pump(gw_reader, broker_writer, self._up(inflight))),
        ]
        self._pumps.update(pumps)
        try:
            # MQTT never half-closes: when one side is gone, the connection is gone.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._pumps.difference_update(pumps)
            for writer in writers:
                writer.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await writer.wait_closed()
            self._connections.discard(task)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        seen: Callable[[int, int, bytes], None],
    ) -> None:
        packets = _Packets()
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                for kind, flags, body in packets.feed(data):
                    seen(kind, flags, body)
                writer.write(data)
                await writer.drain()

    def _down(self, inflight: dict[int, tuple[str, bytes]]) -> Callable[[int, int, bytes], None]:
        def seen(kind: int, flags: int, body: bytes) -> None:
            if kind != _PUBLISH or not (flags >> 1) & 0x03:  # QoS 0 needs no PUBACK
                return
            n = int.from_bytes(body[:2], "big")
            packet_id = int.from_bytes(body[2 + n : 4 + n], "big")
            inflight[packet_id] = (body[2 : 2 + n].decode(), body[4 + n :])
            self.delivered += 1
            self.max_unacked = max(self.max_unacked, len(inflight))

        return seen

    def _up(self, inflight: dict[int, tuple[str, bytes]]) -> Callable[[int, int, bytes], None]:
        def seen(kind: int, flags: int, body: bytes) -> None:
            if kind != _PUBACK:
                return
            message = inflight.pop(int.from_bytes(body[:2], "big"), None)
            self.acks += 1
            if message is None:
                return
            if message[0] == topic(SENTINEL_DEVICE):
                self.sentinel_acked = True
            else:
                self.acked.add(message)

        return seen


# --- the gateway process ------------------------------------------------------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the RPM_* environment ``rpm serve`` reads, over a clean environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    for name in Settings.groups():
        group: Group = getattr(settings, name)
        dumped = group.model_dump(mode="json")
        for field_name, info in type(group).model_fields.items():
            value = getattr(group, field_name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, dict | list):
                text = json.dumps(dumped[field_name])  # complex values are read as JSON
            else:
                text = str(value)
            env[env_name(info)] = text
    return env


class Gateway(GatewayProcess):
    """``rpm serve`` (every role) as a child process of this checkout, one log per start."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        super().__init__(settings_env(settings), log_dir, "gateway", REPO_ROOT, command=["serve"])
        self.settings = settings

    async def start(self, within: float = 30.0) -> None:
        """Start ``rpm serve`` and wait until it has subscribed and its API answers."""
        self.spawn()
        url = f"http://{LOOPBACK}:{self.settings.api.port}/healthz"
        async with httpx.AsyncClient(timeout=2) as http:

            async def ready() -> bool:
                self.check_alive()
                if "subscribed to" not in self.log():
                    return False
                try:
                    return (await http.get(url)).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(ready, within, "the gateway to subscribe and serve", self)


async def eventually(
    check: Callable[[], Awaitable[bool]],
    within: float,
    what: str,
    gateway: Gateway | None = None,
) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            tail = gateway.log_tail() if gateway is not None else ""
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}\n{tail}")
        await asyncio.sleep(0.1)


# --- the database side -------------------------------------------------------------------------


class Probe:
    """One connection to the test database for polling, opened again after an outage."""

    def __init__(self, db_url: str) -> None:
        self._db_url = db_url
        self._conn: asyncpg.Connection | None = None

    async def value(self, sql: str) -> Any:
        """One value; None while the database is unreachable."""
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._db_url, timeout=5)
            return await self._conn.fetchval(sql, timeout=10)
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
        ):
            await self.close()
            return None

    async def stored(self) -> int | None:
        n = await self.value("SELECT count(*) FROM readings")
        return None if n is None else int(n)

    async def quarantined(self) -> int | None:
        n = await self.value("SELECT count(*) FROM quarantine")
        return None if n is None else int(n)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
            conn.terminate()


async def enroll(db_url: str, since: datetime) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            for p in range(PATIENTS):
                await registry.upsert_patient(
                    conn,
                    patient_id=patient_id(p),
                    display_name=f"Patient {p}",
                    phone=f"+1555010{p:04d}",
                    sms_consent=True,
                    programs=[],  # general rules only: one crisis rule to count
                )
                await registry.enroll_device(
                    conn,
                    device_id=device_id(p),
                    kind="bp_cuff",
                    patient_id=patient_id(p),
                    since=since,
                )
    finally:
        await conn.close()


@dataclass(slots=True)
class Outcome:
    readings: int
    distinct: int
    quarantine: list[tuple[str | None, str]]
    alerts: dict[str, tuple[str, int]]  # patient -> (rule, occurrences)
    open_events: dict[str, int] = field(default_factory=dict)  # patient -> 'open' audit events
    sms_rows: dict[str, int] = field(default_factory=dict)  # patient -> outbox SMS rows


async def outcome(db_url: str) -> Outcome:
    conn = await asyncpg.connect(db_url)
    try:
        readings = await conn.fetchval("SELECT count(*) FROM readings")
        distinct = await conn.fetchval(
            "SELECT count(DISTINCT (device_id, metric, measured_at)) FROM readings"
        )
        quarantine = [
            (r["device_id"], r["reason"])
            for r in await conn.fetch("SELECT device_id, reason FROM quarantine ORDER BY id")
        ]
        alerts: dict[str, tuple[str, int]] = {}
        for r in await conn.fetch("SELECT patient_id, rule_id, occurrences FROM alerts"):
            assert r["patient_id"] not in alerts, f"two alert episodes for {r['patient_id']}"
            alerts[r["patient_id"]] = (r["rule_id"], r["occurrences"])
        events = await conn.fetch(
            """SELECT a.patient_id, count(*) AS n FROM alert_events e
                 JOIN alerts a ON a.id = e.alert_id WHERE e.action = 'open'
                GROUP BY a.patient_id"""
        )
        sms = await conn.fetch(
            """SELECT payload->>'patient_id' AS patient_id, count(*) AS n FROM outbox
                WHERE channel = 'sms' GROUP BY 1"""
        )
        return Outcome(
            readings,
            distinct,
            quarantine,
            alerts,
            {r["patient_id"]: r["n"] for r in events},
            {r["patient_id"]: r["n"] for r in sms},
        )
    finally:
        await conn.close()


def assert_exactly_once(result: Outcome, stream: Stream) -> None:
    assert result.readings == READINGS, f"{result.readings} readings stored, want {READINGS}"
    assert result.distinct == READINGS
    assert result.quarantine == [(SENTINEL_DEVICE, "unknown_device")]
    # Each crisis reading evaluated exactly once: one episode per patient, one occurrence
    # per distinct crisis reading, however often the broker or the device delivered it.
    assert result.alerts == {p: ("bp.hypertensive_crisis", n) for p, n in stream.crisis.items()}
    assert result.open_events == dict.fromkeys(stream.crisis, 1)
    assert result.sms_rows == dict.fromkeys(stream.crisis, 1)


def broker_inflight_limit(services: ServiceEndpoints) -> int:
    """Mosquitto's max_inflight_messages: what it sends a client before waiting for PUBACKs."""
    conf = (Path(services.root) / "mqtt" / "mosquitto.conf").read_text()
    match = re.search(r"^max_inflight_messages (\d+)$", conf, re.MULTILINE)
    assert match is not None, "the broker must bound what it sends unacknowledged"
    limit = int(match.group(1))
    assert limit > 0, "max_inflight_messages 0 means unbounded"
    return limit


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def durable_db(services: ServiceEndpoints, template_db: str) -> AsyncIterator[str]:
    """A fresh migrated database, like ``db_url``, but holding no connection during the test
    (a PostgreSQL restart ends every session)."""
    name = f"rel_{os.getpid()}_{next(_numbers)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(services.database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    for attempt in range(50):
        try:
            await admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
            break
        except asyncpg.ObjectInUseError:  # a scheduler still leaving the template
            if attempt == 49:
                raise
            await asyncio.sleep(0.1)
    try:
        yield with_database(services.database_url, name)
    finally:
        await admin(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def local(services: ServiceEndpoints, durable_db: str) -> Iterator[LocalServices]:
    """The session's services, to stop and start one at a time; both run again afterwards
    (before ``durable_db`` is dropped)."""
    ctl = LocalServices(Path(services.root), log=lambda line: None)
    try:
        yield ctl
    finally:
        ctl.start_postgres()
        ctl.start_broker()


@pytest.fixture
async def tap(services: ServiceEndpoints) -> AsyncIterator[MqttTap]:
    t = MqttTap(services.mqtt_host, services.mqtt_port)
    await t.start()
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
async def gateway(
    services: ServiceEndpoints,
    durable_db: str,
    twilio: TwilioSink,
    tap: MqttTap,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Gateway]:
    """``rpm serve`` on ``durable_db``, reaching the broker through ``tap``; not started."""
    settings = settings_for_local(
        services,
        database={"url": SecretStr(durable_db)},
        mqtt={
            "host": LOOPBACK,
            "port": tap.port,
            "client_id": f"rpm-rel-{request.node.name[:30]}-{os.getpid()}-{next(_numbers)}",
        },
        api={"port": free_port()},
        sms={
            "account_sid": TWILIO_SID,
            "auth_token": SecretStr(TWILIO_TOKEN),
            "base_url": twilio.base_url,
        },
    )
    g = Gateway(settings, tmp_path)
    try:
        yield g
    finally:
        g.stop()
        await drop_gateway_session(services, settings.mqtt.client_id)


@pytest.fixture
def publisher(services: ServiceEndpoints, request: pytest.FixtureRequest) -> Iterator[Publisher]:
    client_id = f"rel-fleet-{request.node.name[:30]}-{os.getpid()}-{next(_numbers)}"
    p = Publisher(services, client_id, RATE_PER_S)
    try:
        yield p
    finally:
        p.close()


@dataclass(slots=True)
class Rig:
    """Everything a scenario needs, on one test database."""

    db_url: str
    gateway: Gateway
    publisher: Publisher
    tap: MqttTap
    probe: Probe
    inflight_limit: int


@pytest.fixture
async def rig(
    services: ServiceEndpoints,
    durable_db: str,
    gateway: Gateway,
    publisher: Publisher,
    tap: MqttTap,
) -> AsyncIterator[Rig]:
    probe = Probe(durable_db)
    try:
        yield Rig(durable_db, gateway, publisher, tap, probe, broker_inflight_limit(services))
    finally:
        await probe.close()


# --- the scenario ------------------------------------------------------------------------------


async def acked_implies_stored(rig: Rig, stop: asyncio.Event) -> int:
    """Check, again and again, that no reading was acknowledged before it was committed.

    The count of distinct acknowledged readings is taken first, the count of stored ones
    after; committed rows only ever grow, so with ack-after-commit the first can never
    exceed the second. Returns how many samples were taken (the database may be down)."""
    probe = Probe(rig.db_url)
    samples = 0
    try:
        while not stop.is_set():
            acked = len(rig.tap.acked)
            n = await probe.stored()
            if n is not None:
                samples += 1
                assert acked <= n, f"{acked} readings acknowledged to the broker, {n} committed"
            await asyncio.sleep(0.02)
    finally:
        await probe.close()
    return samples


async def drain(rig: Rig, at: datetime) -> None:
    """Publish the sentinel behind everything and wait until the gateway has committed and
    acknowledged it (and so, in order, every message before it)."""
    await rig.publisher.publish_one(sentinel(at))

    async def drained() -> bool:
        rig.gateway.check_alive()
        return rig.tap.sentinel_acked and bool(await rig.probe.quarantined())

    await eventually(drained, 60, "the sentinel behind the stream", rig.gateway)


async def run_with_fault(rig: Rig, fault: Callable[[], Awaitable[None]]) -> tuple[Stream, Outcome]:
    """Enroll, start the gateway, stream, inject ``fault`` mid-stream, drain, read back."""
    now = datetime.now(UTC).replace(microsecond=0)
    await enroll(rig.db_url, since=now - timedelta(days=1))
    stream = make_stream(end=now - timedelta(minutes=1))
    await rig.gateway.start()
    stop = asyncio.Event()
    checker = asyncio.create_task(acked_implies_stored(rig, stop))
    try:
        rig.publisher.start(stream.messages)

        async def far_enough() -> bool:
            rig.gateway.check_alive()
            if checker.done():
                checker.result()  # its assertion, or:
                raise AssertionError("the ack-after-commit check ended early")
            return (await rig.probe.stored() or 0) >= FAULT_AT

        await eventually(far_enough, 30, f"{FAULT_AT} stored readings", rig.gateway)
        assert not rig.publisher.finished, "the stream ended before the fault"
        await fault()
        await rig.publisher.wait_all_acked(within=60)
        await drain(rig, now)
    finally:
        stop.set()
        samples = await checker
    assert samples >= 20, f"only {samples} ack-after-commit samples"
    assert len(rig.tap.acked) == READINGS, "the tap did not see every reading acknowledged"
    return stream, await outcome(rig.db_url)


# --- the tests ---------------------------------------------------------------------------------


async def test_gateway_killed_mid_stream_stores_each_reading_once(rig: Rig) -> None:
    killed_at: list[int | None] = []

    async def kill_and_restart() -> None:
        rig.gateway.kill9()
        killed_at.append(await rig.probe.stored())
        await rig.gateway.start()  # same client id: the broker kept its session

    stream, result = await run_with_fault(rig, kill_and_restart)
    assert killed_at[0] is not None
    assert FAULT_AT <= killed_at[0] < READINGS
    assert_exactly_once(result, stream)


async def test_sigterm_mid_stream_finishes_the_batch_exits_0_and_loses_nothing(rig: Rig) -> None:
    """Graceful shutdown: SIGTERM mid-stream; ``rpm serve`` commits and acknowledges the batch
    in flight, takes no more, and exits 0. Every reading it committed was acknowledged before
    it exited (none is left to redelivery, unlike after kill -9); what it had not taken the
    broker keeps for the persistent session, and a restart stores it exactly once. Its log is
    one JSON object per line."""
    stopped_at: list[int] = []
    logs: list[Path] = []

    async def sigterm_and_restart() -> None:
        proc = rig.gateway.proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(
            proc.wait, rig.gateway.settings.operations.shutdown_timeout_s + 10
        )
        assert code == 0, rig.gateway.log_tail()
        stored = await rig.probe.stored()
        assert stored is not None
        stopped_at.append(stored)
        logs.append(rig.gateway.log_path)

        async def committed_were_acked() -> bool:
            return len(rig.tap.acked) == stored

        try:
            await eventually(committed_were_acked, 10, "PUBACKs of the committed readings")
        except AssertionError as exc:
            raise AssertionError(
                f"{len(rig.tap.acked)} readings acknowledged, {stored} committed"
            ) from exc
        await rig.gateway.start()

    stream, result = await run_with_fault(rig, sigterm_and_restart)
    assert FAULT_AT <= stopped_at[0] < READINGS
    assert_exactly_once(result, stream)

    lines = [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    messages = [line["message"] for line in lines]
    assert any(m.startswith("signal received: stopping") for m in messages)
    assert messages[-1] == "stopped"
    opened = [line for line in lines if line.get("alert_id") is not None]
    assert opened, "no alert line with structured fields"
    assert all(line["patient_id"].startswith("pat-") for line in opened)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any(line["path"] == "/healthz" and line["status"] == 200 for line in access)


async def test_postgres_restart_mid_stream_gateway_recovers_by_itself(
    rig: Rig, local: LocalServices
) -> None:
    async def restart_postgres() -> None:
        await asyncio.to_thread(local.restart_postgres, 2.0)

    stream, result = await run_with_fault(rig, restart_postgres)
    assert_exactly_once(result, stream)
    rig.gateway.check_alive()  # the same process all along
    assert "not committed" in rig.gateway.log(), "the outage never reached the gateway"
    # ... and it is visible to monitoring: /metrics counts the batches the outage refused.
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"http://{LOOPBACK}:{rig.gateway.settings.api.port}/metrics")
    [failures] = [
        s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name == "rpm_ingest_batches_not_committed_total"
    ]
    assert failures >= 1


async def test_broker_restart_mid_stream_loses_nothing(rig: Rig, local: LocalServices) -> None:
    async def restart_broker() -> None:
        await asyncio.to_thread(local.restart_broker, 2.0)

    stream, result = await run_with_fault(rig, restart_broker)
    assert_exactly_once(result, stream)
    rig.gateway.check_alive()
    assert "broker connection lost" in rig.gateway.log(), "the outage never reached the gateway"


async def test_database_down_gateway_holds_only_the_inflight_window(
    rig: Rig, local: LocalServices
) -> None:
    limit, tap = rig.inflight_limit, rig.tap
    now = datetime.now(UTC).replace(microsecond=0)
    await enroll(rig.db_url, since=now - timedelta(days=1))
    stream = make_stream(end=now - timedelta(minutes=1))
    assert len(stream.messages) >= 2 * limit, "the stream must go well beyond the window"
    await rig.gateway.start()
    await asyncio.to_thread(local.stop_postgres)
    try:
        rig.publisher.start(stream.messages)
        await rig.publisher.wait_all_acked(within=60)  # the broker took everything

        async def window_full() -> bool:
            rig.gateway.check_alive()
            return tap.unacked_now() >= limit

        # The broker pushes the gateway its whole window, then waits; the gateway holds it,
        # acknowledging nothing, since nothing could be committed.
        await eventually(window_full, 30, f"{limit} messages held by the gateway", rig.gateway)
        await asyncio.sleep(1.0)  # would it take more?
        rig.gateway.check_alive()
        assert tap.acks == 0, "acknowledged while the database was down"
        assert tap.delivered == tap.max_unacked == limit, (
            f"the gateway was sent {tap.delivered} messages and held at most {tap.max_unacked} "
            f"unacknowledged; the broker's window is {limit}"
        )
    finally:
        await asyncio.to_thread(local.start_postgres)
    # Back-pressure, not drops: the broker kept the rest, and everything arrives now.
    await drain(rig, now)
    assert_exactly_once(await outcome(rig.db_url), stream)
    assert len(tap.acked) == READINGS, "the tap did not see every reading acknowledged"
    rig.gateway.check_alive()


def mosquitto_version() -> tuple[int, ...]:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    broker = shutil.which("mosquitto", path=path)
    assert broker is not None
    out = subprocess.run([broker, "-h"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"mosquitto version (\d+)\.(\d+)\.(\d+)", out)
    assert match is not None, out
    return tuple(int(g) for g in match.groups())


async def test_backlog_reaches_the_gateway_no_faster_than_the_window(rig: Rig) -> None:
    """A gateway coming back to a backlog (here the whole stream) must not be handed more
    than the broker's in-flight window at a time, or its memory grows with the backlog."""
    limit, tap = rig.inflight_limit, rig.tap
    now = datetime.now(UTC).replace(microsecond=0)
    await enroll(rig.db_url, since=now - timedelta(days=1))
    stream = make_stream(end=now - timedelta(minutes=1))
    assert len(stream.messages) >= 2 * limit, "the stream must go well beyond the window"
    await rig.gateway.start()  # subscribes: the broker queues for the session from now on
    rig.gateway.stop()
    rig.publisher.start(stream.messages)
    await rig.publisher.wait_all_acked(within=60)  # the whole stream waits at the broker
    await rig.gateway.start()
    await drain(rig, now)
    assert_exactly_once(await outcome(rig.db_url), stream)
    if tap.max_unacked > limit and mosquitto_version() < (2, 0, 13):
        # Mosquitto before 2.0.13 promotes queued messages to in-flight by the position of
        # each PUBACKed message instead of by its quota, so once acknowledgements flow it
        # sends a client far more than max_inflight_messages (eclipse-mosquitto/mosquitto
        # issue 2306, fixed by commit 330bf6e in 2.0.13); Debian 12 ships 2.0.11. What this
        # tap counts is what the broker pushed towards the gateway's socket; the gateway
        # itself stops reading past two batches (tests/test_gateway_backpressure.py), so the
        # excess waits in kernel buffers and at the broker, not in the gateway's memory.
        pytest.xfail(
            f"Mosquitto < 2.0.13 sent {tap.max_unacked} unacknowledged messages, over "
            f"max_inflight_messages {limit} (mosquitto#2306)"
        )
    assert tap.max_unacked <= limit, (
        f"the gateway held up to {tap.max_unacked} messages unacknowledged; "
        f"the broker's window is {limit}"
    )
