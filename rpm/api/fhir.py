"""The FHIR R4 API over our store (``/fhir``, read-only, ``application/fhir+json``), and the
EHR push's failures (``/api/fhir/push/...``): one router made of

- ``fhir_read``: ``GET /fhir/metadata`` (what is offered, ``rpm.fhir.capability``) and reads
  of Observation, Patient, Device, DetectedIssue (alerts), Communication (patient SMS),
  QuestionnaireResponse (SMS check-in answers) and Questionnaire (the check-ins asked);
- ``fhir_search``: their searches (Questionnaire is read only), searchset Bundles paged by
  an opaque ``_cursor``;
- ``fhir_push``: the push's refusals, failures and requeue;
- below: the answer to anything else under ``/fhir``.

Every error under ``/fhir`` is an OperationOutcome (rpm/api/errors.py): 400 for a search we
cannot answer as asked, 401/403 for a missing or insufficient credential, 404 for an unknown
id or resource type, 405 for anything but reading, 406 when the client accepts no JSON, 503
while the database is away, 500 for our bugs. Staff see their care teams' patients only; an
API key with ``fhir:read`` sees all; each read or search is one audit row.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from rpm.domain.errors import NotFoundError
from rpm.fhir import bundles, capability

from . import fhir_push, fhir_read, fhir_search
from .access import CanReadFhir
from .errors import fhir_json
from .fhir_common import FhirRoute

router = APIRouter(route_class=FhirRoute)
router.include_router(fhir_read.router)
router.include_router(fhir_search.router)
router.include_router(fhir_push.router)

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


# After every other FHIR route, which it would otherwise shadow.
@router.api_route("/fhir", methods=_METHODS, include_in_schema=False)
@router.api_route("/fhir/{path:path}", methods=_METHODS, include_in_schema=False)
async def fhir_other(request: Request, _who: CanReadFhir) -> Response:
    """Anything else under /fhir: 405 for writes (read-only API), 404 otherwise."""
    kind = request.url.path.removeprefix("/fhir").strip("/").split("/", 1)[0]
    known = kind in capability.SUPPORTED or kind in ("", "metadata")
    if request.method != "GET" and known:
        outcome = bundles.operation_outcome(
            "not-supported", f"{request.method} is not supported: this API is read-only"
        )
        return fhir_json(405, outcome, {"Allow": "GET"})
    if known:
        raise NotFoundError("no such resource")
    # An unknown type is a 404 whose issue says why: not one we support (R4 issue type).
    outcome = bundles.operation_outcome("not-supported", f"resource type {kind!r} is not supported")
    return fhir_json(404, outcome)
