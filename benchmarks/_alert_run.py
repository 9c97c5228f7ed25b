"""What ``alert_latency.py`` runs and observes: the run (options, endpoints, ``rpm serve``),
the database it prepares, the load with its crisis readings, and the counts read back.

Publisher processes (spawn) import this module: the server's modules, seconds of imports,
are imported where they are used, so publishers start at once.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any

import asyncpg
from _alert_clients import CrisisPatient, CrisisPublisher, Dashboard, watch_sms
from _common import (
    BenchError,
    PublishJob,
    PublishResult,
    Workload,
    cpu_seconds,
    publish,
    server_env,
    utc,
)
from _report import progress
from _server import (
    TWILIO_SID,
    TWILIO_TOKEN,
    RpmServe,
    ServicesCpu,
    cpu_used,
    logins,
    postgres_info,
)

from simulators.localservices import ServiceEndpoints, free_port

GATEWAY_ID = "rpm-bench-alerts-gateway"
NURSE_ID = "bench.nurse"
BENCH_TEAM = "bench"
SEED = 2027


@dataclass(slots=True)
class Measured:
    """What the run observed, before any arithmetic."""

    crisis: list[CrisisPatient]
    published: dict[str, float]
    acked: dict[str, float]
    opened: dict[str, float]
    sms: dict[str, float]  # phone -> arrival
    background: list[PublishResult]
    background_start: float
    crisis_max_lag_ms: float
    stream_events: Counter[str]
    stream_connects: int
    signed_in: bool
    cpu: dict[str, float]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    server_settings: dict[str, object]
    db: dict[str, Any] = field(default_factory=dict)


class Run:
    """Options, endpoints, the work directory, and the server process."""

    def __init__(self, args: argparse.Namespace, endpoints: ServiceEndpoints, work: Path) -> None:
        self.args = args
        self.endpoints = endpoints
        self.work = work
        self.api_port = free_port()
        self.server: RpmServe | None = None
        self.device_login = logins(endpoints)[1]
        now = time.time()
        # Scheduled events of the background fleet fall in this future span: none is due now.
        self.workload = Workload(args.patients, now + 2 * 86400, now + 3 * 86400)
        self.nurse_password = secrets.token_urlsafe(24)
        self.services = ServicesCpu(Path(endpoints.root))
        self.say = progress("alert_latency", args.quiet)

    async def start_server(self, twilio_url: str) -> None:
        """``rpm serve`` with RPM_* as ``rpm services env`` prints them, else its defaults."""
        env = server_env(
            self.endpoints,
            GATEWAY_ID,
            RPM_API_PORT=str(self.api_port),
            RPM_TWILIO_ACCOUNT_SID=TWILIO_SID,
            RPM_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
            RPM_TWILIO_BASE_URL=twilio_url,
        )
        if self.args.outbox_poll_interval_s is not None:
            env["RPM_OUTBOX_POLL_INTERVAL_S"] = str(self.args.outbox_poll_interval_s)
        self.server = RpmServe(env, self.work / "serve.log", self.base_url)
        await self.server.start()

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()

    def kill_server(self) -> None:
        if self.server is not None:
            self.server.kill()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def cpu_now(self, publishers: Sequence[int]) -> dict[str, float]:
        """CPU seconds so far: server, PostgreSQL, broker, this process with the publisher
        processes, and the whole machine."""
        server = self.server.pid if self.server else None
        return {
            "server": cpu_seconds([server] if server else []),
            **self.services.now(),
            "bench": time.process_time() + cpu_seconds(publishers),
        }


async def prepare_database(run: Run, crisis: Sequence[CrisisPatient]) -> dict[str, str]:
    """Migrate; enroll the background fleet, the crisis patients and a nurse."""
    from rpm.auth import hash_password
    from rpm.storage import registry, staff_auth
    from rpm.storage import sms as sms_store
    from rpm.storage import staff as staff_store
    from rpm.storage.migrate import migrate
    from rpm.storage.pool import connect
    from simulators.demo import seed

    conn = await connect(run.endpoints.database_url)
    try:
        await migrate(conn)
        now = datetime.now(UTC)
        since = now - timedelta(hours=1)
        hour = now.hour
        quiet = (clock_time((hour + 6) % 24), clock_time((hour + 8) % 24))  # not now
        async with conn.transaction():
            await seed(conn, run.workload.fleet(), since=since)
            for p in crisis:
                await registry.upsert_patient(
                    conn,
                    patient_id=p.patient_id,
                    display_name=f"Crisis Patient {p.patient_id}",
                    phone=p.phone,
                    sms_consent=True,
                    programs=("hypertension",),
                )
                await sms_store.set_quiet_hours(conn, p.patient_id, *quiet)
                await registry.enroll_device(
                    conn,
                    device_id=p.device_id,
                    kind="bp_cuff",
                    patient_id=p.patient_id,
                    since=since,
                )
        await staff_auth.add_staff(
            conn,
            staff_id=NURSE_ID,
            display_name="Benchmark Nurse",
            role="nurse",
            password_hash=await asyncio.to_thread(hash_password, run.nurse_password),
            phone=None,
            replace=True,
        )
        # Nurses see their care teams' patients only (rpm/api/access.py): one ward for all.
        await staff_store.create_team(conn, BENCH_TEAM, "Benchmark ward")
        await staff_store.add_member(conn, BENCH_TEAM, NURSE_ID)
        await staff_store.adopt_unassigned_patients(conn, BENCH_TEAM)
        return await postgres_info(conn)
    finally:
        await conn.close()


def background_jobs(run: Run, start_at: float) -> list[PublishJob]:
    args = run.args
    count = int(args.rate * args.seconds)
    return [
        PublishJob(
            run.device_login,
            f"rpm-bench-alerts-bg{part}",
            run.workload,
            part,
            args.publishers,
            count,
            seed=SEED,
            rate=args.rate,
            start_at=start_at,
            timeout=60.0,
        )
        for part in range(args.publishers)
    ]


def started(pause: float) -> int:
    """A publisher process's first task: its pid, once it is up (``pause`` lets the others
    take theirs)."""
    time.sleep(pause)
    return os.getpid()


async def measure(run: Run, crisis: list[CrisisPatient]) -> Measured:
    from rpm.settings import MqttSettings, SmsSettings
    from simulators.twilio_sink import TwilioSink

    args = run.args
    poll = args.outbox_poll_interval_s
    if poll is None:
        poll = SmsSettings.model_fields["outbox_poll_interval_s"].default
    sink = TwilioSink(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN)
    twilio_url = await sink.start()
    dashboard = Dashboard(run.base_url, {p.patient_id for p in crisis})
    sms: dict[str, float] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        run.say(f"starting rpm serve on {run.base_url} (Twilio stand-in {twilio_url})")
        await run.start_server(twilio_url)
        await dashboard.sign_in(NURSE_ID, run.nurse_password)
        tasks.append(asyncio.create_task(dashboard.follow()))
        tasks.append(asyncio.create_task(watch_sms(sink, sms)))
        try:
            await asyncio.wait_for(dashboard.connected.wait(), 15)
        except TimeoutError:
            why = f" (refused: {dashboard.refused})" if dashboard.refused else ""
            raise BenchError(f"the live stream did not open in 15 s{why}") from None
        await asyncio.sleep(0.5)  # the server subscribes right after its first line

        run.say(
            f"background {args.rate:,.0f} readings/s for {args.seconds:g} s, "
            f"{len(crisis)} crisis readings every {args.crisis_interval:g} s"
        )
        with multiprocessing.get_context("spawn").Pool(args.publishers) as pool:
            # Every publisher process started (imports done) before the schedule is set.
            ready = pool.map_async(started, [0.3] * args.publishers, chunksize=1)
            publishers = sorted(set(ready.get(60)))
            start_at = time.time() + 2.0  # time to build the fleet and connect
            due = [start_at + args.warmup + k * args.crisis_interval for k in range(len(crisis))]
            crisis_pub = CrisisPublisher(run.device_login, crisis, due)
            load_before = os.getloadavg()
            before = run.cpu_now(publishers)
            pending = pool.map_async(publish, background_jobs(run, start_at))
            crisis_pub.start()
            try:
                background = await asyncio.to_thread(pending.get, args.seconds + 90)
            except multiprocessing.TimeoutError:
                raise BenchError("background publishers did not finish in time") from None
            await asyncio.to_thread(crisis_pub.join)
            last = max(crisis_pub.published.values(), default=time.time())
            acked = sum(r.acked for r in background)
            await settle(run, crisis, dashboard.opened, sms, acked, last + args.grace, start_at)
            after = run.cpu_now(publishers)
        load_after = os.getloadavg()
        used = cpu_used(before, after)
        return Measured(
            crisis=crisis,
            published=crisis_pub.published,
            acked=crisis_pub.acked,
            opened=dict(dashboard.opened),
            sms=dict(sms),
            background=background,
            background_start=start_at,
            crisis_max_lag_ms=crisis_pub.max_lag_ms,
            stream_events=dashboard.events,
            stream_connects=dashboard.connects,
            signed_in=dashboard.signed_in,
            cpu=used,
            load_before=load_before,
            load_after=load_after,
            server_settings={
                "outbox_poll_interval_s": poll,
                "batch": f"{MqttSettings.model_fields['batch_max_messages'].default} messages / "
                f"{MqttSettings.model_fields['batch_max_wait_ms'].default} ms",
            },
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await dashboard.close()
        # Before the sink stops: the SMS worker may still be talking to it.
        await asyncio.to_thread(run.stop_server)
        await sink.stop()


async def settle(
    run: Run,
    crisis: Sequence[CrisisPatient],
    opened: dict[str, float],
    sms: dict[str, float],
    background: int,
    deadline: float,
    since: float,
) -> None:
    """Wait until every crisis patient's event and SMS arrived and the background readings the
    broker acknowledged are stored, or until ``deadline``."""
    phones = {p.phone for p in crisis}
    devices = [p.device_id for p in crisis]
    conn = await asyncpg.connect(run.endpoints.database_url)
    try:
        while time.time() < deadline:
            if len(opened) >= len(crisis) and phones.issubset(sms):
                stored = await conn.fetchval(_BACKGROUND_STORED, utc(since - 60), devices)
                if stored >= background:
                    return
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


_BACKGROUND_STORED = """
SELECT count(*) FROM readings WHERE measured_at >= $1 AND device_id <> ALL($2)"""

_FROM_DB = """
SELECT (SELECT count(*) FROM alerts) AS alerts,
       (SELECT count(*) FROM alerts WHERE patient_id = ANY($1)) AS crisis_alerts,
       (SELECT count(*) FROM readings WHERE measured_at >= $2 AND device_id <> ALL($3))
           AS background_stored,
       (SELECT count(*) FROM quarantine) AS quarantined,
       (SELECT count(*) FROM outbox WHERE channel = 'sms') AS sms_items,
       (SELECT count(delivered_at) FROM outbox WHERE channel = 'sms') AS sms_delivered,
       (SELECT count(*) FROM outbox WHERE channel = 'sms' AND payload->>'patient_id' = ANY($1)
           AND last_error IS NOT NULL) AS crisis_sms_with_error"""


async def from_database(run: Run, m: Measured) -> dict[str, Any]:
    """Counts, background alerts by rule, and each crisis reading's hand-off to the gateway's
    unit of work (``received_at``)."""
    ids = [p.patient_id for p in m.crisis]
    devices = [p.device_id for p in m.crisis]
    conn = await asyncpg.connect(run.endpoints.database_url)
    try:
        row = await conn.fetchrow(_FROM_DB, ids, utc(m.background_start - 60), devices)
        assert row is not None
        counts = dict(row)
        by_rule = await conn.fetch(
            """SELECT rule_id, severity, count(*) AS n FROM alerts
                WHERE patient_id <> ALL($1) GROUP BY 1, 2 ORDER BY 3 DESC""",
            ids,
        )
        handoff = await conn.fetch(
            """SELECT d.patient_id, extract(epoch FROM r.received_at)::float8 AS at
                 FROM readings r JOIN unnest($1::text[], $2::text[]) AS d(device_id, patient_id)
                   ON r.device_id = d.device_id""",
            devices,
            ids,
        )
    finally:
        await conn.close()
    counts["background_by_rule"] = [(r["rule_id"], r["severity"], r["n"]) for r in by_rule]
    counts["handoff"] = {r["patient_id"]: r["at"] for r in handoff}
    return counts
