"""The ``rpm`` command: serve, migrate, staff, time, on-call, billing, rules backtest, export.

Development tooling adds its own commands (``rpm services``, ``rpm demo``, ``rpm simulate``,
from ``simulators.commands``) through the ``rpm.commands`` entry-point group. A plug-in is
loaded only when its command is the one run, so ``rpm serve`` imports no simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Protocol, TypeVar

import uvloop

from rpm import (
    billing_cli,
    device_cli,
    local_endpoints,
    logging_setup,
    on_call_cli,
    staff_cli,
    time_cli,
)
from rpm.backtest import store as backtest_io
from rpm.backtest.replay import Options as BacktestOptions
from rpm.domain.errors import ConfigurationError
from rpm.server import ROLES, Server, parse_roles, run_migrations
from rpm.settings import DatabaseSettings, Settings
from rpm.settings.local_option import add_local_option
from rpm.settings.safety import require_safe

DEFAULT_DATA_DIR = Path(".rpm-data")
log = logging.getLogger("rpm.serve")
T = TypeVar("T")


PLUGIN_GROUP = "rpm.commands"


class Command(Protocol):
    """A plug-in command (entry-point group ``rpm.commands``; the entry point's name is the
    command's)."""

    def add_parser(
        self, sub: argparse._SubParsersAction[argparse.ArgumentParser], data_dir: Path
    ) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


def plugins() -> dict[str, EntryPoint]:
    """The installed plug-in commands by name, not loaded."""
    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def _command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs: its first word that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="rpm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = _command_of(argv)
    loaded: dict[str, Command] = {}
    for name, entry in sorted(plugins().items()):
        if name == wanted:
            loaded[name] = entry.load()
            loaded[name].add_parser(sub, DEFAULT_DATA_DIR)
        else:  # listed in --help; loaded only when run
            sub.add_parser(name, help=f"development tooling (`rpm {name} --help`)")

    p = sub.add_parser("serve", help="run the gateway, the API and the SMS worker")
    add_local_option(p, DEFAULT_DATA_DIR)
    p.add_argument(
        "--role",
        type=_roles,
        default=frozenset(ROLES),
        help="what this process runs: all (default) or a comma-separated subset of "
        f"{', '.join(ROLES)}; e.g. one `--role gateway,api` and one `--role workers` process",
    )
    p = sub.add_parser("migrate", help="apply pending database migrations")
    add_local_option(p, DEFAULT_DATA_DIR)

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
    add_local_option(p, DEFAULT_DATA_DIR)

    staff_cli.add_parser(sub, DEFAULT_DATA_DIR)
    device_cli.add_parser(sub, DEFAULT_DATA_DIR)
    time_cli.add_parser(sub, DEFAULT_DATA_DIR)
    on_call_cli.add_parser(sub, DEFAULT_DATA_DIR)
    billing_cli.add_parser(sub, DEFAULT_DATA_DIR)

    args = parser.parse_args(argv)
    logging_setup.configure("text", logging.DEBUG if args.verbose else logging.INFO)
    if args.command in loaded:
        return loaded[args.command].main(args)
    if args.command == "migrate":
        applied = asyncio.run(run_migrations(_settings(args.local).database))
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        return 0
    if args.command == "serve":
        settings = _settings(args.local)
        ops = settings.operations
        level = "DEBUG" if args.verbose else ops.log_level
        logging_setup.configure(ops.log_format, logging.getLevelNamesMapping()[level])
        try:
            require_safe(settings)
        except ConfigurationError as exc:
            print(f"rpm serve: {exc}", file=sys.stderr)
            return 2
        return run(_serve(settings, args.role))
    if args.command == "staff":
        return staff_cli.run(args, _settings(args.local))
    if args.command == "devices":
        return device_cli.run(args, _settings(args.local))
    if args.command == "time":
        return time_cli.run(args, _settings(args.local))
    if args.command == "on-call":
        return on_call_cli.run(args, _settings(args.local))
    if args.command == "billing":
        return billing_cli.run(args, _settings(args.local))
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


def _settings(local: Path | None) -> Settings:
    if local is None:
        return Settings()
    try:
        endpoints = local_endpoints.load(local)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{local / local_endpoints.ENDPOINTS_FILE} is unreadable: {exc}") from exc
    if endpoints is None:
        raise SystemExit(f"no local services in {local}: run `rpm services start`")
    return local_endpoints.settings_for_local(endpoints)


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
        log.info("signal received: stopping within %.0f s", settings.operations.shutdown_timeout_s)
    await server.stop()
    log.info("stopped")
    for t in (waiter, stopper):
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    return 0


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
        database_url = args.database_url or DatabaseSettings().url.get_secret_value()
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
