"""FHIR searches (``GET /fhir/<type>?...``): searchset Bundles paged by an opaque ``_cursor``.

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
    count_of,
    decode_cursor,
    observation_query,
    page_observations,
    parse_references,
)
from rpm.storage import alert_reads
from rpm.storage import checkins as checkin_store
from rpm.storage import fhir as fhir_store
from rpm.storage import sms as sms_store
from rpm.storage import staff as staff_store

from .access import CanReadFhir, audit
from .deps import PoolDep
from .fhir_common import (
    FhirRoute,
    answer,
    base,
    id_page,
    links,
    negotiate,
    offset_answer,
    offset_page,
    one_patient,
    one_string,
    params_of,
    token_filter,
    visible,
)

router = APIRouter(route_class=FhirRoute, tags=["fhir"])


@router.get("/fhir/Observation")
async def observation_search(request: Request, who: CanReadFhir, pool: PoolDep) -> Response:
    negotiate(request)
    query, used = observation_query(params_of(request))
    async with pool.acquire() as conn:
        ids = await visible(conn, who, await fhir_store.resolve_patients(conn, query.patients))
        rows = []
        if ids and query.kinds and query.count:
            query = replace(query, patients=tuple(ids))
            rows = await fhir_store.observation_page(conn, query, query.count + 2)
    found, cursor = page_observations(rows, query)
    audit(request, who, "search", "Observation", (x.accepted.patient_id for x in rows))
    self_url, next_url = links(request, "Observation", used, cursor)
    return answer(bundles.searchset(found, base(request), self_url, next_url=next_url))


@router.get("/fhir/Patient")
async def patient_search(request: Request, who: CanReadFhir, pool: PoolDep) -> Response:
    negotiate(request)
    params = params_of(request)
    used = params.check(("_id", "identifier"))
    fhir_ids = token_filter(params, "_id", None)
    ids = token_filter(params, "identifier", PATIENT_IDENTIFIER_SYSTEM)
    after = decode_cursor(params.one("_cursor"), one_string)
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
    return id_page(request, "Patient", used, rows, count, resources.patient)


@router.get("/fhir/Device")
async def device_search(request: Request, who: CanReadFhir, pool: PoolDep) -> Response:
    negotiate(request)
    params = params_of(request)
    used = params.check(("_id", "identifier", "patient"))
    fhir_ids = token_filter(params, "_id", None)
    ids = token_filter(params, "identifier", DEVICE_IDENTIFIER_SYSTEM)
    patient_refs = [p for v in params.all("patient") for p in parse_references(v, "Patient")]
    after = decode_cursor(params.one("_cursor"), one_string)
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
    return id_page(request, "Device", used, rows, count, resources.device)


@router.get("/fhir/DetectedIssue")
async def detected_issue_search(request: Request, who: CanReadFhir, pool: PoolDep) -> Response:
    negotiate(request)
    params = params_of(request)
    used = params.check(("patient",))
    offset, count = offset_page(params)
    async with pool.acquire() as conn:
        patient = await one_patient(conn, params, ("patient",))
        if patient and not await visible(conn, who, [patient]):
            patient = ""
        if patient == "":
            rows = []
        else:
            rows = await alert_reads.listing(
                conn,
                states=None,
                patient_id=patient,
                limit=offset + count + 1,
                order="newest",
                care_teams=sorted(who.teams) if who.teams is not None else None,
            )
    page = rows[offset : offset + count]
    audit(request, who, "search", "DetectedIssue", (a["patient_id"] for a in page))
    return offset_answer(
        request, "DetectedIssue", used, rows, offset, count, resources.detected_issue
    )


@router.get("/fhir/Communication")
async def communication_search(request: Request, who: CanReadFhir, pool: PoolDep) -> Response:
    negotiate(request)
    params = params_of(request)
    used = params.check(("patient", "subject"))
    offset, count = offset_page(params)
    async with pool.acquire() as conn:
        patient = await one_patient(conn, params, ("patient", "subject"))
        if patient is None:
            raise SearchError("patient (or subject) is required", code="required")
        if patient and not await visible(conn, who, [patient]):
            patient = ""
        rows = []
        if patient:
            rows = await sms_store.messages(conn, patient_id=patient, limit=offset + count + 1)
    rows = [m for m in rows if m["patient_id"] is not None]
    page = rows[offset : offset + count]
    audit(request, who, "search", "Communication", (m["patient_id"] for m in page))
    return offset_answer(
        request, "Communication", used, rows, offset, count, resources.communication
    )


@router.get("/fhir/QuestionnaireResponse")
async def questionnaire_response_search(
    request: Request, who: CanReadFhir, pool: PoolDep
) -> Response:
    negotiate(request)
    params = params_of(request)
    used = params.check(("patient", "subject"))
    offset, count = offset_page(params)
    async with pool.acquire() as conn:
        patient = await one_patient(conn, params, ("patient", "subject"))
        if patient is None:
            raise SearchError("patient (or subject) is required", code="required")
        if patient and not await visible(conn, who, [patient]):
            patient = ""
        found = []
        if patient:
            found = await checkin_store.responses(conn, patient, limit=offset + count + 1)
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
    )
