"""One mapping from the error tree (rpm/domain/errors.py) to HTTP answers.

Route functions raise our errors; ``install`` registers the handlers that answer them once
on the app, where starlette's ``ExceptionMiddleware`` runs them (inside the audit
middleware, so an error answer is audited with its status). ``ANSWERS`` says, per class of
the tree, the status, the detail (the exception's message unless a fixed text is given) and
the R4 issue type (http://hl7.org/fhir/R4/valueset-issue-type.html) used under ``/fhir``.
The most specific class wins, as in ``except`` clauses (the exception's MRO is walked).

Under ``/fhir`` every error is an OperationOutcome (``application/fhir+json``), including
FastAPI's own refusals (``HTTPException`` from the access dependencies); elsewhere it is
``{"detail": "..."}``. A status given as Retry-After comes from the exception's
``retry_after_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rpm.domain.errors import (
    BatcherFull,
    BrokerProvisioningError,
    ConfigurationError,
    ConflictError,
    DeliveryError,
    DeviceDataError,
    InternalError,
    InvalidRequestError,
    NotAcceptableError,
    NotFoundError,
    RefusedError,
    RequestError,
    RpmError,
    SearchError,
    SignInRateLimited,
    SignInRefused,
    StorageError,
)
from rpm.fhir.bundles import operation_outcome
from rpm.storage.pool import DATABASE_UNAVAILABLE

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
FHIR_PREFIX = "/fhir"
INTERNAL = "internal error"


@dataclass(frozen=True, slots=True)
class Answer:
    """How one class of the tree is answered."""

    status: int
    issue: str  # R4 issue type of the OperationOutcome under /fhir
    detail: str | None = None  # a fixed text ("{exc}": the message); None: the message
    retry_after: bool = False  # send Retry-After from the exception's ``retry_after_s``
    logged: bool = False  # our failure, not the caller's: logged with its traceback


ANSWERS: Mapping[type[RpmError], Answer] = {
    RpmError: Answer(500, "exception", INTERNAL, logged=True),
    # requests we refuse: the message is for the caller
    RequestError: Answer(400, "invalid"),
    InvalidRequestError: Answer(422, "invalid"),
    SearchError: Answer(400, "invalid"),  # the issue type is the error's ``code``
    NotFoundError: Answer(404, "not-found"),
    ConflictError: Answer(409, "conflict"),
    NotAcceptableError: Answer(406, "not-supported"),
    RefusedError: Answer(403, "forbidden"),
    SignInRefused: Answer(401, "login", "wrong name or password"),
    SignInRateLimited: Answer(429, "throttled", "too many failed sign-ins", retry_after=True),
    DeviceDataError: Answer(422, "invalid"),
    # our dependencies failed: retry (Retry-After says when)
    StorageError: Answer(503, "transient", "storage unavailable; retry", retry_after=True),
    BatcherFull: Answer(
        503, "transient", "too many webhooks waiting for storage; retry", retry_after=True
    ),
    BrokerProvisioningError: Answer(503, "transient", "the broker did not take the change: {exc}"),
    DeliveryError: Answer(502, "transient", "an outside service failed; retry", logged=True),
    # ours to fix: nothing about them is for the caller
    ConfigurationError: Answer(500, "exception", INTERNAL, logged=True),
    InternalError: Answer(500, "exception", INTERNAL, logged=True),
}
# Refusals FastAPI raises itself (HTTPException), as issue types under /fhir.
HTTP_ISSUES: Mapping[int, str] = {401: "login", 403: "forbidden", 503: "transient"}
# Input the database refuses (a NUL byte, a number past bigint) is the caller's mistake,
# not our failure: 422 rather than 500. Found by tests/test_openapi_fuzz.py.
BAD_INPUT = "invalid input (out of range or bad characters)"


def answer_for(exc: RpmError) -> Answer:
    """The entry of the most specific class of ``exc`` in ``ANSWERS``."""
    for cls in type(exc).__mro__:
        found = ANSWERS.get(cls)
        if found is not None:
            return found
    raise AssertionError("RpmError is in ANSWERS")  # pragma: no cover


def as_http(exc: RpmError) -> HTTPException:
    """``exc`` as the status, detail and headers it is answered with."""
    answer = answer_for(exc)
    if answer.logged:
        log.error("%s answered %d", type(exc).__name__, answer.status, exc_info=exc)
    detail = str(exc) if answer.detail is None else answer.detail.format(exc=exc)
    headers = None
    wait = getattr(exc, "retry_after_s", None)
    if answer.retry_after and isinstance(wait, int | float):
        headers = {"Retry-After": str(max(1, int(wait + 0.5)))}
    return HTTPException(answer.status, detail, headers)


def issue_of(exc: Exception) -> str:
    """The OperationOutcome issue type of an error answered under /fhir."""
    if isinstance(exc, SearchError):
        return exc.code
    if isinstance(exc, RpmError):
        return answer_for(exc).issue
    if isinstance(exc, StarletteHTTPException):
        return HTTP_ISSUES.get(exc.status_code, "processing")
    return "exception"


def fhir_json(
    status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def is_fhir(request: Request) -> bool:
    path = request.url.path
    return path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")


async def _http_answer(request: Request, http: StarletteHTTPException, issue: str) -> Response:
    if is_fhir(request):
        outcome = operation_outcome(issue, str(http.detail))
        return fhir_json(http.status_code, outcome, http.headers)
    return await http_exception_handler(request, http)


async def on_rpm_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RpmError)
    return await _http_answer(request, as_http(exc), issue_of(exc))


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return await _http_answer(request, exc, issue_of(exc))


async def on_data_error(request: Request, exc: Exception) -> Response:
    # Logged by path and error class only: the refused value may be patient data.
    log.warning("database refused input: %s %s", request.url.path, type(exc).__name__)
    if is_fhir(request):
        return fhir_json(422, operation_outcome("invalid", BAD_INPUT))
    return JSONResponse({"detail": BAD_INPUT}, 422)


async def on_database_away(request: Request, exc: Exception) -> Response:
    """asyncpg's words for the database being away, raised after the request was let in
    (the principal is read before): answered as ``StorageError``, 503 with Retry-After."""
    log.warning("api: database unavailable (%s) %s", type(exc).__name__, request.url.path)
    return await on_rpm_error(request, StorageError())


def unexpected(request: Request, exc: Exception) -> Response:
    """The OperationOutcome for an exception outside the tree under /fhir: the database
    away is a ``StorageError`` (503), anything else our bug (500, logged)."""
    if isinstance(exc, DATABASE_UNAVAILABLE):
        log.warning("fhir api: database unavailable (%s)", type(exc).__name__)
        http = as_http(StorageError())
        outcome = operation_outcome("transient", str(http.detail))
        return fhir_json(http.status_code, outcome, http.headers)
    log.error("fhir api: %s %s failed", request.method, request.url.path, exc_info=exc)
    return fhir_json(500, operation_outcome("exception", INTERNAL))


def install(app: FastAPI) -> None:
    """Register the handlers on ``app`` (once; every router's errors go through them)."""
    app.add_exception_handler(RpmError, on_rpm_error)
    # Starlette's, which FastAPI's HTTPException and the router's own 404/405 both are.
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(asyncpg.DataError, on_data_error)
    for away in DATABASE_UNAVAILABLE:
        app.add_exception_handler(away, on_database_away)


# What the route class of /fhir (rpm/api/fhir_common.py) leaves to the app's handlers:
# those above, and FastAPI's own for a request that fails validation (422).
HANDLED: tuple[type[Exception], ...] = (
    RpmError,
    StarletteHTTPException,
    asyncpg.DataError,
    RequestValidationError,
)
