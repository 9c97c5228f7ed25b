"""The EHR push's failures (``/api/fhir/push/...``): what the EHR refused, what failed after
all its attempts, the backlog, and sending them again."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from rpm.storage import fhir as fhir_store
from rpm.storage import outbox as outbox_store

from .access import CanManageFhirPush, audit
from .deps import PoolDep

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/fhir/push", tags=["fhir push"])

# bigserial ids; 2^53 keeps clarity for JSON numbers read as doubles (RFC 8259, section 6).
_RowId = Annotated[int, Field(ge=1, le=2**53)]


class RequeueIn(BaseModel):
    refusal_ids: list[_RowId] = Field(default_factory=list, max_length=10_000)
    outbox_ids: list[_RowId] = Field(default_factory=list, max_length=10_000)
    actor: str | None = Field(default=None, min_length=1, max_length=200)  # ignored


@router.get("/failures")
async def push_failures(
    request: Request,
    who: CanManageFhirPush,
    pool: PoolDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    include_requeued: bool = False,
) -> dict[str, Any]:
    """What the EHR refused (per Observation, with its OperationOutcome), the push work
    that failed after all its attempts, and the backlog not yet delivered."""
    async with pool.acquire() as conn:
        refused = await fhir_store.refusals(conn, include_requeued=include_requeued, limit=limit)
        found = {
            "refused": refused,
            "failed": await fhir_store.failed_items(
                conn, include_requeued=include_requeued, limit=limit
            ),
            "backlog": await fhir_store.backlog(conn),
        }
    patients = (r["patient_id"] for r in refused if r.get("patient_id"))
    audit(request, who, "search", "fhir-push-failures", patients)
    return found


@router.post("/requeue")
async def push_requeue(who: CanManageFhirPush, pool: PoolDep, body: RequeueIn) -> dict[str, Any]:
    """Send refused Observations and failed push work again (after fixing the cause)."""
    async with pool.acquire() as conn, conn.transaction():
        keys = await fhir_store.requeue_refusals(conn, body.refusal_ids, who.actor)
        keys += await fhir_store.requeue_failed(conn, body.outbox_ids, who.actor)
        readings = sorted(set(keys))
        if readings:
            await outbox_store.enqueue(
                conn,
                [
                    (
                        fhir_store.CHANNEL,
                        f"fhir:requeue:{uuid.uuid4()}",
                        {"readings": [list(k) for k in readings], "requeued_by": who.actor},
                    )
                ],
            )
    log.info("fhir push: %d readings requeued by %s", len(readings), who.actor)
    return {"requeued_readings": len(readings)}
