"""The FHIR R4 API over our store (``/fhir``, read-only, ``application/fhir+json``), and the
EHR push's failures (``/api/fhir/push/...``).

``GET /fhir/metadata`` says what is offered (``rpm.fhir.capability``): read and search of
Observation, Patient, Device, DetectedIssue (alerts) and Communication (patient SMS).
Searches answer searchset Bundles paged by an opaque ``_cursor`` (``link`` ``next``). Every
error is an OperationOutcome: 400 for a search we cannot answer as asked, 404 for an unknown
id or resource type, 405 for anything but reading, 406 when the client accepts no JSON, 503
while the database is away, 500 for our bugs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import asyncpg
import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from rpm.domain.errors import SearchError
from rpm.fhir import bundles, capability, resources
from rpm.fhir.bundles import DEVICE_IDENTIFIER_SYSTEM, PATIENT_IDENTIFIER_SYSTEM
from rpm.fhir.mapping import reading_uid_of, recorded_observations
from rpm.fhir.search import (
    Params,
    Token,
    count_of,
    decode_cursor,
    encode_cursor,
    observation_query,
    page_observations,
    parse_references,
    parse_tokens,
)
from rpm.storage import alerts as alert_store
from rpm.storage import fhir as fhir_store
from rpm.storage import outbox as outbox_store
from rpm.storage import sms as sms_store
from rpm.storage import staff as staff_store
from rpm.storage.pool import DATABASE_UNAVAILABLE, Conn

from .access import CanManageFhirPush, CanReadFhir, Principal, audit

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_JSON_FORMATS = frozenset({"json", "application/json", FHIR_JSON})
_ACCEPTED = frozenset({"*/*", "application/*", "application/json", FHIR_JSON})
_MAX_OFFSET = 10_000  # offset paging (alerts, SMS) goes this deep
Answer = tuple[int, dict[str, Any]]


def _fhir(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


# R4 issue types (http://hl7.org/fhir/R4/valueset-issue-type.html) for refusals raised
# before a FHIR interaction runs: no or a bad credential, a role without FHIR access.
_REFUSAL_CODES = {401: "login", 403: "forbidden", 503: "transient"}


class _FhirRoute(APIRoute):
    """Under ``/fhir`` even a refusal by the access dependencies is an OperationOutcome."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not self.path.startswith("/fhir"):
            return handler

        async def outcome_on_refusal(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as exc:
                code = _REFUSAL_CODES.get(exc.status_code, "processing")
                body = bundles.operation_outcome(code, str(exc.detail))
                return _fhir(exc.status_code, body, dict(exc.headers or {}))

        return outcome_on_refusal


def _not_found(what: str) -> Answer:
    return 404, bundles.operation_outcome("not-found", f"no such {what}")


def _acceptable(request: Request) -> bool:
    fmt = request.query_params.get("_format")
    if fmt is not None:
        return fmt in _JSON_FORMATS
    accept = request.headers.get("accept")
    if not accept:
        return True
    return any(part.split(";")[0].strip() in _ACCEPTED for part in accept.split(","))


async def _answer(request: Request, work: Callable[[], Awaitable[Answer]]) -> Response:
    """Run one FHIR interaction; every failure becomes an OperationOutcome."""
    if not _acceptable(request):
        return _fhir(406, bundles.operation_outcome("not-supported", "this server speaks JSON"))
    try:
        status, body = await work()
    except SearchError as exc:
        return _fhir(400, bundles.operation_outcome(exc.code, str(exc)))
    except DATABASE_UNAVAILABLE as exc:
        log.warning("fhir api: database unavailable (%s)", exc.__class__.__name__)
        return _fhir(503, bundles.operation_outcome("transient", "storage unavailable: retry"))
    except Exception:
        log.exception("fhir api: %s %s failed", request.method, request.url.path)
        return _fhir(500, bundles.operation_outcome("exception", "internal error"))
    return _fhir(status, body)


def _params(request: Request) -> Params:
    prefer = request.headers.get("prefer", "").replace(" ", "").lower()
    return Params(tuple(request.query_params.multi_items()), strict="handling=strict" in prefer)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def _links(
    request: Request, kind: str, used: Sequence[tuple[str, str]], cursor: str | None
) -> tuple[str, str | None]:
    """The self link (the parameters used) and the next link (with ``cursor``)."""
    url = f"{_base(request)}/{kind}"
    self_url = f"{url}?{urlencode(used)}" if used else url
    if cursor is None:
        return self_url, None
    rest = [(k, v) for k, v in used if k != "_cursor"]
    return self_url, f"{url}?{urlencode([*rest, ('_cursor', cursor)])}"


def _codes(tokens: Sequence[Token], system: str) -> list[str]:
    return [t.code for t in tokens if t.system in (None, system)]


# bigserial ids; 2^53 keeps clarity for JSON numbers read as doubles (RFC 8259, section 6).
_RowId = Annotated[int, Field(ge=1, le=2**53)]


class RequeueIn(BaseModel):
    refusal_ids: list[_RowId] = Field(default_factory=list, max_length=10_000)
    outbox_ids: list[_RowId] = Field(default_factory=list, max_length=10_000)
    actor: str | None = Field(default=None, min_length=1, max_length=200)  # ignored


async def _visible(conn: Conn, who: Principal, patient_ids: Sequence[str]) -> list[str]:
    """Those of ``patient_ids`` the caller may see (nurses: their care teams' patients)."""
    if who.teams is None:
        return list(patient_ids)
    teams = await staff_store.patient_teams(conn, patient_ids)
    return [p for p in patient_ids if p in teams and who.sees(teams[p])]


def router(pool: asyncpg.Pool, *, software_version: str = "0.1.0") -> APIRouter:
    """The FHIR API and the push-failure endpoints over ``pool``.

    Staff see their care teams' patients only (another team's resources are 404 and left
    out of searches); an API key with ``fhir:read`` sees all. Each read or search is one
    audit row naming the patients whose data it answered with.
    """
    r = APIRouter(route_class=_FhirRoute)
    started = datetime.now(UTC)

    # Open to every caller, as FHIR clients discover a server (and SMART its security) by
    # reading it before they hold a token; it describes the server, not a patient.
    @r.get("/fhir/metadata", tags=["fhir"])
    async def metadata(request: Request) -> Response:
        async def work() -> Answer:
            return 200, capability.capability_statement(_base(request), software_version, started)

        return await _answer(request, work)

    # --- Observation ---------------------------------------------------------------------

    @r.get("/fhir/Observation", tags=["fhir"])
    async def observation_search(request: Request, who: CanReadFhir) -> Response:
        async def work() -> Answer:
            query, used = observation_query(_params(request))
            async with pool.acquire() as conn:
                ids = await _visible(
                    conn, who, await fhir_store.resolve_patients(conn, query.patients)
                )
                rows = []
                if ids and query.kinds and query.count:
                    query = replace(query, patients=tuple(ids))
                    rows = await fhir_store.observation_page(conn, query, query.count + 2)
            found, cursor = page_observations(rows, query)
            audit(request, who, "search", "Observation", (x.accepted.patient_id for x in rows))
            self_url, next_url = _links(request, "Observation", used, cursor)
            return 200, bundles.searchset(found, _base(request), self_url, next_url=next_url)

        return await _answer(request, work)

    @r.get("/fhir/Observation/{obs_id}", tags=["fhir"])
    async def observation_read(request: Request, who: CanReadFhir, obs_id: str) -> Response:
        async def work() -> Answer:
            try:
                uid, _part = reading_uid_of(obs_id)
            except ValueError:
                return _not_found("Observation")
            async with pool.acquire() as conn:
                stored = await fhir_store.recorded_by_uid(conn, str(uid))
                if stored and not await _visible(conn, who, [stored.accepted.patient_id]):
                    stored = None
            audit(
                request,
                who,
                "read",
                "Observation",
                [stored.accepted.patient_id] if stored else (),
                obs_id,
            )
            for obs in recorded_observations(stored) if stored else []:
                if obs["id"] == obs_id:
                    return 200, obs
            return _not_found("Observation")

        return await _answer(request, work)

    # --- Patient and Device ----------------------------------------------------------------

    @r.get("/fhir/Patient", tags=["fhir"])
    async def patient_search(request: Request, who: CanReadFhir) -> Response:
        async def work() -> Answer:
            params = _params(request)
            used = params.check(("_id", "identifier"))
            fhir_ids = _token_filter(params, "_id", None)
            ids = _token_filter(params, "identifier", PATIENT_IDENTIFIER_SYSTEM)
            after = decode_cursor(params.one("_cursor"), _one_string)
            count = count_of(params)
            async with pool.acquire() as conn:
                if who.teams is not None:
                    allowed = await staff_store.team_patients(conn, who.teams)
                    ids = allowed if ids is None else sorted(set(ids) & set(allowed))
                rows = await fhir_store.patients(
                    conn,
                    fhir_ids=fhir_ids,
                    ids=ids,
                    after=after[0] if after else None,
                    limit=count + 1,
                )
            audit(request, who, "search", "Patient", (p["id"] for p in rows[:count]))
            return _id_page(request, "Patient", used, rows, count, resources.patient)

        return await _answer(request, work)

    @r.get("/fhir/Patient/{fhir_id}", tags=["fhir"])
    async def patient_read(request: Request, who: CanReadFhir, fhir_id: str) -> Response:
        async def work() -> Answer:
            async with pool.acquire() as conn:
                rows = await fhir_store.patients(conn, fhir_ids=[fhir_id], limit=1)
                rows = [p for p in rows if await _visible(conn, who, [p["id"]])]
            audit(request, who, "read", "Patient", (p["id"] for p in rows), fhir_id)
            return (200, resources.patient(rows[0])) if rows else _not_found("Patient")

        return await _answer(request, work)

    @r.get("/fhir/Device", tags=["fhir"])
    async def device_search(request: Request, who: CanReadFhir) -> Response:
        async def work() -> Answer:
            params = _params(request)
            used = params.check(("_id", "identifier", "patient"))
            fhir_ids = _token_filter(params, "_id", None)
            ids = _token_filter(params, "identifier", DEVICE_IDENTIFIER_SYSTEM)
            patient_refs = [
                p for v in params.all("patient") for p in parse_references(v, "Patient")
            ]
            after = decode_cursor(params.one("_cursor"), _one_string)
            count = count_of(params)
            async with pool.acquire() as conn:
                patients = None
                if patient_refs:
                    patients = await fhir_store.resolve_patients(conn, patient_refs)
                if who.teams is not None:
                    allowed = await staff_store.team_patients(conn, who.teams)
                    patients = allowed if patients is None else sorted(set(patients) & set(allowed))
                rows = await fhir_store.devices(
                    conn,
                    fhir_ids=fhir_ids,
                    ids=ids,
                    patient_ids=patients,
                    after=after[0] if after else None,
                    limit=count + 1,
                )
            bound = (d["patient_id"] for d in rows[:count] if d["patient_id"])
            audit(request, who, "search", "Device", bound)
            return _id_page(request, "Device", used, rows, count, resources.device)

        return await _answer(request, work)

    @r.get("/fhir/Device/{fhir_id}", tags=["fhir"])
    async def device_read(request: Request, who: CanReadFhir, fhir_id: str) -> Response:
        async def work() -> Answer:
            async with pool.acquire() as conn:
                rows = await fhir_store.devices(conn, fhir_ids=[fhir_id], limit=1)
                if who.teams is not None:  # staff see the devices of their patients
                    rows = [d for d in rows if await _visible(conn, who, [d["patient_id"] or ""])]
            bound = (d["patient_id"] for d in rows if d["patient_id"])
            audit(request, who, "read", "Device", bound, fhir_id)
            return (200, resources.device(rows[0])) if rows else _not_found("Device")

        return await _answer(request, work)

    # --- alerts and SMS ----------------------------------------------------------------------

    @r.get("/fhir/DetectedIssue", tags=["fhir"])
    async def detected_issue_search(request: Request, who: CanReadFhir) -> Response:
        async def work() -> Answer:
            params = _params(request)
            used = params.check(("patient",))
            offset, count = _offset_page(params)
            async with pool.acquire() as conn:
                patient = await _one_patient(conn, params, ("patient",))
                if patient and not await _visible(conn, who, [patient]):
                    patient = ""
                if patient == "":
                    rows = []
                else:
                    rows = await alert_store.listing(
                        conn,
                        states=None,
                        patient_id=patient,
                        limit=offset + count + 1,
                        order="newest",
                        care_teams=sorted(who.teams) if who.teams is not None else None,
                    )
            page = rows[offset : offset + count]
            audit(request, who, "search", "DetectedIssue", (a["patient_id"] for a in page))
            return _offset_answer(
                request, "DetectedIssue", used, rows, offset, count, resources.detected_issue
            )

        return await _answer(request, work)

    @r.get("/fhir/DetectedIssue/{alert_id}", tags=["fhir"])
    async def detected_issue_read(request: Request, who: CanReadFhir, alert_id: str) -> Response:
        async def work() -> Answer:
            if not alert_id.isdigit() or len(alert_id) > 18:
                return _not_found("DetectedIssue")
            async with pool.acquire() as conn:
                alert = await alert_store.get(conn, int(alert_id))
            if alert and not who.sees(alert["care_team"]):
                alert = None
            audit(
                request,
                who,
                "read",
                "DetectedIssue",
                [alert["patient_id"]] if alert else (),
                alert_id,
            )
            return (200, resources.detected_issue(alert)) if alert else _not_found("DetectedIssue")

        return await _answer(request, work)

    @r.get("/fhir/Communication", tags=["fhir"])
    async def communication_search(request: Request, who: CanReadFhir) -> Response:
        async def work() -> Answer:
            params = _params(request)
            used = params.check(("patient", "subject"))
            offset, count = _offset_page(params)
            async with pool.acquire() as conn:
                patient = await _one_patient(conn, params, ("patient", "subject"))
                if patient is None:
                    raise SearchError("patient (or subject) is required", code="required")
                if patient and not await _visible(conn, who, [patient]):
                    patient = ""
                rows = []
                if patient:
                    rows = await sms_store.messages(
                        conn, patient_id=patient, limit=offset + count + 1
                    )
            rows = [m for m in rows if m["patient_id"] is not None]
            page = rows[offset : offset + count]
            audit(request, who, "search", "Communication", (m["patient_id"] for m in page))
            return _offset_answer(
                request, "Communication", used, rows, offset, count, resources.communication
            )

        return await _answer(request, work)

    @r.get("/fhir/Communication/{message_id}", tags=["fhir"])
    async def communication_read(request: Request, who: CanReadFhir, message_id: str) -> Response:
        async def work() -> Answer:
            if not message_id.isdigit() or len(message_id) > 18:
                return _not_found("Communication")
            async with pool.acquire() as conn:
                message = await fhir_store.sms_message(conn, int(message_id))
                if message and not await _visible(conn, who, [message["patient_id"]]):
                    message = None
            audit(
                request,
                who,
                "read",
                "Communication",
                [message["patient_id"]] if message else (),
                message_id,
            )
            if message is None:
                return _not_found("Communication")
            return 200, resources.communication(message)

        return await _answer(request, work)

    # --- anything else under /fhir ----------------------------------------------------------

    @r.api_route(
        "/fhir",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    @r.api_route(
        "/fhir/{path:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    async def fhir_other(request: Request, _who: CanReadFhir) -> Response:
        kind = request.url.path.removeprefix("/fhir").strip("/").split("/", 1)[0]
        known = kind in capability.SUPPORTED or kind in ("", "metadata")
        if request.method != "GET" and known:
            outcome = bundles.operation_outcome(
                "not-supported", f"{request.method} is not supported: this API is read-only"
            )
            return _fhir(405, outcome, {"Allow": "GET"})
        if known:
            return _fhir(*_not_found("resource"))
        outcome = bundles.operation_outcome(
            "not-supported", f"resource type {kind!r} is not supported"
        )
        return _fhir(404, outcome)

    # --- the EHR push's failures ------------------------------------------------------------

    @r.get("/api/fhir/push/failures", tags=["fhir push"])
    async def push_failures(
        request: Request,
        who: CanManageFhirPush,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        include_requeued: bool = False,
    ) -> dict[str, Any]:
        """What the EHR refused (per Observation, with its OperationOutcome), the push work
        that failed after all its attempts, and the backlog not yet delivered."""
        async with pool.acquire() as conn:
            refused = await fhir_store.refusals(
                conn, include_requeued=include_requeued, limit=limit
            )
            found = {
                "refused": refused,
                "failed": await fhir_store.failed_items(
                    conn, include_requeued=include_requeued, limit=limit
                ),
                "backlog": await fhir_store.backlog(conn),
            }
        patients = (r["patient_id"] for r in refused if r.get("patient_id"))
        audit(request, who, "search", "fhir-push-failures", patients)
        return found

    @r.post("/api/fhir/push/requeue", tags=["fhir push"])
    async def push_requeue(who: CanManageFhirPush, body: RequeueIn) -> dict[str, Any]:
        """Send refused Observations and failed push work again (after fixing the cause)."""
        async with pool.acquire() as conn, conn.transaction():
            keys = await fhir_store.requeue_refusals(conn, body.refusal_ids, who.actor)
            keys += await fhir_store.requeue_failed(conn, body.outbox_ids, who.actor)
            readings = sorted(set(keys))
            if readings:
                await outbox_store.enqueue(
                    conn,
                    [
                        (
                            fhir_store.CHANNEL,
                            f"fhir:requeue:{uuid.uuid4()}",
                            {"readings": [list(k) for k in readings], "requeued_by": who.actor},
                        )
                    ],
                )
        log.info("fhir push: %d readings requeued by %s", len(readings), who.actor)
        return {"requeued_readings": len(readings)}

    return r


def _one_string(v: list[Any]) -> bool:
    return len(v) == 1 and isinstance(v[0], str)


def _token_filter(params: Params, name: str, system: str | None) -> list[str] | None:
    """Codes of a token parameter (repeats AND: intersect); None when not given."""
    found: set[str] | None = None
    for value in params.all(name):
        tokens = parse_tokens(value)
        codes = {t.code for t in tokens} if system is None else set(_codes(tokens, system))
        found = codes if found is None else found & codes
    return sorted(found) if found is not None else None


def _id_page(
    request: Request,
    kind: str,
    used: Sequence[tuple[str, str]],
    rows: Sequence[dict[str, Any]],
    count: int,
    to_fhir: Callable[[dict[str, Any]], dict[str, Any]],
) -> Answer:
    page = list(rows[:count])
    cursor = None
    if len(rows) > count and page:
        cursor = encode_cursor([page[-1]["id"]])
    self_url, next_url = _links(request, kind, used, cursor)
    found = [to_fhir(row) for row in page]
    return 200, bundles.searchset(found, _base(request), self_url, next_url=next_url)


def _offset_page(params: Params) -> tuple[int, int]:
    after = decode_cursor(params.one("_cursor"), lambda v: len(v) == 1 and isinstance(v[0], int))
    offset = int(after[0]) if after else 0
    count = count_of(params)
    if offset < 0 or offset + count > _MAX_OFFSET:
        raise SearchError(f"pages go {_MAX_OFFSET} results deep; narrow the search")
    return offset, count


def _offset_answer(
    request: Request,
    kind: str,
    used: Sequence[tuple[str, str]],
    rows: Sequence[dict[str, Any]],
    offset: int,
    count: int,
    to_fhir: Callable[[dict[str, Any]], dict[str, Any]],
) -> Answer:
    page = list(rows[offset : offset + count])
    cursor = encode_cursor([offset + count]) if len(rows) > offset + count else None
    self_url, next_url = _links(request, kind, used, cursor)
    found = [to_fhir(row) for row in page]
    return 200, bundles.searchset(found, _base(request), self_url, next_url=next_url)


async def _one_patient(conn: Conn, params: Params, names: Sequence[str]) -> str | None:
    """Our id of the one patient named (None: none named; "": named but unknown)."""
    refs = [p for n in names for v in params.all(n) for p in parse_references(v, "Patient")]
    if not refs:
        return None
    if len(set(refs)) > 1:
        raise SearchError("name one patient")
    ids = await fhir_store.resolve_patients(conn, refs)
    return ids[0] if ids else ""
