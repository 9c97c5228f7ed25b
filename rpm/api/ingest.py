"""HTTP ingestion for vendor webhooks, and the quarantine (list, replay).

``POST /ingest/{format}`` runs the same unit of work as MQTT: a 200 answer means the
readings are committed; retries of the same request store nothing twice.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Header, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from device_gateways.decoders import DECODERS
from device_gateways.webhook_auth import verify_bearer, verify_signature
from rpm.auth import API_KEY_PREFIX
from rpm.domain import RawMessage
from rpm.errors import StorageError
from rpm.pipeline import BatchResult, IngestPipeline
from rpm.storage import quarantine as quarantine_store
from rpm.storage import registry

from .access import REQUIRE, CanEnrol, Permission, audit, bearer_principal

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class IngestResult(BaseModel):
    stored: int
    duplicates: int
    quarantined: int
    reasons: dict[str, int]


class QuarantineOut(BaseModel):
    id: int
    transport: str
    payload_format: str
    device_id: str | None
    topic: str | None
    integration: str | None
    reason: str
    detail: str
    payload: str
    received_at: datetime
    seen_count: int
    replayed_at: datetime | None


class ReplayIn(BaseModel):
    ids: Annotated[list[int] | None, Field(max_length=1000)] = None
    reason: str | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 1000


class ReplayOut(BaseModel):
    replayed: list[int]
    result: IngestResult


def _summary(r: BatchResult) -> IngestResult:
    return IngestResult(
        stored=r.stored,
        duplicates=r.duplicates,
        quarantined=r.quarantined,
        reasons=r.quarantine_reasons,
    )


def router(pool: asyncpg.Pool, pipeline: IngestPipeline) -> APIRouter:
    api = APIRouter()

    @api.post(
        "/ingest/{payload_format}",
        response_model=IngestResult,
        responses={
            401: {"description": "missing or wrong credentials"},
            403: {"description": "integration revoked, or format not allowed for it"},
            413: {"description": "body larger than 1 MiB"},
            422: {"description": "nothing usable; the payload is kept in the quarantine"},
            503: {"description": "storage unavailable; retry (retries are idempotent)"},
        },
    )
    async def ingest(
        payload_format: str,
        request: Request,
        x_rpm_integration: Annotated[str | None, Header()] = None,
        x_rpm_signature: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Readings from a vendor cloud, authenticated per integration."""
        if payload_format not in DECODERS:
            raise HTTPException(404, f"unknown format; known: {sorted(DECODERS)}")
        body = await _bounded_body(request)
        # An API key with the ingest scope (rpm/api/access.py) acts for its integration,
        # instead of the integration's own signature or token.
        key = await _ingest_key(request, authorization)
        if key is not None and x_rpm_integration not in (None, key):
            raise HTTPException(403, "this key posts for another integration")
        integration_id = key or x_rpm_integration
        if not integration_id:
            raise HTTPException(401, "missing X-RPM-Integration")
        async with pool.acquire() as conn:
            integration = await registry.integration(conn, integration_id)
        if integration is None:
            raise HTTPException(401, "unknown integration")
        problem = (
            None
            if key is not None
            else verify_signature(integration.secret, body, x_rpm_signature, time.time())
            if integration.auth == "hmac"
            else verify_bearer(integration.secret, authorization)
        )
        if problem is not None:
            log.warning("webhook refused: integration=%s: %s", integration.id, problem)
            raise HTTPException(401, problem)
        if integration.revoked:
            raise HTTPException(403, "integration revoked")
        if payload_format not in integration.formats:
            raise HTTPException(403, f"integration may not post {payload_format!r}")
        raw = RawMessage(
            transport="http",
            payload_format=payload_format,
            device_id=None,
            payload=body,
            received_at=datetime.now(UTC),
            integration=integration.id,
        )
        try:
            result = await pipeline.process([raw])
        except StorageError:
            return JSONResponse(
                {"detail": "storage unavailable; retry"}, 503, headers={"Retry-After": "5"}
            )
        summary = _summary(result)
        accepted = result.stored + result.duplicates
        status = 422 if accepted == 0 and result.quarantined else 200
        return JSONResponse(summary.model_dump(), status)

    @api.get(
        "/api/quarantine",
        response_model=list[QuarantineOut],
        dependencies=[Security(REQUIRE[Permission.ENROLMENT])],
    )
    async def quarantine(
        request: Request,
        who: CanEnrol,
        reason: str | None = None,
        replayed: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Refused payloads with their reasons; payload bytes shown as UTF-8 (replaced)."""
        async with pool.acquire() as conn:
            rows = await quarantine_store.recent(
                conn, reason=reason, replayed=replayed, limit=limit
            )
        for r in rows:
            r["payload"] = bytes(r["payload"]).decode("utf-8", "replace")
        # Refused payloads are device data that may describe a patient: reading them is audited.
        audit(request, who, "search", "quarantine")
        return rows

    @api.post(
        "/api/quarantine/replay",
        response_model=ReplayOut,
        dependencies=[Security(REQUIRE[Permission.ENROLMENT])],
    )
    async def replay(body: ReplayIn) -> ReplayOut:
        """Run quarantined payloads again (e.g. after enrolling their device)."""
        try:
            ids, result = await pipeline.replay(ids=body.ids, reason=body.reason, limit=body.limit)
        except StorageError:
            raise HTTPException(503, "storage unavailable; retry") from None
        return ReplayOut(replayed=ids, result=_summary(result))

    return api


async def _ingest_key(request: Request, authorization: str | None) -> str | None:
    """The integration an ``rpmk_`` API key with the ingest scope posts for; None when no
    such key is sent; 401 for an unknown or revoked key, 403 for one without the scope."""
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip().startswith(API_KEY_PREFIX):
        return None
    who = await bearer_principal(request.app.state.auth, credential.strip())
    if who is None:
        raise HTTPException(401, "invalid or revoked API key")
    if who.integration is None:
        raise HTTPException(403, "this key may not ingest")
    return who.integration


async def _bounded_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
