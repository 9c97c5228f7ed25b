"""Patient panel API: a care team's patients with what a monitoring program runs on, and
its live stream (docs/panel.md).

``GET /api/panel`` is one page of the panel: per patient the programs, the newest value and
age of each metric, days with readings in the current 30-day device period, minutes logged
this calendar month and whether an interactive communication happened, open alerts, and the
flags "needs readings" and "needs time" with what is missing. Filters (care team, program,
segment, flag), a sort on each column that has an order, and offset paging. Nurses see
their care teams' patients only (another team is 404); the dashboard's panel page reads
this same route.

``GET /api/panel/stream`` tells a page when something it shows changed: the patient ids it
names, among those the page asked about.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from rpm.billing import needs
from rpm.domain import Severity
from rpm.domain.errors import NotFoundError
from rpm.engagement import segments as segment_spec
from rpm.storage import panel as panel_store
from rpm.storage import segments as segment_store
from rpm.storage import staff as staff_store
from rpm.storage.alerts import ALERTS_CHANNEL
from rpm.storage.pool import Conn

from .access import CanReadPatientData, Principal, audit
from .deps import BroadcasterDep, ClockDep, PanelThresholdsDep, PoolDep
from .live import Broadcaster

HEARTBEAT_S = 15.0
MAX_LIMIT = 200  # rows per page, and patients one stream watches
Short = Annotated[str, Query(min_length=1, max_length=64)]


class ThresholdsOut(BaseModel):
    days_needed: int
    minutes_needed: int
    interactive_needed: bool


class MetricOut(BaseModel):
    metric: str
    measured_at: datetime
    age_s: float  # seconds from the reading to the answer's ``now``
    values: dict[str, Any]  # components in canonical UCUM units, as stored


class DevicePeriodOut(BaseModel):
    number: int  # from 0, counted from ``start`` of monitoring
    start: date
    last_day: date
    days_with_readings: int
    days_left: int  # today included


class ReadingsNeedOut(BaseModel):
    flag: bool
    more_days: int
    days_left: int
    reachable: bool  # the missing days still fit in the period
    text: str  # "3 more days, 10 days left"


class MonthOut(BaseModel):
    month: str  # YYYY-MM, in the patient's time zone
    seconds: int
    minutes: float
    interactive: bool  # an interactive_phone or interactive_video entry this month


class TimeNeedOut(BaseModel):
    flag: bool
    more_minutes: int
    interactive_missing: bool
    text: str  # "6 more minutes and an interactive call (phone or video)"


class OpenAlertsOut(BaseModel):
    count: int
    top_severity: str | None  # lower-case name; None when none is open


class PanelPatientOut(BaseModel):
    patient_id: str
    display_name: str
    programs: list[str]
    care_team: str | None
    timezone: str
    today: date  # in the patient's time zone
    monitoring_start: date | None  # where device periods count from
    last_reading_at: datetime | None
    metrics: list[MetricOut]
    device_period: DevicePeriodOut | None  # None: no readings and no start day yet
    needs_readings: ReadingsNeedOut
    month: MonthOut
    needs_time: TimeNeedOut
    open_alerts: OpenAlertsOut


class PanelOut(BaseModel):
    now: datetime
    thresholds: ThresholdsOut
    total: int  # patients matching the filters
    offset: int
    limit: int
    sort: str
    direction: str
    patients: list[PanelPatientOut]


router = APIRouter(prefix="/api/panel")


async def _scope(conn: Conn, who: Principal, team: str | None) -> frozenset[str] | None:
    """The care teams to show: the one asked for (when the caller sees it) or all of the
    caller's (None: every team, for an admin)."""
    if team is None:
        return who.teams
    if who.teams is not None and team not in who.teams:
        raise NotFoundError("no such care team")
    if not await panel_store.care_teams(conn, frozenset({team})):
        raise NotFoundError("no such care team")
    return frozenset({team})


@router.get("", response_model=PanelOut)
async def get_panel(
    request: Request,
    who: CanReadPatientData,
    pool: PoolDep,
    clock: ClockDep,
    thresholds: PanelThresholdsDep,
    team: Short | None = None,
    program: Short | None = None,
    segment: Annotated[str | None, Query(pattern=segment_spec.NAME.pattern)] = None,
    flag: panel_store.FlagFilter | None = None,
    sort: panel_store.SortKey = "name",
    direction: panel_store.Direction = "asc",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    """One page of the panel. ``flag``: ``readings`` (needs readings), ``time`` (needs
    time), ``any`` (either), ``none`` (on track). ``segment`` is a published segment's
    name. Sorted by ``sort`` then patient id; ``offset`` pages (docs/panel.md says why)."""
    now = clock()
    async with pool.acquire() as conn:
        teams = await _scope(conn, who, team)
        spec = None
        if segment is not None:
            found = await segment_store.segment(conn, segment)
            if found is None:
                raise NotFoundError("no such segment")
            spec = found.spec
        query = panel_store.PanelQuery(
            teams=teams,
            program=program,
            segment=spec,
            flag=flag,
            sort=sort,
            direction=direction,
            limit=limit,
            offset=offset,
        )
        total, rows = await panel_store.panel(conn, now, query, thresholds)
        values = await panel_store.latest_values(conn, [r.patient_id for r in rows])
    audit(request, who, "search", "panel", (r.patient_id for r in rows))
    return {
        "now": now,
        "thresholds": {
            "days_needed": thresholds.days_needed,
            "minutes_needed": thresholds.minutes_needed,
            "interactive_needed": thresholds.interactive_needed,
        },
        "total": total,
        "offset": offset,
        "limit": limit,
        "sort": sort,
        "direction": direction,
        "patients": [_patient(r, values.get(r.patient_id, []), now, thresholds) for r in rows],
    }


def _patient(
    r: panel_store.PanelRow,
    values: list[tuple[str, datetime, dict[str, Any]]],
    now: datetime,
    t: needs.Thresholds,
) -> dict[str, Any]:
    reading = needs.readings_need(r.start, r.today, r.days, t)
    spent = needs.time_need(r.seconds, r.interactive, t)
    period = reading.period
    return {
        "patient_id": r.patient_id,
        "display_name": r.display_name,
        "programs": r.programs,
        "care_team": r.care_team,
        "timezone": r.timezone,
        "today": r.today,
        "monitoring_start": r.start,
        "last_reading_at": r.last_at,
        "metrics": [
            {
                "metric": metric,
                "measured_at": at,
                "age_s": max(0.0, (now - at).total_seconds()),
                "values": components,
            }
            for metric, at, components in values
        ],
        "device_period": None
        if period is None
        else {
            "number": period.number,
            "start": period.start,
            "last_day": period.last_day,
            "days_with_readings": r.days,
            "days_left": reading.days_left,
        },
        "needs_readings": {
            "flag": reading.flag,
            "more_days": reading.more_days,
            "days_left": reading.days_left,
            "reachable": reading.reachable,
            "text": reading.text(),
        },
        "month": {
            "month": r.today.strftime("%Y-%m"),
            "seconds": r.seconds,
            "minutes": round(spent.minutes, 1),
            "interactive": r.interactive,
        },
        "needs_time": {
            "flag": spent.flag,
            "more_minutes": spent.more_minutes,
            "interactive_missing": spent.interactive_missing,
            "text": spent.text(),
        },
        "open_alerts": {
            "count": r.open_alerts,
            "top_severity": Severity(r.top_rank).label if r.top_rank else None,
        },
    }


@router.get("/stream")
async def panel_stream(
    request: Request,
    who: CanReadPatientData,
    pool: PoolDep,
    broadcaster: BroadcasterDep,
    patient: Annotated[list[str] | None, Query(max_length=MAX_LIMIT)] = None,
) -> StreamingResponse:
    """Server-sent events: ``changed`` with ``{"patients": [ids]}`` when a reading, an alert
    or a time entry of one of the ``patient`` ids changes (those the caller sees; others are
    left out silently). A page reconnects with its new ids when it shows other patients."""
    asked = sorted({p for p in patient or () if 0 < len(p) <= 200})
    async with pool.acquire() as conn:
        teams = await staff_store.patient_teams(conn, asked)
    watched = frozenset(p for p in asked if p in teams and who.sees(teams[p]))
    audit(request, who, "subscribe", "panel-stream", sorted(watched))
    return StreamingResponse(
        _events(request, watched, broadcaster),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


async def _events(
    request: Request, watched: frozenset[str], broadcaster: Broadcaster
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    stream = broadcaster.subscribe((panel_store.PANEL_CHANNEL, ALERTS_CHANNEL)).__aiter__()
    while not await request.is_disconnected():
        try:
            _channel, payload = await asyncio.wait_for(anext(stream), HEARTBEAT_S)
        except TimeoutError:  # nothing to say for a while: keep the connection open
            yield ": heartbeat\n\n"
            continue
        except StopAsyncIteration:  # the broadcaster dropped us (too slow): end the stream
            return
        changed = sorted(watched.intersection(panel_store.changed_patients(payload)))
        if changed:
            yield f"event: changed\ndata: {json.dumps({'patients': changed})}\n\n"
