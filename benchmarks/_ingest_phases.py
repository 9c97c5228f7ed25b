"""The ingest benchmark's phases (``ingest.py``): each consumer draining a pre-loaded
session, the mosquitto_sub ceiling, and the gateway live at a paced rate; the run that holds
their options, endpoints, helper processes and CPU sampling."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import asyncpg
from _common import (
    TOPIC_FILTER,
    BenchError,
    Child,
    PublishJob,
    PublishResult,
    Workload,
    drop_session,
    prepare_session,
    publish,
    rss_mib,
    server_env,
    steady_rate,
    utc,
)
from _consumers import BARE_TABLE
from _cpu_timeline import CpuTimeline
from _report import progress
from _server import TWILIO_SID, TWILIO_TOKEN, ServicesCpu, cpu_used, logins, postgres_info

from rpm.storage.migrate import migrate
from rpm.storage.pool import connect
from simulators.demo import seed
from simulators.localservices import ServiceEndpoints, free_port

CONSUMERS = Path(__file__).resolve().with_name("_consumers.py")
GATEWAY_ID = "rpm-bench-gateway"
LIVE_ID = "rpm-bench-gateway-live"
BARE_ID = "rpm-bench-bare"
SUB_ID = "rpm-bench-mosquitto-sub"
SEED = 2026


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
    cpu: dict[str, float]  # CPU seconds over the drain: consumer, workers, postgres, broker, ...
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
        self.gateway_login, self.device_login = logins(endpoints)
        now = time.time()
        # Pre-loaded readings were measured over the last 3 days (validation accepts 30).
        self.workload = Workload(args.patients, now - 3 * 86400, now - 3600)
        self.services = ServicesCpu(Path(endpoints.root))
        self.say = progress("ingest", args.quiet)

    def sql(self, query: str, *params: object) -> list[asyncpg.Record]:
        async def fetch() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.endpoints.database_url)
            try:
                return list(await conn.fetch(query, *params))
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def cpu_now(self) -> dict[str, float]:
        """CPU seconds so far: the services, the machine, and this process with its reaped
        children (publishers, mosquitto_sub) as ``bench``."""
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        bench = time.process_time() + reaped.ru_utime + reaped.ru_stime
        return {**self.services.now(), "bench": bench}

    @staticmethod
    def cpu_used(
        before: dict[str, float], after: dict[str, float], consumer: float
    ) -> dict[str, float]:
        """CPU seconds between two ``cpu_now``: postgres, broker, and everything else."""
        used = cpu_used(before, after, consumer)
        return {k: used[k] for k in ("postgres", "broker", "others")}

    def spawn(self, name: str, role: str, client_id: str, target: int) -> tuple[Child, Path]:
        out = self.work / f"{name}.json"
        roles = "together" if self.args.together else "split"
        argv = [sys.executable, str(CONSUMERS), role, str(target), str(out), roles]
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
        broker = self.services.broker_pid()
        return (
            sum(r.acked for r in results),
            max(r.seconds for r in results),
            rss_mib(broker) if broker else None,
        )

    def kill_children(self) -> None:
        for child in self.children:
            child.kill()


def _finished(
    run: Run, child: Child, out: Path, timeout: float
) -> tuple[bool, dict[str, Any], dict[str, float], dict[str, Any]]:
    """Whether the child's ``done`` came within ``timeout``, that event ({} if not), the CPU
    sample then, and the figures it wrote once stopped (with its GC figures)."""
    try:
        done = child.expect("done", timeout)
    except BenchError:
        done = {}
    after = run.cpu_now()
    child.stop()  # the child writes its figures when its stdin closes
    summary = json.loads(out.read_text())
    summary.update({k: v for k, v in done.items() if k.startswith("gc_")})
    return bool(done), done, after, summary


def drain_consumer(run: Run, name: str, role: str, client_id: str) -> Drain:
    """Pre-load, then start the consumer process and time its drain (phases 1 and 2)."""
    n = run.args.readings
    published, preload_s, rss = run.preload(client_id)
    child, out = run.spawn(name, role, client_id, n)
    try:
        with CpuTimeline(run.cpu_now, child.proc.pid) as timeline:
            child.expect("ready", 60)
            complete, done, _, summary = _finished(run, child, out, run.args.timeout)
    finally:
        child.stop()
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
        drain_cpu(run, timeline, first, end),
        summary,
    )


def drain_cpu(run: Run, timeline: CpuTimeline, first: float | None, end: float) -> dict[str, float]:
    """CPU seconds of each part over the drain (first batch in hand -> commit of the Nth):
    the consumer process, the delivery workers' process it started (split mode; 0 for the
    bare consumer), PostgreSQL, the broker, and ``others`` (the rest of the machine: other
    work on a shared machine, the noise). The consumer's start-up is not in it."""
    span = timeline.window(first, end) if first else None
    if span is None:
        return dict.fromkeys(("consumer", "workers", "postgres", "broker", "others"), math.nan)
    before, after = span
    consumer = after["consumer"] - before["consumer"]
    tree = after["tree"] - before["tree"]
    parts = ("broker", "postgres", "machine", "bench")
    used = run.cpu_used({k: before[k] for k in parts}, {k: after[k] for k in parts}, tree)
    return {"consumer": consumer, "workers": tree - consumer, **used}


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
    try:
        ready = child.expect("ready", 60)
        before = run.cpu_now()
        results = run.publish("live", count, rate)
        complete, done, after, summary = _finished(run, child, out, 30)
    finally:
        child.stop()
    commit_times = [float(t) for t, _ in summary.pop("commits")]
    rows = run.sql(
        """SELECT extract(epoch FROM measured_at)::float8 AS published,
                  extract(epoch FROM received_at)::float8 AS handoff,
                  extract(epoch FROM stored_at)::float8 AS stored
             FROM readings WHERE measured_at > $1""",
        utc(float(ready["at"])),
    )
    to_commit, to_handoff, in_unit, to_stored = [], [], [], []
    dump = []
    for r in rows:
        k = bisect.bisect_left(commit_times, r["handoff"])  # the first commit after hand-off
        if k == len(commit_times):
            continue
        dump.append((r["published"], r["handoff"], commit_times[k]))
        to_commit.append((commit_times[k] - r["published"]) * 1000)
        to_handoff.append((r["handoff"] - r["published"]) * 1000)
        in_unit.append((commit_times[k] - r["handoff"]) * 1000)
        to_stored.append((r["stored"] - r["published"]) * 1000)
    drop_session(run.gateway_login, LIVE_ID)
    if run.args.latency_dump is not None:
        first = min((p for p, _, _ in dump), default=0.0)
        lines = ["at_s,to_handoff_ms,to_commit_ms"] + [
            f"{p - first:.4f},{(h - p) * 1000:.2f},{(c - p) * 1000:.2f}" for p, h, c in sorted(dump)
        ]
        run.args.latency_dump.write_text("\n".join(lines) + "\n")
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
        return await postgres_info(conn)
    finally:
        await conn.close()
