"""Time tracking from the patient page: the timer's start, stop and discard, and manual
entries added, edited and deleted (docs/time-tracking.md).

Each action is a form post that checks the session and its CSRF token, then forwards to
the time API in-process as the signed-in staff member (``dashboard.call_api``), so the
API's rules (team scoping, bounds, versions, the audit log) apply unchanged; the answer is
a redirect back to the page with a notice (``?time=...`` or ``?time_problem=...``). The
section itself is prepared by ``dashboard_views.time_panel``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from rpm.auth import safe_next
from rpm.domain.errors import NotFoundError

from .dashboard import SecuredRoute, Staff, call_api
from .deps import AuthDep

router = APIRouter(route_class=SecuredRoute, include_in_schema=False)

_PROBLEM_OF = {404: "missing", 422: "invalid"}
_NOTICE_KEYS = ("time", "time_problem", "done", "problem")


class _BadForm(ValueError):
    """A form field that cannot be read (answered as ``invalid``)."""


async def _form(request: Request, auth: AuthDep, staff: Staff) -> dict[str, str]:
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    auth.check_csrf(staff, request, fields.get("csrf_token"))
    return fields


def _back(fields: Mapping[str, str], key: str, value: str) -> RedirectResponse:
    """Back to the page the form was on (a dashboard path), with one notice, at #time."""
    parts = urlsplit(safe_next(fields.get("next")))
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _NOTICE_KEYS]
    target = parts._replace(query=urlencode([*query, (key, value)]), fragment="time")
    return RedirectResponse(urlunsplit(target), 303)


def _outcome(fields: Mapping[str, str], resp: httpx.Response, done: str) -> RedirectResponse:
    if resp.status_code in (200, 201):
        return _back(fields, "time", done)
    if resp.status_code == 409:
        detail = str(resp.json().get("detail", ""))
        return _back(fields, "time_problem", "running" if "timer" in detail else "stale")
    return _back(fields, "time_problem", _PROBLEM_OF.get(resp.status_code, "refused"))


def _started_at(fields: Mapping[str, str]) -> str:
    """The form's local start (``datetime-local``, in the patient's zone ``tz``) as ISO."""
    try:
        zone = ZoneInfo(fields.get("tz", ""))
        local = datetime.fromisoformat(fields.get("start", ""))
    except (ZoneInfoNotFoundError, ValueError):
        raise _BadForm("start") from None
    if local.tzinfo is None:
        local = local.replace(tzinfo=zone)
    return local.isoformat()


def _duration_s(fields: Mapping[str, str]) -> int:
    try:
        minutes = float(fields.get("minutes", ""))
    except ValueError:
        raise _BadForm("minutes") from None
    if not 0 < minutes < 100_000:
        raise _BadForm("minutes")
    return round(minutes * 60)


def _entry_body(fields: Mapping[str, str]) -> dict[str, Any]:
    return {
        "started_at": _started_at(fields),
        "duration_s": _duration_s(fields),
        "activity": fields.get("activity", ""),
        "note": fields.get("note", ""),
    }


# --- the timer --------------------------------------------------------------------------


@router.post("/dashboard/patients/{patient_id}/timer/start")
async def start(request: Request, auth: AuthDep, staff: Staff, patient_id: str) -> Response:
    fields = await _form(request, auth, staff)
    body = {
        "patient_id": patient_id,
        "activity": fields.get("activity", ""),
        "note": fields.get("note", ""),
    }
    resp = await call_api(request, "POST", "/api/timer", csrf=staff.csrf_token, json=body)
    return _outcome(fields, resp, "started")


@router.post("/dashboard/timer/stop")
async def stop(request: Request, auth: AuthDep, staff: Staff) -> Response:
    fields = await _form(request, auth, staff)
    body: dict[str, Any] = {}
    if "note" in fields:
        body["note"] = fields["note"]
    resp = await call_api(request, "POST", "/api/timer/stop", csrf=staff.csrf_token, json=body)
    capped = resp.status_code == 201 and resp.json().get("capped") is True
    return _outcome(fields, resp, "capped" if capped else "stopped")


@router.post("/dashboard/timer/discard")
async def discard(request: Request, auth: AuthDep, staff: Staff) -> Response:
    fields = await _form(request, auth, staff)
    resp = await call_api(request, "DELETE", "/api/timer", csrf=staff.csrf_token)
    return _outcome(fields, resp, "discarded")


# --- entries ----------------------------------------------------------------------------


@router.post("/dashboard/patients/{patient_id}/time-entries")
async def add(request: Request, auth: AuthDep, staff: Staff, patient_id: str) -> Response:
    fields = await _form(request, auth, staff)
    try:
        body = _entry_body(fields)
    except _BadForm:
        return _back(fields, "time_problem", "invalid")
    resp = await call_api(
        request,
        "POST",
        f"/api/patients/{patient_id}/time-entries",
        csrf=staff.csrf_token,
        json=body,
    )
    return _outcome(fields, resp, "added")


@router.post("/dashboard/time-entries/{entry_id}/{action}")
async def change(
    request: Request, auth: AuthDep, staff: Staff, entry_id: int, action: str
) -> Response:
    """``edit`` (all fields and the ``version`` read) or ``delete`` (at ``version``)."""
    if action not in ("edit", "delete"):
        raise NotFoundError("no such action")
    fields = await _form(request, auth, staff)
    path = f"/api/time-entries/{entry_id}"
    try:
        version = int(fields.get("version", ""))
        if action == "edit":
            body = {"version": version, **_entry_body(fields)}
            resp = await call_api(request, "PATCH", path, csrf=staff.csrf_token, json=body)
        else:
            params = {"version": version}
            resp = await call_api(request, "DELETE", path, csrf=staff.csrf_token, params=params)
    except ValueError:  # a version or field that is not a number: _BadForm is one too
        return _back(fields, "time_problem", "invalid")
    return _outcome(fields, resp, {"edit": "edited", "delete": "deleted"}[action])
