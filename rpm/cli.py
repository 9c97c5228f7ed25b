"""The ``rpm`` command: serve, migrate, local services, and the demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import shlex
import signal
import socket
import sys
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from pydantic import SecretStr

from rpm import backtest_io, logging_setup, simulate_cli, staff_cli
from rpm.localservices import LocalServices, ServiceEndpoints, free_port
from rpm.server import ROLES, Server, parse_roles, run_migrations
from rpm.settings import Settings
from rules.backtest import Options as BacktestOptions

DEFAULT_DATA_DIR = Path(".rpm-data")
log = logging.getLogger("rpm.serve")
T = TypeVar("T")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rpm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway, the API and the SMS worker")
    p.add_argument(
        "--local",
        type=Path,
        nargs="?",
        const=DEFAULT_DATA_DIR,
        default=None,
        help="use the local services started in this directory (default .rpm-data)",
    )
    p.add_argument(
        "--role",
        type=_roles,
        default=frozenset(ROLES),
        help="what this process runs: all (default) or a comma-separated subset of "
        f"{', '.join(ROLES)}; e.g. one `--role gateway,api` and one `--role workers` process",
    )
    p = sub.add_parser("migrate", help="apply pending database migrations")
    p.add_argument("--local", type=Path, nargs="?", const=DEFAULT_DATA_DIR, default=None)

    p = sub.add_parser("services", help="start or stop the local PostgreSQL and Mosquitto")
    p.add_argument(
        "action",
        choices=["start", "stop", "status", "env"],
        help="env prints shell exports (with passwords) for the running services",
    )
    p.add_argument("--dir", type=Path, default=DEFAULT_DATA_DIR)

    p = sub.add_parser("demo", help="the whole system with a simulated patient fleet")
    p.add_argument("--dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--days", type=float, default=3.0, help="simulated history to replay")
    p.add_argument("--seconds", type=float, default=45.0, help="wall time for the replay")
    p.add_argument("--port", type=int, default=8000, help="API port (a free one if taken)")
    p.add_argument(
        "--exit-after-replay",
        action="store_true",
        help="stop once the replay is done and the alerts' SMS went out",
    )
    p.add_argument(
        "--stop-services", action="store_true", help="also stop PostgreSQL and Mosquitto on exit"
    )

    simulate_cli.add_parser(sub, DEFAULT_DATA_DIR)

    p = sub.add_parser("rules", help="care-program rules: backtest a rule set")
    rules = p.add_subparsers(dest="rules_command", required=True)
    p = rules.add_parser(
        "backtest",
        help="replay readings through a rule set and count the alerts it would raise",
        description="Replay stored (or CSV) readings through the rule engine and the alert "
        "policy, and report the alert burden: alerts per rule and severity, per "
        "patient-month and per nurse-day.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--csv", type=Path, metavar="FILE", help="readings from a CSV file")
    source.add_argument("--database-url", help="stored readings (default: RPM_DATABASE_URL)")
    p.add_argument(
        "--from",
        dest="start",
        type=backtest_io.parse_when,
        metavar="DATE",
        help="first day (UTC) of the period; earlier readings only warm the rules up",
    )
    p.add_argument(
        "--to",
        dest="end",
        type=backtest_io.parse_until,
        metavar="DATE",
        help="last day (UTC, inclusive) of the period",
    )
    p.add_argument("--patients", type=backtest_io.parse_names, help="only these ids (a,b,c)")
    p.add_argument(
        "--programs",
        type=backtest_io.parse_names,
        metavar="A,B",
        help="every patient in these programs (default: stored programs and overrides; "
        "for CSV, the programs column)",
    )
    p.add_argument(
        "--program",
        dest="program_files",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a program (YAML/JSON) that replaces or adds to the built-in ones",
    )
    p.add_argument(
        "--compare",
        dest="compare_files",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="also replay with this program file and report both side by side",
    )
    p.add_argument(
        "--resolve-after-hours",
        type=float,
        default=24.0,
        help="a nurse resolves each alert this long after it opens (default 24)",
    )
    p.add_argument("--patients-per-nurse", type=int, default=100)
    p.add_argument(
        "--step-minutes",
        type=float,
        default=60.0,
        help="replay step and missing-data timer interval (default 60)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")

    p = sub.add_parser(
        "export",
        help="pseudonymised CSV export of readings and alerts for analytics",
        description="Write readings, alerts, alert events and patients (age band, programs) "
        "as CSV with a manifest; identifiers become HMAC-SHA256 pseudonyms under "
        "RPM_EXPORT_KEY (or RPM_EXPORT_KEY_FILE). Names, phone numbers and notes stay out.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new directory")
    p.add_argument("--from", dest="start", type=backtest_io.parse_when, metavar="DATE")
    p.add_argument("--to", dest="end", type=backtest_io.parse_until, metavar="DATE")
    p.add_argument("--programs", type=backtest_io.parse_names, metavar="A,B")
    p.add_argument(
        "--shift-dates",
        action="store_true",
        help="move each patient's times by a keyed number of days (intervals kept)",
    )
    p.add_argument("--local", type=Path, nargs="?", const=DEFAULT_DATA_DIR, default=None)

    staff_cli.add_parser(sub, DEFAULT_DATA_DIR)

    args = parser.parse_args(argv)
    logging_setup.configure("text", logging.DEBUG if args.verbose else logging.INFO)
    if args.command == "services":
        return _services(args.action, args.dir)
    if args.command == "migrate":
        applied = asyncio.run(run_migrations(_settings(args.local)))
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        return 0
    if args.command == "serve":
        settings = _settings(args.local)
        level = "DEBUG" if args.verbose else settings.log_level
        logging_setup.configure(settings.log_format, logging.getLevelNamesMapping()[level])
        return run(_serve(settings, args.role))
    if args.command == "simulate":
        sim = simulate_cli.SimulateOptions.from_args(args)
        return run(
            simulate_cli.run(args.dir, sim, port=args.port, stop_services=args.stop_services)
        )
    if args.command == "demo":
        from rpm.demo import DemoOptions, run_demo

        opts = DemoOptions(
            data_dir=args.dir,
            patients=args.patients,
            days=args.days,
            seconds=args.seconds,
            port=args.port,
            exit_after_replay=args.exit_after_replay,
            stop_services=args.stop_services,
        )
        return run(run_demo(opts))
    if args.command == "staff":
        return staff_cli.run(args, _settings(args.local))
    if args.command == "rules":
        return _rules_backtest(args)
    if args.command == "export":
        return _export(args)
    return 2


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run the server's event loop on uvloop (libuv), which speeds up socket-heavy work.

    The ingest path allocates many short-lived objects; CPython's default collector
    thresholds made full collections a third of the gateway's CPU and its longest
    pauses (benchmarks/ingest.py). Start-up objects are frozen out of collection and
    the young generation is collected less often.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def settings_for_local(endpoints: ServiceEndpoints, **overrides: object) -> Settings:
    """Settings that point at the project-local services."""
    values: dict[str, object] = {
        "database_url": SecretStr(endpoints.database_url),
        "mqtt_host": endpoints.mqtt_host,
        "mqtt_port": endpoints.mqtt_port,
        "mqtt_username": endpoints.mqtt_gateway_username,
        "mqtt_password": SecretStr(endpoints.mqtt_gateway_password),
        "mqtt_admin_username": endpoints.mqtt_admin_username,
        "mqtt_admin_password": SecretStr(endpoints.mqtt_admin_password),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _settings(local: Path | None) -> Settings:
    if local is None:
        return Settings()
    endpoints = LocalServices(local).running()
    if endpoints is None:
        raise SystemExit(f"no local services running in {local}: run `rpm services start`")
    return settings_for_local(endpoints)


def _services(action: str, root: Path) -> int:
    services = LocalServices(root)
    if action == "start":
        e = services.start()
        print(
            f"PostgreSQL: 127.0.0.1:{e.database_url.rsplit(':', 1)[-1].split('/')[0]}"
            f"  MQTT: {e.mqtt_host}:{e.mqtt_port}  TimescaleDB: {e.timescaledb}"
        )
        print(f"connection details (with passwords): {root / 'endpoints.json'}")
    elif action == "stop":
        services.stop()
        print("stopped")
    elif action == "env":
        found = services.running()
        if found is None:
            print(f"no local services running in {root}", file=sys.stderr)
            return 1
        exports = {
            "RPM_DATABASE_URL": found.database_url,
            "RPM_MQTT_HOST": found.mqtt_host,
            "RPM_MQTT_PORT": str(found.mqtt_port),
            "RPM_MQTT_USERNAME": found.mqtt_gateway_username,
            "RPM_MQTT_PASSWORD": found.mqtt_gateway_password,
            "RPM_MQTT_ADMIN_USERNAME": found.mqtt_admin_username,
            "RPM_MQTT_ADMIN_PASSWORD": found.mqtt_admin_password,
            "RPM_SIMULATOR_MQTT_USERNAME": found.mqtt_device_username,
            "RPM_SIMULATOR_MQTT_PASSWORD": found.mqtt_device_password,
        }
        for key, value in exports.items():
            print(f"export {key}={shlex.quote(value)}")
    else:
        running = services.running()
        print("running" if running else "not running")
        return 0 if running else 1
    return 0


def _roles(text: str) -> frozenset[str]:
    try:
        return parse_roles(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


async def _serve(settings: Settings, roles: frozenset[str] = frozenset(ROLES)) -> int:
    server = Server(settings, roles)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(server.wait())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        log.info("signal received: stopping within %.0f s", settings.shutdown_timeout_s)
    await server.stop()
    log.info("stopped")
    for t in (waiter, stopper):
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    return 0


def pick_port(wanted: int) -> int:
    """``wanted`` when free on loopback, else any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
            return free_port()
    return wanted


def _rules_backtest(args: argparse.Namespace) -> int:
    """``rpm rules backtest``: the alert burden of a rule set over stored or CSV readings."""
    try:
        options = BacktestOptions(
            start=args.start,
            end=args.end,
            step=timedelta(minutes=args.step_minutes),
            resolve_after=timedelta(hours=args.resolve_after_hours),
            patients_per_nurse=args.patients_per_nurse,
        )
    except ValueError as exc:
        print(f"rpm rules backtest: {exc}", file=sys.stderr)
        return 2
    database_url = None
    if args.csv is None:
        database_url = args.database_url or Settings().database_url.get_secret_value()
    request = backtest_io.Request(
        options,
        csv=args.csv,
        database_url=database_url,
        patients=args.patients or (),
        programs=args.programs,
        program_files=tuple(args.program_files),
        compare_files=tuple(args.compare_files),
        json_path=args.json,
    )
    return backtest_io.run(request, sys.stdout, sys.stderr)


def _export(args: argparse.Namespace) -> int:
    """``rpm export``: refuses to run without a key; prints row counts, never data."""
    from rpm import export
    from rpm.errors import ConfigurationError

    options = export.Options(args.start, args.end, args.programs, args.shift_dates)
    try:
        manifest = asyncio.run(export.run(_settings(args.local), args.out, options))
    except (ConfigurationError, OSError) as exc:
        print(f"rpm export: {exc}", file=sys.stderr)
        return 2
    print("\n".join(export.summary(manifest)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
