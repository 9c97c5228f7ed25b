"""``rpm demo``: local services, the server, a fake Twilio, and a simulated fleet.

Replays a few days of a fleet's measurements on an accelerated clock (ending now),
then keeps publishing live readings, so the dashboard fills within a minute.
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

from rpm.cli import pick_port, settings_for_local
from rpm.localservices import LocalServices
from rpm.server import Server
from rpm.settings import Settings
from rpm.staff_cli import demo_nurse
from rpm.storage import registry
from rpm.storage.pool import Conn, connect
from simulators.fleet import VirtualPatient, make_fleet
from simulators.publisher import BrokerLogin, PublishStats, run_fleet
from simulators.twilio_sink import TwilioSink

log = logging.getLogger("rpm.demo")

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
    sink = TwilioSink(account_sid=DEMO_SID, auth_token=DEMO_TOKEN)
    sink_url = await sink.start()
    port = pick_port(opts.port)
    settings = settings_for_local(
        endpoints,
        api_port=port,
        twilio_account_sid=DEMO_SID,
        twilio_auth_token=SecretStr(DEMO_TOKEN),
        twilio_base_url=sink_url,
        mqtt_client_id="rpm-gateway-demo",
    )
    server = Server(settings)
    await server.start()
    end = datetime.now(UTC)
    start = end - timedelta(days=opts.days)
    fleet = make_fleet(opts.patients, start=start, end=end)
    assert server.pool is not None
    async with server.pool.acquire() as conn:
        await seed(conn, fleet, since=start - timedelta(days=1))
        nurse, nurse_password = await demo_nurse(conn)
    events = sum(1 for p in fleet if p.event)
    print(
        f"\nRPM demo: {len(fleet)} virtual patients, {len(fleet) * 3} devices, "
        f"{events} with a scheduled event.\n"
        f"  Dashboard (live triage queue): http://127.0.0.1:{port}/\n"
        f"    sign in as {nurse}, password {nurse_password} (a new one on every start)\n"
        f"  Alerts API:  http://127.0.0.1:{port}/api/alerts\n"
        f"  FHIR:        http://127.0.0.1:{port}/fhir/Observation?patient={fleet[0].patient_id}\n"
        f"Replaying {opts.days:g} days of readings in {opts.seconds:g} s; Ctrl-C to stop.\n",
        flush=True,
    )
    login = BrokerLogin(
        endpoints.mqtt_host,
        endpoints.mqtt_port,
        endpoints.mqtt_device_username,
        endpoints.mqtt_device_password,
    )
    stats = PublishStats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def publish() -> None:
        await run_fleet(
            fleet, login, sim_start=start, sim_end=end, wall_seconds=opts.seconds, stats=stats
        )
        if opts.exit_after_replay:
            return
        print("Replay done; publishing live readings now.", flush=True)
        now = datetime.now(UTC)
        await run_fleet(
            fleet,
            login,
            sim_start=now,
            sim_end=now + timedelta(hours=12),
            wall_seconds=12 * 3600,
            measurements_per_day=96,
            stats=stats,
        )

    publisher = asyncio.create_task(publish())
    reporter = asyncio.create_task(_report(server, sink, stats, stop))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({publisher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if publisher.done():
            publisher.result()
            await _settle(server, stats, sink)
    finally:
        for t in (publisher, reporter, stopper):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        _print_status(server, sink, stats)
        await server.stop()
        await sink.stop()
        if opts.stop_services:
            services.stop()
        else:
            print(f"Local services keep running; stop: rpm services stop --dir {opts.data_dir}")
    return 0


async def simulate(
    settings: Settings, *, patients: int, days: float, seconds: float, live: bool
) -> int:
    """Enroll a virtual fleet in the configured database and publish to the configured broker."""
    end = datetime.now(UTC)
    start = end - timedelta(days=days)
    fleet = make_fleet(patients, start=start, end=end)
    conn = await connect(settings.database_url.get_secret_value())
    try:
        await seed(conn, fleet, since=start - timedelta(days=1))
    finally:
        await conn.close()
    password = settings.simulator_mqtt_password
    login = BrokerLogin(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.simulator_mqtt_username,
        password.get_secret_value() if password else None,
    )
    stats = PublishStats()
    await run_fleet(fleet, login, sim_start=start, sim_end=end, wall_seconds=seconds, stats=stats)
    print(f"replayed {stats.sent} readings ({stats.malformed} deliberately malformed)", flush=True)
    if live:
        now = datetime.now(UTC)
        await run_fleet(
            fleet,
            login,
            sim_start=now,
            sim_end=now + timedelta(days=1),
            wall_seconds=86400,
            measurements_per_day=96,
            stats=stats,
        )
    return 0


async def seed(conn: Conn, fleet: list[VirtualPatient], *, since: datetime) -> None:
    """Enroll the fleet's patients and devices (idempotent)."""
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


async def _settle(server: Server, stats: PublishStats, sink: TwilioSink) -> None:
    """Wait until everything published is processed and the SMS went out (max 30 s)."""
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        gw = server.gateway
        sent_all = gw is not None and gw.messages_acked >= stats.sent
        sms_done = len(sink.messages) >= server.counters.alerts_opened
        if sent_all and sms_done:
            return
        await asyncio.sleep(0.2)


async def _report(
    server: Server, sink: TwilioSink, stats: PublishStats, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        await asyncio.sleep(3)
        _print_status(server, sink, stats)


def _print_status(server: Server, sink: TwilioSink, stats: PublishStats) -> None:
    c = server.counters
    print(
        f"published {stats.sent:>7}  stored {c.stored:>7}  quarantined {c.quarantined:>4}  "
        f"duplicates {c.duplicates:>4}  alerts opened {c.alerts_opened:>4}  "
        f"SMS sent {len(sink.messages):>4}",
        flush=True,
    )
