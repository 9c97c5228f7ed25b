"""Alerts API: the triage queue, one alert with its audit trail, nurse actions, live stream.

Every action is checked against the lifecycle table (``alerts.lifecycle``), audited in
``alert_events`` and announced on the live stream. The actor is the caller's principal
(``rpm.api.access``); an ``actor`` field in a body is accepted for older clients and
ignored. Nurses see and act on the alerts of their care teams' patients only: another
team's alert is 404, and their queue and stream leave it out. Refusals are errors of the
tree (rpm/api/errors.py answers them): an action the lifecycle does not allow from the
alert's state is 409, a missing note, an unknown assignee or a snooze past its cap 422.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from alerts.lifecycle import Action
from rpm.domain import Severity
from rpm.domain.errors import AlertNotFound
from rpm.domain.severity import SeverityName
from rpm.pipeline import INGEST_CHANNEL
from rpm.storage import alert_actions, alert_reads
from rpm.storage import confirmations as confirm_store
from rpm.storage import staff as staff_store
from rpm.storage.alerts import ALERTS_CHANNEL
from rpm.storage.pool import Conn

from .access import CanActOnAlerts, CanReadPatientData, Principal, audit
from .deps import BroadcasterDep, PoolDep, SnoozeCapsDep
from .inbox import MediaOut
from .live import Broadcaster

HEARTBEAT_S = 15.0
Actor = Annotated[str, Field(min_length=1, max_length=200)]
StateName = Literal["open", "acknowledged", "resolved"]


# bigserial; bounded so a larger number is a 422, not a database error (2^53: exact as a
# JSON number read as a double, RFC 8259 section 6).
AlertId = Annotated[int, Path(ge=1, le=2**53)]


class ContributionOut(BaseModel):
    """One rule that fired in the episode, with its first finding."""

    rule_id: str
    severity: str
    title: str
    explanation: str
    measured_at: datetime | None
    reading_uid: UUID | None = None


class AlertOut(BaseModel):
    id: int
    patient_id: str
    rule_id: str  # the leading rule: the most severe that contributed
    severity: str
    state: str
    title: str
    explanation: str
    evidence: dict[str, Any]
    first_reading_uid: UUID | None  # None for alerts about missing data
    last_reading_uid: UUID | None
    occurrences: int
    opened_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None
    assigned_to: str | None
    escalation_tier: int  # the highest on-call tier sent an SMS in this round (0: none)
    next_escalation_at: datetime | None
    condition_cleared_at: datetime | None
    snoozed_until: datetime | None  # this alert's kind is snoozed up to its severity
    patient_programs: list[str]
    care_team: str | None
    # One episode per clinical event: its group (a rule id when the rule is alone), and
    # every rule that contributed, with its finding (``rule_id`` leads).
    group_key: str
    rules: list[str]
    contributions: list[ContributionOut]


class AlertEventOut(BaseModel):
    at: datetime
    actor: str
    action: str
    from_state: str | None
    to_state: str
    severity: str
    note: str | None
    media: list[MediaOut] = []  # a patient_reply's photos (Twilio's links)


class AlertDetail(AlertOut):
    events: list[AlertEventOut]


class AcknowledgeIn(BaseModel):
    actor: Actor | None = None  # ignored: the caller's principal is the actor


class ResolveIn(AcknowledgeIn):
    note: str = Field(min_length=1, max_length=2000)  # what was done: required


class AssignIn(BaseModel):
    assignee: Actor  # a staff id
    actor: Actor | None = None  # ignored: the caller's principal is the actor


class SnoozeIn(BaseModel):
    # At most the cap of the alert's severity (RPM_SNOOZE_CAP_MIN); never past a year, which
    # also keeps timedelta from overflowing (a 500 found by tests/test_openapi_fuzz.py).
    minutes: float = Field(gt=0, le=366 * 24 * 60)
    actor: Actor | None = None  # ignored: the caller's principal is the actor
    reason: str | None = Field(default=None, max_length=2000)


router = APIRouter(prefix="/api/alerts")


@router.get("", response_model=list[AlertOut])
async def list_alerts(
    request: Request,
    who: CanReadPatientData,
    pool: PoolDep,
    state: Annotated[list[StateName] | None, Query()] = None,
    patient: str | None = None,
    program: str | None = None,
    severity: Annotated[list[SeverityName] | None, Query()] = None,
    order: Literal["triage", "newest"] = "triage",
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """The triage queue: open and acknowledged alerts by default; ``order=triage`` puts
    the most severe first, then the longest waiting. ``program`` is a patient's program."""
    async with pool.acquire() as conn:
        found = await alert_reads.listing(
            conn,
            states=state or ["open", "acknowledged"],
            patient_id=patient,
            limit=limit,
            program=program,
            severities=[Severity.parse(s).name for s in severity] if severity else None,
            order=order,
            care_teams=sorted(who.teams) if who.teams is not None else None,
        )
    audit(request, who, "search", "alert", (a["patient_id"] for a in found))
    return found


@router.get("/stream")
async def alert_stream(
    request: Request, who: CanReadPatientData, pool: PoolDep, broadcaster: BroadcasterDep
) -> StreamingResponse:
    """Server-sent events: ``alert`` on every alert change, ``ingest`` per stored batch.
    A nurse's stream carries only the alerts of their care teams' patients."""
    audit(request, who, "subscribe", "alert-stream")
    return StreamingResponse(
        _events(request, who, pool, broadcaster),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


async def _events(
    request: Request, who: Principal, pool: asyncpg.Pool, broadcaster: Broadcaster
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    stream = broadcaster.subscribe((ALERTS_CHANNEL, INGEST_CHANNEL)).__aiter__()
    while not await request.is_disconnected():
        try:
            channel, payload = await asyncio.wait_for(anext(stream), HEARTBEAT_S)
        except TimeoutError:  # nothing to say for a while: keep the connection open
            yield ": heartbeat\n\n"
            continue
        except StopAsyncIteration:  # the broadcaster dropped us (too slow): end the stream
            return
        kind = "ingest" if channel == INGEST_CHANNEL else "alert"
        if kind == "alert" and not await _streamed_to(who, pool, payload):
            continue
        yield f"event: {kind}\ndata: {payload}\n\n"


async def _streamed_to(who: Principal, pool: asyncpg.Pool, payload: str) -> bool:
    """Whether an alert notification is about a patient ``who`` sees."""
    if who.teams is None:
        return True
    try:
        patient_id = json.loads(payload).get("patient_id")
    except (ValueError, AttributeError):  # not ours to show: leave it out of the stream
        return False
    if not isinstance(patient_id, str):
        return False
    async with pool.acquire() as conn:
        teams = await staff_store.patient_teams(conn, [patient_id])
    return patient_id in teams and who.sees(teams[patient_id])


class ConfirmationOut(BaseModel):
    """A confirmation before paging: a first reading waiting for its repeat, or how it ended."""

    id: int
    patient_id: str
    rule_id: str
    group_key: str
    severity: str
    state: Literal["pending", "confirmed", "not_confirmed", "no_repeat", "superseded"]
    title: str
    measured_at: datetime
    deadline: datetime  # the repeat is due by then; the nurse is paged then without one
    first_values: dict[str, float]
    closed_at: datetime | None
    closed_values: dict[str, float] | None
    note: str | None
    alert_id: int | None  # the episode it paged (confirmed, no repeat, superseded)


@router.get("/confirmations", response_model=list[ConfirmationOut])
async def list_confirmations(
    request: Request,
    who: CanReadPatientData,
    pool: PoolDep,
    patient: str | None = None,
    state: Literal["pending", "confirmed", "not_confirmed", "no_repeat", "superseded"]
    | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """Confirmations before paging, newest first: ``state=pending`` are first readings
    waiting for their repeat (nobody paged yet); the others are kept as history."""
    async with pool.acquire() as conn:
        found = await confirm_store.listing(
            conn,
            patient_id=patient,
            state=state,
            limit=limit,
            care_teams=sorted(who.teams) if who.teams is not None else None,
        )
    audit(request, who, "search", "alert", (c["patient_id"] for c in found))
    return found


@router.get("/{alert_id}", response_model=AlertDetail)
async def get_alert(
    request: Request, who: CanReadPatientData, pool: PoolDep, alert_id: AlertId
) -> dict[str, Any]:
    async with pool.acquire() as conn:
        alert = await alert_reads.get(conn, alert_id)
        if alert is None or not who.sees(alert["care_team"]):
            audit(request, who, "read", "alert", resource_id=str(alert_id))
            raise AlertNotFound("no such alert")
        alert["events"] = await alert_reads.events(conn, alert_id)
    audit(request, who, "read", "alert", [alert["patient_id"]], str(alert_id))
    return alert


async def _act(
    request: Request,
    who: Principal,
    pool: asyncpg.Pool,
    alert_id: int,
    work: Callable[[Conn], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Run ``work`` on an alert the caller sees (404 otherwise), audited as the action."""
    action = request.url.path.rsplit("/", 1)[-1]
    if request.method == "DELETE":
        action = "unsnooze"
    async with pool.acquire() as conn:
        alert = await alert_reads.get(conn, alert_id)
        if alert is None or not who.sees(alert["care_team"]):
            audit(request, who, action, "alert", resource_id=str(alert_id))
            raise AlertNotFound("no such alert")
        audit(request, who, action, "alert", [alert["patient_id"]], str(alert_id))
        return await work(conn)


@router.post("/{alert_id}/acknowledge", response_model=AlertOut)
async def acknowledge(
    request: Request, who: CanActOnAlerts, pool: PoolDep, alert_id: AlertId, body: AcknowledgeIn
) -> dict[str, Any]:
    """A nurse is on it: the escalation stops."""
    return await _act(
        request,
        who,
        pool,
        alert_id,
        lambda c: alert_actions.transition(c, alert_id, Action.ACKNOWLEDGE, who.actor),
    )


@router.post("/{alert_id}/resolve", response_model=AlertOut)
async def resolve(
    request: Request, who: CanActOnAlerts, pool: PoolDep, alert_id: AlertId, body: ResolveIn
) -> dict[str, Any]:
    """Close the episode with a note saying what was done (422 without one)."""
    return await _act(
        request,
        who,
        pool,
        alert_id,
        lambda c: alert_actions.transition(c, alert_id, Action.RESOLVE, who.actor, body.note),
    )


@router.post("/{alert_id}/assign", response_model=AlertOut)
async def assign(
    request: Request, who: CanActOnAlerts, pool: PoolDep, alert_id: AlertId, body: AssignIn
) -> dict[str, Any]:
    return await _act(
        request,
        who,
        pool,
        alert_id,
        lambda c: alert_actions.assign(c, alert_id, body.assignee, who.actor),
    )


@router.post("/{alert_id}/snooze", response_model=AlertOut)
async def snooze(
    request: Request,
    who: CanActOnAlerts,
    pool: PoolDep,
    caps: SnoozeCapsDep,
    alert_id: AlertId,
    body: SnoozeIn,
) -> dict[str, Any]:
    """Quiet this patient's alerts of this rule up to this alert's severity for a while
    (422 beyond the severity's cap); a more severe alert breaks through."""
    return await _act(
        request,
        who,
        pool,
        alert_id,
        lambda c: alert_actions.snooze(
            c,
            alert_id,
            duration=timedelta(minutes=body.minutes),
            actor=who.actor,
            reason=body.reason,
            caps=caps,
        ),
    )


@router.delete("/{alert_id}/snooze", response_model=AlertOut)
async def unsnooze(
    request: Request,
    who: CanActOnAlerts,
    pool: PoolDep,
    alert_id: AlertId,
    actor: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> dict[str, Any]:
    """Lift the snooze (``actor`` is ignored: the caller's principal is the actor)."""
    return await _act(
        request, who, pool, alert_id, lambda c: alert_actions.unsnooze(c, alert_id, who.actor)
    )
