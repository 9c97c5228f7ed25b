"""The patient page's correction: a nurse marks a reading entered-in-error (with a reason)
from the vitals table (docs/fhir.md#corrections).

A form post that checks the session and its CSRF token, then forwards to
``POST /api/readings/{uid}/entered-in-error`` in-process (``dashboard.call_api``), so the
API's rules (team scoping, the audit log, idempotency) apply unchanged; the answer is a
redirect back to the page with a notice.
"""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from rpm.auth import safe_next

from .dashboard import SecuredRoute, Staff, call_api, with_notice
from .deps import AuthDep

router = APIRouter(route_class=SecuredRoute, include_in_schema=False)

_OUTCOME = {
    200: ("done", "entered-in-error"),
    404: ("problem", "reading"),
    422: ("problem", "reason"),
}


@router.post("/dashboard/readings/{uid}/entered-in-error")
async def mark(request: Request, auth: AuthDep, staff: Staff, uid: UUID) -> Response:
    """Mark a reading entered-in-error from the form (``reason``, ``next``)."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    auth.check_csrf(staff, request, fields.get("csrf_token"))
    back = safe_next(fields.get("next"))
    reason = fields.get("reason", "").strip()
    if not reason:
        return RedirectResponse(with_notice(back, {"problem": "reason"}), 303)
    resp = await call_api(
        request,
        "POST",
        f"/api/readings/{uid}/entered-in-error",
        csrf=staff.csrf_token,
        json={"reason": reason},
    )
    key, value = _OUTCOME.get(resp.status_code, ("problem", "refused"))
    return RedirectResponse(with_notice(back, {key: value}), 303)
