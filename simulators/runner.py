"""Runs a traffic plan against a live server and reads back what became of it.

Enrols the plan, connects every MQTT device with its own login, sends each payload at its
wall time (an accelerated or real-time replay of simulated time, or a sustained rate in
load mode), waits for the pipeline to drain, and builds the report against the plan's
expectations and ground truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import asyncpg
from tqdm import tqdm

from device_gateways.broker_admin import BrokerAdmin
from rpm.domain.errors import ForeignIdsError, SendError
from rules.programs import RuleBook
from simulators import readback
from simulators.clock import SimClock
from simulators.efficacy import Readings, Seen, Verdict, classify
from simulators.enrolment import (
    SIM_CARE_TEAM,
    all_stored_ids,
    enrol,
    foreign_ids,
    integration_id,
    plan_integrations,
    reset_passwords,
    send_device_id,
)
from simulators.offline import stored_readings
from simulators.report import Key, Observed, ObservedAlert, Report, SentPayload, build_report
from simulators.scenarios import GroundTruth
from simulators.traffic import Plan, Send
from simulators.transports import ConnectStats, MqttFleet, WebhookSender

log = logging.getLogger(__name__)

MissingCheck = Callable[[datetime], Awaitable[None]]
BINDING_LEAD = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Target:
    """The server under test: its database, broker (with an admin login) and HTTP API."""

    pool: asyncpg.Pool
    broker: BrokerAdmin
    mqtt_host: str
    mqtt_port: int
    api_url: str
    # Device broker passwords are derived from this secret (the broker admin's password).
    password_key: str
    # The gateway's running count of duplicate readings, when the server runs in-process.
    mqtt_duplicates: Callable[[], int] | None = None
    # One missing-data pass evaluated at a given simulated "now" (accelerated runs).
    missing_check: MissingCheck | None = None
    # A deployment shared with real patients: enrol without SMS consent, and its
    # missing-data timer runs on the wall clock whatever the plan's pace.
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Pace:
    """Replay simulated time in ``wall_seconds`` (>= its span: real time), or, in load
    mode, send readings at a sustained ``rate`` per second whatever their simulated time."""

    wall_seconds: float | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if (self.wall_seconds is None) == (self.rate is None):
            raise ValueError("give either wall_seconds or rate")


@dataclass(slots=True)
class SendProgress:
    """Running counts while a plan is sent, for status lines."""

    sent: int = 0
    readings: int = 0
    http_duplicates: int = 0


@dataclass(frozen=True, slots=True)
class RunOptions:
    pace: Pace
    status: SendProgress | None = None  # updated as payloads go out
    in_flight: int = 256
    connect_concurrency: int = 64
    progress: bool = True
    drain_idle_s: float = 15.0
    missing_step: timedelta = timedelta(hours=1)
    missing_min_interval_s: float = 0.5
    barrier_timeout_s: float = 30.0  # longest wait for the readings a missing-data pass needs
    care_team: str = SIM_CARE_TEAM  # the enrolled patients' care team


@dataclass(frozen=True, slots=True)
class RunResult:
    report: Report
    sent: tuple[SentPayload, ...]
    observed: Observed
    clock: SimClock
    enrol_seconds: float
    connect: ConnectStats
    send_seconds: float
    drain_seconds: float


@dataclass(slots=True)
class _Tally:
    published: list[float | None]
    done: list[bool]  # the send finished (answered, or failed)
    http_duplicates: int = 0
    failures: list[str] = field(default_factory=list)


def expected_keys(send: Send) -> tuple[Key, ...]:
    device = send_device_id(send)
    return tuple((device, metric, at) for metric, at in send.keys)


def due_times(plan: Plan, pace: Pace, clock: SimClock, t0: float) -> list[float]:
    """Wall time (epoch seconds) at which each send goes out. Never before its own ``at``."""
    if pace.rate is None:
        return [clock.wall(s.at).timestamp() for s in plan.sends]
    out = []
    readings = 0
    for s in plan.sends:
        out.append(max(t0 + readings / pace.rate, s.at.timestamp()))
        readings += max(s.readings, 1)
    return out


async def run_plan(plan: Plan, target: Target, opts: RunOptions) -> RunResult:
    """Enrol, send, drain and report (see the module docstring)."""
    run_started = datetime.now(UTC)
    t = time.perf_counter()
    async with target.pool.acquire() as conn:
        foreign = await foreign_ids(conn, plan, opts.care_team)
        if foreign:
            # Never overwrite a real patient's record or rebind a real device.
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise ForeignIdsError(
                f"{len(foreign)} of the plan's ids already belong to patients or devices "
                f"the simulator did not create: {shown}"
            )
        # Bound from (just before) the start of the simulated span: a missing-data rule
        # counts silence from the binding when a patient has no reading yet; the hour
        # covers readings stamped a little before the start (whole seconds, device clocks).
        creds = await enrol(
            conn,
            target.broker,
            plan,
            since=plan.config.start - BINDING_LEAD,
            password_key=target.password_key,
            care_team=opts.care_team,
            sms_consent=not target.shared,
        )
    enrol_seconds = time.perf_counter() - t
    fleet = MqttFleet(target.mqtt_host, target.mqtt_port, creds.mqtt)
    webhooks = WebhookSender(target.api_url, creds.integrations)
    try:
        connect = await fleet.connect(creds.mqtt, concurrency=opts.connect_concurrency)
        if connect.refused:
            # Logins made before with another password (another tool, an older run).
            await reset_passwords(target.broker, {d: creds.mqtt[d] for d in connect.refused})
            again = await fleet.connect(connect.refused, concurrency=opts.connect_concurrency)
            if again.refused:
                raise SendError(f"{len(again.refused)} devices cannot log in to the broker")
            connect = replace(
                connect,
                connections=connect.connections + again.connections,
                seconds=connect.seconds + again.seconds,
            )
        log.info(
            "enrolled in %.1f s; %d device connections in %.1f s",
            enrol_seconds,
            connect.connections,
            connect.seconds,
        )
        now = datetime.now(UTC)
        if opts.pace.rate is None:
            assert opts.pace.wall_seconds is not None
            clock = SimClock.replay(plan.config.start, plan.config.end, opts.pace.wall_seconds, now)
        else:
            clock = SimClock(now, now, 1.0)  # load mode: simulated times are all in the past
        tally = _Tally([None] * len(plan.sends), [False] * len(plan.sends))
        dup_base = target.mqtt_duplicates() if target.mqtt_duplicates else 0
        t = time.perf_counter()
        await _send_all(plan, opts, clock, fleet, webhooks, tally, target, run_started)
        send_seconds = time.perf_counter() - t
    finally:
        await fleet.close()
        await webhooks.close()
    t = time.perf_counter()
    sent = tuple(
        SentPayload(
            s.expect, s.reason, s.readings, expected_keys(s), tally.published[i], s.transport
        )
        for i, s in enumerate(plan.sends)
    )
    device_ids = all_stored_ids(plan)
    integrations = plan_integrations(plan)
    await _drain(target, sent, device_ids, integrations, run_started, opts.drain_idle_s)
    if target.missing_check is not None and opts.pace.rate is None:
        await target.missing_check(min(clock.sim(datetime.now(UTC)), plan.config.end))
    drain_seconds = time.perf_counter() - t

    def to_sim(wall: datetime) -> datetime:
        return min(clock.sim(wall), plan.config.end) if opts.pace.rate is None else wall

    async with target.pool.acquire() as conn:
        stored = await readback.stored(conn, device_ids, run_started)
        quarantined = await readback.quarantined(conn, device_ids, integrations, run_started)
        alerts = await readback.alerts(
            conn, [p.patient_id for p in plan.patients], run_started, to_sim
        )
        confirmations = await readback.confirmations(
            conn, [p.patient_id for p in plan.patients], run_started
        )
    duplicates = None
    if target.mqtt_duplicates is not None:
        duplicates = target.mqtt_duplicates() - dup_base + tally.http_duplicates
    truth = plan.truth
    unmeasured_missing = opts.pace.rate is not None or (
        target.missing_check is None and clock.speed > 1.001
    )
    if unmeasured_missing and target.shared:
        # The deployment's own timer judged silence on the wall clock while simulated time
        # ran ahead of it: its missing-data alerts say nothing about the plan.
        truth, alerts = without_missing_data(truth, alerts)
    observed = Observed(stored, quarantined, duplicates, alerts, confirmations)
    notes = [f"send failed: {f}" for f in tally.failures[:5]]
    if target.missing_check is not None and opts.pace.rate is None:
        step_h = missing_interval_s(opts, clock) * clock.speed / 3600
        notes.append(
            f"missing-data rules ran on the simulated clock every {step_h:.1f} simulated "
            "hours: their detection delays are accurate to that"
        )
    if unmeasured_missing:
        notes.append(
            "missing-data rules were not evaluated on the simulated clock: silent-device "
            "scenarios are not measurable in this run"
            + (
                " (left out of the report, with the deployment's own such alerts)"
                if target.shared
                else ""
            )
        )
    report = build_report(sent, truth, observed, notes=notes, verdicts=classified(plan, alerts))
    return RunResult(
        report, sent, observed, clock, enrol_seconds, connect, send_seconds, drain_seconds
    )


def missing_data_rules(book: RuleBook | None = None) -> frozenset[str]:
    """Ids of the rules that fire on silence (kind ``missing``), not on a reading."""
    book = book or RuleBook.builtin()
    return frozenset(r.id for p in book.programs.values() for r in p.rules if r.kind == "missing")


def classified(plan: Plan, alerts: list[ObservedAlert]) -> list[Verdict]:
    """The run's alerts classified against the plan's scenarios and labels, over the
    readings the plan expects stored (simulators.efficacy)."""
    seen = [
        Seen(a.patient_id, a.rule_id, a.sim_opened, recurrences=int(a.sim_last > a.sim_opened))
        for a in alerts
    ]
    return classify(plan, seen, Readings(stored_readings(plan)))


def without_missing_data(
    truth: tuple[GroundTruth, ...], alerts: list[ObservedAlert]
) -> tuple[tuple[GroundTruth, ...], list[ObservedAlert]]:
    """Ground truth only missing-data rules detect, and those rules' alerts, left out."""
    rules = missing_data_rules()
    return (
        tuple(t for t in truth if not (t.detected_by and t.detected_by <= rules)),
        [a for a in alerts if a.rule_id not in rules],
    )


async def _send_all(
    plan: Plan,
    opts: RunOptions,
    clock: SimClock,
    fleet: MqttFleet,
    webhooks: WebhookSender,
    tally: _Tally,
    target: Target,
    since: datetime,
) -> None:
    gate = asyncio.Semaphore(opts.in_flight)
    bar = tqdm(
        total=len(plan.sends), unit="msg", disable=not opts.progress, mininterval=0.5, leave=True
    )

    async def one(i: int, s: Send) -> None:
        try:
            tally.published[i] = time.time()
            if s.transport == "mqtt":
                await fleet.publish(s.device_id, s.payload)
            else:
                answer = await webhooks.post(
                    integration_id(s.payload_format), s.payload_format, s.payload
                )
                tally.http_duplicates += answer.duplicates
            if opts.status is not None:
                opts.status.sent += 1
                opts.status.readings += s.readings
                opts.status.http_duplicates = tally.http_duplicates
        except SendError as exc:
            tally.published[i] = None
            tally.failures.append(str(exc))
        finally:
            tally.done[i] = True
            gate.release()
            bar.update(1)

    stop = asyncio.Event()
    timer = None
    if target.missing_check is not None and opts.pace.rate is None:
        timer = asyncio.create_task(
            _missing_timer(
                target.missing_check, clock, plan, opts, stop, _Barrier(plan, tally, target, since)
            )
        )
    tasks: set[asyncio.Task[None]] = set()
    try:
        t0 = time.time()
        for i, (s, due) in enumerate(
            zip(plan.sends, due_times(plan, opts.pace, clock, t0), strict=True)
        ):
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            task = asyncio.create_task(one(i, s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))
        if opts.pace.rate is None:
            # The replay covers [start, end]: silence at its end is part of it.
            rest = (clock.wall(plan.config.end) - datetime.now(UTC)).total_seconds()
            if rest > 0:
                await asyncio.sleep(rest)
    finally:
        stop.set()
        if timer is not None:
            await timer
        bar.close()


def missing_interval_s(opts: RunOptions, clock: SimClock) -> float:
    """Wall seconds between missing-data passes on the simulated clock."""
    return max(opts.missing_min_interval_s, opts.missing_step.total_seconds() / clock.speed)


class _Barrier:
    """Wait until the readings the plan sent for up to a simulated time are stored.

    A device's publish is answered by the broker before the gateway stores the reading, so a
    missing-data pass at simulated time T could otherwise run before readings measured before
    T are in the database and find a device silent that is not.
    """

    def __init__(self, plan: Plan, tally: _Tally, target: Target, since: datetime) -> None:
        self.plan, self.tally, self.target, self.since = plan, tally, target, since
        self.device_ids = all_stored_ids(plan)
        self.upto = 0  # sends [0, upto) are due by the last time waited for
        self.finished = 0  # sends [0, finished) are done, their keys counted
        self.due_keys: set[Key] = set()  # the readings to be stored (device, metric, time)

    async def reached(self, at: datetime, timeout_s: float) -> None:
        sends, done = self.plan.sends, self.tally.done
        while self.upto < len(sends) and sends[self.upto].at <= at:
            self.upto += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            while self.finished < self.upto and done[self.finished]:
                s = sends[self.finished]
                if s.expect == "stored" and self.tally.published[self.finished] is not None:
                    self.due_keys.update(expected_keys(s))
                self.finished += 1
            if self.finished == self.upto:
                async with self.target.pool.acquire() as conn:
                    stored = await readback.stored_count(conn, self.device_ids, self.since, at)
                if stored >= sum(1 for k in self.due_keys if k[2] <= at):
                    return
            await asyncio.sleep(0.05)
        log.warning("missing-data pass at simulated %s ran before its readings were stored", at)


async def _missing_timer(
    check: MissingCheck,
    clock: SimClock,
    plan: Plan,
    opts: RunOptions,
    stop: asyncio.Event,
    barrier: _Barrier,
) -> None:
    """Missing-data passes on the simulated clock, every ``missing_step`` of simulated time
    (at most every ``missing_min_interval_s`` of wall time), as the server's timer would
    run in real time.

    The passes fall on a fixed grid of simulated times, each after the readings sent for up
    to its time are stored: a loaded machine makes them late in wall time, never at other
    simulated times, so a detection delay is exact to one step whatever the load.
    """
    interval = missing_interval_s(opts, clock)
    step = timedelta(seconds=interval * clock.speed)
    at = plan.config.start + step
    while True:
        stopping = stop.is_set()
        sim_now = min(clock.sim(datetime.now(UTC)), plan.config.end)
        while at <= sim_now:
            await barrier.reached(at, opts.barrier_timeout_s)
            await check(at)
            at += step
        if stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def _drain(
    target: Target,
    sent: tuple[SentPayload, ...],
    device_ids: list[str],
    integrations: list[str],
    since: datetime,
    idle_s: float,
) -> None:
    """Wait until every expected reading and refusal is in the database, or nothing has
    changed for ``idle_s`` (what is still missing then is reported as lost)."""
    want_stored = len({k for s in sent if s.published_at and s.expect == "stored" for k in s.keys})
    want_refused = sum(1 for s in sent if s.published_at and s.expect == "quarantined")
    last: readback.Progress | None = None
    changed = time.monotonic()
    while True:
        async with target.pool.acquire() as conn:
            p = await readback.progress(conn, device_ids, integrations, since)
        if p.stored >= want_stored and p.quarantined >= want_refused:
            return
        if p != last:
            last, changed = p, time.monotonic()
        elif time.monotonic() - changed > idle_s:
            log.warning(
                "drain stopped: %d of %d readings, %d of %d refusals",
                p.stored,
                want_stored,
                p.quarantined,
                want_refused,
            )
            return
        await asyncio.sleep(0.25)
