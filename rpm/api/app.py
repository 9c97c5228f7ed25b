"""The HTTP API: nurse alerts (list, act, live stream), patient readings, quarantine, FHIR."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from importlib import resources
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from alerts.lifecycle import Action, InvalidTransition
from device_gateways.broker_admin import BrokerAdmin
from rpm.fhir import mapping
from rpm.pipeline import INGEST_CHANNEL, IngestPipeline
from rpm.storage import alerts as alert_store
from rpm.storage import readings as reading_store

from . import ingest, registry, rules
from .live import Broadcaster

FHIR_JSON = "application/fhir+json"
HEARTBEAT_S = 15.0


class AlertOut(BaseModel):
    id: int
    patient_id: str
    rule_id: str
    severity: str
    state: str
    title: str
    explanation: str
    evidence: dict[str, Any]
    first_reading_uid: UUID
    last_reading_uid: UUID
    occurrences: int
    opened_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None


class AlertEventOut(BaseModel):
    at: datetime
    actor: str
    action: str
    from_state: str | None
    to_state: str
    severity: str
    note: str | None


class AlertDetail(AlertOut):
    events: list[AlertEventOut]


class AcknowledgeIn(BaseModel):
    # Until staff sign-in exists (see README, security), the caller names itself.
    actor: str = Field(min_length=1, max_length=200)


class ResolveIn(AcknowledgeIn):
    note: str = Field(min_length=1, max_length=2000)


class ReadingOut(BaseModel):
    uid: UUID
    device_id: str
    metric: str
    values: dict[str, float]
    measured_at: datetime
    received_at: datetime
    stored_at: datetime


def create_app(
    pool: asyncpg.Pool,
    broadcaster: Broadcaster,
    pipeline: IngestPipeline,
    broker: BrokerAdmin,
) -> FastAPI:
    """The app over an open pool; ``broadcaster`` feeds the live stream."""

    app = FastAPI(title="RPM server", version="0.1.0")
    app.include_router(ingest.router(pool, pipeline))
    app.include_router(registry.router(pool, broker))
    app.include_router(rules.router(pool, on_change=pipeline.rules_changed))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        return {"status": "ok"}

    @app.get("/api/alerts", response_model=list[AlertOut])
    async def list_alerts(
        state: Annotated[list[str] | None, Query()] = None,
        patient: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:
        """The triage queue: open and acknowledged alerts by default, most severe first."""
        states = state or ["open", "acknowledged"]
        async with pool.acquire() as conn:
            return await alert_store.listing(conn, states=states, patient_id=patient, limit=limit)

    @app.get("/api/alerts/stream")
    async def alert_stream(request: Request) -> StreamingResponse:
        """Server-sent events: ``alert`` on every alert change, ``ingest`` per stored batch."""

        async def events() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            stream = broadcaster.subscribe().__aiter__()
            while not await request.is_disconnected():
                try:
                    channel, payload = await asyncio.wait_for(anext(stream), HEARTBEAT_S)
                except TimeoutError:
                    yield ": heartbeat\n\n"
                    continue
                except StopAsyncIteration:
                    return
                kind = "ingest" if channel == INGEST_CHANNEL else "alert"
                yield f"event: {kind}\ndata: {payload}\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.get("/api/alerts/{alert_id}", response_model=AlertDetail)
    async def get_alert(alert_id: int) -> dict[str, Any]:
        async with pool.acquire() as conn:
            alert = await alert_store.get(conn, alert_id)
            if alert is None:
                raise HTTPException(404, "no such alert")
            alert["events"] = await alert_store.events(conn, alert_id)
            return alert

    async def act(alert_id: int, action: Action, actor: str, note: str | None) -> dict[str, Any]:
        async with pool.acquire() as conn:
            try:
                return await alert_store.transition(conn, alert_id, action, actor, note)
            except alert_store.AlertNotFound:
                raise HTTPException(404, "no such alert") from None
            except InvalidTransition as exc:
                raise HTTPException(409, str(exc)) from None

    @app.post("/api/alerts/{alert_id}/acknowledge", response_model=AlertOut)
    async def acknowledge(alert_id: int, body: AcknowledgeIn) -> dict[str, Any]:
        return await act(alert_id, Action.ACKNOWLEDGE, body.actor, None)

    @app.post("/api/alerts/{alert_id}/resolve", response_model=AlertOut)
    async def resolve(alert_id: int, body: ResolveIn) -> dict[str, Any]:
        return await act(alert_id, Action.RESOLVE, body.actor, body.note)

    @app.get("/api/patients/{patient_id}/readings", response_model=list[ReadingOut])
    async def patient_readings(
        patient_id: str,
        metric: Annotated[list[str] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    ) -> list[dict[str, Any]]:
        async with pool.acquire() as conn:
            rows = await reading_store.for_patient(conn, patient_id, metrics=metric, limit=limit)
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

    @app.get("/fhir/Observation", response_class=JSONResponse)
    async def fhir_observation_search(
        request: Request,
        patient: str | None = None,
        subject: str | None = None,
        count: Annotated[int, Query(alias="_count", ge=1, le=1000)] = 50,
    ) -> JSONResponse:
        """Observations of a patient, newest first (searchset Bundle)."""
        pid = patient or (subject.removeprefix("Patient/") if subject else None)
        if not pid:
            return _fhir(400, mapping.operation_outcome("required", "patient is required"))
        pid = pid.removeprefix("Patient/")
        async with pool.acquire() as conn:
            rows = await reading_store.for_patient(conn, pid, limit=count)
        entries = [
            obs for s in rows for obs in mapping.observations(s.accepted, issued=s.stored_at)
        ]
        base = str(request.base_url).rstrip("/") + "/fhir"
        return _fhir(200, mapping.searchset(entries, base, str(request.url)))

    @app.get("/fhir/Observation/{obs_id}", response_class=JSONResponse)
    async def fhir_observation_read(obs_id: str) -> JSONResponse:
        try:
            uid, _part = mapping.reading_uid_of(obs_id)
        except ValueError:
            return _fhir(404, mapping.operation_outcome("not-found", "no such Observation"))
        async with pool.acquire() as conn:
            stored = await reading_store.by_uid(conn, str(uid))
        if stored is not None:
            for obs in mapping.observations(stored.accepted, issued=stored.stored_at):
                if obs["id"] == obs_id:
                    return _fhir(200, obs)
        return _fhir(404, mapping.operation_outcome("not-found", "no such Observation"))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        page = resources.files("rpm.api").joinpath("dashboard.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    return app


def _fhir(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)
