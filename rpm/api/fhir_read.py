"""FHIR reads (``GET /fhir/<type>/<id>``) and the CapabilityStatement (``/fhir/metadata``).

Another care team's resource reads as no resource at all (404), so its existence does not
leak. Each read is one audit row naming the patient whose data it answered with.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from rpm.domain.errors import NotFoundError
from rpm.domain.text_input import whole_number
from rpm.engagement.checkins import QUESTIONNAIRES
from rpm.fhir import capability, questionnaires, resources
from rpm.fhir.mapping import reading_uid_of, served_observations
from rpm.storage import alert_reads
from rpm.storage import checkins as checkin_store
from rpm.storage import fhir as fhir_store

from .access import CanReadFhir, audit
from .deps import PoolDep, StartedAtDep
from .fhir_common import FhirRoute, answer, base, negotiate, visible

router = APIRouter(route_class=FhirRoute, tags=["fhir"])
# Ids of alerts and SMS are bigserials: longer digit strings name nothing.


# Open to every caller, as FHIR clients discover a server (and SMART its security) by
# reading it before they hold a token; it describes the server, not a patient.
@router.get("/fhir/metadata")
async def metadata(request: Request, started: StartedAtDep) -> Response:
    negotiate(request)
    return answer(capability.capability_statement(base(request), request.app.version, started))


@router.get("/fhir/Observation/{obs_id}")
async def observation_read(
    request: Request, who: CanReadFhir, pool: PoolDep, obs_id: str
) -> Response:
    negotiate(request)
    try:
        uid, _part = reading_uid_of(obs_id)
    except ValueError:
        # Not an id we ever gave out: no such Observation (a decision, not an error of ours).
        raise NotFoundError("no such Observation") from None
    async with pool.acquire() as conn:
        stored = await fhir_store.recorded_by_uid(conn, str(uid))
        if stored and not await visible(conn, who, [stored.accepted.patient_id]):
            stored = None
    patients = [stored.accepted.patient_id] if stored else []
    audit(request, who, "read", "Observation", patients, obs_id)
    for obs in served_observations(stored) if stored else []:
        if obs["id"] == obs_id:
            return answer(obs)
    raise NotFoundError("no such Observation")


@router.get("/fhir/Patient/{fhir_id}")
async def patient_read(request: Request, who: CanReadFhir, pool: PoolDep, fhir_id: str) -> Response:
    negotiate(request)
    async with pool.acquire() as conn:
        rows = await fhir_store.patients(conn, fhir_ids=[fhir_id], limit=1)
        rows = [p for p in rows if await visible(conn, who, [p["id"]])]
    audit(request, who, "read", "Patient", (p["id"] for p in rows), fhir_id)
    if not rows:
        raise NotFoundError("no such Patient")
    return answer(resources.patient(rows[0]))


@router.get("/fhir/Device/{fhir_id}")
async def device_read(request: Request, who: CanReadFhir, pool: PoolDep, fhir_id: str) -> Response:
    negotiate(request)
    async with pool.acquire() as conn:
        rows = await fhir_store.devices(conn, fhir_ids=[fhir_id], limit=1)
        if who.teams is not None:  # staff see the devices of their patients
            rows = [d for d in rows if await visible(conn, who, [d["patient_id"] or ""])]
    bound = (d["patient_id"] for d in rows if d["patient_id"])
    audit(request, who, "read", "Device", bound, fhir_id)
    if not rows:
        raise NotFoundError("no such Device")
    return answer(resources.device(rows[0]))


@router.get("/fhir/DetectedIssue/{alert_id}")
async def detected_issue_read(
    request: Request, who: CanReadFhir, pool: PoolDep, alert_id: str
) -> Response:
    negotiate(request)
    number = whole_number(alert_id)
    if number is None:
        raise NotFoundError("no such DetectedIssue")
    async with pool.acquire() as conn:
        alert = await alert_reads.get(conn, number)
    if alert and not who.sees(alert["care_team"]):
        alert = None
    audit(request, who, "read", "DetectedIssue", [alert["patient_id"]] if alert else (), alert_id)
    if alert is None:
        raise NotFoundError("no such DetectedIssue")
    return answer(resources.detected_issue(alert))


@router.get("/fhir/Communication/{message_id}")
async def communication_read(
    request: Request, who: CanReadFhir, pool: PoolDep, message_id: str
) -> Response:
    negotiate(request)
    number = whole_number(message_id)
    if number is None:
        raise NotFoundError("no such Communication")
    async with pool.acquire() as conn:
        message = await fhir_store.sms_message(conn, number)
        if message and not await visible(conn, who, [message["patient_id"]]):
            message = None
    patients = [message["patient_id"]] if message else ()
    audit(request, who, "read", "Communication", patients, message_id)
    if message is None:
        raise NotFoundError("no such Communication")
    return answer(resources.communication(message))


@router.get("/fhir/QuestionnaireResponse/{response_id}")
async def questionnaire_response_read(
    request: Request, who: CanReadFhir, pool: PoolDep, response_id: str
) -> Response:
    """A patient's SMS check-in answers (in progress until every question is answered)."""
    negotiate(request)
    number = whole_number(response_id)
    if number is None:
        raise NotFoundError("no such QuestionnaireResponse")
    async with pool.acquire() as conn:
        found = await checkin_store.response(conn, number)
        if found and (found.resource is None or not await visible(conn, who, [found.patient_id])):
            found = None
    audit(
        request,
        who,
        "read",
        "QuestionnaireResponse",
        [found.patient_id] if found else (),
        response_id,
    )
    if found is None or found.resource is None:
        raise NotFoundError("no such QuestionnaireResponse")
    return answer(dict(found.resource))


# Not patient data: the questions every patient of a check-in campaign is asked.
@router.get("/fhir/Questionnaire/{fhir_id}")
async def questionnaire_read(request: Request, _who: CanReadFhir, fhir_id: str) -> Response:
    negotiate(request)
    for q in QUESTIONNAIRES.values():
        if q.fhir_id == fhir_id:
            return answer(questionnaires.questionnaire(q))
    raise NotFoundError("no such Questionnaire")
