"""The nurse's inbox: patient SMS replies a person must read (docs/checkins.md).

An item is a check-in reply nobody could read as an answer, or free text a patient sent with
no check-in waiting. Nurses see their care teams' patients' items only (another team's item
is 404); reading the inbox and handling an item are audited. The body is patient data:
returned to staff, never logged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from rpm.domain.errors import NotFoundError
from rpm.storage import checkins as checkin_store

from .access import CanActOnAlerts, CanReadPatientData, audit
from .deps import ClockDep, PoolDep

ItemId = Annotated[int, Path(ge=1, le=2**53)]
_HANDLED = {"open": False, "handled": True, "all": None}


class MediaOut(BaseModel):
    url: str = Field(description="Twilio's link; fetching it needs the account's credentials")
    content_type: str


class InboxItemOut(BaseModel):
    id: int
    patient_id: str
    received_at: datetime
    body: str
    media: list[MediaOut] = Field(description="photos and other media sent with it")
    reason: str
    questionnaire: str | None  # the check-in the reply was to, when there was one
    question: str | None
    handled_at: datetime | None
    handled_by: str | None
    note: str | None


class HandledIn(BaseModel):
    note: str | None = Field(default=None, max_length=2000)


router = APIRouter(prefix="/api/inbox", tags=["inbox"])


def _out(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "patient_id": row["patient_id"],
        "received_at": row["created_at"],
        "body": row["body"],
        "media": row["media"] or [],
        "reason": row["reason"],
        "questionnaire": row["questionnaire"],
        "question": row["link_id"],
        "handled_at": row["handled_at"],
        "handled_by": row["handled_by"],
        "note": row["note"],
    }


@router.get("", response_model=list[InboxItemOut])
async def list_inbox(
    request: Request,
    who: CanReadPatientData,
    pool: PoolDep,
    state: Literal["open", "handled", "all"] = "open",
    patient: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """Items waiting (oldest first), handled or all (newest first)."""
    async with pool.acquire() as conn:
        rows = await checkin_store.inbox(
            conn,
            care_teams=sorted(who.teams) if who.teams is not None else None,
            handled=_HANDLED[state],
            patient_id=patient,
            limit=limit,
        )
    audit(request, who, "search", "inbox", (r["patient_id"] for r in rows))
    return [_out(r) for r in rows]


@router.post("/{item_id}/handled", response_model=InboxItemOut)
async def handled(
    request: Request,
    who: CanActOnAlerts,
    pool: PoolDep,
    clock: ClockDep,
    item_id: ItemId,
    body: HandledIn,
) -> dict[str, Any]:
    """Mark an item handled (409 when someone already did), with an optional note."""
    async with pool.acquire() as conn, conn.transaction():
        item = await checkin_store.inbox_item(conn, item_id)
        if item is None or not who.sees(item["care_team"]):
            audit(request, who, "handled", "inbox", resource_id=str(item_id))
            raise NotFoundError("no such inbox item")
        audit(request, who, "handled", "inbox", [item["patient_id"]], str(item_id))
        note = body.note.strip() if body.note and body.note.strip() else None
        done = await checkin_store.mark_handled(conn, item_id, who.actor, note, clock())
    return _out(done)
