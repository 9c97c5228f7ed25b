"""Alert latency benchmark: a crisis reading's MQTT publish -> the alert on a dashboard's live
stream, and -> the patient's SMS request at the local Twilio stand-in, under background load.

    uv run python benchmarks/alert_latency.py            # 30 s at 1,000 readings/s
    uv run python benchmarks/alert_latency.py --quick    # 10 s

Everything runs on loopback in a temporary directory, stopped and removed at the end (also on
error and Ctrl-C): LocalServices (PostgreSQL 15, with TimescaleDB when installed, and
Mosquitto), a real ``rpm serve`` process configured from RPM_* variables with every server
default (batch 2000 messages / 20 ms, SMS outbox poll ``RPM_OUTBOX_POLL_INTERVAL_S`` 0.5 s),
and ``simulators.twilio_sink`` in this process, which the server's real twilio client calls.

Load. A background fleet (``--patients``, 5,000 by default, three devices each, enrolled as
``rpm demo`` enrolls them) publishes normal readings at ``--rate`` in total for ``--seconds``
from ``--publishers`` separate processes (``_common.publish``: paho, QoS 1, one reading per
message, devices in turn). Its scheduled events lie in the future, so it has no crisis. The
fleet is large so that each device sends about two readings in the 30 s, not dozens: rules
over several readings (3 of 5 in stage 2, a 14-day trend from 10 readings) would otherwise
fire for much of a fresh fleet within seconds, an artefact of the compressed time. What the
background still raises (single readings past a threshold, NEWS2) is counted and shown.
After ``--warmup`` s (1), one crisis reading (200/125 mm Hg, above the general rule
``bp.hypertensive_crisis``: critical) is published every ``--crisis-interval`` s (0.25), each
by a different crisis patient, so each opens a new episode and queues one patient SMS. Crisis
patients have SMS consent, their own phone number, and quiet hours set away from now
(critical alerts are urgent and would bypass them anyway). In the first 15 s every background
reading is its device's first since the server started (cold rule state, loaded from the
database); the slowest samples tend to fall there, and the table says when the slowest was.

Clocks (one machine, one clock, ``time.time()``):

- publish: when paho's ``publish()`` returned for the crisis reading (queued for the client's
  network thread, which writes it at once); the PUBACK from the broker is shown apart.
- dashboard: when the ``open`` event for that patient was read from ``GET /api/alerts/stream``
  (server-sent events fed by PostgreSQL NOTIFY), the endpoint the queue page uses. The
  benchmark signs in as a nurse through ``/dashboard/sign-in`` and streams with the session
  cookie, as the page does; the stream is reconnected (EventSource-like) if the server drops it.
- SMS: when the sink had accepted the Message create for that patient's number, seen by a task
  in this process's event loop waiting on the sink (the sink's own ``received_at`` is kept to
  the second only).

Lost: crisis patients with no dashboard event, or no SMS, ``--grace`` s after the last crisis
publish. CPU seconds per part and "other processes" (the machine's busy time minus ours) are
shown, as in ``ingest.py``: on a shared machine that is the noise to read the figures against.

``--samples FILE`` writes each crisis reading's times (JSON lines); ``--keep`` keeps the work
directory with the server's log. The last line of output is one JSON object (latencies in ms:
``dashboard_*``, ``sms_*``; ``background_per_s``; ``alerts``, the crisis alerts seen on the
stream; ``lost_*``); the table before it explains the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/rules.py is named like the ``rules`` package, which the server imports: keep this
# folder behind the project on sys.path (``_common`` is still found), as rules.py does.
sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from types import FrameType
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import paho.mqtt.client as paho
from _common import (
    BenchError,
    Child,
    Login,
    PublishJob,
    PublishResult,
    Workload,
    children_of,
    cpu_seconds,
    fmt_ms,
    fmt_rate,
    machine_busy_seconds,
    paho_client,
    percentile,
    pid_from_file,
    publish,
    render_table,
    run_with_services,
    server_env,
    utc,
)

from simulators.fleet import encode_canonical, topic
from simulators.localservices import LocalServices, ServiceEndpoints, free_port

if TYPE_CHECKING:
    from simulators.twilio_sink import TwilioSink

# Publisher processes (spawn) import this module: the server's modules, seconds of imports,
# are imported where they are used, so publishers start at once.

GATEWAY_ID = "rpm-bench-alerts-gateway"
CRISIS_CLIENT_ID = "rpm-bench-alerts-crisis"
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "bench-auth-token"
NURSE_ID = "bench.nurse"
BENCH_TEAM = "bench"
SEED = 2027
CRISIS_VALUES = {"systolic": 200, "diastolic": 125, "pulse": 96}  # > 180 / > 120: critical
RETRY_S = 2.0  # the stream's "retry:" (EventSource reconnect delay)

TARGET_DASHBOARD_P99_MS = 500.0  # the issue's target at 1,000 readings/s


# --- the crisis patients and their publisher ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class CrisisPatient:
    patient_id: str
    device_id: str
    phone: str


def crisis_patients(n: int) -> list[CrisisPatient]:
    # 555 numbers are fictional (NANP); one per patient, so an SMS names its patient.
    return [
        CrisisPatient(f"c{i:05d}", f"c{i:05d}-bp_cuff", f"+1555{2_000_000 + i}") for i in range(n)
    ]


class CrisisPublisher:
    """One crisis reading per patient at its due time, from a thread, over one paho client.

    ``published[patient]`` is when ``publish()`` returned; ``acked[patient]`` when the
    broker's PUBACK arrived (paho's network thread).
    """

    def __init__(self, login: Login, patients: Sequence[CrisisPatient], due: Sequence[float]):
        self._login = login
        self._plan = list(zip(patients, due, strict=True))
        self.published: dict[str, float] = {}
        self.acked: dict[str, float] = {}
        self.max_lag_ms = 0.0
        self.error: Exception | None = None
        self._mids: dict[int, str] = {}
        # Written by paho's network thread. No lock of ours: paho calls on_publish holding the
        # mutex that publish() takes, so a lock held around publish() could deadlock.
        self._puback_at: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name="crisis-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        self.acked = {p: self._puback_at[m] for m, p in self._mids.items() if m in self._puback_at}
        if self.error is not None:
            raise BenchError(f"crisis publisher failed: {self.error!r}")

    def _run(self) -> None:
        connected = threading.Event()
        client = paho_client(self._login, CRISIS_CLIENT_ID)

        def on_publish(c: paho.Client, u: object, mid: int, reason: Any, p: object) -> None:
            self._puback_at.setdefault(mid, time.time())

        client.on_connect = lambda c, u, flags, reason, p: connected.set()
        client.on_publish = on_publish
        try:
            client.connect(self._login.host, self._login.port, keepalive=60)
            client.loop_start()
            if not connected.wait(10):
                raise BenchError("crisis publisher could not connect")
            for patient, due in self._plan:
                ahead = due - time.time()
                if ahead > 0:
                    time.sleep(ahead)
                else:
                    self.max_lag_ms = max(self.max_lag_ms, -ahead * 1000)
                stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                item: dict[str, object] = {
                    "metric": "blood_pressure",
                    "measured_at": stamp,
                    "values": CRISIS_VALUES,
                }
                info = client.publish(topic(patient.device_id), encode_canonical(item), qos=1)
                self.published[patient.patient_id] = time.time()
                self._mids[info.mid] = patient.patient_id
            deadline = time.time() + 10
            while len(self._puback_at) < len(self._plan) and time.time() < deadline:
                time.sleep(0.05)
        except Exception as exc:  # reported by join(), in the caller's thread
            self.error = exc
        finally:
            client.disconnect()
            client.loop_stop()


# --- the dashboard client and the SMS watcher --------------------------------------------------


class Dashboard:
    """A nurse's queue page: signed in, following the live stream as EventSource does."""

    def __init__(self, base_url: str, watched: set[str]) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=None))
        self._watched = watched
        self.opened: dict[str, float] = {}  # patient -> arrival of its first "open" event
        self.events: Counter[str] = Counter()  # alert, ingest, heartbeat
        self.connects = 0
        self.connected = asyncio.Event()
        self.signed_in = False
        self.refused: str | None = None

    async def sign_in(self, username: str, password: str) -> None:
        """Sign in through the form, as a browser does (double-submit token, then a cookie)."""
        form = await self._client.get("/dashboard/sign-in", headers={"Accept": "text/html"})
        token = self._client.cookies.get("rpm_signin")
        if form.status_code == 404 or token is None:
            return  # no sign-in on this server: the stream is open to all
        answer = await self._client.post(
            "/dashboard/sign-in",
            data={"username": username, "password": password, "signin_token": token},
        )
        if answer.status_code != 303 or "rpm_session" not in self._client.cookies:
            raise BenchError(f"sign-in as {username} refused: HTTP {answer.status_code}")
        self.signed_in = True

    async def follow(self) -> None:
        """Read the stream until cancelled; reconnect after RETRY_S when it ends."""
        while True:
            try:
                async with self._client.stream(
                    "GET", "/api/alerts/stream", headers={"Accept": "text/event-stream"}
                ) as response:
                    if response.status_code != 200:
                        self.refused = f"HTTP {response.status_code}"
                        return
                    self.connects += 1
                    await self._read(response)
            except httpx.HTTPError:
                pass
            self.connected.clear()
            await asyncio.sleep(RETRY_S)

    async def _read(self, response: httpx.Response) -> None:
        event = "message"
        async for line in response.aiter_lines():
            at = time.time()
            if line.startswith("retry:"):
                self.connected.set()
            elif line.startswith(":"):
                self.events["heartbeat"] += 1
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                self.events[event] += 1
                if event == "alert":
                    change = json.loads(line[5:])
                    patient = change.get("patient_id")
                    if change.get("action") == "open" and patient in self._watched:
                        self.opened.setdefault(patient, at)
            elif not line:
                event = "message"

    async def close(self) -> None:
        await self._client.aclose()


async def watch_sms(sink: TwilioSink, arrived: dict[str, float]) -> None:
    """Note when each number's first message was accepted by the sink (until cancelled)."""
    seen = 0
    while True:
        try:
            messages = await sink.wait_for(seen + 1, timeout=3600)
        except TimeoutError:
            continue
        at = time.time()
        for message in messages[seen:]:
            arrived.setdefault(message.to, at)
        seen = len(messages)


# --- the run -----------------------------------------------------------------------------------


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
        self.root = Path(endpoints.root)
        self.server: Child | None = None
        self.api_port = free_port()
        self.device_login = Login(
            endpoints.mqtt_host,
            endpoints.mqtt_port,
            endpoints.mqtt_device_username,
            endpoints.mqtt_device_password,
        )
        now = time.time()
        # Scheduled events of the background fleet fall in this future span: none is due now.
        self.workload = Workload(args.patients, now + 2 * 86400, now + 3 * 86400)
        self.nurse_password = secrets.token_urlsafe(24)

    def say(self, line: str) -> None:
        if not self.args.quiet:
            print(f"[alert_latency] {line}", file=sys.stderr, flush=True)

    def server_env_for(self, twilio_url: str) -> dict[str, str]:
        """RPM_* as ``rpm services env`` prints them; everything else at the server default."""
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
        return env

    async def start_server(self, twilio_url: str) -> None:
        """``rpm serve`` in its own process; ready when its API answers."""
        script = Path(sys.executable).with_name("rpm")  # the console script: `rpm serve`
        command = [str(script)] if script.exists() else [sys.executable, "-m", "rpm.cli"]
        env, log = self.server_env_for(twilio_url), self.work / "serve.log"
        self.server = Child("rpm serve", [*command, "serve"], env, log)
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                if self.server.proc.poll() is not None:
                    raise BenchError(f"rpm serve exited\n{self.server.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"{self.base_url}/api/alerts?limit=1")
                    if r.status_code < 500:
                        return
                if time.monotonic() > deadline:
                    raise BenchError(f"rpm serve not up in 60 s\n{self.server.log_tail()}")
                await asyncio.sleep(0.2)

    def stop_server(self) -> None:
        if self.server is not None and self.server.proc.poll() is None:
            self.server.proc.send_signal(signal.SIGTERM)  # rpm serve stops cleanly on it
            self.server.stop(timeout=20)

    def kill_server(self) -> None:
        if self.server is not None:
            self.server.kill()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def cpu_now(self, publishers: Sequence[int]) -> dict[str, float]:
        """CPU seconds so far: server, PostgreSQL, broker, this process with the publisher
        processes, and the whole machine."""
        broker = pid_from_file(self.root / "mqtt" / "mosquitto.pid")
        postmaster = pid_from_file(self.root / "pg" / "postmaster.pid")
        return {
            "server": cpu_seconds([self.server.proc.pid] if self.server else []),
            "postgres": cpu_seconds(children_of(postmaster) if postmaster else []),
            "broker": cpu_seconds([broker] if broker else []),
            "bench": time.process_time() + cpu_seconds(publishers),
            "machine": machine_busy_seconds(),
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
        tsdb = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        )
        return {
            "postgres": str(await conn.fetchval("SHOW server_version")),
            "timescaledb": f"on ({tsdb})" if tsdb else "off",
        }
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
        used = {k: after[k] - before[k] for k in before if k != "machine"}
        used["others"] = after["machine"] - before["machine"] - sum(used.values())
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


# --- the report --------------------------------------------------------------------------------


def _ok(good: bool) -> str:
    return "ok" if good else "MISSED"


def _ms(values: Iterable[float]) -> list[float]:
    return sorted(v * 1000 for v in values)


def _p50_p99(ordered: Sequence[float]) -> str:
    return f"{percentile(ordered, 50):,.1f} / {percentile(ordered, 99):,.1f} ms"


def _spread(ordered: Sequence[float], arrived: dict[str, float], m: Measured) -> str:
    """p95, max, and when the slowest crisis reading was published (s into the load)."""
    text = f"p95 {fmt_ms(percentile(ordered, 95))}, max {fmt_ms(max(ordered, default=math.nan))}"
    slowest = max(arrived, key=lambda p: arrived[p] - m.published[p], default=None)
    if slowest is not None:
        text += f" (published {m.published[slowest] - m.background_start:.1f} s in)"
    return f"{text}, n = {len(ordered)}"


def _load(avg: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in avg)


def report(run: Run, info: dict[str, str], m: Measured) -> tuple[str, dict[str, Any]]:
    """The readable table and the JSON result."""
    args, db = run.args, m.db
    phone_of = {p.patient_id: p.phone for p in m.crisis}
    pub = m.published
    sms_of = {p: m.sms[phone_of[p]] for p in pub if phone_of[p] in m.sms}
    opened = {p: m.opened[p] for p in pub if p in m.opened}
    dashboard = _ms(opened[p] - pub[p] for p in opened)
    sms = _ms(sms_of[p] - pub[p] for p in sms_of)
    puback = _ms(m.acked[p] - t for p, t in pub.items() if p in m.acked)
    handoff = db["handoff"]
    to_handoff = _ms(handoff[p] - t for p, t in pub.items() if p in handoff)
    handoff_to_stream = _ms(m.opened[p] - handoff[p] for p in pub if p in m.opened and p in handoff)
    stream_to_sms = _ms(
        m.sms[phone_of[p]] - m.opened[p] for p in pub if p in m.opened and phone_of[p] in m.sms
    )
    lost_dashboard = len(pub) - len(dashboard)
    lost_sms = len(pub) - len(sms)
    sent = sum(r.sent for r in m.background)
    acked = sum(r.acked for r in m.background)
    seconds = max(r.seconds for r in m.background)
    achieved = acked / seconds
    lag = max(r.max_lag_ms for r in m.background)
    d50, d99 = percentile(dashboard, 50), percentile(dashboard, 99)
    s50, s99 = percentile(sms, 50), percentile(sms, 99)
    poll = m.server_settings["outbox_poll_interval_s"]
    background_alerts = db["alerts"] - db["crisis_alerts"]
    rules = ", ".join(f"{r} ({s.lower()}) {n}" for r, s, n in db["background_by_rule"][:4])
    cpu = m.cpu
    sections = {
        "Environment": [
            (
                "CPUs",
                str(os.cpu_count()),
                "broker, database, server and load generators share them",
            ),
            (
                "load average (1/5/15 min)",
                _load(m.load_before),
                f"before the load; {_load(m.load_after)} after",
            ),
            ("PostgreSQL", info["postgres"], f"TimescaleDB {info['timescaledb']}"),
            ("Python", platform.python_version(), ""),
            ("server", "rpm serve", f"defaults: batch {m.server_settings['batch']}"),
            ("SMS outbox poll interval", f"{poll:g} s", "RPM_OUTBOX_POLL_INTERVAL_S"),
            (
                "dashboard client",
                "signed in" if m.signed_in else "anonymous",
                "GET /api/alerts/stream",
            ),
            (
                "fleet",
                f"{args.patients:,} patients",
                f"{args.patients * 3:,} background devices; {len(m.crisis)} crisis patients",
            ),
        ],
        f"Load: {args.rate:,.0f} readings/s for {args.seconds:g} s": [
            (
                "background published",
                f"{sent:,}",
                f"{acked:,} acknowledged by the broker; {args.publishers} publisher processes, "
                f"worst lag {lag:,.0f} ms",
            ),
            ("background rate", fmt_rate(achieved), f"target {fmt_rate(args.rate)}"),
            (
                "background stored",
                f"{db['background_stored']:,}",
                f"lost {acked - db['background_stored']:,}; quarantined {db['quarantined']:,}",
            ),
            (
                "crisis readings",
                f"{len(pub)}",
                f"one every {args.crisis_interval:g} s, worst lag {m.crisis_max_lag_ms:,.0f} ms",
            ),
            ("  publish -> PUBACK p50 / p99", _p50_p99(puback), "broker's ack to the device"),
        ],
        "Dashboard: publish -> 'open' event on the live stream": [
            ("p50", fmt_ms(d50), ""),
            (
                "p99",
                fmt_ms(d99),
                f"< {TARGET_DASHBOARD_P99_MS:.0f} ms: {_ok(d99 < TARGET_DASHBOARD_P99_MS)}",
            ),
            ("", "", _spread(dashboard, opened, m)),
            (
                "  publish -> hand-off p50 / p99",
                _p50_p99(to_handoff),
                "broker, gateway queue, batch window (readings.received_at)",
            ),
            (
                "  hand-off -> stream p50 / p99",
                _p50_p99(handoff_to_stream),
                "unit of work, commit, NOTIFY, SSE",
            ),
        ],
        "SMS: publish -> Message create at the Twilio stand-in": [
            ("p50", fmt_ms(s50), ""),
            ("p99", fmt_ms(s99), ""),
            ("", "", _spread(sms, sms_of, m)),
            (
                "  stream -> SMS p50 / p99",
                _p50_p99(stream_to_sms),
                f"outbox poll ({poll:g} s), worker, twilio client",
            ),
        ],
        "Integrity": [
            ("crisis alerts opened", f"{db['crisis_alerts']}", f"of {len(pub)} crisis readings"),
            ("lost on the dashboard", f"{lost_dashboard}", f"no 'open' event {args.grace:g} s on"),
            ("lost SMS", f"{lost_sms}", f"no request at the sink {args.grace:g} s on"),
            (
                "crisis SMS with an error",
                f"{db['crisis_sms_with_error']}",
                "outbox last_error (deferred, retried or failed)",
            ),
            ("background alerts", f"{background_alerts}", rules),
            (
                "SMS outbox",
                f"{db['sms_items']} items",
                f"{db['sms_delivered']} delivered (background included)",
            ),
            (
                "live stream",
                f"{m.stream_connects} connection(s)",
                ", ".join(f"{k} {v:,}" for k, v in sorted(m.stream_events.items())),
            ),
        ],
        "CPU seconds during the load": [
            (k, f"{cpu[k]:.1f} s", note)
            for k, note in (
                ("server", "rpm serve: gateway, API, SMS worker"),
                ("postgres", ""),
                ("broker", ""),
                ("bench", "publishers, stream client, Twilio stand-in"),
                ("others", "machine busy time minus the above: other work on a shared machine"),
            )
        ],
    }
    notes = [
        "Times are time.time() on one machine. publish = paho publish() returned (the network",
        "thread writes it at once); stream = the 'open' event's data line was read; SMS = the",
        "sink had accepted the create (observed in this process's event loop).",
    ]
    table = "\n\n".join([*(render_table(k, v) for k, v in sections.items()), "\n".join(notes)])
    result: dict[str, Any] = {
        "background_per_s": round(achieved, 1),
        "dashboard_p50_ms": round(d50, 1),
        "dashboard_p95_ms": round(percentile(dashboard, 95), 1),
        "dashboard_p99_ms": round(d99, 1),
        "dashboard_max_ms": round(max(dashboard, default=math.nan), 1),
        "sms_p50_ms": round(s50, 1),
        "sms_p95_ms": round(percentile(sms, 95), 1),
        "sms_p99_ms": round(s99, 1),
        "sms_max_ms": round(max(sms, default=math.nan), 1),
        "alerts": len(dashboard),
        "crisis_readings": len(pub),
        "lost_dashboard": lost_dashboard,
        "lost_sms": lost_sms,
        "background_alerts": background_alerts,
        "background_lost": acked - db["background_stored"],
        "background_target_per_s": args.rate,
        "seconds": args.seconds,
        "outbox_poll_interval_s": poll,
        "publish_clock": "publish() returned",
        "puback_p50_ms": round(percentile(puback, 50), 2),
        "signed_in": m.signed_in,
        "stream_connections": m.stream_connects,
        "timescaledb": info["timescaledb"] != "off",
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in m.load_after],
        "other_cpu_s": round(cpu["others"], 2),
        "targets_met": {
            "dashboard_p99_ms": d99 < TARGET_DASHBOARD_P99_MS,
            "nothing_lost": lost_dashboard == 0 and lost_sms == 0,
        },
    }
    return table, result


# --- entry points ------------------------------------------------------------------------------


async def benchmark(run: Run) -> tuple[str, dict[str, Any]]:
    args = run.args
    crisis = crisis_patients(max(1, int((args.seconds - args.warmup - 0.5) / args.crisis_interval)))
    run.say(
        f"local services up in {run.work}; enrolling {args.patients:,} + {len(crisis)} patients"
    )
    info = await prepare_database(run, crisis)
    measured = await measure(run, crisis)
    measured.db = await from_database(run, measured)
    if args.samples is not None:
        write_samples(args.samples, measured)
    return report(run, info, measured)


def write_samples(path: Path, m: Measured) -> None:
    """One JSON object per crisis reading: its times in seconds since the load began."""

    def since_start(at: float | None) -> float | None:
        return None if at is None else round(at - m.background_start, 6)

    with path.open("w") as out:
        for p in m.crisis:
            times = {
                "published": m.published.get(p.patient_id),
                "puback": m.acked.get(p.patient_id),
                "handoff": m.db["handoff"].get(p.patient_id),
                "stream": m.opened.get(p.patient_id),
                "sms": m.sms.get(p.phone),
            }
            row = {"patient_id": p.patient_id, **{k: since_start(v) for k, v in times.items()}}
            out.write(json.dumps(row) + "\n")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=1000.0, help="background readings/s (1,000)")
    p.add_argument("--seconds", type=float, default=None, help="load duration (30; --quick 10)")
    p.add_argument("--quick", action="store_true", help="10 s of load")
    p.add_argument("--patients", type=int, default=5000, help="background fleet, 3 devices each")
    p.add_argument("--publishers", type=int, default=2, help="background publisher processes")
    p.add_argument("--crisis-interval", type=float, default=0.25, help="s between crises")
    p.add_argument("--warmup", type=float, default=1.0, help="s of load before the first crisis")
    p.add_argument("--grace", type=float, default=15.0, help="s to wait after the last crisis")
    p.add_argument(
        "--outbox-poll-interval-s",
        type=float,
        default=None,
        help="RPM_OUTBOX_POLL_INTERVAL_S for the server (default: the server's, 0.5)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--samples", type=Path, help="write each crisis reading's times (JSON lines)")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (10.0 if args.quick else 30.0)
    if args.seconds < 3 or args.seconds > 600:
        p.error("--seconds: 3 to 600")
    if not 0 <= args.warmup <= args.seconds - 1:
        p.error("--warmup: 0 to --seconds minus 1")
    if not 0 < args.rate <= 20_000 or not 0.01 <= args.crisis_interval <= 10:
        p.error("--rate: up to 20,000/s; --crisis-interval: 0.01 to 10 s")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    signal.signal(signal.SIGTERM, _interrupt)

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        run = Run(args, services.start(), work)
        try:
            return asyncio.run(benchmark(run))
        finally:
            run.kill_server()

    return run_with_services("rpm-bench-alerts-", body, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
