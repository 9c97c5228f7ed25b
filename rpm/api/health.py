"""Operations endpoints: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics``.

They carry no patient data and need no sign-in, so a load balancer, an orchestrator and
Prometheus can call them; the deployer keeps them off the public network (README,
Operations).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from rpm.metrics import CONTENT_TYPE_LATEST, Metrics
from rpm.storage import migrate
from rpm.storage import outbox as outbox_store

from .deps import PoolDep, held

OK = "ok"
# Checks that make the server degraded, not unready: it still ingests, alerts and serves the
# dashboard, so a load balancer must keep sending it traffic (200), but an operator must act.
DEGRADING = frozenset({"twilio"})


@dataclass(frozen=True, slots=True)
class Operations:
    """What the operations endpoints look at besides the pool."""

    metrics: Metrics = field(default_factory=Metrics)
    # None: no MQTT gateway runs in this process, so readiness does not wait for a broker.
    broker_connected: Callable[[], bool] | None = None
    check_timeout_s: float = 2.0


async def readiness(pool: asyncpg.Pool, ops: Operations) -> dict[str, str]:
    """Each check's verdict: ``ok`` or what is wrong (no exception text, no data)."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(ops.check_timeout_s), pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            checks["database"] = OK
            pending = await migrate.pending(conn)
            checks["migrations"] = f"pending: {', '.join(pending)}" if pending else OK
            held = await outbox_store.held(conn)
            checks["twilio"] = (
                f"credentials refused: {sum(held.values())} messages and calls held" if held else OK
            )
    except TimeoutError:
        checks.setdefault("database", f"no answer within {ops.check_timeout_s:g} s")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        checks.setdefault("database", f"unavailable ({exc.__class__.__name__})")
    checks.setdefault("migrations", "unknown (database unavailable)")
    checks.setdefault("twilio", "unknown (database unavailable)")
    if ops.broker_connected is not None:
        checks["broker"] = OK if ops.broker_connected() else "not connected"
    return checks


async def operations(request: Request) -> Operations:
    return held(request, "operations")  # type: ignore[no-any-return]


OperationsDep = Annotated[Operations, Depends(operations)]
router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process and its event loop answer. Does not touch the database."""
    return {"status": OK}


@router.get("/readyz", responses={503: {"description": "Some check failed; the body says which"}})
async def readyz(pool: PoolDep, ops: OperationsDep) -> JSONResponse:
    """Readiness: the database answers, migrations are applied, the broker is connected
    (else 503, not ready); Twilio accepts the credentials (else 200, degraded)."""
    checks = await readiness(pool, ops)
    failing = {k for k, v in checks.items() if v != OK}
    status = "ready" if not failing else "degraded" if failing <= DEGRADING else "not ready"
    body: dict[str, Any] = {"status": status, "checks": checks}
    return JSONResponse(body, status_code=503 if status == "not ready" else 200)


@router.get("/metrics", response_class=Response)
async def metrics(ops: OperationsDep) -> Response:
    """Prometheus text exposition format."""
    return Response(await ops.metrics.render(), media_type=CONTENT_TYPE_LATEST)
