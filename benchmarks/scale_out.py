"""Past one machine: what enrolling a shipment of devices costs as the fleet grows.

    uv run python benchmarks/scale_out.py            # 100,000 devices; gateways on 40,000 readings
    uv run python benchmarks/scale_out.py --quick    # 10,000 devices; 20,000 readings
    uv run python benchmarks/scale_out.py --quick --no-enrol   # the gateway figures alone

Everything runs on loopback in a temporary directory, removed at the end: LocalServices'
PostgreSQL and Mosquitto with the certificate listener (and so the device CA), and
``rpm serve`` in its own process with ``RPM_MQTT_DEVICE_CA_DIR`` set.

Enrolment. Each virtual device makes its own EC P-256 key and a CSR (``simulators.
cert_device``; not timed, done before the clock starts). The devices are then enrolled
through the real HTTP API, ``POST /api/devices/bulk``, ``--batch`` devices a request, one
request at a time: the server checks each CSR, signs a certificate with the device CA and
stores devices, certificates and their audit events in one transaction a request. The
broker is told nothing: it trusts the CA, so no per-device state grows anywhere but in
PostgreSQL's indexed tables. Rates: devices per second of wall time, over the whole run and
over the first and the last 1,000 devices (``enroll_last_vs_first``: 1.0 means the last
devices cost what the first did; the dynamic-security plugin, which rewrites its whole JSON
file per login, gets slower with every device). Machine load: the CPU seconds of the server
and of PostgreSQL, and the load average, printed with the figures.

Gateways (item 2 of issue 19, ``benchmarks/_gateways.py``): throughput with 1, 2 and 3
``rpm serve --role gateway`` processes on this machine (one on the default subscription,
more on one shared subscription) with CPU per reading, then the kill-and-restart integrity
run: ``gateways``, ``readings_per_s_by_gateways``, ``cpu_us_per_reading_by_gateways``,
``lost``, ``duplicated`` and ``alerts_match_single_gateway`` (the alert episodes of the
three-gateway run with a kill against those of the one-gateway run of the same readings).

The last line of output is one JSON object; the table before it explains the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from _common import (
    BenchError,
    children_of,
    cpu_seconds,
    fmt_rate,
    pid_from_file,
    run_with_services,
    server_env,
)
from _gateways import GatewayRun, kill_and_restart, throughput
from _report import ok, progress, tables
from _server import RpmServe

from device_gateways import device_ca
from rpm.auth import STAFF_TOKEN_PREFIX, token_hash
from rpm.storage import staff_auth
from simulators import active_active
from simulators.localservices import LocalServices, free_port

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 1000  # the first and the last devices compared
GATEWAYS = (1, 2, 3)
PER_PATIENT = 40  # readings per patient: within the rule engine's buffer (48 blood pressures)


def make_csrs(n: int, say: Any) -> list[dict[str, str]]:
    """``n`` enrolment rows, each with its own key and CSR (the device's work, not ours)."""
    rows = []
    for i in range(n):
        device_id = f"dev-{i:07d}"
        rows.append(
            {
                "id": device_id,
                "kind": "bp_cuff",
                "csr": device_ca.make_csr(device_id, device_ca.new_key()),
            }
        )
        if (i + 1) % 20_000 == 0:
            say(f"{i + 1:,} CSRs made")
    return rows


async def admin_headers(database_url: str) -> dict[str, str]:
    """A bearer token of an admin, minted into the database as POST /api/auth/token would."""
    token = STAFF_TOKEN_PREFIX + secrets.token_urlsafe(32)
    conn = await asyncpg.connect(database_url)
    try:
        await staff_auth.add_staff(
            conn,
            staff_id="bench.admin",
            display_name="Bench admin",
            role="admin",
            password_hash="!",
            phone=None,
        )
        await staff_auth.create_token(
            conn,
            token_hash=token_hash(token),
            staff_id="bench.admin",
            expires_at=datetime.now(UTC) + timedelta(hours=6),
        )
    finally:
        await conn.close()
    return {"Authorization": f"Bearer {token}"}


async def enrol_all(
    base_url: str,
    headers: dict[str, str],
    rows: list[dict[str, str]],
    batch: int,
    cpu: Any,
    say: Any,
) -> list[tuple[float, int, float]]:
    """Post the rows in batches; after each: (seconds since start, devices enrolled, CPU
    seconds of the server and PostgreSQL since start, from ``cpu()``)."""
    marks: list[tuple[float, int, float]] = []
    done = 0
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300) as client:
        start, cpu0 = time.perf_counter(), cpu()
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            r = await client.post("/api/devices/bulk", json={"devices": chunk})
            if r.status_code != 201:
                raise BenchError(f"bulk enrolment answered {r.status_code}: {r.text[:300]}")
            done += len(r.json()["enrolled"])
            marks.append((time.perf_counter() - start, done, cpu() - cpu0))
            if done % 10_000 < batch:
                say(f"{done:,} enrolled")
    return marks


def window(marks: list[tuple[float, int, float]], first: bool) -> tuple[float, float]:
    """(devices per wall second, CPU ms per device) over the first (or last) WINDOW devices,
    from request boundaries."""
    points = [(0.0, 0, 0.0), *marks]
    total = points[-1][1]
    if first:
        a, b = points[0], next(p for p in points if p[1] >= min(WINDOW, total))
    else:
        a, b = next(p for p in reversed(points) if p[1] <= total - min(WINDOW, total)), points[-1]
    devices = b[1] - a[1]
    return devices / (b[0] - a[0]), (b[2] - a[2]) / devices * 1000


async def run(
    services: LocalServices, work: Path, args: argparse.Namespace, say: Any
) -> tuple[str, dict[str, Any]]:
    endpoints = services.start()
    table, result = ("", {}) if args.no_enrol else await enrolment(endpoints, work, args, say)
    gw_table, gw_result = await gateways(endpoints, work, args, say)
    return "\n\n".join(t for t in (table, gw_table) if t), {**result, **gw_result}


async def gateways(
    endpoints: Any, work: Path, args: argparse.Namespace, say: Any
) -> tuple[str, dict[str, Any]]:
    """Throughput with 1, 2 and 3 gateways, then the kill-and-restart run."""
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    stream = active_active.make_stream(end, args.patients, PER_PATIENT)
    runs: list[GatewayRun] = []
    for n in GATEWAYS:
        say(f"{n} gateway(s): draining {stream.distinct:,} readings")
        runs.append(await throughput(endpoints, work, n, stream, args.patients, end))
    say("three gateways, one killed and started again")
    kill = await kill_and_restart(endpoints, work, stream, args.patients, end, say)
    single = runs[0]
    lost = stream.distinct - kill.distinct
    duplicated = kill.rows - kill.distinct
    match = kill.alerts == single.alerts and all(r.alerts == single.alerts for r in runs)
    rows_out: list[tuple[str, str, str]] = [
        (
            f"{r.gateways} gateway{'s' if r.gateways > 1 else ''}",
            f"{fmt_rate(r.per_s)}  {r.seconds:.1f} s",
            f"CPU {r.cpu_us_per_reading:.0f} µs/reading (gateways {r.gateway_cpu_s:.1f} s, "
            f"PostgreSQL {r.postgres_cpu_s:.1f} s); load {r.load[0]:.1f} / {r.load[1]:.1f}",
        )
        for r in runs
    ]
    rows_out += [
        ("kill -9 and restart: lost", f"{lost:,}", ok(lost == 0)),
        ("kill -9 and restart: stored twice", f"{duplicated:,}", ok(duplicated == 0)),
        ("alerts as one gateway's", f"{len(kill.alerts)} episodes", ok(match)),
        ("kill run load before / after", f"{kill.load[0]:.1f} / {kill.load[1]:.1f}", ""),
    ]
    table = tables(
        {f"Gateways on one shared subscription, {stream.distinct:,} readings": rows_out},
        [
            f"{args.patients} hypertension patients, {PER_PATIENT} blood pressures each, "
            f"{len(stream.messages) - stream.distinct:,} device retransmits; "
            f"{os.cpu_count()} CPUs shared by every gateway, PostgreSQL and the broker."
        ],
    )
    result = {
        "gateways": list(GATEWAYS),
        "readings": stream.distinct,
        "readings_per_s_by_gateways": {str(r.gateways): round(r.per_s, 1) for r in runs},
        "cpu_us_per_reading_by_gateways": {
            str(r.gateways): round(r.cpu_us_per_reading, 1) for r in runs
        },
        "lost": lost,
        "duplicated": duplicated,
        "alerts_match_single_gateway": match,
        "alert_episodes": len(single.alerts),
        "gateways_loadavg_1m": {str(r.gateways): round(r.load[0], 2) for r in runs},
    }
    return table, result


async def enrolment(
    endpoints: Any, work: Path, args: argparse.Namespace, say: Any
) -> tuple[str, dict[str, Any]]:
    """Bulk enrolment by certificate through the API (item 1)."""
    root = Path(endpoints.root)
    rows = await asyncio.to_thread(make_csrs, args.devices, say)
    port = free_port()
    env = server_env(
        endpoints,
        "rpm-bench-scale-out",
        RPM_API_PORT=str(port),
        RPM_MQTT_DEVICE_CA_DIR=str(root / "device-ca"),
        RPM_MQTT_BROKER_PID_FILE=str(root / "mqtt" / "mosquitto.pid"),
        # This checkout's server, whatever the virtualenv has installed.
        PYTHONPATH=str(ROOT),
    )
    server = RpmServe(env, work / "serve.log", f"http://127.0.0.1:{port}")
    await server.start()
    try:
        headers = await admin_headers(endpoints.database_url)
        pg_pid = pid_from_file(root / "pg" / "postmaster.pid")
        assert server.pid is not None
        # The server with its signing processes (rpm/api/signer.py), and PostgreSQL's.
        server_pids = [server.pid, *children_of(server.pid)]
        backends = [pg_pid, *children_of(pg_pid)] if pg_pid else []
        cpu_before = cpu_seconds(server_pids), cpu_seconds(backends)

        def cpu() -> float:
            return cpu_seconds(server_pids) + cpu_seconds(backends)

        load_before = os.getloadavg()
        t0 = time.perf_counter()
        marks = await enrol_all(server.base_url, headers, rows, args.batch, cpu, say)
        wall = time.perf_counter() - t0
        cpu_server = cpu_seconds(server_pids) - cpu_before[0]
        cpu_pg = cpu_seconds(backends) - cpu_before[1]
        load_after = os.getloadavg()
    finally:
        server.stop()
    total = marks[-1][1]
    (first, cpu_first), (last, cpu_last) = window(marks, True), window(marks, False)
    ratio = last / first
    cpu_ratio = cpu_first / cpu_last  # > 1: the last devices cost less CPU than the first
    rate = total / wall
    rows_out = [
        ("devices enrolled", f"{total:,}", ok(total >= args.devices)),
        ("enrolments / s (whole run)", fmt_rate(rate), ok(rate >= 1000)),
        (f"first {WINDOW:,} devices / s", fmt_rate(first), ""),
        (f"last {WINDOW:,} devices / s", fmt_rate(last), ""),
        ("last / first (wall-clock rates)", f"{ratio:.2f}", ok(ratio >= 0.8)),
        (f"CPU ms per device, first / last {WINDOW:,}", f"{cpu_first:.2f} / {cpu_last:.2f}", ""),
        ("last / first (CPU per device, inverted)", f"{cpu_ratio:.2f}", ok(cpu_ratio >= 0.8)),
        ("server CPU s per 1,000 devices", f"{cpu_server / total * 1000:.2f}", ""),
        ("PostgreSQL CPU s per 1,000 devices", f"{cpu_pg / total * 1000:.2f}", ""),
        ("load average 1 min, before / after", f"{load_before[0]:.2f} / {load_after[0]:.2f}", ""),
    ]
    table = tables(
        {f"Bulk enrolment by certificate, {args.batch} devices a request": rows_out},
        [
            f"{os.cpu_count()} CPUs; the broker holds no per-device state "
            "(certificate listener, pattern ACL).",
        ],
    )
    result = {
        "devices": total,
        "enroll_per_s": round(rate, 1),
        "enroll_first_per_s": round(first, 1),
        "enroll_last_per_s": round(last, 1),
        "enroll_last_vs_first": round(ratio, 3),
        "enroll_cpu_ms_first": round(cpu_first, 3),
        "enroll_cpu_ms_last": round(cpu_last, 3),
        "enroll_cpu_last_vs_first": round(cpu_ratio, 3),
        "batch": args.batch,
        "server_cpu_s": round(cpu_server, 1),
        "postgres_cpu_s": round(cpu_pg, 1),
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(load_after[0], 2),
    }
    return table, result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=500, help="devices per request (at most 1,000)")
    p.add_argument("--quick", action="store_true", help="10,000 devices")
    p.add_argument("--patients", type=int, default=1000, help=f"{PER_PATIENT} readings each")
    p.add_argument("--no-enrol", action="store_true", help="the gateway figures alone")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args()
    if args.quick:
        args.devices = 10_000
        args.patients = 500
    if not 0 < args.batch <= 1000 or args.devices < 2 * WINDOW:
        p.error(f"--batch is 1..1000 and --devices at least {2 * WINDOW}")
    say = progress("scale_out")
    return run_with_services(
        "rpm-scale-out-",
        lambda services, work: asyncio.run(run(services, work, args, say)),
        keep=args.keep,
        device_cert_port=free_port(),
    )


if __name__ == "__main__":
    sys.exit(main())
