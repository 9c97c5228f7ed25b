"""What access control costs per API request: finding the principal of a bearer credential,
and writing the audit row, next to a whole ``GET /api/alerts`` answered in-process.

    uv run python benchmarks/access.py            # 2,000 requests per figure
    uv run python benchmarks/access.py --quick    # 300

LocalServices' PostgreSQL on loopback in a temporary directory (removed at the end). The app
is the alerts router with the real ``Auth`` and audit middleware (``rpm/api/guard.py``),
called through httpx's ASGI transport: no sockets, so the figures are the server's work.
Requests run one after another (latency, not throughput). The last line is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from _common import BenchError, fmt_ms, percentile, render_table, run_with_services
from fastapi import FastAPI

from alerts.policy import SnoozeCaps
from rpm.api import alerts as alerts_api
from rpm.api import errors
from rpm.api.access import bearer_principal
from rpm.api.guard import Guard
from rpm.api.live import Broadcaster
from rpm.auth import STAFF_TOKEN_PREFIX, Auth, AuthConfig, token_hash
from rpm.settings import ApiSettings
from rpm.storage import audit as audit_store
from rpm.storage import staff as staff_store
from rpm.storage import staff_auth
from rpm.storage.migrate import migrate
from rpm.storage.pool import connect, create_pool
from simulators.localservices import LocalServices


async def timed(n: int, work: Callable[[], Awaitable[Any]]) -> list[float]:
    """Milliseconds of each of ``n`` sequential runs of ``work``, ascending."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await work()
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)


async def run(n: int, dsn: str) -> tuple[str, dict[str, Any]]:
    conn = await connect(dsn)
    try:
        await migrate(conn)
        await staff_auth.add_staff(
            conn,
            staff_id="bench.nurse",
            display_name="B",
            role="nurse",
            password_hash="!",
            phone=None,
        )
        await staff_store.create_team(conn, "bench", "Bench")
        await staff_store.add_member(conn, "bench", "bench.nurse")
        token = STAFF_TOKEN_PREFIX + secrets.token_urlsafe(32)
        await staff_auth.create_token(
            conn,
            token_hash=token_hash(token),
            staff_id="bench.nurse",
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
    finally:
        await conn.close()
    pool = await create_pool(dsn, size=4)
    try:
        app = FastAPI()
        app.state.auth = auth = Auth(pool, AuthConfig.from_settings(ApiSettings()))
        app.add_middleware(Guard, pool=pool, hsts=False)
        errors.install(app)
        app.state.pool = pool
        app.state.broadcaster = Broadcaster(dsn, ())
        app.state.snooze_caps = SnoozeCaps()
        app.include_router(alerts_api.router)
        entry = audit_store.AuditEntry(
            "staff:bench.nurse",
            "nurse",
            "read",
            "alert",
            "1",
            "GET /x",
            ("p1",),
            "127.0.0.1",
            "b",
            200,
        )

        async def insert_audit() -> None:
            async with pool.acquire() as c:
                await audit_store.append(c, [entry])

        async def select_one() -> None:
            async with pool.acquire() as c:
                await c.fetchval("SELECT 1")

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://bench",
            headers={"Authorization": f"Bearer {token}"},
        ) as http:

            async def request() -> None:
                r = await http.get("/api/alerts", params={"limit": 1})
                if r.status_code != 200:
                    raise BenchError(f"GET /api/alerts answered {r.status_code}")

            await timed(50, request)  # warm up the pool and the code paths
            roundtrip = await timed(n, select_one)
            principal = await timed(n, lambda: bearer_principal(auth, token))
            audit = await timed(n, insert_audit)
            whole = await timed(n, request)
    finally:
        await pool.close()

    def p(ms: Sequence[float], q: float) -> float:
        return round(percentile(ms, q), 3)

    share = (p(principal, 50) + p(audit, 50)) / p(whole, 50)
    rows = [
        ("SELECT 1 round trip", fmt_ms(p(roundtrip, 50)), f"p95 {fmt_ms(p(roundtrip, 95))}"),
        ("principal of a token", fmt_ms(p(principal, 50)), f"p95 {fmt_ms(p(principal, 95))}"),
        ("audit row insert", fmt_ms(p(audit, 50)), f"p95 {fmt_ms(p(audit, 95))}"),
        ("GET /api/alerts (nurse)", fmt_ms(p(whole, 50)), f"p95 {fmt_ms(p(whole, 95))}"),
        ("access share of it", f"{share:.0%}", "(principal + audit p50) / request p50"),
    ]
    table = render_table(f"Access control, p50 of {n} sequential runs each", rows)
    result = {
        "requests": n,
        "select1_p50_ms": p(roundtrip, 50),
        "principal_p50_ms": p(principal, 50),
        "principal_p95_ms": p(principal, 95),
        "audit_insert_p50_ms": p(audit, 50),
        "audit_insert_p95_ms": p(audit, 95),
        "request_p50_ms": p(whole, 50),
        "request_p95_ms": p(whole, 95),
        "access_share_p50": round(share, 3),
    }
    return table, result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=None, help="per figure (2,000)")
    parser.add_argument("--quick", action="store_true", help="300 per figure")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    n = args.requests or (300 if args.quick else 2000)

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        return asyncio.run(run(n, services.start().database_url))

    return run_with_services("rpm-bench-access-", body)


if __name__ == "__main__":
    sys.exit(main())
