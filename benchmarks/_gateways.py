"""Several gateways on one shared subscription, for ``benchmarks/scale_out.py``.

Throughput with ``n`` gateway processes (``rpm serve --role gateway``, the fleet of
``simulators/active_active.py``): the gateways subscribe, are paused (SIGSTOP), the readings are
published into their sessions, and the clock runs from SIGCONT to the commit of the last
reading, so neither start-up nor publishing is timed. One gateway runs the default path (no
shared group); two and three share ``$share/<group>/``. CPU per reading: the gateways' and
PostgreSQL's CPU seconds over the drain.

Integrity: three gateways live, the fleet published at full speed, gateway 0 killed with
SIGKILL once 30% is stored and started again at once (as a supervisor would); readings lost
and stored twice by identity, and the alert episodes against those of the one-gateway run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as paho
from _common import BenchError, children_of, cpu_seconds, pid_from_file, server_env
from paho.mqtt.enums import CallbackAPIVersion

from simulators import active_active as aa

ROOT = Path(__file__).resolve().parent.parent


@dataclass(slots=True)
class GatewayRun:
    gateways: int
    readings: int
    seconds: float = 0.0
    gateway_cpu_s: float = 0.0
    postgres_cpu_s: float = 0.0
    rows: int = 0
    distinct: int = 0
    alerts: list[aa.AlertKey] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)

    @property
    def per_s(self) -> float:
        return self.readings / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_reading(self) -> float:
        return (self.gateway_cpu_s + self.postgres_cpu_s) / self.readings * 1e6


def publish_all(endpoints: Any, client_id: str, messages: Sequence[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 as fast as the broker acknowledges; return once all are acknowledged."""
    acked = threading.Semaphore(0)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    client.username_pw_set(endpoints.mqtt_device_username, endpoints.mqtt_device_password)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = lambda _c, _u, _mid, _rc, _p: acked.release()
    client.connect(endpoints.mqtt_host, endpoints.mqtt_port, keepalive=60)
    client.loop_start()
    try:
        for t, payload in messages:
            client.publish(t, payload, qos=1)
        for _ in messages:
            if not acked.acquire(timeout=120):
                raise BenchError("the broker stopped acknowledging the publisher")
    finally:
        client.disconnect()
        client.loop_stop()


async def _fresh_database(endpoints: Any, name: str) -> str:
    admin = await asyncpg.connect(endpoints.database_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    base, _, _ = endpoints.database_url.rpartition("/")
    return f"{base}/{name}"


def _gateways(
    endpoints: Any, db: str, n: int, run: str, work: Path, shared: bool
) -> list[aa.GatewayProcess]:
    out = []
    for k in range(n):
        extra = {"RPM_DATABASE_URL": db, "PYTHONPATH": str(ROOT)}
        if shared:
            extra["RPM_MQTT_SHARE_GROUP"] = f"bench{run}"
        env = server_env(endpoints, f"rpm-bench-{run}-{k}", **extra)
        out.append(aa.GatewayProcess(env, work, f"{run}-gw{k}", ROOT))
    return out


async def _start(gateways: list[aa.GatewayProcess]) -> None:
    for g in gateways:
        g.spawn()
    for g in gateways:
        await g.subscribed(within=120)


async def _wait_stored(conn: asyncpg.Connection, n: int, within: float) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await conn.fetchval("SELECT count(*) FROM readings") < n:
        if loop.time() > deadline:
            raise BenchError(f"fewer than {n:,} readings stored after {within:.0f} s")
        await asyncio.sleep(0.02)
    return time.perf_counter()


def _pids(gateways: list[aa.GatewayProcess]) -> list[int]:
    return [p for g in gateways if (p := g.pid) is not None]


async def throughput(
    endpoints: Any, work: Path, n: int, stream: aa.Stream, patients: int, end: datetime
) -> GatewayRun:
    """Drain the stream, pre-loaded into ``n`` paused gateways' sessions."""
    run = f"t{n}"
    db = await _fresh_database(endpoints, f"bench_gateways_{n}")
    gateways = _gateways(endpoints, db, n, run, work, shared=n > 1)
    result = GatewayRun(n, stream.distinct)
    conn: asyncpg.Connection | None = None
    try:
        await _start(gateways)
        conn = await asyncpg.connect(db)
        await aa.enroll(conn, patients, end - timedelta(days=2))
        for pid in _pids(gateways):
            os.kill(pid, signal.SIGSTOP)
        await asyncio.to_thread(publish_all, endpoints, f"bench-fleet-{run}", stream.messages)
        pg = pid_from_file(Path(endpoints.root) / "pg" / "postmaster.pid")
        backends = children_of(pg) if pg else []
        pids = _pids(gateways)
        cpu0, pg0 = cpu_seconds(pids), cpu_seconds(backends)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        t1 = await _wait_stored(conn, stream.distinct, 600)
        result.seconds = t1 - t0
        result.gateway_cpu_s = cpu_seconds(pids) - cpu0
        result.postgres_cpu_s = cpu_seconds(backends) - pg0
        result.load = (load0, os.getloadavg()[0])
        for g in gateways:
            g.stop()
        result.rows, result.distinct = await aa.reading_counts(conn)
        result.alerts = await aa.alert_keys(conn)
    finally:
        if conn is not None:
            await conn.close()
        for g in gateways:
            if g.pid is not None:
                os.kill(g.pid, signal.SIGCONT)
            g.stop()
    return result


async def kill_and_restart(
    endpoints: Any, work: Path, stream: aa.Stream, patients: int, end: datetime, say: Any
) -> GatewayRun:
    """Three live gateways; gateway 0 killed (SIGKILL) at 30% stored and started again."""
    db = await _fresh_database(endpoints, "bench_gateways_kill")
    gateways = _gateways(endpoints, db, 3, "k3", work, shared=True)
    result = GatewayRun(3, stream.distinct)
    conn: asyncpg.Connection | None = None
    try:
        await _start(gateways)
        conn = await asyncpg.connect(db)
        await aa.enroll(conn, patients, end - timedelta(days=2))
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        publishing = asyncio.create_task(
            asyncio.to_thread(publish_all, endpoints, "bench-fleet-k3", stream.messages)
        )
        await _wait_stored(conn, int(0.3 * stream.distinct), 600)
        gateways[0].kill9()
        say("gateway 0 killed (SIGKILL) at 30% stored; starting it again")
        gateways[0].spawn()
        await publishing
        await _wait_stored(conn, stream.distinct, 600)
        result.seconds = time.perf_counter() - t0
        result.load = (load0, os.getloadavg()[0])
        for g in gateways:
            g.stop()
        result.rows, result.distinct = await aa.reading_counts(conn)
        result.alerts = await aa.alert_keys(conn)
    finally:
        if conn is not None:
            await conn.close()
        for g in gateways:
            g.stop()
    return result
