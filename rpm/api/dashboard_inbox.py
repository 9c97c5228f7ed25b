"""The nurse's inbox page: patient replies a person must read (unparsed check-in answers, free
text), listed from ``GET /api/inbox`` and marked handled through
``POST /api/inbox/{id}/handled``, both in-process (``dashboard.call_api``), so the API's rules
(team scoping, the audit log, conflicts) apply unchanged (docs/checkins.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from .dashboard import SecuredRoute, Staff, call_api, with_notice
from .dashboard_views import templates
from .deps import AuthDep

router = APIRouter(route_class=SecuredRoute, include_in_schema=False)

INBOX_PROBLEMS = {
    "missing": "There is no such inbox item.",
    "taken": "Someone already handled it.",
    "refused": "The server refused the request.",
}


@router.get("/dashboard/inbox")
async def inbox(request: Request, staff: Staff, done: str = "", problem: str = "") -> Response:
    """Patient replies a person must read, oldest first, from the inbox API."""
    listing = await call_api(request, "GET", "/api/inbox", params={"state": "open"})
    items: list[dict[str, Any]] = listing.json() if listing.status_code == 200 else []
    return templates.TemplateResponse(
        request,
        "inbox.html",
        {
            "page": "inbox",
            "staff": staff,
            "items": items,
            "done": "Marked as handled." if done == "handled" else None,
            "problem": INBOX_PROBLEMS.get(problem),
        },
    )


@router.post("/dashboard/inbox/{item_id}/handled")
async def inbox_handled(request: Request, auth: AuthDep, staff: Staff, item_id: int) -> Response:
    """Mark an inbox item handled (a form with ``csrf_token`` and an optional ``note``)."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    auth.check_csrf(staff, request, fields.get("csrf_token"))
    resp = await call_api(
        request,
        "POST",
        f"/api/inbox/{item_id}/handled",
        csrf=staff.csrf_token,
        json={"note": fields.get("note") or None},
    )
    outcome = {200: ("done", "handled"), 404: ("problem", "missing"), 409: ("problem", "taken")}
    key, value = outcome.get(resp.status_code, ("problem", "refused"))
    return RedirectResponse(with_notice("/dashboard/inbox", {key: value}), 303)
