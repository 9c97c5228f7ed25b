"""Time tracking: a patient's time entries and their history (docs/time-tracking.md; the
caller's own timer is in ``timer``).

Every route needs ``time-tracking`` (nurses and admins) and is team-scoped like the rest of
a patient's data: another team's patient, or an entry of one, is answered 404, and every
answer is audited with the patient it concerns. "Who" spent the time is a staff member: the
caller, or (admins, and API keys, which must) the ``staff_id`` named in the body. A nurse
changes only her own entries. Edits and deletions name the ``version`` they were made
against (409 when it is stale) and are kept in the entry's history with the old value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from rpm.api.fields import Instant
from rpm.billing.periods import calendar_month, month_of
from rpm.billing.time import (
    NOTE_MAX,
    Activity,
    EntryValues,
    MonthTotal,
    checked,
    month_span,
    month_total,
)
from rpm.domain.errors import (
    InvalidTimeEntry,
    NotFoundError,
    RefusedError,
    StaffNotFound,
    TimeEntryNotFound,
)
from rpm.storage import staff as staff_store
from rpm.storage import time_entries as store
from rpm.storage.pool import Conn
from rpm.storage.time_entries import Event, TimeEntry

from .access import CanTrackTime, Principal, audit
from .deps import ClockDep, PoolDep, SettingsDep
from .registry import PATIENT_ID

router = APIRouter(tags=["time tracking"])

EntryId = Annotated[int, Path(ge=1, le=2**53)]
PatientId = Annotated[str, Path(pattern=PATIENT_ID)]
StaffId = Annotated[str, Field(min_length=1, max_length=64)]
Note = Annotated[str, Field(max_length=NOTE_MAX)]
Duration = Annotated[int, Field(ge=1, le=86_400, description="seconds")]
MONTH = r"^[0-9]{4}-[0-9]{2}$"


# --- bodies and answers -----------------------------------------------------------------


class EntryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    started_at: Instant
    duration_s: Duration
    activity: Activity
    note: Note = ""
    staff_id: StaffId | None = Field(
        None, description="who spent the time; default the caller (required for API keys)"
    )


class EntryPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(ge=1, le=2**31 - 1, description="the version you read")]
    started_at: Instant | None = None
    duration_s: Duration | None = None
    activity: Activity | None = None
    note: Note | None = None
    staff_id: StaffId | None = Field(None, description="admins only")


class EntryOut(BaseModel):
    id: int
    patient_id: str
    staff_id: str
    started_at: datetime
    ended_at: datetime
    duration_s: int
    activity: Activity
    activity_label: str
    interactive: bool
    note: str
    source: str
    version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


class TotalOut(BaseModel):
    seconds: int
    minutes: int
    entries: int
    interactive: bool


class EntryListOut(BaseModel):
    patient_id: str
    timezone: str
    month: str | None
    start: datetime
    end: datetime
    entries: list[EntryOut]
    total: TotalOut


class EventOut(BaseModel):
    id: int
    action: str
    actor: str
    at: datetime
    old: dict[str, Any] | None
    new: dict[str, Any] | None


def entry_out(e: TimeEntry) -> dict[str, Any]:
    v = e.values
    return {
        "id": e.id,
        "patient_id": v.patient_id,
        "staff_id": v.staff_id,
        "started_at": v.started_at,
        "ended_at": v.ended_at,
        "duration_s": v.duration_s,
        "activity": v.activity,
        "activity_label": v.activity.label,
        "interactive": v.activity.interactive,
        "note": v.note,
        "source": v.source,
        "version": e.version,
        "created_at": e.created_at,
        "updated_at": e.updated_at,
        "deleted_at": e.deleted_at,
    }


def _total_out(t: MonthTotal) -> dict[str, Any]:
    return {
        "seconds": t.seconds,
        "minutes": t.minutes,
        "entries": t.entries,
        "interactive": t.interactive,
    }


def _event_out(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "action": e.action,
        "actor": e.actor,
        "at": e.at,
        "old": e.old,
        "new": e.new,
    }


# --- who may see and change what --------------------------------------------------------


def zone_of(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # checked on enrolment; UTC if it went bad
        return ZoneInfo("UTC")


async def visible_patient(
    conn: Conn, request: Request, who: Principal, patient_id: str, action: str
) -> ZoneInfo:
    """The patient's time zone, auditing the access; 404 when not visible to ``who``."""
    found = await store.patient(conn, patient_id)
    if found is None or not who.sees(found[0]):
        # Another team's patient looks like no patient: its existence does not leak.
        audit(request, who, action, "time-entries", resource_id=patient_id)
        raise NotFoundError("no such patient")
    audit(request, who, action, "time-entries", [patient_id], patient_id)
    return zone_of(found[1])


async def _visible_entry(
    conn: Conn, request: Request, who: Principal, entry_id: int, action: str
) -> TimeEntry:
    entry = await store.get(conn, entry_id)
    found = None if entry is None else await store.patient(conn, entry.patient_id)
    if entry is None or found is None or not who.sees(found[0]):
        audit(request, who, action, "time-entry", resource_id=str(entry_id))
        raise TimeEntryNotFound("no such time entry")
    audit(request, who, action, "time-entry", [entry.patient_id], str(entry_id))
    return entry


def _may_change(who: Principal, entry: TimeEntry) -> None:
    if who.role != "admin" and entry.staff_id != who.id:
        raise RefusedError("only the entry's own staff member or an admin may change it")


async def _staff_for(conn: Conn, who: Principal, named: str | None) -> str:
    """Whose time an entry records: the caller unless another staff member is named."""
    if who.kind == "staff" and named in (None, who.id):
        return who.id
    if named is None:
        raise InvalidTimeEntry("an API key must name the staff member: staff_id")
    if who.kind == "staff" and who.role != "admin":
        raise RefusedError("only an admin records time for another staff member")
    if not await staff_store.exists(conn, named):
        raise StaffNotFound(f"no active staff member {named!r}")
    return named


# --- entries ----------------------------------------------------------------------------


@router.get("/api/patients/{patient_id}/time-entries", response_model=EntryListOut)
async def list_entries(
    request: Request,
    who: CanTrackTime,
    pool: PoolDep,
    clock: ClockDep,
    patient_id: PatientId,
    month: Annotated[str | None, Query(pattern=MONTH, description="YYYY-MM")] = None,
    start: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> dict[str, Any]:
    """The patient's entries starting in a calendar month of the patient's time zone
    (``month``, default the current one) or in ``[from, to)``, oldest first, with the total
    (whole minutes, and whether an interactive communication happened)."""
    if (start is None) != (end is None):
        raise InvalidTimeEntry("give both from and to, or neither")
    if start is not None and month is not None:
        raise InvalidTimeEntry("give month, or from and to, not both")
    async with pool.acquire() as conn:
        zone = await visible_patient(conn, request, who, patient_id, "read")
        if start is None or end is None:
            try:
                period = (
                    month_of(month) if month else calendar_month(clock().astimezone(zone).date())
                )
            except ValueError as exc:
                raise InvalidTimeEntry(str(exc)) from None
            start, end = month_span(period, zone)
            month = f"{period.start:%Y-%m}"
        elif end <= start:
            raise InvalidTimeEntry("to must be after from")
        entries = await store.for_patient(conn, patient_id, start, end, limit)
    total = month_total((e.values.duration_s, e.values.activity) for e in entries)
    return {
        "patient_id": patient_id,
        "timezone": zone.key,
        "month": month,
        "start": start,
        "end": end,
        "entries": [entry_out(e) for e in entries],
        "total": _total_out(total),
    }


@router.post("/api/patients/{patient_id}/time-entries", response_model=EntryOut, status_code=201)
async def create_entry(
    request: Request,
    who: CanTrackTime,
    pool: PoolDep,
    clock: ClockDep,
    settings: SettingsDep,
    patient_id: PatientId,
    body: EntryIn,
) -> dict[str, Any]:
    """Record time spent on the patient (``source`` manual)."""
    now = clock()
    async with pool.acquire() as conn:
        await visible_patient(conn, request, who, patient_id, "create")
        staff_id = await _staff_for(conn, who, body.staff_id)
        values = checked(
            EntryValues(
                patient_id, staff_id, body.started_at, body.duration_s, body.activity, body.note
            ),
            now,
            settings.time_tracking.policy(),
        )
        entry = await store.create(conn, values, who.actor, now)
    return entry_out(entry)


@router.get("/api/time-entries/{entry_id}", response_model=EntryOut)
async def get_entry(
    request: Request, who: CanTrackTime, pool: PoolDep, entry_id: EntryId
) -> dict[str, Any]:
    """One entry, deleted or not (``deleted_at``)."""
    async with pool.acquire() as conn:
        entry = await _visible_entry(conn, request, who, entry_id, "read")
    return entry_out(entry)


@router.patch("/api/time-entries/{entry_id}", response_model=EntryOut)
async def edit_entry(
    request: Request,
    who: CanTrackTime,
    pool: PoolDep,
    clock: ClockDep,
    settings: SettingsDep,
    entry_id: EntryId,
    body: EntryPatch,
) -> dict[str, Any]:
    """Change the fields given, if the entry is still at ``version`` (409 otherwise)."""
    now = clock()
    async with pool.acquire() as conn:
        entry = await _visible_entry(conn, request, who, entry_id, "edit")
        if entry.deleted_at is not None:
            raise TimeEntryNotFound("the time entry was deleted")
        _may_change(who, entry)
        old = entry.values
        staff_id = old.staff_id
        if body.staff_id is not None and body.staff_id != old.staff_id:
            staff_id = await _staff_for(conn, who, body.staff_id)
        values = checked(
            EntryValues(
                old.patient_id,
                staff_id,
                body.started_at or old.started_at,
                body.duration_s or old.duration_s,
                body.activity or old.activity,
                old.note if body.note is None else body.note,
                old.source,
            ),
            now,
            settings.time_tracking.policy(),
        )
        edited = await store.edit(conn, entry_id, body.version, values, who.actor, now)
    return entry_out(edited)


@router.delete("/api/time-entries/{entry_id}", response_model=EntryOut)
async def delete_entry(
    request: Request,
    who: CanTrackTime,
    pool: PoolDep,
    clock: ClockDep,
    entry_id: EntryId,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> dict[str, Any]:
    """Delete the entry (kept, with ``deleted_at``, in its history); at ``version`` when
    given (409 otherwise)."""
    async with pool.acquire() as conn:
        entry = await _visible_entry(conn, request, who, entry_id, "delete")
        _may_change(who, entry)
        deleted = await store.delete(conn, entry_id, version, who.actor, clock())
    return entry_out(deleted)


@router.get("/api/time-entries/{entry_id}/history", response_model=list[EventOut])
async def entry_history(
    request: Request, who: CanTrackTime, pool: PoolDep, entry_id: EntryId
) -> list[dict[str, Any]]:
    """The entry's creation, edits and deletion: who, when, the value before and after."""
    async with pool.acquire() as conn:
        await _visible_entry(conn, request, who, entry_id, "history")
        events = await store.history(conn, entry_id)
    return [_event_out(e) for e in events]
