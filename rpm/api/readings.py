"""A patient's stored readings (``GET /api/patients/{id}/readings``), newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel

from rpm.domain import Metric
from rpm.domain.errors import NotFoundError
from rpm.storage import readings as reading_store
from rpm.storage import staff as staff_store

from .access import CanReadPatientData, audit
from .deps import PoolDep
from .registry import PATIENT_ID

router = APIRouter()


class ReadingOut(BaseModel):
    uid: UUID
    device_id: str
    metric: str
    values: dict[str, float]
    measured_at: datetime
    received_at: datetime
    stored_at: datetime


@router.get("/api/patients/{patient_id}/readings", response_model=list[ReadingOut])
async def patient_readings(
    request: Request,
    who: CanReadPatientData,
    pool: PoolDep,
    patient_id: Annotated[str, Path(pattern=PATIENT_ID)],
    metric: Annotated[list[Metric] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        teams = await staff_store.patient_teams(conn, [patient_id])
        if patient_id not in teams or not who.sees(teams[patient_id]):
            # Another team's patient looks like no patient: its existence does not leak.
            audit(request, who, "read", "readings", resource_id=patient_id)
            raise NotFoundError("no such patient")
        rows = await reading_store.for_patient(conn, patient_id, metrics=metric, limit=limit)
    audit(request, who, "read", "readings", [patient_id], patient_id)
    return [
        {
            "uid": s.accepted.reading.uid,
            "device_id": s.accepted.reading.device_id,
            "metric": s.accepted.reading.metric.value,
            "values": dict(s.accepted.reading.values),
            "measured_at": s.accepted.reading.measured_at,
            "received_at": s.accepted.reading.received_at,
            "stored_at": s.stored_at,
        }
        for s in rows
    ]
