"""The HTTP API: alerts (rpm/api/alerts.py) and the other routers, patient readings, FHIR."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import FastAPI, Query
from pydantic import BaseModel

from alerts.policy import SnoozeCaps
from device_gateways.broker_admin import BrokerAdmin
from rpm.auth import Auth, AuthConfig
from rpm.pipeline import IngestPipeline
from rpm.settings import Settings
from rpm.storage import readings as reading_store

from . import alerts, dashboard, fhir, ingest, registry, rules, twilio_hooks
from .live import Broadcaster


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
    auth_config: AuthConfig | None = None,
    snooze_caps: SnoozeCaps | None = None,
    settings: Settings | None = None,
) -> FastAPI:
    """The app over an open pool; ``broadcaster`` feeds the live stream."""

    app = FastAPI(title="RPM server", version="0.1.0")
    app.include_router(alerts.router(pool, broadcaster, snooze_caps=snooze_caps))
    app.include_router(ingest.router(pool, pipeline, settings or Settings()))
    app.include_router(registry.router(pool, broker))
    app.include_router(rules.router(pool, on_change=pipeline.rules_changed))
    app.state.auth = Auth(pool, auth_config)  # rpm.auth.current_staff finds it here
    app.include_router(dashboard.router(pool, app.state.auth))
    app.include_router(fhir.router(pool))
    app.include_router(twilio_hooks.router(pool, settings or Settings()))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        return {"status": "ok"}

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

    return app
