"""The HTTP API: alerts (rpm/api/alerts.py) and the other routers, patient readings, FHIR."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from device_gateways.broker_admin import BrokerAdmin
from rpm.auth import Auth, AuthConfig
from rpm.domain import Metric
from rpm.pipeline import IngestPipeline
from rpm.settings import Settings
from rpm.storage import readings as reading_store
from rpm.storage import staff as staff_store

from . import admin, alerts, dashboard, fhir, health, ingest, registry, rules, twilio_hooks
from .access import CanReadPatientData, audit
from .fhir import FHIR_JSON
from .guard import Guard
from .live import Broadcaster
from .registry import PATIENT_ID

log = logging.getLogger(__name__)


class ReadingOut(BaseModel):
    uid: UUID
    device_id: str
    metric: str
    values: dict[str, float]
    measured_at: datetime
    received_at: datetime
    stored_at: datetime


class ErrorOut(BaseModel):
    """Every error answer: a sentence, or FastAPI's list of validation problems."""

    detail: str | list[dict[str, Any]]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


# Answers any operation may give (documented so clients and schemathesis know them).
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("malformed request, e.g. a body that is not JSON"),
    401: _error("no credentials, or not valid ones (README, Security)"),
    403: _error("the caller's role or scope does not allow this"),
    404: _error("no such resource"),
    422: _error("invalid input"),
}
_CONFLICT: dict[int | str, dict[str, Any]] = {409: _error("conflicts with what is stored")}
_OUTCOME = {"schema": {"type": "object", "required": ["resourceType"]}}  # FHIR OperationOutcome
_EITHER = {"application/json": {"schema": ErrorOut.model_json_schema()}, FHIR_JSON: _OUTCOME}
_FHIR: dict[int | str, dict[str, Any]] = {
    200: {"content": {FHIR_JSON: {"schema": {"type": "object"}}}},
    400: {
        "description": "bad search or request (OperationOutcome on /fhir)",
        "content": _EITHER,
    },
    401: {"description": "no or invalid credentials (OperationOutcome)", "content": _EITHER},
    403: {"description": "not allowed for this caller (OperationOutcome)", "content": _EITHER},
    404: {
        "description": "no such resource (OperationOutcome on /fhir)",
        "content": _EITHER,
    },
}
_TWILIO: dict[int | str, dict[str, Any]] = {
    403: _error("signature missing or not Twilio's"),
    413: _error("body too large"),
}


def create_app(
    pool: asyncpg.Pool,
    broadcaster: Broadcaster,
    pipeline: IngestPipeline,
    broker: BrokerAdmin,
    settings: Settings,
    ops: health.Operations | None = None,
) -> FastAPI:
    """The app over an open pool; ``broadcaster`` feeds the live stream."""

    app = FastAPI(title="RPM server", version="0.1.0", responses=_ERRORS)
    # Audit writer and API security headers (rpm/api/guard.py); access rules in access.py.
    auth_config = AuthConfig.from_settings(settings.api)
    app.add_middleware(Guard, pool=pool, hsts=auth_config.cookie_secure)
    app.include_router(admin.router(pool))
    app.include_router(alerts.router(pool, broadcaster, snooze_caps=settings.alerts.snooze_caps()))
    ops = ops or health.Operations()
    app.include_router(ingest.router(pool, pipeline, settings.ingest, ops.metrics))
    app.include_router(registry.router(pool, broker), responses=_CONFLICT)
    app.include_router(rules.router(pool, on_change=pipeline.rules_changed))
    app.state.auth = Auth(pool, auth_config)  # rpm.auth.current_staff finds it here
    app.include_router(dashboard.router(pool, app.state.auth))
    app.include_router(fhir.router(pool), responses=_FHIR)
    app.include_router(twilio_hooks.router(pool, settings), responses=_TWILIO)
    app.include_router(health.router(pool, ops))

    @app.exception_handler(asyncpg.DataError)
    async def _data_error(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        # Input the database refuses (a NUL byte, a number past bigint) is the caller's
        # mistake, not our failure: 422 rather than 500. Found by tests/test_openapi_fuzz.py.
        # Logged by path and error class only: the refused value may be patient data.
        log.warning("database refused input: %s %s", request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "invalid input (out of range or bad characters)"}, 422)

    @app.get("/api/patients/{patient_id}/readings", response_model=list[ReadingOut])
    async def patient_readings(
        request: Request,
        who: CanReadPatientData,
        patient_id: Annotated[str, Path(pattern=PATIENT_ID)],
        metric: Annotated[list[Metric] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    ) -> list[dict[str, Any]]:
        async with pool.acquire() as conn:
            teams = await staff_store.patient_teams(conn, [patient_id])
            if patient_id not in teams or not who.sees(teams[patient_id]):
                # Another team's patient looks like no patient: its existence does not leak.
                audit(request, who, "read", "readings", resource_id=patient_id)
                raise HTTPException(404, "no such patient")
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

    return app
