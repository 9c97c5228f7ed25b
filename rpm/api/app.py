"""The HTTP API: one app over the routers of this package.

``create_app`` puts what the routes are given into ``app.state`` (rpm/api/deps.py), adds
the audit and security-header middleware (rpm/api/guard.py), registers the one mapping
from our error tree to HTTP answers (rpm/api/errors.py) and includes the routers. The
error answers every operation may give are documented here for the OpenAPI schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import FastAPI
from pydantic import BaseModel

from device_gateways.broker_admin import BrokerAdmin
from rpm.auth import Auth, AuthConfig
from rpm.pipeline import IngestPipeline
from rpm.settings import Settings

from . import (
    admin,
    alerts,
    billing,
    dashboard,
    dashboard_billing,
    dashboard_engagement,
    dashboard_inbox,
    dashboard_on_call,
    dashboard_panel,
    dashboard_readings,
    dashboard_time,
    device_certs,
    engagement,
    errors,
    fhir,
    health,
    inbox,
    ingest,
    on_call,
    panel,
    readings,
    registry,
    rules,
    time_entries,
    timer,
    twilio_hooks,
    twilio_voice,
)
from .errors import FHIR_JSON
from .guard import Guard
from .live import Broadcaster
from .request_text import RefuseControlCharacters


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
    auth_config = AuthConfig.from_settings(settings.api)
    ops = ops or health.Operations()
    # What the routes are given (rpm/api/deps.py).
    app.state.pool = pool
    app.state.auth = Auth(pool, auth_config)  # rpm.auth.current_staff finds it here too
    app.state.settings = settings
    app.state.broadcaster = broadcaster
    app.state.snooze_caps = settings.alerts.snooze_caps()
    app.state.pipeline = pipeline
    app.state.webhooks = ingest.Webhooks(pipeline, settings, ops.metrics)
    app.state.broker = broker
    app.state.device_authority = device_certs.DeviceAuthority.from_settings(settings)
    app.state.rule_books = rules.RuleBooks(on_change=pipeline.rules_changed)
    app.state.operations = ops
    app.state.started_at = datetime.now(UTC)
    # What the panel's flags count as enough: the billing code table in force
    # (rpm.api.deps.panel_thresholds; docs/panel.md), unless a test pins it here.
    app.state.panel_thresholds = None
    # Audit writer and API security headers (rpm/api/guard.py); access rules in access.py.
    # Control characters and bytes that are not UTF-8 in a path or query: 400 before any
    # route (rpm/api/request_text.py); inside the guard, so the answer has its headers.
    app.add_middleware(RefuseControlCharacters)
    app.add_middleware(Guard, pool=pool, hsts=auth_config.cookie_secure)
    errors.install(app)
    app.include_router(admin.router)
    app.include_router(on_call.router, responses=_CONFLICT)
    app.include_router(alerts.router)
    app.include_router(inbox.router, responses=_CONFLICT)
    app.include_router(ingest.router)
    app.include_router(device_certs.router, responses=_CONFLICT)
    app.include_router(registry.router, responses=_CONFLICT)
    app.include_router(rules.router)
    app.include_router(engagement.router)
    app.include_router(time_entries.router, responses=_CONFLICT)
    app.include_router(timer.router, responses=_CONFLICT)
    app.include_router(dashboard.router)
    app.include_router(dashboard_engagement.router)
    app.include_router(dashboard_time.router)
    app.include_router(dashboard_on_call.router)
    app.include_router(dashboard_inbox.router)
    app.include_router(dashboard_readings.router)
    app.include_router(billing.router)
    app.include_router(dashboard_billing.router)
    app.include_router(panel.router)
    app.include_router(dashboard_panel.router)
    app.include_router(fhir.router, responses=_FHIR)
    app.include_router(twilio_hooks.router, responses=_TWILIO)
    app.include_router(twilio_voice.router, responses=_TWILIO)
    app.include_router(health.router)
    app.include_router(readings.router)
    return app
