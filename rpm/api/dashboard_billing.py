"""Dashboard page of the month-end billing report: a month picker, the patients with the codes
each earned and what the others still need, and the report as CSV.

Like the other pages it reads the API in-process as the signed-in staff member
(``dashboard.call_api``), so a nurse sees her own teams' patients, audited.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from rpm.billing.periods import calendar_month, month_of
from rpm.domain.errors import InvalidRequestError, RefusedError

from .dashboard import SecuredRoute, Staff, call_api
from .dashboard_views import templates
from .deps import ClockDep

router = APIRouter(route_class=SecuredRoute, include_in_schema=False)
PAGE = 100


@router.get("/dashboard/billing")
async def billing_page(
    request: Request,
    staff: Staff,
    clock: ClockDep,
    month: Annotated[str | None, Query(max_length=7)] = None,
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    if month is None:
        month = f"{clock():%Y-%m}"
    try:
        period = month_of(month)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    params: dict[str, Any] = {"month": month, "limit": PAGE}
    if after:
        params["after"] = after
    resp = await call_api(request, "GET", "/api/billing/report", params=params)
    if resp.status_code == 403:
        raise RefusedError("not allowed")
    resp.raise_for_status()
    report = resp.json()
    before = calendar_month(period.start - timedelta(days=1))
    return templates.TemplateResponse(
        request,
        "billing.html",
        {
            "page": "billing",
            "staff": staff,
            "month": month,
            "month_title": f"{period.start:%B %Y}",
            "previous": f"{before.start:%Y-%m}",
            "next": f"{period.end:%Y-%m}",
            "report": report,
        },
    )
