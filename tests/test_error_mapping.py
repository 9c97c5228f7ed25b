"""The one mapping from the error tree to HTTP answers (rpm/api/errors.py), through the real
app (``create_app`` over the test database): per branch of the tree, the status and body a
client gets on an ``/api`` route, and the OperationOutcome under ``/fhir``. And: every
exception class of the project is in the tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fhir.resources.R4B.operationoutcome import OperationOutcome

from device_gateways.broker_admin import BrokerAdmin, BrokerAdminConfig
from rpm.api.app import create_app
from rpm.api.fhir_common import FhirRoute
from rpm.api.live import Broadcaster
from rpm.domain import errors
from rpm.pipeline import IngestPipeline
from rpm.settings import Settings
from rpm.validation import ClockPolicy
from tests.helpers import staff_headers

FHIR_JSON = "application/fhir+json"

# A representative error of each branch, what a client is answered on /api (status, detail,
# Retry-After), and the OperationOutcome's issue type under /fhir.
BRANCHES: dict[str, tuple[errors.RpmError, int, str, str | None, str]] = {
    "invalid": (errors.SnoozeTooLong("at most 30 min"), 422, "at most 30 min", None, "invalid"),
    "search": (errors.SearchError("bad date", code="value"), 400, "bad date", None, "value"),
    "not-found": (errors.AlertNotFound("no such alert"), 404, "no such alert", None, "not-found"),
    "conflict": (
        errors.InvalidTransition("cannot resolve"),
        409,
        "cannot resolve",
        None,
        "conflict",
    ),
    # A note missing is an invalid request first, an invalid transition second.
    "note": (errors.NoteRequired("needs a note"), 422, "needs a note", None, "invalid"),
    "not-acceptable": (
        errors.NotAcceptableError("JSON only"),
        406,
        "JSON only",
        None,
        "not-supported",
    ),
    "refused": (errors.RefusedError("not yours"), 403, "not yours", None, "forbidden"),
    "sign-in": (errors.SignInRefused("x"), 401, "wrong name or password", None, "login"),
    "rate-limited": (
        errors.SignInRateLimited(41.6),
        429,
        "too many failed sign-ins",
        "42",
        "throttled",
    ),
    "device-data": (errors.DecodeError("not JSON"), 422, "not JSON", None, "invalid"),
    "storage": (
        errors.StorageError("pool closed"),
        503,
        "storage unavailable; retry",
        "5",
        "transient",
    ),
    "batcher-full": (
        errors.BatcherFull(),
        503,
        "too many webhooks waiting for storage; retry",
        "1",
        "transient",
    ),
    "broker": (
        errors.BrokerProvisioningError("timeout"),
        503,
        "the broker did not take the change: timeout",
        None,
        "transient",
    ),
    "delivery": (
        errors.EhrUnavailable("502"),
        502,
        "an outside service failed; retry",
        None,
        "transient",
    ),
    "configuration": (errors.ScenarioFileError("x.yaml"), 500, "internal error", None, "exception"),
    "bug": (errors.BadWork("no readings list"), 500, "internal error", None, "exception"),
}


def _probes() -> list[Any]:
    """Routes raising each representative error, on /api and under /fhir."""
    api = APIRouter()
    fhir = APIRouter(route_class=FhirRoute)

    async def raise_(branch: str) -> None:
        if branch == "unexpected":
            raise RuntimeError("a bug outside the tree")
        if branch == "database-away":  # what asyncpg raises when the server goes mid-request
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")
        raise BRANCHES[branch][0]

    api.add_api_route("/api/probe/{branch}", raise_)
    fhir.add_api_route("/fhir/probe/{branch}", raise_)
    return [*api.routes, *fhir.routes]


@pytest.fixture
async def app(pool: asyncpg.Pool, db_url: str) -> FastAPI:
    app = create_app(
        pool,
        Broadcaster(db_url, ()),  # not started: no route here streams
        IngestPipeline(pool, ClockPolicy(), rules_refresh_s=2.0),
        BrokerAdmin(BrokerAdminConfig("127.0.0.1", 1, "", "")),  # never called here
        Settings(),
    )
    # Ahead of the app's routes, so the FHIR catch-all does not answer the probes.
    app.router.routes[:0] = _probes()
    return app


@pytest.fixture
async def http(app: FastAPI, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://rpm.test",
        headers=await staff_headers(pool),
    ) as client:
        yield client


def outcome(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith(FHIR_JSON), resp.text
    body: dict[str, Any] = resp.json()
    OperationOutcome.model_validate(body)
    assert len(body["issue"]) == 1
    return body["issue"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("branch", sorted(BRANCHES))
async def test_a_branch_is_answered_the_same_on_api_and_as_an_outcome_under_fhir(
    http: httpx.AsyncClient, branch: str
) -> None:
    _, status, detail, retry_after, issue = BRANCHES[branch]

    resp = await http.get(f"/api/probe/{branch}")
    assert (resp.status_code, resp.json()) == (status, {"detail": detail})
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers.get("retry-after") == retry_after
    assert resp.headers["cache-control"] == "no-store"  # the API's headers are on errors too

    resp = await http.get(f"/fhir/probe/{branch}")
    assert resp.status_code == status
    assert outcome(resp) == {"severity": "error", "code": issue, "diagnostics": detail}
    assert resp.headers.get("retry-after") == retry_after


async def test_a_bug_under_fhir_is_a_500_outcome_that_says_nothing(
    http: httpx.AsyncClient,
) -> None:
    resp = await http.get("/fhir/probe/unexpected")
    assert resp.status_code == 500
    assert outcome(resp) == {
        "severity": "error",
        "code": "exception",
        "diagnostics": "internal error",
    }


async def test_the_database_going_away_mid_request_is_a_503_everywhere(
    http: httpx.AsyncClient,
) -> None:
    resp = await http.get("/api/probe/database-away")
    assert (resp.status_code, resp.json()) == (503, {"detail": "storage unavailable; retry"})
    assert resp.headers["retry-after"]
    resp = await http.get("/fhir/probe/database-away")
    assert resp.status_code == 503
    assert outcome(resp)["code"] == "transient"
    assert resp.headers["retry-after"]


# --- real routes ------------------------------------------------------------------------


async def test_real_routes_answer_through_the_mapping(http: httpx.AsyncClient) -> None:
    missing = await http.get("/api/alerts/999")  # AlertNotFound
    assert (missing.status_code, missing.json()) == (404, {"detail": "no such alert"})

    body = {"id": "ehr-1", "name": "EHR", "scopes": ["fhir:read"]}
    assert (await http.post("/api/keys", json=body)).status_code == 201
    taken = await http.post("/api/keys", json=body)  # ApiKeyExists
    assert (taken.status_code, taken.json()) == (409, {"detail": "key 'ehr-1' exists"})

    ingest = {**body, "id": "ingest-1", "scopes": ["ingest"]}  # InvalidRequestError
    refused = await http.post("/api/keys", json=ingest)
    assert refused.status_code == 422
    assert refused.json() == {"detail": "an ingest key acts for an integration: name it"}

    version = await http.post("/api/rules/programs/nothing/activate", json={"version": 1})
    assert version.status_code == 404  # RuleNotFound, with its own message
    assert version.json() == {"detail": "program 'nothing' has no version 1"}

    wrong = await http.post("/api/auth/token", json={"username": "nobody", "password": "x"})
    assert (wrong.status_code, wrong.json()) == (401, {"detail": "wrong name or password"})


async def test_real_fhir_routes_answer_outcomes(http: httpx.AsyncClient) -> None:
    resp = await http.get("/fhir/Patient/nobody")  # NotFoundError
    assert resp.status_code == 404
    assert outcome(resp)["code"] == "not-found"

    resp = await http.get("/fhir/Communication")  # SearchError with its own issue type
    assert resp.status_code == 400
    assert outcome(resp) == {
        "severity": "error",
        "code": "required",
        "diagnostics": "patient (or subject) is required",
    }

    resp = await http.get("/fhir/Patient", headers={"Accept": "text/html"})  # NotAcceptable
    assert resp.status_code == 406
    assert outcome(resp)["code"] == "not-supported"

    resp = await http.get("/fhir/Patient", headers={"Authorization": "Bearer rpmt_nope"})
    assert resp.status_code == 401  # FastAPI's HTTPException from the access dependency
    assert outcome(resp)["code"] == "login"
    assert resp.headers["www-authenticate"] == "Bearer"


# --- every exception class is in the tree -----------------------------------------------

PACKAGES = ("rpm", "rules", "alerts", "device_gateways", "simulators")


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for package in PACKAGES:
        root = importlib.import_module(package)
        names = [package] + [
            m.name
            for m in pkgutil.walk_packages(root.__path__, f"{package}.")
            if not m.name.endswith("__main__")
        ]
        for name in names:
            module = importlib.import_module(name)
            for cls_name, cls in inspect.getmembers(module, inspect.isclass):
                if (
                    cls.__module__ == name
                    and issubclass(cls, BaseException)
                    and not cls_name.startswith("_")
                ):
                    found.append(cls)
    return found


@pytest.mark.pure
def test_every_exception_class_of_the_project_is_in_the_tree() -> None:
    classes = _exception_classes()
    assert errors.RpmError in classes  # the walk finds the tree
    assert errors.BadWork in classes
    outside = [
        f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, errors.RpmError)
    ]
    assert outside == []
    # and they all live in the one module
    elsewhere = [
        f"{c.__module__}.{c.__qualname__}" for c in classes if c.__module__ != errors.__name__
    ]
    assert elsewhere == []


@pytest.mark.pure
def test_every_branch_of_the_tree_has_an_answer() -> None:
    from rpm.api.errors import ANSWERS, answer_for

    tree = [
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.RpmError)
    ]
    for cls in tree:
        assert answer_for(cls.__new__(cls)) is not None
    # the branches the HTTP mapping keys on are spelled out, not inherited from RpmError
    for branch in (
        errors.RequestError,
        errors.InvalidRequestError,
        errors.NotFoundError,
        errors.ConflictError,
        errors.RefusedError,
        errors.StorageError,
        errors.DeliveryError,
        errors.ConfigurationError,
        errors.InternalError,
    ):
        assert branch in ANSWERS
