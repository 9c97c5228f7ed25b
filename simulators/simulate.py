"""``rpm simulate``: run a virtual fleet through the whole stack and report against the truth.

Starts the local services, the server and the Twilio stand-in (like ``rpm demo``), builds a
traffic plan (``simulators.traffic.build_plan``), sends it over MQTT and signed webhooks on
an accelerated or real-time clock, or at a sustained rate (load mode), waits for the
pipeline to drain and prints the report. Exit status 1 when readings were lost.

With ``--external`` it starts nothing: it runs the plan against a deployment that is already
running (RPM_DATABASE_URL, RPM_MQTT_HOST/PORT and the broker admin login
RPM_MQTT_ADMIN_USERNAME/PASSWORD from the environment, the webhooks at ``--api-url``), under
ids prefixed ``rpmsim-`` and counting only its own devices and patients.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pydantic import SecretStr

from device_gateways.broker_admin import BrokerAdmin
from rpm.domain.errors import BrokerProvisioningError, ForeignIdsError, ScenarioFileError, SendError
from rpm.local_endpoints import ServiceEndpoints, settings_for_local
from rpm.pipeline import IngestPipeline
from rpm.server import Server
from rpm.settings import MqttSettings, Settings
from rpm.storage.pool import create_pool
from rules.engine import Engine
from rules.programs import RuleBook
from simulators import engagement_sim
from simulators.enrolment import external_prefix
from simulators.localservices import LocalServices, free_port, pick_port
from simulators.report import render, to_json
from simulators.runner import (
    MissingCheck,
    Pace,
    RunOptions,
    RunResult,
    Target,
    run_plan,
)
from simulators.scenarios import load_scenarios
from simulators.traffic import Plan, SimConfig, build_plan
from simulators.transports import drop_session
from simulators.twilio_sink import TwilioSink

SIM_DATABASE = "rpm_simulate"
SIM_GATEWAY_ID = "rpm-gateway-simulate"
SIM_SID = "AC" + "5151" * 8
SIM_TOKEN = "simulate-auth-token"  # noqa: S105 - the local fake Twilio's, not a real secret
# Readings older than RPM_MAX_AGE_DAYS (30 by default) are refused as stale.
MAX_LOAD_DAYS = 20.0
DEFAULT_API_URL = "http://127.0.0.1:8000"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], data_dir: Path) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a virtual fleet through the whole stack and report against ground truth",
        description=__doc__,
    )
    p.add_argument("--dir", type=Path, default=data_dir, help="local services' directory")
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--days", type=float, default=3.0, help="simulated span to replay")
    clock = p.add_mutually_exclusive_group()
    clock.add_argument("--seconds", type=float, help="wall time for the replay (default 60)")
    clock.add_argument("--speed", type=float, help="simulated seconds per wall second")
    clock.add_argument("--realtime", action="store_true", help="replay at the wall clock's pace")
    p.add_argument("--scenarios", type=Path, metavar="FILE", help="scenarios (YAML)")
    p.add_argument("--malformed-share", type=float, default=0.01)
    p.add_argument("--duplicate-share", type=float, default=0.01)
    p.add_argument("--http-share", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, metavar="READINGS_PER_S", help="load mode: this rate")
    p.add_argument("--duration", type=float, metavar="S", help="load mode: for this long")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    p.add_argument(
        "--engagement-days",
        type=float,
        default=0.0,
        metavar="DAYS",
        help="then simulate campaigns and replies over DAYS on the simulated clock",
    )
    p.add_argument("--plot", type=Path, metavar="FILE", help="draw latency/throughput (PNG)")
    p.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-services", action="store_true", help="stop PostgreSQL/Mosquitto after")
    p.add_argument(
        "--external",
        action="store_true",
        help="run against a running deployment (RPM_* settings); start nothing",
    )
    p.add_argument(
        "--api-url",
        default=DEFAULT_API_URL,
        help=f"--external: where the server's /ingest webhooks are (default {DEFAULT_API_URL})",
    )


@dataclass(frozen=True, slots=True)
class SimulateOptions:
    patients: int
    days: float
    pace: Pace
    scenarios: Path | None = None
    malformed_share: float = 0.01
    duplicate_share: float = 0.01
    http_share: float = 0.25
    seed: int = 7
    json_path: Path | None = None
    plot_path: Path | None = None
    progress: bool = True
    duration: float | None = None  # load mode
    external_api_url: str | None = None  # --external: the deployment's API
    engagement_days: float = 0.0  # then the engagement phase (simulators/engagement_sim.py)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SimulateOptions:
        if (args.rate is None) != (args.duration is None):
            raise SystemExit("rpm simulate: load mode needs both --rate and --duration")
        span = args.days * 86400
        if args.rate is not None:
            pace = Pace(rate=args.rate)
        elif args.realtime:
            pace = Pace(wall_seconds=span)
        elif args.speed is not None:
            pace = Pace(wall_seconds=span / max(args.speed, 1.0))
        else:
            pace = Pace(wall_seconds=args.seconds or 60.0)
        return cls(
            patients=args.patients,
            days=args.days,
            pace=pace,
            scenarios=args.scenarios,
            malformed_share=args.malformed_share,
            duplicate_share=args.duplicate_share,
            http_share=args.http_share,
            seed=args.seed,
            json_path=args.json,
            plot_path=args.plot,
            progress=not args.no_progress,
            duration=args.duration,
            external_api_url=args.api_url if args.external else None,
            engagement_days=args.engagement_days,
        )


def make_plan(
    opts: SimulateOptions,
    now: datetime,
    load: tuple[float, float] | None = None,
    builder: Callable[[SimConfig], Plan] = build_plan,
    id_prefix: str = "",
) -> Plan:
    """The plan to run. A replay ends when its wall time is up, so simulated time catches up
    with "now" at the end; in load mode (``load`` = (rate, duration)), the span and fleet
    are sized from a probe plan so that the plan holds ``rate * duration`` readings, all in
    the past."""
    scenarios = tuple(load_scenarios(opts.scenarios)) if opts.scenarios else None

    def config(patients: int, start: datetime, end: datetime) -> SimConfig:
        return SimConfig(
            patients=patients,
            start=start,
            end=end,
            seed=opts.seed,
            scenarios=scenarios,
            malformed_share=opts.malformed_share,
            duplicate_share=opts.duplicate_share,
            http_share=opts.http_share,
            id_prefix=id_prefix,
        )

    if load is None:
        assert opts.pace.wall_seconds is not None
        end = now + timedelta(seconds=opts.pace.wall_seconds)
        return builder(config(opts.patients, end - timedelta(days=opts.days), end))
    rate, duration = load
    probe_patients = min(opts.patients, 20)
    probe = builder(config(probe_patients, now - timedelta(days=1), now))
    per_patient_day = max(sum(s.readings for s in probe.sends) / probe_patients, 0.1)
    wanted = rate * duration
    patients = opts.patients
    days = wanted / (patients * per_patient_day)
    if days > MAX_LOAD_DAYS:
        patients = math.ceil(wanted / (MAX_LOAD_DAYS * per_patient_day))
        days = MAX_LOAD_DAYS
    end = now - timedelta(minutes=1)
    plan = builder(config(patients, end - timedelta(days=days), end))
    return _trimmed(plan, int(wanted))


def _trimmed(plan: Plan, readings: int) -> Plan:
    """The plan's first sends holding about ``readings`` readings (load mode's budget)."""
    total = 0
    for i, s in enumerate(plan.sends):
        total += s.readings
        if total >= readings:
            return Plan(plan.config, plan.patients, plan.sends[: i + 1], plan.truth, plan.labels)
    return plan


def missing_check_on_sim_clock(server: Server) -> MissingCheck:
    """Missing-data and confirmation passes at a simulated "now" over the server's database.

    The server's own timers run on the wall clock, which an accelerated replay's simulated
    time lags by up to its span; these passes are the server's (same pipeline code, rules,
    policy, locks) with the clock set to simulated time."""
    assert server.pool is not None
    s = server.settings
    sim_now = [datetime.now(UTC)]
    pipeline = IngestPipeline(
        server.pool,
        s.ingest.clock(),
        now=lambda: sim_now[0],
        engine=Engine(RuleBook.builtin(), s.rules.buffer_capacity),
        rules_refresh_s=s.rules.refresh_s,
    )

    async def check(at: datetime) -> None:
        sim_now[0] = at
        await pipeline.check_missing()
        await pipeline.check_confirmations(at)  # windows ended by then page (alerts.confirm)

    return check


def target_for(server: Server, *, sim_clock_missing: bool = True) -> Target:
    s = server.settings
    assert server.pool is not None
    admin_password = s.mqtt.admin_password
    return Target(
        pool=server.pool,
        broker=broker_admin(s.mqtt),
        mqtt_host=s.mqtt.host,
        mqtt_port=s.mqtt.port,
        api_url=f"http://{s.api.host}:{s.api.port}",
        password_key=admin_password.get_secret_value() if admin_password else "",
        mqtt_duplicates=lambda: server.counters.duplicates,
        missing_check=missing_check_on_sim_clock(server) if sim_clock_missing else None,
    )


def write_outputs(result: RunResult, json_path: Path | None, plot_path: Path | None) -> None:
    if json_path is not None:
        json_path.write_text(json.dumps(to_json(result.report), indent=2) + "\n")
    if plot_path is not None:
        from simulators import plot  # matplotlib: only when a plot is asked for

        plot.draw(result.sent, result.observed, plot_path)


async def fresh_database(url: str, name: str) -> str:
    """Drop and create database ``name`` next to ``url``'s; its URL.

    Every run starts empty, so its report counts only its own traffic: the plan is
    deterministic, and a second run into the same database would find its readings
    already stored (duplicates). The database stays after the run for inspection.
    """
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def fresh_gateway_session(endpoints: ServiceEndpoints, client_id: str) -> None:
    """Discard the backlog the broker kept for this gateway since its last run (it was
    meant for the database ``fresh_database`` just replaced)."""
    await drop_session(
        endpoints.mqtt_host,
        endpoints.mqtt_port,
        endpoints.mqtt_gateway_username,
        endpoints.mqtt_gateway_password,
        client_id,
    )


def accelerated(opts: SimulateOptions) -> bool:
    """Simulated time runs faster than the wall clock (or, in load mode, is not tied to it)."""
    wall = opts.pace.wall_seconds
    return wall is None or wall < opts.days * 86400 * 0.999


SIM_VENDOR_RATE_PER_S = 5000.0


def server_overrides(opts: SimulateOptions) -> dict[str, dict[str, object]]:
    """Settings for the server under simulation, by group. When simulated time is not wall
    time the wall-clock missing-data timer is parked (see ``missing_check_on_sim_clock``)."""
    out: dict[str, dict[str, object]] = {
        "sms": {"account_sid": SIM_SID, "auth_token": SecretStr(SIM_TOKEN)},
        # One integration per vendor format carries a whole fleet's webhooks: allow it the
        # volume (a deployment sizes RPM_INGEST_RATE_PER_S to its vendors the same way).
        "ingest": {"rate_per_s": SIM_VENDOR_RATE_PER_S, "burst": int(SIM_VENDOR_RATE_PER_S)},
    }
    if accelerated(opts):  # both wall-clock timers parked; the sim clock's passes run them
        out["rules"] = {"missing_data_interval_s": 1e9, "confirm_interval_s": 1e9}
    return out


def _scenarios_ok(opts: SimulateOptions) -> bool:
    if opts.scenarios is not None:
        try:  # before starting anything: a clinical team's file gets a clear error
            load_scenarios(opts.scenarios)
        except ScenarioFileError as exc:
            print(f"rpm simulate: {exc}", file=sys.stderr)
            return False
    return True


def _print_result(result: RunResult) -> None:
    print(render(result.report), flush=True)
    print(
        f"enrolment {result.enrol_seconds:.1f} s; {result.connect.connections} device "
        f"connections in {result.connect.seconds:.1f} s ({result.connect.concurrency} at a "
        f"time); sending {result.send_seconds:.1f} s; drain {result.drain_seconds:.1f} s"
    )


def broker_admin(mqtt: MqttSettings, timeout_s: float = 120.0) -> BrokerAdmin:
    """The broker's dynamic-security admin as the settings name it."""
    # Each dynamic-security change rewrites the broker's file: thousands of new logins
    # take a while.
    return BrokerAdmin(replace(mqtt.admin(), timeout_s=timeout_s))


def external_target(settings: Settings, pool: asyncpg.Pool, api_url: str) -> Target:
    """A running deployment, as its settings describe it: no in-process counters and no
    missing-data passes of ours (its own timer runs on the wall clock)."""
    password = settings.mqtt.admin_password
    return Target(
        pool=pool,
        broker=broker_admin(settings.mqtt),
        mqtt_host=settings.mqtt.host,
        mqtt_port=settings.mqtt.port,
        api_url=api_url.rstrip("/"),
        password_key=password.get_secret_value() if password else "",
        shared=True,
    )


def external_problem(settings: Settings) -> str | None:
    """Why ``settings`` cannot describe a deployment to simulate against, if they cannot."""
    if not settings.mqtt.admin_username or settings.mqtt.admin_password is None:
        return (
            "--external needs the broker's dynamic-security admin login "
            "(RPM_MQTT_ADMIN_USERNAME and RPM_MQTT_ADMIN_PASSWORD) to give each virtual "
            "device its own login"
        )
    if settings.mqtt.tls_ca_file:
        return "--external does not speak TLS to the broker yet (RPM_MQTT_TLS_CA_FILE is set)"
    return None


async def run_external(
    opts: SimulateOptions, settings: Settings | None = None, *, id_prefix: str | None = None
) -> int:
    """``rpm simulate --external``: the plan against a running deployment.

    Starts no service or server, creates or drops no database, and leaves the server's
    MQTT session alone; it only adds its own patients and devices (ids ``id_prefix``, by
    default ``rpmsim-<UTC time>-``: a new fleet per run) and reuses its ``sim-``
    integrations.
    """
    assert opts.external_api_url is not None
    if not _scenarios_ok(opts):
        return 2
    settings = settings or Settings()
    problem = external_problem(settings)
    if problem is not None:
        print(f"rpm simulate: {problem}", file=sys.stderr)
        return 2
    try:  # before enrolling anything: the admin login works and the plugin answers
        await broker_admin(settings.mqtt, timeout_s=10.0).apply(
            [{"command": "getDefaultACLAccess"}]
        )
    except BrokerProvisioningError as exc:
        print(
            f"rpm simulate: the broker's dynamic-security admin login does not work: {exc}",
            file=sys.stderr,
        )
        return 2
    try:
        pool = await create_pool(settings.database.url.get_secret_value(), size=4)
    except (OSError, asyncpg.PostgresError) as exc:
        # The URL holds the database password: name the failure, not the URL.
        print(f"rpm simulate: cannot open RPM_DATABASE_URL: {type(exc).__name__}", file=sys.stderr)
        return 2
    try:
        load = None
        if opts.pace.rate is not None:
            load = (opts.pace.rate, opts.duration or 0.0)
        now = datetime.now(UTC)
        prefix = external_prefix(now) if id_prefix is None else id_prefix
        plan = make_plan(opts, now, load, id_prefix=prefix)
        print(
            f"rpm simulate --external: {len(plan.patients)} patients ({prefix}*), "
            f"{len(plan.sends):,} payloads ({sum(s.readings for s in plan.sends):,} readings) "
            f"to {settings.mqtt.host}:{settings.mqtt.port} and {opts.external_api_url}",
            flush=True,
        )
        target = external_target(settings, pool, opts.external_api_url)
        try:
            result = await run_plan(plan, target, RunOptions(opts.pace, progress=opts.progress))
        except ForeignIdsError as exc:
            print(f"rpm simulate: {exc}; nothing was changed", file=sys.stderr)
            return 2
        except (BrokerProvisioningError, SendError) as exc:
            print(f"rpm simulate: could not provision or connect the fleet: {exc}", file=sys.stderr)
            return 2
    finally:
        await pool.close()
    _print_result(result)
    write_outputs(result, opts.json_path, opts.plot_path)
    return 1 if result.report.lost else 0


async def run(data_dir: Path, opts: SimulateOptions, *, port: int, stop_services: bool) -> int:
    """``rpm simulate`` with its own local services, server and Twilio stand-in (or, with
    ``--external``, against a running deployment: ``run_external``)."""
    # A line per webhook request says nothing a report does not, and drowns it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if opts.external_api_url is not None:
        return await run_external(opts)
    if not _scenarios_ok(opts):
        return 2
    services = LocalServices(data_dir)
    endpoints = services.start()
    database_url = await fresh_database(endpoints.database_url, SIM_DATABASE)
    await fresh_gateway_session(endpoints, SIM_GATEWAY_ID)
    sink = TwilioSink(account_sid=SIM_SID, auth_token=SIM_TOKEN)
    sink_url = await sink.start()
    overrides = server_overrides(opts)
    overrides["database"] = {"url": SecretStr(database_url)}
    overrides["api"] = {"port": pick_port(port) if port else free_port()}
    overrides["sms"] = {**overrides["sms"], "base_url": sink_url}
    overrides["mqtt"] = {"client_id": SIM_GATEWAY_ID}
    settings: Settings = settings_for_local(endpoints, **overrides)
    server = Server(settings)
    await server.start()
    running = True
    try:
        now = datetime.now(UTC)
        load = None
        if opts.pace.rate is not None:
            load = (opts.pace.rate, opts.duration or 0.0)
        plan = make_plan(opts, now, load)
        target = target_for(server, sim_clock_missing=accelerated(opts))
        print(
            f"rpm simulate: {len(plan.patients)} patients, {len(plan.sends):,} payloads "
            f"({sum(s.readings for s in plan.sends):,} readings), "
            f"{len(plan.truth)} scenario cases; dashboard http://{settings.api.host}:"
            f"{settings.api.port}/",
            flush=True,
        )
        result = await run_plan(plan, target, RunOptions(opts.pace, progress=opts.progress))
        await server.stop()
        running = False
        engagement = None
        if opts.engagement_days > 0:
            engagement_url = await fresh_database(endpoints.database_url, SIM_DATABASE + "_eng")
            engagement = await engagement_sim.run_with_server(
                settings.updated(
                    database={"url": SecretStr(engagement_url)}, api={"port": free_port()}
                ),
                sink,
                plan.patients,
                start=now - timedelta(days=opts.engagement_days),
                days=opts.engagement_days,
                seed=opts.seed,
            )
    finally:
        if running:
            await server.stop()
        await sink.stop()
        if stop_services:
            services.stop()
    _print_result(result)
    write_outputs(result, opts.json_path, opts.plot_path)
    if engagement is not None:
        print(engagement_sim.render(engagement), flush=True)
        if opts.json_path is not None:
            doc = json.loads(opts.json_path.read_text())
            opts.json_path.write_text(json.dumps({**doc, **engagement.to_json()}, indent=2) + "\n")
    broken = engagement is not None and any(engagement.violations.values())
    return 1 if result.report.lost or broken else 0
