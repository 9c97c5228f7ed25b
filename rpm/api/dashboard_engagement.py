"""Dashboard pages of the program between the alerts: the segments with their sizes and
members, and the engagement figures per segment with a chart each.

Like the other pages they read the API in-process as the signed-in staff member
(``dashboard.call_api``), so what a nurse sees here is what the API lets her see: sizes and
members among her own teams' patients, audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from rpm.domain.errors import NotFoundError, RefusedError
from rpm.engagement.segments import NAME

from .dashboard import SecuredRoute, Staff, call_api
from .dashboard_views import templates

router = APIRouter(route_class=SecuredRoute, include_in_schema=False)

# The interactions-per-patient-year goal of the programs this serves (docs/engagement.md).
GOAL = (50, 100)
CHART_MAX = 120  # the chart's scale, per patient-year


async def _json(request: Request, path: str, **params: Any) -> Any:
    resp = await call_api(request, "GET", path, params=params)
    if resp.status_code == 404:
        raise NotFoundError("no such segment")
    if resp.status_code == 403:
        raise RefusedError("not allowed")
    resp.raise_for_status()
    return resp.json()


@router.get("/dashboard/segments")
async def segments_page(request: Request, staff: Staff) -> Response:
    listing = await _json(request, "/api/segments")
    return templates.TemplateResponse(
        request, "segments.html", {"page": "segments", "staff": staff, "segments": listing}
    )


@router.get("/dashboard/segments/{name}")
async def segment_page(
    request: Request,
    staff: Staff,
    name: str,
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    if not NAME.match(name):
        raise NotFoundError("no such segment")
    params: dict[str, Any] = {"limit": 50}
    if after:
        params["after"] = after
    segment = await _json(request, f"/api/segments/{name}", **params)
    return templates.TemplateResponse(
        request, "segment.html", {"page": "segments", "staff": staff, "segment": segment}
    )


@router.get("/dashboard/engagement")
async def engagement_page(
    request: Request, staff: Staff, days: Annotated[int, Query(ge=7, le=365)] = 28
) -> Response:
    figures = await _json(request, "/api/engagement", days=days)
    return templates.TemplateResponse(
        request,
        "engagement.html",
        {
            "page": "engagement",
            "staff": staff,
            "days": days,
            "figures": [_charted(f) for f in figures],
            "goal": GOAL,
            "chart_max": CHART_MAX,
        },
    )


def _charted(f: dict[str, Any]) -> dict[str, Any]:
    """The figures with what the chart draws: bar widths in percent of its scale."""
    rate = f["interactions_per_patient_year"]
    weeks = [w or 0.0 for w in f["reading_days_per_patient_week"]]
    return {
        **f,
        "rate_pct": min(100.0, 100.0 * (rate or 0.0) / CHART_MAX),
        "week_pct": [min(100.0, 100.0 * w / 7.0) for w in weeks],
        "weeks": weeks,
    }
