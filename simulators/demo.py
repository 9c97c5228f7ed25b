"""``rpm demo``: local services, the server, a fake Twilio, and a simulated fleet.

Replays a few days of a virtual fleet's traffic plan (``simulators.traffic``: every care
program, MQTT devices with their own logins and vendor webhooks, scenarios with ground
truth) on an accelerated clock ending now, prints ``rpm simulate``'s report, then keeps
publishing live readings in real time, so the dashboard fills within a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from rpm.local_endpoints import settings_for_local
from rpm.server import Server
from rpm.staff_cli import DEMO_TEAM, demo_nurse
from rpm.storage import registry
from rpm.storage.pool import Conn
from simulators import readback
from simulators.engagement_examples import publish_examples
from simulators.fleet import VirtualPatient
from simulators.localservices import LocalServices, free_port, pick_port
from simulators.report import render
from simulators.runner import Pace, RunOptions, SendProgress, run_plan
from simulators.simulate import (
    SIM_VENDOR_RATE_PER_S,
    fresh_database,
    fresh_gateway_session,
    target_for,
)
from simulators.traffic import SimConfig, build_plan
from simulators.twilio_sink import TwilioSink

log = logging.getLogger("simulators.demo")

DEMO_DATABASE = "rpm_demo"
DEMO_GATEWAY_ID = "rpm-gateway-demo"
DEMO_SID = "AC" + "d3m0" * 8
DEMO_TOKEN = "demo-auth-token"  # noqa: S105 - the local fake Twilio's, not a real secret


@dataclass(frozen=True, slots=True)
class DemoOptions:
    data_dir: Path
    patients: int
    days: float
    seconds: float
    port: int
    exit_after_replay: bool
    stop_services: bool


async def run_demo(opts: DemoOptions) -> int:
    services = LocalServices(opts.data_dir)
    endpoints = services.start()
    # Every start begins with an empty database: the plan is deterministic (the same
    # patients each time), and a replay into last run's data would find it all stored.
    database_url = await fresh_database(endpoints.database_url, DEMO_DATABASE)
    await fresh_gateway_session(endpoints, DEMO_GATEWAY_ID)
    sink = TwilioSink(account_sid=DEMO_SID, auth_token=DEMO_TOKEN)
    sink_url = await sink.start()
    port = pick_port(opts.port) if opts.port else free_port()
    settings = settings_for_local(
        endpoints,
        database={"url": SecretStr(database_url)},
        api={"port": port},
        sms={
            "account_sid": DEMO_SID,
            "auth_token": SecretStr(DEMO_TOKEN),
            "base_url": sink_url,
        },
        mqtt={"client_id": DEMO_GATEWAY_ID},
        # The replay runs days in seconds: missing-data rules run on its simulated clock
        # (simulators.simulate.missing_check_on_sim_clock), not on the wall clock.
        rules={"missing_data_interval_s": 1e9, "confirm_interval_s": 1e9},
        # The fleet's vendors (simulators.simulate).
        ingest={"rate_per_s": SIM_VENDOR_RATE_PER_S, "burst": int(SIM_VENDOR_RATE_PER_S)},
        operations={"access_log": False},  # a line per webhook would bury the status lines
    )
    server = Server(settings)
    await server.start()
    now = datetime.now(UTC)
    end = now + timedelta(seconds=opts.seconds)
    plan = build_plan(
        SimConfig(patients=opts.patients, start=end - timedelta(days=opts.days), end=end)
    )
    assert server.pool is not None
    async with server.pool.acquire() as conn:
        nurse, nurse_password = await demo_nurse(conn)
        await publish_examples(conn)
    devices = sum(len(p.devices) for p in plan.patients)
    example = next(
        (p for p in plan.patients for d in p.devices if d.transport == "mqtt"), plan.patients[0]
    )
    print(
        f"\nRPM demo: {len(plan.patients)} virtual patients, {devices} devices, "
        f"{len(plan.truth)} with a scheduled event.\n"
        f"  Dashboard (live triage queue): http://127.0.0.1:{port}/\n"
        f"    sign in as {nurse}, password {nurse_password} (a new one on every start)\n"
        f"  Alerts API:  http://127.0.0.1:{port}/api/alerts\n"
        f"  Segments and campaigns: http://127.0.0.1:{port}/dashboard/segments\n"
        f"  FHIR:        http://127.0.0.1:{port}/fhir/Observation?patient={example.patient_id}\n"
        f"Replaying {opts.days:g} days of readings in {opts.seconds:g} s; Ctrl-C to stop.\n",
        flush=True,
    )
    status = SendProgress()
    since = datetime.now(UTC)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    target = target_for(server)

    async def publish() -> None:
        result = await run_plan(
            plan,
            target,
            RunOptions(
                Pace(wall_seconds=opts.seconds),
                status=status,
                progress=False,
                care_team=DEMO_TEAM,
            ),
        )
        await _settle(server, sink, since)
        await _print_status(server, sink, status, since)
        print(render(result.report), flush=True)
        if opts.exit_after_replay:
            return
        print("Replay done; publishing live readings now (real time).", flush=True)
        live_start = datetime.now(UTC)
        live = build_plan(
            SimConfig(
                patients=opts.patients,
                start=live_start,
                end=live_start + timedelta(hours=12),
            )
        )
        await run_plan(
            live,
            target,
            RunOptions(
                Pace(wall_seconds=12 * 3600),
                status=status,
                progress=False,
                missing_step=timedelta(minutes=5),
                care_team=DEMO_TEAM,
            ),
        )

    publisher = asyncio.create_task(publish())
    reporter = asyncio.create_task(_report(server, sink, status, since, stop))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({publisher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if publisher.done():
            publisher.result()
    finally:
        for t in (publisher, reporter, stopper):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await _print_status(server, sink, status, since)
        await server.stop()
        await sink.stop()
        if opts.stop_services:
            services.stop()
        else:
            print(f"Local services keep running; stop: rpm services stop --dir {opts.data_dir}")
    return 0


async def seed(conn: Conn, fleet: list[VirtualPatient], *, since: datetime) -> None:
    """Enroll a ``simulators.fleet`` fleet's patients and devices (idempotent; benchmarks)."""
    for p in fleet:
        await registry.upsert_patient(
            conn,
            patient_id=p.patient_id,
            display_name=p.display_name,
            phone=p.phone,
            sms_consent=True,
            programs=p.programs,
        )
        for d in p.devices:
            await registry.enroll_device(
                conn, device_id=d.device_id, kind=d.kind, patient_id=p.patient_id, since=since
            )


async def _settle(server: Server, sink: TwilioSink, since: datetime) -> None:
    """Wait until the alerts' SMS went out (max 10 s: quiet hours hold some back)."""
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        assert server.pool is not None
        async with server.pool.acquire() as conn:
            totals = await readback.totals(conn, since)
        if len(sink.messages) >= totals.alerts:
            return
        await asyncio.sleep(0.2)


async def _report(
    server: Server, sink: TwilioSink, status: SendProgress, since: datetime, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        await asyncio.sleep(3)
        await _print_status(server, sink, status, since)


async def _print_status(
    server: Server, sink: TwilioSink, status: SendProgress, since: datetime
) -> None:
    if server.pool is None:
        return
    async with server.pool.acquire() as conn:
        t = await readback.totals(conn, since)
    duplicates = server.counters.duplicates + status.http_duplicates
    print(
        f"published {status.readings:>7}  stored {t.stored:>7}  quarantined {t.quarantined:>4}  "
        f"duplicates {duplicates:>4}  alerts opened {t.alerts:>4}  "
        f"SMS sent {len(sink.messages):>4}",
        flush=True,
    )
