"""The dashboard's patient panel page (docs/panel.md).

It reads the panel API in-process as the signed-in nurse (``dashboard.call_api``), so the
page shows exactly what ``GET /api/panel`` answers her, and renders it as a table whose
filters, sort links and pager are plain links and a GET form (they work without script).
The script (``static/dashboard.js``) keeps the page live: it listens to
``/api/panel/stream`` for the patients shown and, when one changes, fetches this same page
again and swaps the table body in place, with no reload.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from rpm.domain import DISPLAY_UNITS, METRICS, Metric
from rpm.storage import panel as panel_store
from rpm.storage import segments as segment_store

from .charts import METRIC_TITLES
from .dashboard import SecuredRoute, Staff, call_api
from .dashboard_views import programs, templates
from .deps import PoolDep

router = APIRouter(route_class=SecuredRoute, include_in_schema=False)

FLAGS = {
    "": "All patients",
    "any": "Needs readings or time",
    "readings": "Needs readings",
    "time": "Needs time",
    "none": "On track",
}
PAGE_SIZES = (25, 50, 100, 200)
SORTS = set(get_args(panel_store.SortKey))
Param = Annotated[str, Query(max_length=64)]


@router.get("/dashboard/panel")
async def panel_page(
    request: Request,
    staff: Staff,
    pool: PoolDep,
    team: Param = "",
    program: Param = "",
    segment: Param = "",
    flag: Param = "",
    sort: Param = "name",
    direction: Param = "asc",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    sort = sort if sort in SORTS else "name"
    direction = "desc" if direction == "desc" else "asc"
    flag = flag if flag in FLAGS else ""
    chosen = {
        "team": team,
        "program": program,
        "segment": segment,
        "flag": flag,
        "sort": sort,
        "direction": direction,
        "limit": str(limit),
        "offset": str(offset),
    }
    async with pool.acquire() as conn:
        offered = await programs(conn)
        segments = [s.name for s in await segment_store.current_segments(conn)]
        teams = await panel_store.care_teams(
            conn, None if staff.role == "admin" else frozenset(staff.teams)
        )
    answer = await call_api(
        request, "GET", "/api/panel", params={k: v for k, v in chosen.items() if v}
    )
    problem = None
    panel: dict[str, Any] | None = None
    if answer.status_code == 200:
        panel = answer.json()
    elif answer.status_code in (404, 422):
        problem = "No patients for these filters: the care team or segment is not known."
    else:
        answer.raise_for_status()

    def link(**changes: Any) -> str:
        params = {**chosen, **{k: str(v) for k, v in changes.items()}}
        return "/dashboard/panel?" + urlencode({k: v for k, v in params.items() if v})

    return templates.TemplateResponse(
        request,
        "panel.html",
        {
            "page": "panel",
            "staff": staff,
            "chosen": chosen,
            "programs": offered,
            "segments": segments,
            "teams": teams,
            "flags": FLAGS,
            "page_sizes": PAGE_SIZES,
            "panel": panel,
            "problem": problem,
            "rows": [_row(p, panel["now"]) for p in panel["patients"]] if panel else [],
            "sort_link": lambda key: link(
                sort=key,
                direction="desc" if sort == key and direction == "asc" else "asc",
                offset=0,
            ),
            "page_link": lambda to: link(offset=max(0, to)),
        },
    )


def _row(p: dict[str, Any], now: str) -> dict[str, Any]:
    """A patient as the table shows it: the API's values with their words."""
    return {
        **p,
        "latest": [
            {
                "title": _title(m["metric"]),
                "value": _value(m["metric"], m["values"]),
                "measured_at": m["measured_at"],
                "age": age_text(m["age_s"]),
            }
            for m in p["metrics"]
        ],
        "last_age": (
            age_text((_t(now) - _t(p["last_reading_at"])).total_seconds())
            if p["last_reading_at"]
            else None
        ),
    }


def _t(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def _title(metric: str) -> str:
    try:
        return METRIC_TITLES[Metric(metric)]
    except ValueError:
        return metric


def _value(metric: str, values: dict[str, Any]) -> str:
    """``132/84 mmHg`` for blood pressure, ``72.5 kg`` for the others' main component."""
    try:
        spec = METRICS[Metric(metric)]
    except ValueError:
        return ""
    if spec.metric is Metric.BLOOD_PRESSURE and "systolic" in values and "diastolic" in values:
        return f"{values['systolic']:g}/{values['diastolic']:g} mmHg"
    main = spec.components[0]
    if main.name not in values:
        return ""
    return f"{values[main.name]:g} {DISPLAY_UNITS.get(main.ucum, main.ucum)}"


def age_text(seconds: float) -> str:
    """How long ago, as a nurse reads it: ``just now``, ``12 min``, ``5 h``, ``3 days``."""
    if seconds < 60:
        return "just now"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min ago"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h ago"
    return f"{hours // 24} days ago"
