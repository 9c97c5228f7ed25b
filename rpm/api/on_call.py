"""On-call rotas: a care team's shifts, listed, added and removed (docs/alerts.md#on-call-rotas).

Escalation pages the tier-1, then the tier-2 member on call for the patient's team
(``alerts/escalation.py`` reads ``on_call``). Nurses read their own teams' rotas (another
team is 404, like one that does not exist); admins read every team's and change them. Every
answer is audited (resource ``on-call``, the team as its id). Refusals are errors of the
tree: a shift that overlaps the tier's cover 409, one that ends before it starts or names
someone outside the team 422.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from rpm.api.fields import Instant
from rpm.auth import STAFF_ID
from rpm.domain.errors import InvalidRequestError, NotFoundError
from rpm.storage import staff as staff_store
from rpm.storage.pool import Conn
from rpm.storage.staff import Shift

from .access import CanManageOnCall, CanReadOnCall, Principal, audit
from .deps import ClockDep, PoolDep

router = APIRouter(prefix="/api/teams/{team_id}/on-call", tags=["on-call"])

DEFAULT_WINDOW = timedelta(days=14)
MAX_WINDOW = timedelta(days=92)  # a quarter: enough for a rota, bounded for the answer
TeamId = Annotated[str, Path(max_length=64)]
ShiftId = Annotated[int, Path(ge=1, le=2**53)]


class ShiftIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    staff_id: Annotated[str, Field(pattern=STAFF_ID, description="an active team member")]
    tier: Literal[1, 2]
    start: Instant
    end: Instant = Field(description="after start; the shift is [start, end)")


class ShiftOut(BaseModel):
    id: int
    team: str
    tier: int
    staff_id: str
    start: datetime
    end: datetime
    reachable: bool = Field(description="active and with a phone: escalation can page them")
    created_by: str | None


class RotaOut(BaseModel):
    team: str
    start: datetime
    end: datetime
    now: datetime
    on_call_now: dict[str, str | None] = Field(description="tier ('1', '2') -> staff id")
    shifts: list[ShiftOut]


def shift_out(s: Shift) -> dict[str, Any]:
    return {
        "id": s.id,
        "team": s.team_id,
        "tier": s.tier,
        "staff_id": s.staff_id,
        "start": s.start,
        "end": s.end,
        "reachable": s.reachable,
        "created_by": s.created_by,
    }


def on_call_now(shifts: list[Shift], now: datetime) -> dict[str, str | None]:
    """Who holds each tier at ``now`` (None: nobody; the exclusion constraint allows one)."""
    found: dict[str, str | None] = {"1": None, "2": None}
    for s in shifts:
        if s.start <= now < s.end:
            found[str(s.tier)] = s.staff_id
    return found


async def _team(
    request: Request, who: Principal, conn: Conn, team_id: str, action: str, rid: str = ""
) -> None:
    """404 for a team that does not exist or that a nurse is not in (audited either way)."""
    audit(request, who, action, "on-call", resource_id=team_id + rid)
    if not who.sees(team_id) or not await staff_store.team_exists(conn, team_id):
        raise NotFoundError("no such team")


@router.get("", response_model=RotaOut)
async def rota(
    request: Request,
    who: CanReadOnCall,
    pool: PoolDep,
    clock: ClockDep,
    team_id: TeamId,
    start: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to")] = None,
) -> dict[str, Any]:
    """The team's shifts overlapping ``[from, to)`` (default: now and the next 14 days; at
    most 92 days), and who is on call now per tier."""
    now = clock()
    start = start or now
    end = end or start + DEFAULT_WINDOW
    if not start < end or end - start > MAX_WINDOW:
        raise InvalidRequestError("to must be after from, at most 92 days later")
    async with pool.acquire() as conn:
        await _team(request, who, conn, team_id, "read")
        found = await staff_store.shifts(conn, team_id, start, end)
        current = await staff_store.shifts(conn, team_id, now, now + timedelta(microseconds=1))
    return {
        "team": team_id,
        "start": start,
        "end": end,
        "now": now,
        "on_call_now": on_call_now(current, now),
        "shifts": [shift_out(s) for s in found],
    }


@router.post("", status_code=201, response_model=ShiftOut)
async def add_shift(
    request: Request, who: CanManageOnCall, pool: PoolDep, team_id: TeamId, body: ShiftIn
) -> dict[str, Any]:
    """Put a team member on call at a tier (409 when the tier is covered for part of it)."""
    async with pool.acquire() as conn, conn.transaction():
        await _team(request, who, conn, team_id, "create")
        shift_id = await staff_store.set_on_call(
            conn, team_id, body.tier, body.staff_id, body.start, body.end, who.actor
        )
        made = await staff_store.shift(conn, team_id, shift_id)
    assert made is not None
    return shift_out(made)


@router.delete("/{shift_id}", response_model=ShiftOut)
async def remove_shift(
    request: Request, who: CanManageOnCall, pool: PoolDep, team_id: TeamId, shift_id: ShiftId
) -> dict[str, Any]:
    """Remove one of the team's shifts; the answer is the shift removed."""
    async with pool.acquire() as conn, conn.transaction():
        await _team(request, who, conn, team_id, "delete", f"/{shift_id}")
        found = await staff_store.shift(conn, team_id, shift_id)
        if found is None or not await staff_store.remove_shift(conn, team_id, shift_id):
            raise NotFoundError("no such shift in this team")
    return shift_out(found)
