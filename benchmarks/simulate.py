"""Load test through ``rpm simulate``'s load mode: a sustained rate for a fixed time, zero loss.

Starts its own PostgreSQL and Mosquitto, the Twilio stand-in, and a real ``rpm serve`` in its
own process (so the sending fleet and the server do not share a core). It builds a traffic
plan (``simulators.traffic.build_plan``: every care program, every payload format, MQTT and
signed webhooks, malformed payloads and duplicates, scenarios with ground truth) holding
``rate x duration`` readings, enrols it (a broker login per MQTT device), sends it at
``--rate`` readings/s, waits for the pipeline to drain, and checks that nothing was lost.

    uv run python benchmarks/simulate.py            # 1,000 readings/s for 30 s
    uv run python benchmarks/simulate.py --quick    # 500 readings/s for 10 s

Prints a table; the last line is one JSON object of the figures. Exit status 1 on loss.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/rules.py is named like the ``rules`` package, which the server imports: keep this
# folder behind the project on sys.path (``_common`` is still found).
sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))

import argparse
import asyncio
import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from _common import BenchError, Child, render_table, run_with_services, server_env

from device_gateways.broker_admin import BrokerAdmin, BrokerAdminConfig
from rpm.storage.pool import create_pool
from simulators.localservices import LocalServices, free_port
from simulators.report import render, to_json
from simulators.runner import Pace, RunOptions, RunResult, Target, run_plan
from simulators.simulate import SimulateOptions, make_plan
from simulators.twilio_sink import TwilioSink

TWILIO_SID = "AC" + "be4c" * 8
TWILIO_TOKEN = "bench-simulate-token"  # the local stand-in's, not a real secret


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=None, help="readings/s (1,000; --quick 500)")
    p.add_argument("--duration", type=float, default=None, help="seconds (30; --quick 10)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--patients", type=int, default=500, help="fleet size (grown if needed)")
    p.add_argument("--http-share", type=float, default=0.25, help="share of webhook devices")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = p.parse_args(argv)
    args.rate = args.rate or (500.0 if args.quick else 1000.0)
    args.duration = args.duration or (10.0 if args.quick else 30.0)
    return args


async def start_server(work: Path, env: dict[str, str], port: int) -> Child:
    script = Path(sys.executable).with_name("rpm")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "rpm.cli"]
    server = Child("rpm serve", [*command, "serve"], env, work / "serve.log")
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if server.proc.poll() is not None:
                raise BenchError(f"rpm serve exited\n{server.log_tail()}")
            try:
                r = await client.get(f"http://127.0.0.1:{port}/docs")
                if r.status_code < 500:
                    return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"rpm serve not up in 60 s\n{server.log_tail()}")
            await asyncio.sleep(0.2)


async def benchmark(args: argparse.Namespace, services: LocalServices, work: Path) -> RunResult:
    e = services.start()
    sink = TwilioSink(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN)
    sink_url = await sink.start()
    port = free_port()
    env = server_env(
        e,
        "rpm-gateway-bench-simulate",
        RPM_API_PORT=str(port),
        RPM_TWILIO_ACCOUNT_SID=TWILIO_SID,
        RPM_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        RPM_TWILIO_BASE_URL=sink_url,
        # Load mode sends days of readings in seconds: a wall-clock missing-data pass would
        # find every patient silent. It runs once at start-up (nothing stored yet).
        RPM_MISSING_DATA_INTERVAL_S="1000000000",
        RPM_INGEST_RATE_PER_S="5000",  # one integration per vendor format carries the fleet
        RPM_INGEST_BURST="5000",
    )
    server = await start_server(work, env, port)
    pool = await create_pool(e.database_url, size=4)
    try:
        opts = SimulateOptions(
            patients=args.patients,
            days=1.0,
            pace=Pace(rate=args.rate),
            http_share=args.http_share,
            seed=args.seed,
            duration=args.duration,
        )
        plan = make_plan(opts, datetime.now(UTC), (args.rate, args.duration))
        print(
            f"[simulate] {len(plan.patients)} patients, {len(plan.sends):,} payloads, "
            f"{sum(s.readings for s in plan.sends):,} readings at {args.rate:,.0f}/s",
            file=sys.stderr,
            flush=True,
        )
        target = Target(
            pool=pool,
            broker=BrokerAdmin(
                BrokerAdminConfig(
                    e.mqtt_host,
                    e.mqtt_port,
                    e.mqtt_admin_username,
                    e.mqtt_admin_password,
                    timeout_s=120.0,
                )
            ),
            mqtt_host=e.mqtt_host,
            mqtt_port=e.mqtt_port,
            api_url=f"http://127.0.0.1:{port}",
            password_key=e.mqtt_admin_password,
        )
        return await run_plan(plan, target, RunOptions(Pace(rate=args.rate), progress=False))
    finally:
        await pool.close()
        server.proc.send_signal(signal.SIGTERM)
        server.stop(timeout=20)
        await sink.stop()


def figures(args: argparse.Namespace, result: RunResult) -> dict[str, object]:
    doc = to_json(result.report)
    r = result.report
    return {
        "target_rate": args.rate,
        "duration_s": args.duration,
        "send_rate": r.readings_sent / result.send_seconds if result.send_seconds else 0.0,
        "readings_per_s": doc["readings_per_s"],
        "sent": doc["sent"],
        "readings_sent": doc["readings_sent"],
        "stored": doc["stored"],
        "lost": doc["lost"],
        "quarantined": doc["quarantined"],
        "quarantined_expected": doc["quarantined_expected"],
        "publish_to_stored_p50_ms": doc["publish_to_stored_p50_ms"],
        "publish_to_stored_p99_ms": doc["publish_to_stored_p99_ms"],
        "publish_to_alert_p99_ms": doc["publish_to_alert_p99_ms"],
        "sensitivity": doc["sensitivity"],
        "ppv": doc["ppv"],
        "devices_connected": result.connect.connections,
        "connect_s": result.connect.seconds,
        "enrol_s": result.enrol_seconds,
        "http_share": args.http_share,
    }


def _table(args: argparse.Namespace, f: dict[str, Any]) -> str:
    def ms(key: str) -> str:
        value = f[key]
        return "-" if value is None else f"{value:,.0f} ms"

    rows = [
        ("target rate", f"{args.rate:,.0f} readings/s for {args.duration:g} s", ""),
        ("achieved send rate", f"{f['send_rate']:,.0f} readings/s", ""),
        ("stored throughput", f"{f['readings_per_s']:,.0f} readings/s", ""),
        ("sent / stored / lost", f"{f['readings_sent']:,} / {f['stored']:,} / {f['lost']:,}", "0"),
        ("publish -> stored p50", ms("publish_to_stored_p50_ms"), ""),
        ("publish -> stored p99", ms("publish_to_stored_p99_ms"), ""),
        ("publish -> alert p99", ms("publish_to_alert_p99_ms"), ""),
        ("devices connected", f"{f['devices_connected']:,} in {f['connect_s']:.1f} s", ""),
    ]
    return render_table("rpm simulate, load mode", rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    lost: list[int] = []

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        result = asyncio.run(benchmark(args, services, work))
        lost.append(result.report.lost)
        f = figures(args, result)
        return render(result.report) + "\n" + _table(args, f), f

    status = run_with_services("rpm-bench-simulate-", body, keep=args.keep)
    return 1 if status == 0 and any(lost) else status


if __name__ == "__main__":
    raise SystemExit(main())
