"""A patient's stored readings (``GET /api/patients/{id}/readings``), newest first, and a
staff correction (``POST /api/readings/{uid}/entered-in-error``, docs/fhir.md#corrections)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Security
from pydantic import BaseModel, Field

from rpm.domain import Metric
from rpm.domain.errors import NotFoundError
from rpm.storage import corrections as correction_store
from rpm.storage import readings as reading_store
from rpm.storage import staff as staff_store

from .access import REQUIRE, CanCorrectReadings, CanEnrol, CanReadPatientData, Permission, audit
from .deps import PipelineDep, PoolDep
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
    status: str  # final, or entered-in-error (FHIR R4 ObservationStatus)
    entered_in_error_at: datetime | None = None


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
            "status": "final" if s.entered_in_error_at is None else "entered-in-error",
            "entered_in_error_at": s.entered_in_error_at,
        }
        for s in rows
    ]


class CorrectionIn(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=500, pattern=r"\S")]


class CorrectionOut(BaseModel):
    uid: UUID
    status: str  # entered-in-error
    entered_in_error_at: datetime
    by: str  # who marked it first (staff:<id>, integration:<id>, device:<id>)
    reason: str
    already: bool  # marked before this request (a retry, or someone else first)


@router.post(
    "/api/readings/{uid}/entered-in-error",
    response_model=CorrectionOut,
    responses={404: {"description": "no such reading (or another team's patient)"}},
)
async def mark_entered_in_error(
    request: Request,
    who: CanCorrectReadings,
    pool: PoolDep,
    pipeline: PipelineDep,
    uid: UUID,
    body: CorrectionIn,
) -> CorrectionOut:
    """Mark a stored reading entered-in-error (never deleted): its alerts are withdrawn or
    annotated, the EHR updated, /fhir shows the status. Repeating it changes nothing."""
    async with pool.acquire() as conn:
        row = await correction_store.for_reading(conn, str(uid))
        teams = await staff_store.patient_teams(conn, [row["patient_id"]]) if row else {}
    if row is None or not who.sees(teams.get(row["patient_id"])):
        audit(request, who, "update", "reading", resource_id=str(uid))
        raise NotFoundError("no such reading")
    patient_id = row["patient_id"]
    audit(request, who, "update", "reading", [patient_id], str(uid))
    already = row["corrected_at"] is not None
    if not already:
        recorded = await pipeline.retract(
            [
                correction_store.Correction(
                    device_id=row["device_id"],
                    metric=row["metric"],
                    measured_at=row["measured_at"],
                    patient_id=patient_id,
                    sent_status="entered-in-error",
                    source="staff",
                    actor=who.actor,
                    reason=body.reason.strip(),
                )
            ]
        )
        already = recorded.outcomes != ["marked"]  # someone else was first, just now
        async with pool.acquire() as conn:
            row = await correction_store.for_reading(conn, str(uid))
    assert row is not None
    assert row["corrected_at"] is not None
    return CorrectionOut(
        uid=uid,
        status="entered-in-error",
        entered_in_error_at=row["corrected_at"],
        by=row["actor"],
        reason=row["reason"],
        already=already,
    )


class CorrectionRow(BaseModel):
    uid: UUID
    patient_id: str
    device_id: str
    metric: str
    measured_at: datetime
    sent_status: str  # entered-in-error or cancelled, as the source sent it
    source: str  # vendor or staff
    actor: str
    reason: str
    corrected_at: datetime
    reading_stored: bool  # False: a retraction that came before its reading, kept


@router.get(
    "/api/readings/corrections",
    response_model=list[CorrectionRow],
    dependencies=[Security(REQUIRE[Permission.ENROLMENT])],
)
async def corrections(
    request: Request,
    who: CanEnrol,
    pool: PoolDep,
    pending: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Readings marked entered-in-error, newest first; ``pending=true``: retractions whose
    reading has not arrived (kept, never dropped)."""
    async with pool.acquire() as conn:
        rows = await correction_store.listing(conn, pending=pending, limit=limit)
    audit(request, who, "search", "reading-corrections", (str(r["patient_id"]) for r in rows))
    return rows
