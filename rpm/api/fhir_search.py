"""FHIR searches (``GET /fhir/<type>?...`` and ``POST /fhir/<type>/_search`` with a form
body): searchset Bundles with ``total``, paged by an opaque ``_cursor``.

Staff see their care teams' patients only (others' resources are left out); an API key with
``fhir:read`` sees all. Each search is one audit row naming the patients it answered with.
"""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request, Response

from rpm.domain.errors import SearchError
from rpm.fhir import bundles, resources
from rpm.fhir.bundles import DEVICE_IDENTIFIER_SYSTEM, PATIENT_IDENTIFIER_SYSTEM
from rpm.fhir.search import (
    decode_cursor,
    observation_query,
    page_observations,
    parse_references,
    wants_total,
)
from rpm.storage import alert_reads
from rpm.storage import checkins as checkin_store
from rpm.storage import fhir as fhir_store
from rpm.storage import sms as sms_store
from rpm.storage import staff as staff_store

from .access import CanReadFhir, audit
from .deps import PoolDep
from .fhir_common import (
    POST_SEARCH,
    FhirRoute,
    answer,
    base,
    id_page,
    links,
    named_patients,
    negotiate,
    offset_answer,
    offset_page,
    one_string,
    page_size,
    search_params,
    token_filter,
    total_of,
    visible,
)

router = APIRouter(route_class=FhirRoute, tags=["fhir"])


@router.get("/fhir/Observation")
@router.post("/fhir/Observation/_search", **POST_SEARCH)
async def observation_search(request: Request, who: CanReadFhir, pool: PoolDep) -> Response:
    negotiate(request)
    params = await search_params(request)
    query, used = observation_query(params)
    total: int | None = None
    async with pool.acquire() as conn:
        ids = await visible(conn, who, await fhir_store.resolve_patients(conn, query.patients))
        rows = []
        matches = bool(ids and query.kinds)
        if matches:
            query = replace(query, patients=tuple(ids))
            if query.count:
                rows = await fhir_store.observation_page(conn, query, query.count + 2)
        if wants_total(params):
            total = await fhir_store.observation_count(conn, query) if matches else 0
    found, cursor = page_observations(rows, query)
    audit(request, who, "search", "Observation", (x.accepted.patient_id for x in rows))
    self_url, next_url = links(request, "Observation", used, cursor)
    bundle = bundles.searchset(found, base(request), self_url, next_url=next_url, total=total)
    return answer(bundle)


@router.get("/fhir/Patient")
@router.post("/fhir/Patient/_search", **POST_SEARCH)
async def patient_search(request: Request, who: CanReadFhir, pool: PoolDep) -> Response:
    negotiate(request)
    params = await search_params(request)
    used = params.check(("_id", "identifier"))
    fhir_ids = token_filter(params, "_id", None)
    ids = token_filter(params, "identifier", PATIENT_IDENTIFIER_SYSTEM)
    after = decode_cursor(params.one("_cursor"), one_string)
    count = page_size(params)
    async with pool.acquire() as conn:
        if who.teams is not None:
            allowed = await staff_store.team_patients(conn, who.teams)
            ids = allowed if ids is None else sorted(set(ids) & set(allowed))
        rows = []
        if count:
            rows = await fhir_store.patients(
                conn,
                fhir_ids=fhir_ids,
                ids=ids,
                after=after[0] if after else None,
                limit=count + 1,
            )
        total = await total_of(
            params, lambda: fhir_store.patient_count(conn, fhir_ids=fhir_ids, ids=ids)
        )
    audit(request, who, "search", "Patient", (p["id"] for p in rows[:count]))
    return id_page(request, "Patient", used, rows, count, resources.patient, total)


@router.get("/fhir/Device")
@router.post("/fhir/Device/_search", **POST_SEARCH)
async def device_search(request: Request, who: CanReadFhir, pool: PoolDep) -> Response:
    negotiate(request)
    params = await search_params(request)
    used = params.check(("_id", "identifier", "patient"))
    fhir_ids = token_filter(params, "_id", None)
    ids = token_filter(params, "identifier", DEVICE_IDENTIFIER_SYSTEM)
    patient_refs = [p for v in params.all("patient") for p in parse_references(v, "Patient")]
    after = decode_cursor(params.one("_cursor"), one_string)
    count = page_size(params)
    async with pool.acquire() as conn:
        patients = None
        if patient_refs:
            patients = await fhir_store.resolve_patients(conn, patient_refs)
        if who.teams is not None:
            allowed = await staff_store.team_patients(conn, who.teams)
            patients = allowed if patients is None else sorted(set(patients) & set(allowed))
        rows = []
        if count:
            rows = await fhir_store.devices(
                conn,
                fhir_ids=fhir_ids,
                ids=ids,
                patient_ids=patients,
                after=after[0] if after else None,
                limit=count + 1,
            )
        total = await total_of(
            params,
            lambda: fhir_store.device_count(conn, fhir_ids=fhir_ids, ids=ids, patient_ids=patients),
        )
    bound = (d["patient_id"] for d in rows[:count] if d["patient_id"])
    audit(request, who, "search", "Device", bound)
    return id_page(request, "Device", used, rows, count, resources.device, total)


@router.get("/fhir/DetectedIssue")
@router.post("/fhir/DetectedIssue/_search", **POST_SEARCH)
async def detected_issue_search(request: Request, who: CanReadFhir, pool: PoolDep) -> Response:
    negotiate(request)
    params = await search_params(request)
    used = params.check(("patient",))
    offset, count = offset_page(params)
    teams = sorted(who.teams) if who.teams is not None else None
    async with pool.acquire() as conn:
        patients = await named_patients(conn, who, params, ("patient",))
        rows = []
        if patients != [] and count:
            rows = await alert_reads.listing(
                conn,
                states=None,
                patient_id=None,
                patient_ids=patients,
                limit=offset + count + 1,
                order="newest",
                care_teams=teams,
            )
        total = await total_of(params, lambda: alert_reads.count_of_patients(conn, patients, teams))
    page = rows[offset : offset + count]
    audit(request, who, "search", "DetectedIssue", (a["patient_id"] for a in page))
    return offset_answer(
        request, "DetectedIssue", used, rows, offset, count, resources.detected_issue, total
    )


@router.get("/fhir/Communication")
@router.post("/fhir/Communication/_search", **POST_SEARCH)
async def communication_search(request: Request, who: CanReadFhir, pool: PoolDep) -> Response:
    negotiate(request)
    params = await search_params(request)
    used = params.check(("patient", "subject"))
    offset, count = offset_page(params)
    async with pool.acquire() as conn:
        patients = await named_patients(conn, who, params, ("patient", "subject"))
        if patients is None:
            raise SearchError("patient (or subject) is required", code="required")
        rows = []
        if patients and count:
            rows = await sms_store.messages(conn, patient_ids=patients, limit=offset + count + 1)
        total = await total_of(params, lambda: sms_store.message_count(conn, patients))
    page = rows[offset : offset + count]
    audit(request, who, "search", "Communication", (m["patient_id"] for m in page))
    return offset_answer(
        request, "Communication", used, rows, offset, count, resources.communication, total
    )


@router.get("/fhir/QuestionnaireResponse")
@router.post("/fhir/QuestionnaireResponse/_search", **POST_SEARCH)
async def questionnaire_response_search(
    request: Request, who: CanReadFhir, pool: PoolDep
) -> Response:
    negotiate(request)
    params = await search_params(request)
    used = params.check(("patient", "subject"))
    offset, count = offset_page(params)
    async with pool.acquire() as conn:
        patients = await named_patients(conn, who, params, ("patient", "subject"))
        if patients is None:
            raise SearchError("patient (or subject) is required", code="required")
        found = []
        if patients and count:
            found = await checkin_store.responses(conn, patients, limit=offset + count + 1)
        total = await total_of(params, lambda: checkin_store.response_count(conn, patients))
    rows = [{"patient_id": r.patient_id, **(r.resource or {})} for r in found]
    page = rows[offset : offset + count]
    audit(request, who, "search", "QuestionnaireResponse", (r["patient_id"] for r in page))
    return offset_answer(
        request,
        "QuestionnaireResponse",
        used,
        rows,
        offset,
        count,
        lambda r: {k: v for k, v in r.items() if k != "patient_id"},
        total,
    )
