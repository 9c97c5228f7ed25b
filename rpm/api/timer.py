"""The caller's own timer (docs/time-tracking.md): at most one per staff member, kept in
``time_timers`` so it survives a reload, a restart or another browser; stopping it writes a
time entry (``source`` timer), capped at ``RPM_TIME_ENTRY_MAX_MINUTES``.

Starting while one runs is 409. Every route needs ``time-tracking``; starting checks that
the caller sees the patient (404 otherwise, like the entry routes in ``time_entries``).
Answers that name a patient are audited with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from rpm.billing.time import Activity, EntryValues, checked, checked_note, timer_duration
from rpm.domain.errors import RefusedError
from rpm.storage import time_entries as store
from rpm.storage.time_entries import Timer

from .access import CanTrackTime, Principal, audit
from .deps import ClockDep, PoolDep, SettingsDep
from .registry import PATIENT_ID
from .time_entries import EntryOut, Note, entry_out, visible_patient

router = APIRouter(tags=["time tracking"])


class TimerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: Annotated[str, Field(pattern=PATIENT_ID)]
    activity: Activity
    note: Note = ""


class StopIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    activity: Activity | None = Field(None, description="replaces the timer's activity")
    note: Note | None = Field(None, description="replaces the timer's note")


class TimerOut(BaseModel):
    staff_id: str
    patient_id: str
    activity: Activity
    activity_label: str
    note: str
    started_at: datetime
    elapsed_s: int
    max_s: int
    over_limit: bool  # stopping now records max_s, not elapsed_s


class StoppedOut(BaseModel):
    entry: EntryOut
    elapsed_s: int
    capped: bool


def _timer_out(t: Timer, now: datetime, max_s: int) -> dict[str, Any]:
    elapsed = max(0, int((now - t.started_at).total_seconds()))
    return {
        "staff_id": t.staff_id,
        "patient_id": t.patient_id,
        "activity": t.activity,
        "activity_label": t.activity.label,
        "note": t.note,
        "started_at": t.started_at,
        "elapsed_s": elapsed,
        "max_s": max_s,
        "over_limit": elapsed > max_s,
    }


def _own_timer(who: Principal) -> str:
    if who.kind != "staff":
        raise RefusedError("timers belong to staff members")
    return who.id


# --- the caller's timer -----------------------------------------------------------------


@router.get("/api/timer", response_model=TimerOut | None)
async def get_timer(
    request: Request, who: CanTrackTime, pool: PoolDep, clock: ClockDep, settings: SettingsDep
) -> dict[str, Any] | None:
    """The caller's running timer, or null."""
    staff_id = _own_timer(who)
    async with pool.acquire() as conn:
        running = await store.timer(conn, staff_id)
    if running is None:
        return None
    audit(request, who, "read", "timer", [running.patient_id], staff_id)
    return _timer_out(running, clock(), settings.time_tracking.policy().entry_max_s)


@router.post("/api/timer", response_model=TimerOut, status_code=201)
async def start_timer(
    request: Request,
    who: CanTrackTime,
    pool: PoolDep,
    clock: ClockDep,
    settings: SettingsDep,
    body: TimerIn,
) -> dict[str, Any]:
    """Start the caller's timer on a patient (409 when one is running already)."""
    staff_id = _own_timer(who)
    now = clock()
    note = checked_note(body.note)
    async with pool.acquire() as conn:
        await visible_patient(conn, request, who, body.patient_id, "timer-start")
        running = await store.start_timer(conn, staff_id, body.patient_id, body.activity, now, note)
    return _timer_out(running, now, settings.time_tracking.policy().entry_max_s)


@router.post("/api/timer/stop", response_model=StoppedOut, status_code=201)
async def stop_timer(
    request: Request,
    who: CanTrackTime,
    pool: PoolDep,
    clock: ClockDep,
    settings: SettingsDep,
    body: StopIn | None = None,
) -> dict[str, Any]:
    """Stop the caller's timer and record its time as an entry (``source`` timer); a timer
    that ran past ``RPM_TIME_ENTRY_MAX_MINUTES`` records that maximum (``capped``)."""
    staff_id = _own_timer(who)
    now = clock()
    policy = settings.time_tracking.policy()
    async with pool.acquire() as conn, conn.transaction():
        running = await store.take_timer(conn, staff_id)
        audit(request, who, "timer-stop", "timer", [running.patient_id], staff_id)
        took = timer_duration(running.started_at, now, policy)
        values = checked(
            EntryValues(
                running.patient_id,
                staff_id,
                running.started_at,
                took.duration_s,
                (body and body.activity) or running.activity,
                running.note if body is None or body.note is None else body.note,
                "timer",
            ),
            now,
            policy,
        )
        extra = {"timer_elapsed_s": took.elapsed_s} if took.capped else None
        entry = await store.create(conn, values, who.actor, now, extra)
    return {"entry": entry_out(entry), "elapsed_s": took.elapsed_s, "capped": took.capped}


@router.delete("/api/timer", response_model=TimerOut)
async def discard_timer(
    request: Request, who: CanTrackTime, pool: PoolDep, clock: ClockDep, settings: SettingsDep
) -> dict[str, Any]:
    """Discard the caller's timer without recording anything (404 when none runs)."""
    staff_id = _own_timer(who)
    async with pool.acquire() as conn:
        running = await store.take_timer(conn, staff_id)
    audit(request, who, "timer-discard", "timer", [running.patient_id], staff_id)
    return _timer_out(running, clock(), settings.time_tracking.policy().entry_max_s)
