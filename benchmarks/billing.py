"""Billing benchmark: the month-end report of June 2026 over a population with two months of
days with readings and a month of time entries, and the patient panel of one care team of
10,000.

    uv run python benchmarks/billing.py            # 100,000 patients (a few minutes)
    uv run python benchmarks/billing.py --quick    # 10,000 patients (under a minute)

Everything runs on loopback in a temporary directory, removed at the end: LocalServices'
PostgreSQL (TimescaleDB when installed). The clock is pinned to 1 July 2026, 06:00 UTC (the
morning after the month ends); nothing reads the wall clock but the timings.

1. Population, not timed (``_billing_data``: set-based SQL, no row through Python).
2. ``report_s``: the whole month-end report as CSV, every patient, through the API's own
   route (``GET /api/billing/report.csv``, in-process over ASGI, as an admin: the audit row
   with every patient's id included): the statement of ``rpm.storage.billing``, the rules of
   ``rpm.billing.evaluate`` per patient, the CSV. Median of ``--repeat`` runs. Beside it, the
   statement alone (``sql_s``), and the JSON report's first page of 100 (``page_ms``).
3. ``team_report_s``: the CSV of the panel's team (``PANEL`` patients), as a nurse of it.
4. ``panel_p99_ms``: the patient panel's server time at that team: ``GET /api/panel`` (the
   statement the dashboard page renders) in-process over ASGI as a nurse of the team, every
   sort in both directions, every flag and a deep page (``_panel_timing.cases``), at least
   10 requests each, one at a time, with the clock at 30 June 18:00 UTC (the month's time
   entries count); the worst case's p99.

The last line of output is one JSON object; the table before it explains it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keep this folder behind the project on sys.path (benchmarks/rules.py is named like the
# ``rules`` package), and this checkout's project first, as the other benchmarks do.
sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import secrets
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import _billing_data as data
import httpx
from _common import run_with_services
from _panel_timing import panel_p99_ms as panel_timing_of
from _report import ok, progress, revision, tables
from _server import postgres_info, stop_on_sigterm
from fastapi import FastAPI

from rpm.api import billing, errors, panel
from rpm.api.guard import Guard
from rpm.auth import STAFF_TOKEN_PREFIX, Auth, AuthConfig, token_hash
from rpm.billing.periods import month_of
from rpm.settings import ApiSettings
from rpm.storage import billing as store
from rpm.storage import staff as staff_store
from rpm.storage import staff_auth
from rpm.storage.migrate import migrate
from rpm.storage.pool import connect, create_pool
from simulators.localservices import LocalServices

NOW = datetime(2026, 7, 1, 6, tzinfo=UTC)
PANEL_NOW = datetime(2026, 6, 30, 18, tzinfo=UTC)  # the panel: the month's last afternoon
MONTH = "2026-06"
REPORT_TARGET_S = 10.0
PANEL_TARGET_MS = 500.0


async def _token(pool: Any, staff_id: str, role: str, teams: Sequence[str] = ()) -> str:
    """A bearer token minted into the database, as ``POST /api/auth/token`` would."""
    token = STAFF_TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with pool.acquire() as conn:
        await staff_auth.add_staff(
            conn,
            staff_id=staff_id,
            display_name=staff_id,
            role=role,
            password_hash="!",
            phone=None,
        )
        for team in teams:
            await staff_store.add_member(conn, team, staff_id)
        await staff_auth.create_token(
            conn,
            token_hash=token_hash(token),
            staff_id=staff_id,
            expires_at=NOW + timedelta(days=3650),
        )
    return token


def _app(pool: Any) -> FastAPI:
    """The billing routes as the server mounts them: auth, the audit middleware, errors."""
    app = FastAPI()
    app.state.pool = pool
    app.state.auth = Auth(pool, AuthConfig.from_settings(ApiSettings()))
    app.state.started_at = NOW
    app.state.clock = lambda: NOW
    app.add_middleware(Guard, pool=pool, hsts=False)
    errors.install(app)
    app.include_router(billing.router)
    return app


async def _timed(
    client: httpx.AsyncClient, url: str, token: str, **params: Any
) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    resp = await client.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
    elapsed = time.perf_counter() - t0
    resp.raise_for_status()
    return elapsed, resp


async def panel_timing(pool: Any, token: str, team: str, repeat: int) -> dict[str, Any]:
    """The patient panel's API (``GET /api/panel``) at ``team``, every sort and filter of
    ``_panel_timing.cases``, ``repeat`` requests each, as a nurse of the team, on the last
    afternoon of the month (the month's time entries and the current device periods count)."""
    app = FastAPI()
    app.state.pool = pool
    app.state.auth = Auth(pool, AuthConfig.from_settings(ApiSettings()))
    app.state.clock = lambda: PANEL_NOW
    app.state.panel_thresholds = None  # the billing code table in force, as the server does
    app.add_middleware(Guard, pool=pool, hsts=False)
    errors.install(app)
    app.include_router(panel.router)
    return await panel_timing_of(
        "http://rpm.bench",
        {"Authorization": f"Bearer {token}"},
        team=team,
        repeat=repeat,
        transport=httpx.ASGITransport(app=app),
    )


async def run(args: argparse.Namespace, dsn: str) -> tuple[str, dict[str, Any]]:
    say = progress("billing", args.quiet)
    measured = revision("rpm")
    conn = await connect(dsn)
    try:
        await migrate(conn)
        info = await postgres_info(conn)
        say(f"building {args.patients:,} patients ...")
        t0 = time.perf_counter()
        rows = await data.build(conn, args.patients, say=lambda line: say(f"  {line}"))
        build_s = time.perf_counter() - t0
    finally:
        await conn.close()
    pool = await create_pool(dsn, size=4)
    try:
        admin = await _token(pool, "bench.admin", "admin")
        team_size = min(data.PANEL, args.patients)
        nurse = await _token(pool, "bench.panel", "nurse", ["panel"])
        async with pool.acquire() as c:  # the default code table, stored on first use
            await store.table_versions(c)
        app = _app(pool)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://rpm.bench", timeout=300
        ) as client:
            say("the month-end report as CSV ...")
            runs: list[float] = []
            body = ""
            for _ in range(args.repeat):
                elapsed, resp = await _timed(client, "/api/billing/report.csv", admin, month=MONTH)
                runs.append(elapsed)
                body = resp.text
                say(f"  {elapsed:.2f} s")
            csv_rows = body.count("\n") - 1
            sql: list[float] = []
            for _ in range(args.repeat):
                async with pool.acquire() as c:
                    t0 = time.perf_counter()
                    await c.fetch(
                        store.REPORT_SQL,
                        month_of(MONTH).start,
                        month_of(MONTH).end,
                        None,
                        None,
                        None,
                        2,
                        ["interactive_phone", "interactive_video"],
                        NOW,
                    )
                    sql.append(time.perf_counter() - t0)
            pages = [
                (await _timed(client, "/api/billing/report", admin, month=MONTH, limit=100))[0]
                for _ in range(args.repeat)
            ]
            say("the panel team's report ...")
            team_runs = [
                (await _timed(client, "/api/billing/report.csv", nurse, month=MONTH))[0]
                for _ in range(args.repeat)
            ]
        codes: dict[str, int] = {}
        for line in body.splitlines()[1:]:
            for code in line.split(",")[11].split():
                name = code.split("x")[0]
                codes[name] = codes.get(name, 0) + (int(code.split("x")[1]) if "x" in code else 1)
        say(f"the patient panel of the team of {team_size:,} ...")
        timed = await panel_timing(pool, nurse, "panel", max(10, args.repeat))
        panel = float(timed["panel_p99_ms"])
    finally:
        await pool.close()
    report_s = statistics.median(runs)
    result: dict[str, Any] = {
        "patients": args.patients,
        "report_s": round(report_s, 3),
        "panel_p99_ms": round(panel, 1),
        "panel_p50_ms": timed["panel_p50_ms"],
        "panel_requests": timed["requests"],
        "sql_s": round(statistics.median(sql), 3),
        "page_ms": round(1000 * statistics.median(pages), 1),
        "team_patients": team_size,
        "team_report_s": round(statistics.median(team_runs), 3),
        "csv_rows": csv_rows,
        "codes": dict(sorted(codes.items())),
        "rows": rows,
        "build_s": round(build_s, 1),
        "postgres": info,
        "revision": measured,
    }
    table = tables(
        {
            f"Month-end billing report, {MONTH} ({args.patients:,} patients)": [
                (
                    "population",
                    f"{rows['patient_days']:,} days with readings, "
                    f"{rows['time_entries']:,} time entries",
                    f"built in {build_s:.0f} s",
                ),
                (
                    "report_s: whole report as CSV via the API",
                    f"{report_s:.2f} s (median of {args.repeat})",
                    f"{ok(report_s <= REPORT_TARGET_S)} (target <= {REPORT_TARGET_S:g} s)",
                ),
                ("sql_s: the statement alone", f"{statistics.median(sql):.2f} s", ""),
                (
                    "page_ms: JSON, first 100 with evidence",
                    f"{1000 * statistics.median(pages):,.0f} ms",
                    "",
                ),
                (
                    f"team_report_s: CSV of one team ({team_size:,})",
                    f"{statistics.median(team_runs):.2f} s",
                    "",
                ),
                (
                    "panel_p99_ms: the panel at that team, worst case's p99",
                    f"{panel:,.0f} ms ({timed['requests']} requests)",
                    ok(panel <= PANEL_TARGET_MS) + " (target <= 500 ms)",
                ),
                (
                    "codes earned",
                    ", ".join(f"{c} {n:,}" for c, n in sorted(codes.items())),
                    f"{csv_rows:,} rows",
                ),
            ]
        },
        [f"PostgreSQL {info['postgres']}, TimescaleDB {info['timescaledb']}; revision {measured}"],
    )
    return table, result


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--patients", type=int, default=None, help="population (100,000)")
    p.add_argument("--quick", action="store_true", help="10,000 patients")
    p.add_argument("--repeat", type=int, default=3, help="runs of each timing (median of 3)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    args.patients = args.patients or (10_000 if args.quick else 100_000)
    if not 100 <= args.patients <= 999_999:
        p.error("--patients: 100 to 999,999")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    stop_on_sigterm()

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        endpoints = services.start()
        return asyncio.run(run(args, endpoints.database_url))

    return run_with_services("rpm-bench-billing-", body, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
