"""The nurses' dashboard: sign-in, the live triage queue, the patient view and its charts.

Pages are Jinja2 templates (``templates/``, rendered with what ``dashboard_views`` prepares)
with one hand-written script and style sheet (``static/``). The queue page reads the alert
API from the browser (``GET /api/alerts`` and its live stream). Actions go through this
router, which checks the session and its CSRF token, names the signed-in nurse as the
actor, and forwards the request to the alert API in-process: the dashboard depends on the
API's paths, not on its internals, and an API feature that is not there yet (assignment,
program filters) is hidden, not broken.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine, Mapping
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.types import Scope

from rpm.auth import CSRF_HEADER, Auth, SignedIn, current_staff, safe_next
from rpm.domain import Metric
from rpm.domain.errors import (
    NotFoundError,
    RequestError,
    RpmError,
    SignInRateLimited,
    SignInRefused,
)
from rpm.storage import readings as reading_store
from rpm.storage import registry, rollups, rule_programs, staff_auth
from rpm.storage import staff as staff_store

from . import charts, errors
from .access import Principal, audit, staff_principal
from .dashboard_views import (
    HERE,
    READINGS_SHOWN,
    patient_alert_order,
    programs,
    templates,
    time_panel,
    vitals,
)
from .deps import AuthDep, ClockDep, PoolDep
from .page_security import SVG_CSP, SecuredStaticFiles, secure

STATE_FILTERS = {
    "active": "Open and acknowledged",
    "open": "Open",
    "acknowledged": "Acknowledged",
    "resolved": "Resolved",
}
ACTIONS = ("acknowledge", "resolve", "assign")
DONE = {
    "acknowledge": "Alert acknowledged.",
    "resolve": "Alert resolved.",
    "assign": "Alert assigned.",
    "entered-in-error": "Reading marked entered in error; its alerts were updated.",
}
PROBLEMS = {
    "conflict": "Not possible in the alert's current state: someone may have acted on it.",
    "note": "Resolving needs a note saying what was done.",
    "assignee": "Choose who to assign the alert to.",
    "unavailable": "Assigning alerts is not available on this server yet.",
    "missing": "There is no such alert.",
    "refused": "The server refused the request.",
    "reason": "Marking a reading entered in error needs a reason.",
    "reading": "There is no such reading.",
}
CHART_READINGS = 300  # newest readings per chart
TREND_DAYS_MAX = 3660  # a chart of daily means spans at most ten years

# The signed-in staff member (``rpm.auth.current_staff``: the app's ``Auth``, kept in
# ``app.state.auth`` by ``create_app``); pages without a session redirect to sign-in.
Staff = Annotated[SignedIn, Depends(current_staff)]


def _hsts(scope: Scope) -> bool:
    """Whether the app is served over HTTPS (its session cookie is ``Secure``)."""
    auth: Auth = scope["app"].state.auth
    return auth.config.cookie_secure


class SecuredRoute(APIRoute):
    """Every response of this router, errors included, carries the security headers; an
    error is a page for a browser (``Accept: text/html``), JSON otherwise."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def secured(request: Request) -> Response:
            # Caught here, not left to the app's handlers, because the answer differs: an
            # error page, and the page headers on it (rpm/api/errors.py maps our errors).
            try:
                response = await handler(request)
            except HTTPException as exc:
                response = await _error(request, exc)
            except RpmError as exc:
                response = await _error(request, errors.as_http(exc))
            except RequestValidationError as exc:
                response = await request_validation_exception_handler(request, exc)
            return secure(response, hsts=_hsts(request.scope))

        return secured


router = APIRouter(route_class=SecuredRoute, include_in_schema=False)
router.mount("/dashboard/static", SecuredStaticFiles(directory=HERE / "static", hsts=_hsts))


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/dashboard/", 303)


@router.get("/dashboard")
async def dashboard_root() -> RedirectResponse:
    return RedirectResponse("/dashboard/", 303)


# --- signing in and out -----------------------------------------------------------------


def _sign_in_page(
    request: Request, auth: Auth, next_: str, *, error: str | None = None, status: int = 200
) -> Response:
    token = auth.new_signin_token()
    response = templates.TemplateResponse(
        request,
        "sign_in.html",
        {"signin_token": token, "next": safe_next(next_), "error": error},
        status_code=status,
    )
    auth.set_signin_cookie(response, token)
    return response


@router.get("/dashboard/sign-in")
async def sign_in_form(
    request: Request,
    auth: AuthDep,
    next_: Annotated[str, Query(alias="next", max_length=2000)] = "",
) -> Response:
    if await auth.session_for(request) is not None:
        return RedirectResponse(safe_next(next_), 303)
    return _sign_in_page(request, auth, next_)


@router.post("/dashboard/sign-in")
async def sign_in(
    request: Request,
    auth: AuthDep,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=2000)] = "",
    signin_token: Annotated[str, Form(max_length=200)] = "",
    next_: Annotated[str, Form(alias="next", max_length=2000)] = "",
) -> Response:
    if not auth.signin_token_matches(request, signin_token):
        return _sign_in_page(
            request, auth, next_, error="The sign-in form expired. Please try again.", status=403
        )
    client = request.client.host if request.client else "unknown"
    # A refused sign-in is answered with the form again, saying why: a page, not an error.
    try:
        token, _who = await auth.sign_in(username, password, client)
    except SignInRateLimited as exc:
        response = _sign_in_page(
            request,
            auth,
            next_,
            error="Too many failed sign-ins. Wait a few minutes, then try again.",
            status=429,
        )
        response.headers["Retry-After"] = str(max(1, int(exc.retry_after_s + 0.5)))
        return response
    except SignInRefused:
        return _sign_in_page(
            request, auth, next_, error="Wrong sign-in name or password.", status=401
        )
    response = RedirectResponse(safe_next(next_), 303)
    auth.set_session_cookie(response, token)
    auth.clear_signin_cookie(response)
    return response


@router.post("/dashboard/sign-out")
async def sign_out(
    request: Request,
    auth: AuthDep,
    staff: Staff,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    auth.check_csrf(staff, request, csrf_token)
    response = RedirectResponse("/dashboard/sign-in", 303)
    await auth.sign_out(request, response)
    return response


# --- pages ------------------------------------------------------------------------------


@router.get("/dashboard/")
async def queue(
    request: Request,
    staff: Staff,
    pool: PoolDep,
    program: Annotated[str, Query(max_length=64)] = "",
    state: Annotated[str, Query(max_length=32)] = "active",
) -> Response:
    async with pool.acquire() as conn:
        offered = await programs(conn)
    # Confirm before paging: first readings waiting for their repeat, not paged (yet).
    waiting = await call_api(
        request, "GET", "/api/alerts/confirmations", params={"state": "pending"}
    )
    return templates.TemplateResponse(
        request,
        "queue.html",
        {
            "page": "queue",
            "staff": staff,
            "programs": offered,
            "program": program if program in offered else "",
            "states": STATE_FILTERS,
            "state": state if state in STATE_FILTERS else "active",
            "can_assign": _api_offers(request.app, "assign"),
            "waiting": waiting.json() if waiting.status_code == 200 else [],
        },
    )


async def _visible_patient(
    request: Request, staff: SignedIn, pool: asyncpg.Pool, patient_id: str, resource: str
) -> Principal:
    """The nurse as a principal; 404 (audited) for a patient outside their care teams."""
    who = staff_principal(staff.staff_id, staff.role, staff.teams, "session")
    async with pool.acquire() as conn:
        teams = await staff_store.patient_teams(conn, [patient_id])
    if patient_id not in teams or not who.sees(teams[patient_id]):
        audit(request, who, "read", resource, resource_id=patient_id)
        raise NotFoundError("no such patient")
    audit(request, who, "read", resource, [patient_id], patient_id)
    return who


@router.get("/dashboard/patients/{patient_id}")
async def patient(
    request: Request,
    staff: Staff,
    pool: PoolDep,
    clock: ClockDep,
    patient_id: str,
    alert: int | None = None,
    done: str = "",
    problem: str = "",
) -> Response:
    await _visible_patient(request, staff, pool, patient_id, "patient-page")
    async with pool.acquire() as conn:
        contexts = await registry.patient_contexts(conn, [patient_id])
        if patient_id not in contexts:
            raise NotFoundError("no such patient")
        # The tables' newest readings and, for each chart's text alternative, a summary of
        # its readings made in the database: index ranges per metric (docs/data-lifecycle.md).
        newest = await reading_store.newest_by_metric(conn, patient_id, READINGS_SHOWN)
        charted = await reading_store.chart_summaries(conn, patient_id, CHART_READINGS)
        staff_list = await staff_auth.active_staff(conn)
    listing = await call_api(
        request,
        "GET",
        "/api/alerts",
        params=[
            ("patient", patient_id),
            *(("state", s) for s in ("open", "acknowledged", "resolved")),
            ("limit", "50"),
        ],
    )
    found: list[dict[str, Any]] = listing.json() if listing.status_code == 200 else []
    alerts = patient_alert_order([a for a in found if a.get("patient_id") == patient_id])
    # Confirm before paging: first readings waiting for their repeat, and how they ended.
    asked = await call_api(
        request, "GET", "/api/alerts/confirmations", params={"patient": patient_id, "limit": "20"}
    )
    selected_id = alert if alert is not None else (alerts[0]["id"] if alerts else None)
    selected = None
    if selected_id is not None:
        detail = await call_api(request, "GET", f"/api/alerts/{selected_id}")
        if detail.status_code == 200 and detail.json().get("patient_id") == patient_id:
            selected = detail.json()
    return templates.TemplateResponse(
        request,
        "patient.html",
        {
            "staff": staff,
            "patient_id": patient_id,
            "programs": contexts[patient_id].programs,
            "alerts": alerts,
            "alert": selected,
            "confirmations": asked.json() if asked.status_code == 200 else [],
            "vitals": vitals(patient_id, newest, charted),
            "time": await time_panel(request, patient_id, call_api, clock()),
            "staff_list": staff_list,
            "can_assign": _api_offers(request.app, "assign"),
            "done": DONE.get(done),
            "problem": PROBLEMS.get(problem),
            "here": request.url.path + (f"?alert={selected_id}" if selected_id else ""),
        },
    )


@router.get("/dashboard/patients/{patient_id}/chart/{metric}.svg")
async def chart(
    request: Request,
    staff: Staff,
    pool: PoolDep,
    clock: ClockDep,
    patient_id: str,
    metric: str,
    days: Annotated[int | None, Query(ge=1, le=TREND_DAYS_MAX)] = None,
) -> Response:
    """The newest readings of ``metric``; with ``days``, the daily means of that many days
    (from the rollups: docs/data-lifecycle.md)."""
    try:
        m = Metric(metric)
    except ValueError:  # a chart of something we do not measure: there is no such chart
        raise NotFoundError("no such metric") from None
    await _visible_patient(request, staff, pool, patient_id, "chart")
    async with pool.acquire() as conn:
        contexts = await registry.patient_contexts(conn, [patient_id])
        if patient_id not in contexts:
            raise NotFoundError("no such patient")
        if days is None:
            stored = await reading_store.for_patient(
                conn, patient_id, metrics=[m.value], limit=CHART_READINGS
            )
            points = [
                (s.accepted.reading.measured_at, s.accepted.reading.values)
                for s in stored
                if s.entered_in_error_at is None  # not plotted: it should not be used
            ]
        else:
            now = clock()
            buckets = await rollups.series(
                conn, patient_id, m, now - timedelta(days=days), now, "day"
            )
            points = charts.daily_means(buckets)
        book = await rule_programs.active_book(conn)
    ctx = contexts[patient_id]
    rules = []
    for rule in book.rules_for(ctx.programs):
        try:
            rules.append(rule.with_overrides(ctx.overrides.get(rule.id) or {}))
        except ValueError:  # an override the program no longer takes: the engine too
            rules.append(rule)  # applies the defaults (rule_programs.effective_rules)
    caption = "" if days is None else f"daily means, last {days} days"
    svg = await asyncio.to_thread(
        charts.render_svg, m, points, charts.thresholds_for(rules, m), caption
    )
    return Response(svg, media_type="image/svg+xml", headers={"Content-Security-Policy": SVG_CSP})


# --- actions ----------------------------------------------------------------------------


@router.post("/dashboard/alerts/{alert_id}/{action}")
async def act(
    request: Request, auth: AuthDep, staff: Staff, alert_id: int, action: str
) -> Response:
    """Acknowledge, resolve (with a note) or assign, as the signed-in nurse.

    JSON in (``fetch`` with ``X-CSRF-Token``): JSON out, with the API's status. A form
    (``csrf_token`` field): back to ``next`` with a notice.
    """
    if action not in ACTIONS:
        raise NotFoundError("no such action")
    wants_json = request.headers.get("content-type", "").startswith("application/json")
    fields = await _fields(request, wants_json)
    auth.check_csrf(staff, request, fields.get("csrf_token"))
    status, body, outcome = await _forward(request, staff, alert_id, action, fields)
    if wants_json:
        return JSONResponse(body, status_code=status)
    back = safe_next(fields.get("next"))
    key = "done" if outcome == action else "problem"
    return RedirectResponse(with_notice(back, {key: outcome}), 303)


async def _forward(
    request: Request, staff: SignedIn, alert_id: int, action: str, fields: dict[str, str]
) -> tuple[int, dict[str, Any], str]:
    """(status, JSON body, outcome): outcome is the action when done, else a problem."""
    payload: dict[str, Any] = {"actor": staff.actor}
    if action == "resolve":
        payload["note"] = fields.get("note", "").strip()
        if not payload["note"]:
            return 422, {"detail": PROBLEMS["note"]}, "note"
    if action == "assign":
        if not _api_offers(request.app, "assign"):
            return 501, {"detail": PROBLEMS["unavailable"]}, "unavailable"
        assignee = fields.get("assignee", "").strip()
        payload["assignee"] = staff.staff_id if assignee == "me" else assignee
        if not payload["assignee"]:
            return 422, {"detail": PROBLEMS["assignee"]}, "assignee"
    resp = await call_api(
        request,
        "POST",
        f"/api/alerts/{alert_id}/{action}",
        csrf=staff.csrf_token,
        json=payload,
    )
    if resp.status_code == 200:
        return 200, resp.json(), action
    problem = {404: "missing", 409: "conflict"}.get(resp.status_code, "refused")
    detail = _detail(resp) or PROBLEMS[problem]
    return resp.status_code, {"detail": detail}, problem


# --- helpers ----------------------------------------------------------------------------


async def _error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 303 and exc.headers and "Location" in exc.headers:
        return RedirectResponse(exc.headers["Location"], 303)
    if "text/html" in request.headers.get("accept", ""):
        return templates.TemplateResponse(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail},
            status_code=exc.status_code,
            headers=exc.headers,
        )
    return await http_exception_handler(request, exc)


async def call_api(
    request: Request, method: str, path: str, *, csrf: str | None = None, **kwargs: Any
) -> httpx.Response:
    """Call this app's own API in-process (no socket, same event loop), as the browser's
    session: its cookie (and, for a change, its CSRF token) go along, so the calls keep
    working once the API itself asks who is calling."""
    headers = {"cookie": request.headers.get("cookie", "")}
    if csrf is not None:
        headers[CSRF_HEADER] = csrf
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://rpm.internal", headers=headers
    ) as client:
        return await client.request(method, path, **kwargs)


def _api_offers(app: FastAPI, action: str) -> bool:
    """Whether the alert API has ``POST /api/alerts/{id}/<action>`` (from its OpenAPI)."""
    pattern = re.compile(r"/api/alerts/\{[^}/]+\}/" + re.escape(action))
    paths: Mapping[str, Mapping[str, Any]] = app.openapi().get("paths", {})
    return any(pattern.fullmatch(p) and "post" in ops for p, ops in paths.items())


async def _fields(request: Request, wants_json: bool) -> dict[str, str]:
    if wants_json:
        try:
            body = await request.json()
        except ValueError:  # the parser's error, as ours: a request we refuse (400)
            raise RequestError("malformed JSON") from None
        if not isinstance(body, dict):
            raise RequestError("expected a JSON object")
        return {k: v for k, v in body.items() if isinstance(v, str)}
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _detail(resp: httpx.Response) -> str | None:
    try:
        detail = resp.json().get("detail")
    except ValueError:  # an answer without a JSON detail: the page says it in its own words
        return None
    return detail if isinstance(detail, str) else None


def with_notice(target: str, extra: Mapping[str, str]) -> str:
    """``target`` with ``done`` or ``problem`` (the page's notice) in place of any before."""
    parts = urlsplit(target)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("done", "problem")]
    return urlunsplit(parts._replace(query=urlencode([*query, *extra.items()])))
