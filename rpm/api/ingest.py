"""HTTP ingestion for vendor webhooks, and the quarantine (list, replay).

``POST /ingest/{format}`` runs the same unit of work as MQTT, shared by concurrent requests
(rpm/ingest_batcher.py), each answered for its own body: a 200 answer means the readings are
committed; retries of the same request store nothing twice.

Hostile input gets a 4xx before it costs much: a body over the size limit is refused
while it streams in (413, whatever Content-Length claims); a client address whose
requests keep failing authentication is throttled (429) before its body is read; an
authenticated integration over its rate gets 429 with Retry-After (charged only after
authentication, so nobody can spend another integration's tokens by naming it); JSON
nested deeper than the limit is quarantined and answered 422 before any parser sees it.
Storage away or too many webhooks waiting for it are errors of the tree (``StorageError``,
``BatcherFull``), answered 503 with Retry-After by rpm/api/errors.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from device_gateways.decoders import DECODERS
from device_gateways.webhook_auth import verify_bearer, verify_signature
from rpm.auth import API_KEY_PREFIX
from rpm.domain import RawMessage, Rejection, RejectReason
from rpm.domain.errors import StorageError
from rpm.domain.text_input import whole_number
from rpm.ingest_batcher import BatchLimits, IngestBatcher
from rpm.json_depth import max_depth
from rpm.metrics import Metrics, delivery_families
from rpm.pipeline import BatchResult, IngestPipeline, MessageResult
from rpm.rate_limit import TokenBuckets
from rpm.settings import Settings
from rpm.storage import quarantine as quarantine_store
from rpm.storage import registry
from rpm.storage.pool import DATABASE_UNAVAILABLE

from .access import REQUIRE, CanEnrol, Permission, audit, bearer_principal
from .deps import PipelineDep, PoolDep, SettingsDep, held

log = logging.getLogger(__name__)

# Bodies larger than this are scanned for their depth in a worker thread (a few ms per
# MiB of numpy work that would otherwise hold the event loop).
_DEPTH_IN_THREAD_BYTES = 64 * 1024


class IngestResult(BaseModel):
    stored: int
    duplicates: int
    quarantined: int
    reasons: dict[str, int]
    # Only when the body held retractions (FHIR status entered-in-error or cancelled):
    # readings marked entered-in-error (now, or already by an earlier try), and retractions
    # kept for readings not stored yet.
    retracted: int | None = None
    retractions_pending: int | None = None
    detail: str | None = None  # why nothing was accepted, when the whole body was refused


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


_QuarantineId = Annotated[int, Field(ge=1, le=2**53)]  # bigserial, exact as a JSON double


class ReplayIn(BaseModel):
    ids: Annotated[list[_QuarantineId] | None, Field(max_length=1000)] = None
    reason: str | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 1000


class ReplayOut(BaseModel):
    replayed: list[int]
    result: IngestResult


def _summary(r: BatchResult | MessageResult) -> IngestResult:
    return IngestResult(
        stored=r.stored,
        duplicates=r.duplicates,
        quarantined=r.quarantined,
        reasons=r.quarantine_reasons,
        retracted=r.retracted if r.retracted or r.retractions_pending else None,
        retractions_pending=r.retractions_pending if r.retracted or r.retractions_pending else None,
    )


def _too_many(wait: float, who: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"too many requests from this {who}; retry later"},
        429,
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )


class Webhooks:
    """What the webhook route keeps between requests: the rate limits and the shared
    units of work (one per app, in ``app.state.webhooks``)."""

    def __init__(
        self, pipeline: IngestPipeline, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        self.per_integration = TokenBuckets(settings.ingest.rate_per_s, settings.ingest.burst)
        # Charged by requests that fail authentication (or are too large to authenticate).
        self.per_address = TokenBuckets(
            settings.ingest.unauth_rate_per_s, settings.ingest.unauth_burst
        )
        # Concurrent requests share units of work (rpm/ingest_batcher.py); each hears its own.
        self.batcher = IngestBatcher(
            lambda batch: pipeline.process(batch, itemized=True),
            BatchLimits(
                max_messages=settings.ingest.webhook_batch_max_messages,
                max_wait_s=settings.ingest.webhook_batch_max_wait_ms / 1000,
                max_queued=settings.ingest.webhook_queue_max,
            ),
        )
        if metrics is not None:
            counts = self.batcher.counters
            metrics.watch(
                delivery_families(
                    "rpm_webhook_messages",
                    "Webhook messages handed to the shared units of work, or refused (queue full).",
                    lambda: {"batched": counts.messages, "refused": counts.refused},
                )
            )


async def webhooks(request: Request) -> Webhooks:
    return held(request, "webhooks")  # type: ignore[no-any-return]


WebhooksDep = Annotated[Webhooks, Depends(webhooks)]
router = APIRouter()


@router.post(
    "/ingest/{payload_format}",
    response_model=IngestResult,
    responses={
        401: {"description": "missing or wrong credentials"},
        403: {"description": "integration revoked, or format not allowed for it"},
        413: {"description": "body larger than RPM_INGEST_MAX_BODY_BYTES (1 MiB)"},
        422: {
            "model": IngestResult,
            "description": "nothing usable (unparsable, too deeply nested, unknown "
            "device...); the payload is kept in the quarantine",
        },
        429: {"description": "rate limit of the integration or client address; Retry-After"},
        503: {
            "description": "storage unavailable, or too many webhooks waiting for it "
            "(RPM_WEBHOOK_QUEUE_MAX); retry after Retry-After (retries are idempotent)"
        },
    },
)
async def ingest(
    payload_format: str,
    request: Request,
    pool: PoolDep,
    settings: SettingsDep,
    hooks: WebhooksDep,
    x_rpm_integration: Annotated[str | None, Header()] = None,
    x_rpm_signature: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Readings from a vendor cloud, authenticated per integration."""
    if payload_format not in DECODERS:
        raise HTTPException(404, f"unknown format; known: {sorted(DECODERS)}")
    address = request.client.host if request.client else "unknown"
    clock = time.monotonic()
    wait = hooks.per_address.wait(address, clock)
    if wait > 0:
        return _too_many(wait, "address")

    def refuse(status: int, detail: str) -> HTTPException:
        hooks.per_address.take(address, clock)
        return HTTPException(status, detail)

    max_bytes = settings.ingest.max_body_bytes
    body = await _bounded_body(request, max_bytes)
    if body is None:
        raise refuse(413, f"body larger than {max_bytes} bytes")
    # An API key with the ingest scope (rpm/api/access.py) acts for its integration,
    # instead of the integration's own signature or token.
    try:
        key = await _ingest_key(request, authorization)
    except HTTPException as refused:
        # Not an error to translate: a refused key also costs the address a token.
        raise refuse(refused.status_code, str(refused.detail)) from None
    if key is not None and x_rpm_integration not in (None, key):
        raise HTTPException(403, "this key posts for another integration")
    integration_id = key or x_rpm_integration
    if not integration_id:
        raise refuse(401, "missing X-RPM-Integration")
    async with pool.acquire() as conn:
        integration = await registry.integration(conn, integration_id)
    if integration is None:
        raise refuse(401, "unknown integration")
    problem = (
        None
        if key is not None
        else verify_signature(integration.secret, body, x_rpm_signature, time.time())
        if integration.auth == "hmac"
        else verify_bearer(integration.secret, authorization)
    )
    if problem is not None:
        log.warning("webhook refused: integration=%s: %s", integration.id, problem)
        raise refuse(401, problem)
    if integration.revoked:
        raise HTTPException(403, "integration revoked")
    if payload_format not in integration.formats:
        raise HTTPException(403, f"integration may not post {payload_format!r}")
    wait = hooks.per_integration.take(integration.id, clock)
    if wait > 0:
        log.warning("webhook throttled: integration=%s", integration.id)
        return _too_many(wait, "integration")
    raw = RawMessage(
        transport="http",
        payload_format=payload_format,
        device_id=None,
        payload=body,
        received_at=datetime.now(UTC),
        integration=integration.id,
    )
    if len(body) > _DEPTH_IN_THREAD_BYTES:
        depth = await asyncio.to_thread(max_depth, body)
    else:
        depth = max_depth(body)
    if depth > settings.ingest.max_json_depth:
        return await _quarantine_too_deep(pool, raw, depth, settings.ingest.max_json_depth)
    # StorageError and BatcherFull (503, Retry-After) are answered by rpm/api/errors.py.
    result = await hooks.batcher.submit(raw)
    summary = _summary(result)
    accepted = result.stored + result.duplicates + result.retracted + result.retractions_pending
    status = 422 if accepted == 0 and result.quarantined else 200
    return JSONResponse(summary.model_dump(exclude_none=True), status)


@router.get(
    "/api/quarantine",
    response_model=list[QuarantineOut],
    dependencies=[Security(REQUIRE[Permission.ENROLMENT])],
)
async def quarantine(
    request: Request,
    who: CanEnrol,
    pool: PoolDep,
    reason: str | None = None,
    replayed: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Refused payloads with their reasons; payload bytes shown as UTF-8 (replaced)."""
    async with pool.acquire() as conn:
        rows = await quarantine_store.recent(conn, reason=reason, replayed=replayed, limit=limit)
    for r in rows:
        r["payload"] = bytes(r["payload"]).decode("utf-8", "replace")
    # Refused payloads are device data that may describe a patient: reading them is audited.
    audit(request, who, "search", "quarantine")
    return rows


@router.post(
    "/api/quarantine/replay",
    response_model=ReplayOut,
    response_model_exclude_none=True,
    dependencies=[Security(REQUIRE[Permission.ENROLMENT])],
)
async def replay(pipeline: PipelineDep, body: ReplayIn) -> ReplayOut:
    """Run quarantined payloads again (e.g. after enrolling their device)."""
    ids, result = await pipeline.replay(ids=body.ids, reason=body.reason, limit=body.limit)
    return ReplayOut(replayed=ids, result=_summary(result))


async def _quarantine_too_deep(
    pool: asyncpg.Pool, raw: RawMessage, depth: int, limit: int
) -> JSONResponse:
    detail = f"JSON nested {depth} levels deep; at most {limit} accepted"
    try:
        async with pool.acquire() as conn:
            await quarantine_store.insert(conn, [Rejection(RejectReason.MALFORMED, detail, raw)])
    except DATABASE_UNAVAILABLE as exc:  # asyncpg's words for it, as ours (503, Retry-After)
        raise StorageError("storage unavailable; retry") from exc
    reasons = {RejectReason.MALFORMED.value: 1}
    summary = IngestResult(stored=0, duplicates=0, quarantined=1, reasons=reasons, detail=detail)
    return JSONResponse(summary.model_dump(exclude_none=True), 422)


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


async def _bounded_body(request: Request, max_bytes: int) -> bytes | None:
    """The body, or None as soon as it passes ``max_bytes`` (declared or actually sent)."""
    declared = request.headers.get("content-length")
    size_declared = whole_number(declared)
    if size_declared is not None and size_declared > max_bytes:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
