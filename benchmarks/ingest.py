"""Ingest benchmark: readings/s the real gateway commits with rules on, against two baselines.

    .venv/bin/python benchmarks/ingest.py            # full: 100,000 readings, 20 s at 2,000/s
    .venv/bin/python benchmarks/ingest.py --quick    # 20,000 readings, 5 s

Everything it needs runs on loopback in a temporary directory: LocalServices (PostgreSQL 15,
with TimescaleDB when installed, and Mosquitto with the project's own configuration), stopped
and removed at the end, also on error and Ctrl-C. A fleet of virtual patients is enrolled
(``--patients``, three devices each, as ``rpm demo`` does); publishers are separate processes
using paho-mqtt directly: QoS 1, one reading per message, canonical JSON from
``simulators.fleet`` spread over every device. About 10% of the patients have a hypertensive
crisis or a desaturation in the data, so rules fire and alerts and SMS outbox rows are made.

Throughput: three consumers drain the same backlog the same way. N readings are published into
the consumer's persistent session (fixed client id, clean session off) while it is offline;
then the consumer starts and drains it, one consumer at a time, each session removed after its
turn. This measures consumer capacity without the publishers' CPU on the same two cores, and
is fair to all three. Rate = N / (first micro-batch in hand -> the commit that completed N);
``steady`` is the rate between 10% and 90% of N, without start-up ramp and tail.

1. gateway: ``rpm.server.Server`` in its own process, configured from RPM_* variables as
   ``rpm serve`` is (default batch limits 2000 messages / 20 ms), as ``rpm serve --role
   gateway,api``; beside it a second process runs ``--role workers`` (SMS outbox, alert and
   missing-data timers), its SMS worker sending to a local Twilio stand-in. ``--together``
   runs every role in the gateway's process instead (``rpm serve``'s default). Its counters
   are replaced by a subclass that notes when each unit of work returned (committed), and a
   gc.callbacks observer times the garbage collector; nothing else of the server is touched.
2. bare aiomqtt: decodes JSON and COPYs the same rows (asyncpg copy_records_to_table) into a
   plain table, acknowledging after commit (paho manual_ack through aiomqtt's ``_client``, the
   pattern of device_gateways/mqtt.py), with the same batch limits.
3. broker ceiling: ``mosquitto_sub -q 1 -c -i ID -C N`` on the same kind of pre-loaded session.

Latency: a fresh gateway process runs live; publishers are paced at ``--rate`` readings/s in
total for ``--seconds``, and each reading's ``measured_at`` is its publish wall time (µs).
Publish-to-commit = (when the unit of work holding the reading returned) - measured_at. The
unit of work is found by the reading's ``received_at``, which the gateway stamps once per batch
when it hands the batch over. ``stored_at`` is now() = transaction *start*, so it is shown only
as a lower bound. All processes share one clock.

CPU seconds are reported per part (consumer, PostgreSQL, broker) and for "other processes":
the machine's busy time (/proc/stat) minus all of the above and the benchmark's own. On a
shared machine that is the noise to read the figures against. ``--profile DIR`` runs each
consumer under ``py-spy record --idle`` (raw collapsed stacks; slower, so not for figures).

The last line of output is one JSON object; the table before it explains the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/rules.py is named like the ``rules`` package, which the server imports: keep this
# folder behind the project on sys.path (``_common`` is still found).
sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from types import FrameType
from typing import Any

import asyncpg
import paho.mqtt.client as paho
import uvloop
from _common import (
    TOPIC_FILTER,
    BenchError,
    Child,
    Login,
    PublishJob,
    PublishResult,
    Workload,
    children_of,
    cpu_seconds,
    drop_session,
    emit,
    fmt_ms,
    fmt_rate,
    machine_busy_seconds,
    percentile,
    pid_from_file,
    prepare_session,
    publish,
    render_table,
    rss_mib,
    run_with_services,
    server_env,
    steady_rate,
    utc,
)

from rpm.storage.migrate import migrate
from rpm.storage.pool import connect
from simulators.demo import seed
from simulators.localservices import LocalServices, ServiceEndpoints, free_port

GATEWAY_ID = "rpm-bench-gateway"
LIVE_ID = "rpm-bench-gateway-live"
BARE_ID = "rpm-bench-bare"
SUB_ID = "rpm-bench-mosquitto-sub"
BARE_TABLE = "bench_bare_readings"
BARE_COLUMNS = ("measured_at", "device_id", "metric", "components", "received_at")
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "bench-auth-token"
SEED = 2026

# The targets on a 2-core machine.
TARGET_RATE = 15_000.0
TARGET_RATIO_TO_BARE = 0.6
TARGET_P99_MS = 250.0


# --- helper processes: the gateway and the bare consumer ---------------------------------------


async def _stdin_closed() -> None:
    """Return when the parent closes our stdin: its cue to stop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        pass


class _GcClock:
    """Time spent in the cyclic garbage collector (gc.callbacks), for the report."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.longest = 0.0
        self.full = 0  # collections of the oldest generation
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.seconds += pause
        self.longest = max(self.longest, pause)
        self.full += info["generation"] == 2

    def figures(self) -> dict[str, float]:
        return {"gc_s": self.seconds, "gc_longest_ms": self.longest * 1000, "gc_full": self.full}


def workers_main(pipe: Connection) -> None:
    """The delivery workers' process (``rpm serve --role workers``), with the Twilio stand-in."""
    from rpm.cli import run as run_like_rpm_serve

    pipe.send(run_like_rpm_serve(workers_process(pipe)))


async def workers_process(pipe: Connection) -> dict[str, Any]:
    from rpm.server import Server
    from rpm.settings import Settings
    from simulators.twilio_sink import TwilioSink

    sink = TwilioSink(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN)
    settings = Settings().updated(sms={"base_url": await sink.start()})
    server = Server(settings, ("workers",))
    await server.start()
    cpu0 = time.process_time()
    pipe.send("ready")
    await asyncio.to_thread(pipe.recv)  # the gateway's cue to stop
    await server.stop()
    await sink.stop()
    return {"sms_sent": len(sink.messages), "workers_cpu": time.process_time() - cpu0}


async def gateway_process(target: int, split: bool) -> dict[str, Any]:
    """``_gateway``: the real server, as ``rpm serve`` runs it, plus a clock on its commits.

    ``split``: as ``rpm serve --role gateway,api`` beside ``rpm serve --role workers`` (the
    workers' process is started from here, so it stops with the gateway); otherwise every
    role in this one process."""
    # Imported here: publisher processes re-import this module (spawn) and need none of this.
    import logging

    from rpm.pipeline import BatchResult
    from rpm.server import IngestCounters, Server
    from rpm.settings import Settings
    from simulators.twilio_sink import TwilioSink

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    cpu0, gc_clock = time.process_time(), _GcClock()

    class CommitClock(IngestCounters):
        """The server's counters, also noting when each unit of work returned (committed)."""

        def __init__(self) -> None:
            super().__init__()
            self.messages = 0
            self.commits: list[tuple[float, int]] = []

        def add(self, r: BatchResult) -> None:
            at = time.time()
            super().add(r)
            before, self.messages = self.messages, self.messages + r.messages
            self.commits.append((at, self.messages))
            if before < target <= self.messages:
                cpu = time.process_time()
                emit("done", at=at, cpu=cpu - cpu0, cpu_total=cpu, **gc_clock.figures())

    sink = TwilioSink(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN)
    workers: dict[str, Any] = {}
    if split:
        ours, theirs = multiprocessing.get_context("spawn").Pipe()
        helper = multiprocessing.get_context("spawn").Process(target=workers_main, args=(theirs,))
        helper.start()
        if not await asyncio.to_thread(ours.poll, 60):
            raise BenchError("the workers' process did not start")
        ours.recv()
        server = Server(Settings(), ("gateway", "api"))
    else:
        settings = Settings().updated(sms={"base_url": await sink.start()})
        server = Server(settings)
    clock = CommitClock()
    server.counters = clock
    await server.start()
    emit("ready", at=time.time(), cpu=time.process_time() - cpu0)
    waits = {asyncio.create_task(_stdin_closed()), asyncio.create_task(server.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await server.stop()
        if split:
            ours.send("stop")
            workers = await asyncio.to_thread(ours.recv)
            helper.join(30)
        else:
            await sink.stop()
    return {
        "commits": clock.commits,
        "batches": clock.batches,
        "duplicates": clock.duplicates,
        "quarantined": clock.quarantined,
        "quarantine_reasons": clock.quarantine_reasons,
        "sms_sent": workers.get("sms_sent", len(sink.messages)),
        "workers_cpu": workers.get("workers_cpu"),
    }


def _bare_row(
    topic_name: str, payload: bytes, received_at: datetime
) -> tuple[datetime, str, str, str, datetime]:
    doc = json.loads(payload)
    return (
        datetime.fromisoformat(doc["measured_at"]),
        topic_name.split("/")[3],
        doc["metric"],
        json.dumps(doc["values"]),
        received_at,
    )


async def bare_process(target: int) -> dict[str, Any]:
    """``_bare``: baseline (a), decode and COPY only, acknowledging after commit."""
    # The one aiomqtt consumer outside device_gateways/: a baseline has to talk to the broker.
    import aiomqtt

    from rpm.settings import DatabaseSettings, MqttSettings

    cpu0 = time.process_time()
    s = MqttSettings()
    db = await asyncpg.connect(DatabaseSettings().url.get_secret_value())
    client = aiomqtt.Client(
        s.host,
        s.port,
        username=s.username,
        password=s.password.get_secret_value() if s.password else None,
        identifier=s.client_id,
        clean_session=False,
        protocol=aiomqtt.ProtocolVersion.V311,
        keepalive=30,
    )
    paho_client: paho.Client = client._client  # as device_gateways/mqtt.py: before CONNECT
    paho_client.manual_ack_set(True)
    queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(maxsize=s.batch_max_messages * 4)
    commits: list[tuple[float, int]] = []
    first: float | None = None

    async def read() -> None:
        async for message in client.messages:
            await queue.put(message)

    async def consume() -> None:
        nonlocal first
        loop, total = asyncio.get_running_loop(), 0
        while True:  # the gateway's micro-batching: max messages or max wait, whichever first
            batch = [await queue.get()]
            deadline = loop.time() + s.batch_max_wait_ms / 1000
            while len(batch) < s.batch_max_messages:
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
            first = first or time.time()
            received_at = datetime.now(UTC)
            rows = [_bare_row(m.topic.value, m.payload, received_at) for m in batch]
            await db.copy_records_to_table(BARE_TABLE, records=rows, columns=BARE_COLUMNS)
            for m in batch:
                paho_client.ack(m.mid, m.qos)
            at, before, total = time.time(), total, total + len(batch)
            commits.append((at, total))
            if before < target <= total:
                cpu = time.process_time()
                emit("done", at=at, first=first, cpu=cpu - cpu0, cpu_total=cpu)

    try:
        async with client:
            await client.subscribe(s.mqtt_topic, qos=1)
            emit("ready", at=time.time())
            tasks = {asyncio.create_task(t) for t in (read(), consume(), _stdin_closed())}
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            for t in done:
                t.result()
    finally:
        await db.close()
    return {"commits": commits, "first": first}


# --- the parent: phases ------------------------------------------------------------------------


@dataclass(slots=True)
class Drain:
    """One consumer draining a pre-loaded session of N readings."""

    name: str
    published: int
    preload_s: float
    broker_rss_mib: float | None
    seconds: float
    rate: float
    steady: float
    received: int
    complete: bool
    cpu: dict[str, float]  # CPU seconds during the drain: consumer, postgres, broker
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Live:
    published: int
    seconds: float
    max_lag_ms: float
    stored: int
    complete: bool
    gateway_cpu: float
    others_cpu: float  # CPU seconds of processes not in the benchmark, during the phase
    publish_to_commit: list[float]
    publish_to_handoff: list[float]
    handoff_to_commit: list[float]
    publish_to_stored_at: list[float]
    summary: dict[str, Any]


class Run:
    """What every phase needs: endpoints, options, the work directory and the child processes."""

    def __init__(self, args: argparse.Namespace, endpoints: ServiceEndpoints, work: Path) -> None:
        self.args = args
        self.endpoints = endpoints
        self.work = work
        self.ctx: SpawnContext = multiprocessing.get_context("spawn")
        self.children: list[Child] = []
        self.gateway_login = Login(
            endpoints.mqtt_host,
            endpoints.mqtt_port,
            endpoints.mqtt_gateway_username,
            endpoints.mqtt_gateway_password,
        )
        self.device_login = Login(
            endpoints.mqtt_host,
            endpoints.mqtt_port,
            endpoints.mqtt_device_username,
            endpoints.mqtt_device_password,
        )
        now = time.time()
        # Pre-loaded readings were measured over the last 3 days (validation accepts 30).
        self.workload = Workload(args.patients, now - 3 * 86400, now - 3600)
        self.services_root = Path(endpoints.root)

    def sql(self, query: str, *params: object) -> list[asyncpg.Record]:
        async def fetch() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.endpoints.database_url)
            try:
                return list(await conn.fetch(query, *params))
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def broker_pid(self) -> int | None:
        return pid_from_file(self.services_root / "mqtt" / "mosquitto.pid")

    def cpu_now(self) -> dict[str, float]:
        """CPU seconds so far: the broker, PostgreSQL, this process with its reaped children
        (publishers, mosquitto_sub), and the whole machine."""
        broker = self.broker_pid()
        postmaster = pid_from_file(self.services_root / "pg" / "postmaster.pid")
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "broker": cpu_seconds([broker] if broker else []),
            "postgres": cpu_seconds(children_of(postmaster) if postmaster else []),
            "bench": time.process_time() + reaped.ru_utime + reaped.ru_stime,
            "machine": machine_busy_seconds(),
        }

    @staticmethod
    def cpu_used(
        before: dict[str, float], after: dict[str, float], consumer: float
    ) -> dict[str, float]:
        """CPU seconds between two ``cpu_now``: consumer, postgres, broker, and everything else
        on the machine (other people's work on a shared machine: noise)."""
        used = {k: after[k] - before[k] for k in before}
        others = used["machine"] - used["broker"] - used["postgres"] - used["bench"] - consumer
        return {"postgres": used["postgres"], "broker": used["broker"], "others": others}

    def spawn(self, name: str, role: str, client_id: str, target: int) -> tuple[Child, Path]:
        out = self.work / f"{name}.json"
        roles = "together" if self.args.together else "split"
        argv = [sys.executable, str(Path(__file__).resolve()), role, str(target), str(out), roles]
        if self.args.profile is not None:
            self.args.profile.mkdir(parents=True, exist_ok=True)
            options = ["record", "--idle", "--rate", "200", "--format", "raw", "--output"]
            argv = [self.args.py_spy, *options, str(self.args.profile / f"{name}.txt"), "--", *argv]
        child = Child(name, argv, self.child_env(client_id), self.work / f"{name}.log")
        self.children.append(child)
        return child, out

    def child_env(self, client_id: str) -> dict[str, str]:
        """RPM_* settings as `rpm services env` prints them, plus this run's knobs."""
        return server_env(
            self.endpoints,
            client_id,
            RPM_BATCH_MAX_MESSAGES=str(self.args.batch_max_messages),
            RPM_BATCH_MAX_WAIT_MS=str(self.args.batch_max_wait_ms),
            RPM_API_PORT=str(free_port()),
            RPM_TWILIO_ACCOUNT_SID=TWILIO_SID,
            RPM_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        )

    def publish(self, client_id: str, count: int, rate: float = 0.0) -> list[PublishResult]:
        parts = self.args.publishers
        start_at = time.time() + 3.0  # time for spawned publishers to start and connect
        jobs = [
            PublishJob(
                self.device_login,
                f"{client_id}-pub{part}",
                self.workload,
                part,
                parts,
                count,
                seed=SEED + (1 if rate else 0),
                rate=rate,
                start_at=start_at,
                inflight=self.args.inflight,
                timeout=self.args.timeout,
            )
            for part in range(parts)
        ]
        with self.ctx.Pool(parts) as pool:
            return pool.map_async(publish, jobs).get(self.args.timeout + count / max(rate, 1) + 30)

    def preload(self, client_id: str) -> tuple[int, float, float | None]:
        """Publish N readings into ``client_id``'s offline session: (acked, seconds, broker MiB)."""
        prepare_session(self.gateway_login, client_id)
        results = self.publish(f"load-{client_id}", self.args.readings)
        broker = self.broker_pid()
        return (
            sum(r.acked for r in results),
            max(r.seconds for r in results),
            rss_mib(broker) if broker else None,
        )

    def say(self, line: str) -> None:
        if not self.args.quiet:
            print(f"[ingest] {line}", file=sys.stderr, flush=True)

    def kill_children(self) -> None:
        for child in self.children:
            child.kill()


def drain_consumer(run: Run, name: str, role: str, client_id: str) -> Drain:
    """Pre-load, then start the consumer process and time its drain (phases 1 and 2)."""
    n = run.args.readings
    published, preload_s, rss = run.preload(client_id)
    before = run.cpu_now()
    child, out = run.spawn(name, role, client_id, n)
    complete = True
    try:
        child.expect("ready", 60)
        try:
            done = child.expect("done", run.args.timeout)
        except BenchError:
            complete, done = False, {}
        after = run.cpu_now()
    finally:
        child.stop()
    summary = json.loads(out.read_text())
    summary.update({k: v for k, v in done.items() if k.startswith("gc_")})
    commits = [(float(t), int(m)) for t, m in summary.pop("commits")]
    if role == "_gateway":  # first batch handed to the unit of work: its received_at
        first = run.sql(
            "SELECT extract(epoch FROM min(received_at))::float8 FROM readings "
            "WHERE measured_at BETWEEN $1 AND $2",
            utc(run.workload.span_start),
            utc(run.workload.span_end),
        )[0][0]
    else:
        first = summary["first"]
    end, received = commits[-1] if commits else (time.time(), 0)
    if complete:
        end = float(done["at"])
        received = next(m for t, m in commits if t >= end)
    seconds = end - first if first else math.nan
    drop_session(run.gateway_login, client_id)
    return Drain(
        name,
        published,
        preload_s,
        rss,
        seconds,
        received / seconds if first else math.nan,
        steady_rate(commits),
        received,
        complete,
        {
            "consumer": float(done.get("cpu", math.nan)),
            **run.cpu_used(before, after, float(done.get("cpu_total", math.nan))),
        },
        summary,
    )


def drain_mosquitto_sub(run: Run) -> Drain:
    """Phase 3: the broker's ceiling to a C subscriber draining the same kind of session."""
    n, login = run.args.readings, run.gateway_login
    published, preload_s, rss = run.preload(SUB_ID)
    # The login goes in mosquitto_sub's options file, never on a command line.
    config_home = run.work / "xdg"
    config_home.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(config_home / "mosquitto_sub", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"-u {login.username}\n-P {login.password}\n")
    argv = ["mosquitto_sub", "-h", login.host, "-p", str(login.port), "-i", SUB_ID, "-c"]
    argv += ["-q", "1", "-t", TOPIC_FILTER, "-C", str(n), "-W", str(int(run.args.timeout))]
    output, log = run.work / "mosquitto_sub.out", run.work / "mosquitto_sub.log"
    before, rusage0 = run.cpu_now(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with output.open("wb") as out, log.open("wb") as err:
        started = time.time()
        proc = subprocess.run(
            argv,
            stdout=out,
            stderr=err,
            env={**os.environ, "XDG_CONFIG_HOME": str(config_home)},
            timeout=run.args.timeout + 10,
            check=False,
        )
        seconds = time.time() - started
    after, rusage1 = run.cpu_now(), resource.getrusage(resource.RUSAGE_CHILDREN)
    received = output.read_bytes().count(b"\n")
    drop_session(login, SUB_ID)
    return Drain(
        "mosquitto_sub",
        published,
        preload_s,
        rss,
        seconds,
        received / seconds,
        math.nan,
        received,
        proc.returncode == 0 and received >= n,
        {
            "consumer": rusage1.ru_utime + rusage1.ru_stime - rusage0.ru_utime - rusage0.ru_stime,
            **run.cpu_used(before, after, 0.0),  # mosquitto_sub is reaped: in "bench"
        },
    )


def live_latency(run: Run) -> Live:
    """Phase 4: the gateway live, publishers paced at ``--rate``; publish-to-commit per reading."""
    rate, count = run.args.rate, int(run.args.rate * run.args.seconds)
    child, out = run.spawn("gateway-live", "_gateway", LIVE_ID, count)
    complete = True
    try:
        ready = child.expect("ready", 60)
        before = run.cpu_now()
        results = run.publish("live", count, rate)
        try:
            done = child.expect("done", 30)
        except BenchError:
            complete, done = False, {}
        after = run.cpu_now()
    finally:
        child.stop()
    summary = json.loads(out.read_text())
    summary.update({k: v for k, v in done.items() if k.startswith("gc_")})
    commit_times = [float(t) for t, _ in summary.pop("commits")]
    rows = run.sql(
        """SELECT extract(epoch FROM measured_at)::float8 AS published,
                  extract(epoch FROM received_at)::float8 AS handoff,
                  extract(epoch FROM stored_at)::float8 AS stored
             FROM readings WHERE measured_at > $1""",
        utc(float(ready["at"])),
    )
    to_commit, to_handoff, in_unit, to_stored = [], [], [], []
    for r in rows:
        k = bisect.bisect_left(commit_times, r["handoff"])  # the first commit after hand-off
        if k == len(commit_times):
            continue
        to_commit.append((commit_times[k] - r["published"]) * 1000)
        to_handoff.append((r["handoff"] - r["published"]) * 1000)
        in_unit.append((commit_times[k] - r["handoff"]) * 1000)
        to_stored.append((r["stored"] - r["published"]) * 1000)
    drop_session(run.gateway_login, LIVE_ID)
    seconds = max(r.seconds for r in results)
    gateway_cpu = float(done.get("cpu", math.nan)) - float(ready["cpu"])
    return Live(
        published=sum(r.acked for r in results),
        seconds=seconds,
        max_lag_ms=max(r.max_lag_ms for r in results),
        stored=len(rows),
        complete=complete,
        gateway_cpu=gateway_cpu,
        others_cpu=run.cpu_used(before, after, gateway_cpu)["others"],
        publish_to_commit=sorted(to_commit),
        publish_to_handoff=sorted(to_handoff),
        handoff_to_commit=sorted(in_unit),
        publish_to_stored_at=sorted(to_stored),
        summary=summary,
    )


async def prepare_database(url: str, workload: Workload) -> dict[str, str]:
    """Migrate, enrol the fleet (as simulators.demo.seed does, in one transaction), make the
    bare table."""
    conn = await connect(url)
    try:
        await migrate(conn)
        since = utc(workload.span_start) - timedelta(days=1)
        async with conn.transaction():
            await seed(conn, list(workload.fleet()), since=since)
        await conn.execute(
            f"""CREATE TABLE {BARE_TABLE} (
                    measured_at timestamptz NOT NULL, device_id text NOT NULL,
                    metric text NOT NULL, components jsonb NOT NULL,
                    received_at timestamptz NOT NULL,
                    stored_at timestamptz NOT NULL DEFAULT now())"""
        )
        tsdb = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        )
        return {
            "postgres": str(await conn.fetchval("SHOW server_version")),
            "timescaledb": f"on ({tsdb}), readings is a hypertable" if tsdb else "off",
            "durability": f"fsync={await conn.fetchval('SHOW fsync')}, synchronous_commit="
            f"{await conn.fetchval('SHOW synchronous_commit')}",
        }
    finally:
        await conn.close()


def _version(program: str) -> str:
    path = shutil.which(program, path=f"/usr/sbin:/usr/local/sbin:{os.environ.get('PATH', '')}")
    if path is None:
        return "not found"
    result = subprocess.run([path, "-h"], capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).splitlines()[0].strip()


# --- the report --------------------------------------------------------------------------------

_COUNTS = f"""
SELECT (SELECT count(*) FROM readings WHERE measured_at BETWEEN $1 AND $2) AS gateway_rows,
       (SELECT count(*) FROM readings) AS readings,
       (SELECT count(DISTINCT (device_id, metric, measured_at)) FROM readings) AS readings_distinct,
       (SELECT count(*) FROM {BARE_TABLE}) AS bare,
       (SELECT count(DISTINCT (device_id, metric, measured_at)) FROM {BARE_TABLE}) AS bare_distinct,
       (SELECT count(*) FROM quarantine) AS quarantined,
       (SELECT count(*) FROM alerts) AS alerts,
       (SELECT coalesce(sum(occurrences), 0) FROM alerts) AS occurrences,
       (SELECT count(*) FROM outbox) AS outbox,
       (SELECT count(delivered_at) FROM outbox) AS delivered"""


def _ok(good: bool) -> str:
    return "ok" if good else "MISSED"


def _p50_p99(ordered: Sequence[float]) -> str:
    return f"{percentile(ordered, 50):.1f} / {percentile(ordered, 99):.1f} ms"


def _gc_note(summary: dict[str, Any]) -> str:
    if "gc_s" not in summary:
        return "GC n/a"
    return (
        f"GC {summary['gc_s']:.1f} s, {summary['gc_full']} full collections, "
        f"longest pause {summary['gc_longest_ms']:.0f} ms"
    )


def _workers_row(args: argparse.Namespace, gateway: Drain) -> tuple[str, str, str]:
    if args.together:
        return ("  delivery workers", "in-process", "rpm serve --role all: SMS worker on this core")
    cpu = gateway.summary.get("workers_cpu")
    return (
        "  delivery workers",
        "own process",
        f"rpm serve --role workers beside --role gateway,api; its CPU {cpu or 0:.1f} s "
        "(not in the consumer's)",
    )


def _drain_row(d: Drain, label: str, n: int) -> tuple[str, str, str]:
    cpu = ", ".join(f"{k} {v:.1f} s" for k, v in d.cpu.items() if v and k != "others")
    if d.name == "gateway":
        cpu += f" ({_gc_note(d.summary)})"
    note = f"{d.seconds:.2f} s; CPU {cpu}; other processes {d.cpu['others']:.1f} s"
    if not math.isnan(d.steady):
        note += f"; steady 10-90% {fmt_rate(d.steady)}"
    if not d.complete:
        note += f"; INCOMPLETE: {d.received:,} of {n:,} in time"
    return (label, fmt_rate(d.rate), note)


def report(
    run: Run, info: dict[str, str], drains: list[Drain], live: Live
) -> tuple[str, dict[str, Any]]:
    """The readable table and the JSON result."""
    args, n = run.args, run.args.readings
    gateway, bare, broker = drains
    span = (utc(run.workload.span_start), utc(run.workload.span_end))
    c = run.sql(_COUNTS, *span)[0]
    duplicated = (c["readings"] - c["readings_distinct"]) + (c["bare"] - c["bare_distinct"])
    lost_by = {
        "gateway": gateway.published - c["gateway_rows"],
        "bare": bare.published - c["bare_distinct"],
        "mosquitto_sub": broker.published - broker.received,
        "live": live.published - live.stored,
    }
    lost = sum(max(0, v) for v in lost_by.values())
    redelivered = sum(int(s.get("duplicates", 0)) for s in (gateway.summary, live.summary))
    ratio_bare, ratio_broker = gateway.rate / bare.rate, gateway.rate / broker.rate
    p50, p99 = percentile(live.publish_to_commit, 50), percentile(live.publish_to_commit, 99)
    achieved = live.published / live.seconds
    batches = int(gateway.summary.get("batches", 0))
    versions = "/".join(metadata.version(p) for p in ("aiomqtt", "paho-mqtt", "asyncpg"))
    mosquitto = _version("mosquitto").removeprefix("mosquitto version ")
    sections = {
        "Environment": [
            ("CPUs", str(os.cpu_count()), f"load average {os.getloadavg()[0]:.2f} at the end"),
            ("Mosquitto", mosquitto, "persistence on (autosave 1 s), max_inflight 10000"),
            ("PostgreSQL", info["postgres"], info["durability"]),
            ("TimescaleDB", info["timescaledb"], ""),
            ("Python", platform.python_version(), ""),
            ("aiomqtt / paho-mqtt / asyncpg", versions, ""),
            ("fleet", f"{args.patients} patients", f"{args.patients * 3} devices"),
            (
                "gateway batch limits",
                f"{args.batch_max_messages} / {args.batch_max_wait_ms} ms",
                "",
            ),
            ("publishers", f"{args.publishers} processes", f"max_inflight {args.inflight}"),
        ],
        f"Throughput: drain of {n:,} pre-loaded readings": [
            (
                "pre-load (per consumer)",
                f"{gateway.preload_s:.1f} s",
                f"broker RSS with the backlog {gateway.broker_rss_mib or 0:.0f} MiB",
            ),
            _drain_row(gateway, "gateway (rpm.server.Server, rules on)", n),
            _workers_row(args, gateway),
            _drain_row(bare, "(a) bare aiomqtt + COPY", n),
            _drain_row(broker, "(b) broker ceiling, mosquitto_sub", n),
            (
                "gateway / target",
                fmt_rate(gateway.rate),
                f">= {TARGET_RATE:,.0f}/s: {_ok(gateway.rate >= TARGET_RATE)}",
            ),
            (
                "ratio to bare aiomqtt",
                f"{ratio_bare:.2f}",
                f">= {TARGET_RATIO_TO_BARE}: {_ok(ratio_bare >= TARGET_RATIO_TO_BARE)}",
            ),
            ("ratio to broker ceiling", f"{ratio_broker:.2f}", ""),
            ("gateway units of work", f"{batches:,}", f"{n / max(batches, 1):.0f} readings each"),
        ],
        f"Latency: gateway live at {args.rate:,.0f} readings/s for {args.seconds:g} s": [
            (
                "published",
                f"{live.published:,}",
                f"{fmt_rate(achieved)} over {live.seconds:.1f} s; "
                f"worst publisher lag {live.max_lag_ms:.0f} ms",
            ),
            ("publish -> commit p50", fmt_ms(p50), ""),
            (
                "publish -> commit p99",
                fmt_ms(p99),
                f"< {TARGET_P99_MS:.0f} ms: {_ok(p99 < TARGET_P99_MS)}",
            ),
            ("publish -> commit max", fmt_ms(max(live.publish_to_commit, default=math.nan)), ""),
            (
                "  publish -> hand-off p50 / p99",
                _p50_p99(live.publish_to_handoff),
                "broker, gateway queue, batch window",
            ),
            ("  hand-off -> commit p50 / p99", _p50_p99(live.handoff_to_commit), "unit of work"),
            (
                "  publish -> stored_at p50 / p99",
                _p50_p99(live.publish_to_stored_at),
                "stored_at = transaction start: a lower bound",
            ),
            (
                "gateway CPU at this rate",
                f"{100 * live.gateway_cpu / live.seconds:.0f}% of a core",
                f"{int(live.summary.get('batches', 0)):,} units of work; {_gc_note(live.summary)}",
            ),
            (
                "other processes' CPU",
                f"{live.others_cpu:.1f} s",
                f"in {live.seconds:.0f} s on {os.cpu_count()} CPUs: not this benchmark's",
            ),
        ],
        "Integrity": [
            ("lost", f"{lost:,}", ", ".join(f"{k} {v}" for k, v in lost_by.items())),
            ("duplicated rows", f"{duplicated:,}", "readings (primary key) + bare table"),
            ("redeliveries skipped", f"{redelivered:,}", "by reading identity (gateway counters)"),
            ("quarantined", f"{c['quarantined']:,}", "expected 0: every payload is valid"),
            (
                "alerts opened",
                f"{c['alerts']:,}",
                f"{c['occurrences'] - c['alerts']:,} recurrences; {c['outbox']} SMS queued, "
                f"{c['delivered']} sent to the local Twilio stand-in",
            ),
        ],
    }
    notes = [
        "Throughput: each consumer drains N readings pre-loaded into its offline persistent",
        "session (no publisher CPU in the drain);",
        "rate = N / (first batch in hand -> commit of the Nth).",
        "Latency: measured_at = publish wall time; commit = when the unit of work returned.",
        "Other processes: machine CPU time (/proc/stat) minus the benchmark's own processes,",
        "the broker and PostgreSQL; on a shared machine this is the noise in the figures.",
    ]
    if args.profile is not None:
        notes.append(f"PROFILED with py-spy, so slower than unprofiled: {args.profile}")
    table = "\n\n".join([*(render_table(k, v) for k, v in sections.items()), "\n".join(notes)])
    result: dict[str, Any] = {
        "readings_per_s": round(gateway.rate, 1),
        "bare_aiomqtt_per_s": round(bare.rate, 1),
        "broker_ceiling_per_s": round(broker.rate, 1),
        "ratio_to_bare": round(ratio_bare, 3),
        "ratio_to_broker": round(ratio_broker, 3),
        "p50_ms_at_2k": round(p50, 2),
        "p99_ms_at_2k": round(p99, 2),
        "lost": lost,
        "duplicated": duplicated,
        "readings": n,
        "steady_readings_per_s": round(gateway.steady, 1),
        "readings_per_cpu_s": round(n / gateway.cpu["consumer"], 1),
        "roles": "together" if args.together else "split",
        "workers_cpu_s": gateway.summary.get("workers_cpu"),
        "live_rate_per_s": round(achieved, 1),
        "alerts_opened": c["alerts"],
        "quarantined": c["quarantined"],
        "redelivered_skipped": redelivered,
        "timescaledb": info["timescaledb"] != "off",
        "cpu_count": os.cpu_count(),
        "targets_met": {
            "readings_per_s": gateway.rate >= TARGET_RATE,
            "ratio_to_bare": ratio_bare >= TARGET_RATIO_TO_BARE,
            "p99_ms_at_2k": p99 < TARGET_P99_MS,
            "nothing_lost": lost == 0 and duplicated == 0,
        },
        "other_cpu_s": {
            "gateway_drain": round(gateway.cpu["others"], 2),
            "bare_drain": round(bare.cpu["others"], 2),
            "broker_drain": round(broker.cpu["others"], 2),
            "latency_phase": round(live.others_cpu, 2),
        },
        "profiled": args.profile is not None,
    }
    return table, result


# --- entry points ------------------------------------------------------------------------------


def benchmark(run: Run) -> tuple[str, dict[str, Any]]:
    say = run.say
    say(f"local services up in {run.work}; enrolling {run.args.patients} patients")
    info = asyncio.run(prepare_database(run.endpoints.database_url, run.workload))
    drains = []
    for name, role, client_id in (("gateway", "_gateway", GATEWAY_ID), ("bare", "_bare", BARE_ID)):
        say(f"{name}: pre-loading {run.args.readings:,} readings, then draining")
        drains.append(drain_consumer(run, name, role, client_id))
        say(f"{name}: {fmt_rate(drains[-1].rate)}")
    say(f"mosquitto_sub: pre-loading {run.args.readings:,} readings, then draining")
    drains.append(drain_mosquitto_sub(run))
    say(f"mosquitto_sub: {fmt_rate(drains[-1].rate)}")
    say(f"latency: gateway live, {run.args.rate:,.0f} readings/s for {run.args.seconds:g} s")
    live = live_latency(run)
    return report(run, info, drains, live)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--readings", type=int, default=None, help="pre-loaded per consumer (100,000)")
    p.add_argument("--seconds", type=float, default=None, help="latency phase length (20)")
    p.add_argument("--rate", type=float, default=2000.0, help="latency phase readings/s")
    p.add_argument("--quick", action="store_true", help="20,000 readings and 5 s")
    p.add_argument("--patients", type=int, default=500, help="three devices each")
    p.add_argument("--publishers", type=int, default=2, help="publisher processes")
    p.add_argument("--inflight", type=int, default=1000, help="paho max_inflight per publisher")
    p.add_argument("--batch-max-messages", type=int, default=2000)
    p.add_argument("--batch-max-wait-ms", type=int, default=20)
    p.add_argument("--timeout", type=float, default=120.0, help="per drain, seconds")
    p.add_argument("--profile", type=Path, default=None, help="py-spy each consumer into DIR")
    p.add_argument(
        "--together",
        action="store_true",
        help="the delivery workers in the gateway's process (rpm serve's default, --role all), "
        "not beside it (--role gateway,api + --role workers)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.profile is not None:
        beside = Path(sys.executable).with_name("py-spy")
        args.py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
        if args.py_spy is None:
            p.error("--profile needs py-spy: uv pip install --python .venv/bin/python py-spy")
    args.readings = args.readings or (20_000 if args.quick else 100_000)
    args.seconds = args.seconds or (5.0 if args.quick else 20.0)
    if args.readings > 1_000_000:
        p.error("the broker queues at most 1,000,000 messages per session (max_queued_messages)")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("_gateway", "_bare"):  # a helper process of this benchmark
        role, target, out = argv[0], int(argv[1]), Path(argv[2])
        with contextlib.suppress(KeyboardInterrupt):
            if role == "_gateway":
                # Exactly as `rpm serve` runs: uvloop, and the server's GC settings.
                from rpm.cli import run as run_like_rpm_serve

                split = argv[3:4] != ["together"]
                result = run_like_rpm_serve(gateway_process(target, split))
            else:
                # The baseline gets uvloop too, so the comparison is of the work done.
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    result = runner.run(bare_process(target))
            out.write_text(json.dumps(result))
        return 0
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        run = Run(args, services.start(), work)
        try:
            return benchmark(run)
        finally:
            run.kill_children()

    return run_with_services("rpm-bench-", body)


if __name__ == "__main__":
    raise SystemExit(main())
