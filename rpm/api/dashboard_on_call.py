"""The on-call page: a care team's shifts this week and next, who is on call now per tier,
and (admins) a form to add a shift and a button to remove one (docs/alerts.md#on-call-rotas).

The page reads the on-call API in-process as the signed-in staff member; each change is a
form post that checks the session and its CSRF token, then forwards to the API
(``dashboard.call_api``), so its rules (team scoping, overlap, the audit log) apply
unchanged. The answer is a redirect back to the page with a notice. Times are UTC, like
the rest of the dashboard.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from .dashboard import SecuredRoute, Staff, call_api
from .dashboard_views import templates
from .deps import AuthDep, ClockDep

router = APIRouter(route_class=SecuredRoute, include_in_schema=False)

PAGE = "/dashboard/on-call"
DONE = {"added": "Shift added.", "removed": "Shift removed."}
PROBLEMS = {
    "overlap": "That tier is already covered for part of that time: nobody was added.",
    "invalid": "The shift must end after it starts, and name a member of the team.",
    "missing": "That team or shift no longer exists.",
    "refused": "You may not change this rota.",
}
_OUTCOME = {409: "overlap", 422: "invalid", 404: "missing"}


def _week_start(now: datetime) -> datetime:
    """Monday 00:00 UTC of the week holding ``now``."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def _back(team: str, key: str, value: str) -> RedirectResponse:
    return RedirectResponse(f"{PAGE}?{urlencode({'team': team, key: value})}", 303)


def _local_input(value: str) -> str:
    """A form's ``datetime-local`` value, read as UTC, as ISO 8601 with its zone."""
    t = datetime.fromisoformat(value)
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).isoformat()


def _weeks(shifts: list[dict[str, Any]], monday: datetime) -> list[dict[str, Any]]:
    out = []
    for title, first in (("This week", monday), ("Next week", monday + timedelta(days=7))):
        last = first + timedelta(days=7)
        rows = [
            s
            for s in shifts
            if datetime.fromisoformat(s["start"]) < last
            and datetime.fromisoformat(s["end"]) > first
        ]
        out.append({"title": title, "start": first, "end": last, "shifts": rows})
    return out


@router.get(PAGE)
async def page(
    request: Request,
    staff: Staff,
    clock: ClockDep,
    team: str = "",
    done: str = "",
    problem: str = "",
) -> Response:
    admin = staff.role == "admin"
    members: Mapping[str, list[str]] = {}
    if admin:
        listing = await call_api(request, "GET", "/api/teams")
        found = listing.json() if listing.status_code == 200 else []
        members = {t["id"]: t["members"] for t in found}
        team_ids = list(members)
    else:
        team_ids = sorted(staff.teams)
    chosen = team if team in team_ids else (team_ids[0] if team_ids else "")
    monday = _week_start(clock())
    rota: dict[str, Any] | None = None
    if chosen:
        resp = await call_api(
            request,
            "GET",
            f"/api/teams/{quote(chosen, safe='')}/on-call",
            params={
                "from": monday.isoformat(),
                "to": (monday + timedelta(days=14)).isoformat(),
            },
        )
        rota = resp.json() if resp.status_code == 200 else None
    return templates.TemplateResponse(
        request,
        "on_call.html",
        {
            "page": "on-call",
            "staff": staff,
            "admin": admin,
            "teams": team_ids,
            "team": chosen,
            "members": members.get(chosen, []),
            "rota": rota,
            "weeks": _weeks(rota["shifts"], monday) if rota else [],
            "done": DONE.get(done),
            "problem": PROBLEMS.get(problem),
        },
    )


async def _form(request: Request, auth: AuthDep, staff: Staff) -> dict[str, str]:
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    auth.check_csrf(staff, request, fields.get("csrf_token"))
    return fields


@router.post(PAGE + "/{team}/shifts")
async def add(request: Request, auth: AuthDep, staff: Staff, team: str) -> Response:
    """Add a shift from the form (``staff_id``, ``tier``, ``start``, ``end`` in UTC)."""
    fields = await _form(request, auth, staff)
    try:
        body = {
            "staff_id": fields.get("staff_id", ""),
            "tier": int(fields.get("tier", "")),
            "start": _local_input(fields.get("start", "")),
            "end": _local_input(fields.get("end", "")),
        }
    except ValueError:
        return _back(team, "problem", "invalid")
    resp = await call_api(
        request,
        "POST",
        f"/api/teams/{quote(team, safe='')}/on-call",
        csrf=staff.csrf_token,
        json=body,
    )
    if resp.status_code == 201:
        return _back(team, "done", "added")
    return _back(team, "problem", _OUTCOME.get(resp.status_code, "refused"))


@router.post(PAGE + "/{team}/shifts/{shift_id}/remove")
async def remove(
    request: Request, auth: AuthDep, staff: Staff, team: str, shift_id: int
) -> Response:
    await _form(request, auth, staff)
    resp = await call_api(
        request,
        "DELETE",
        f"/api/teams/{quote(team, safe='')}/on-call/{shift_id}",
        csrf=staff.csrf_token,
    )
    if resp.status_code == 200:
        return _back(team, "done", "removed")
    return _back(team, "problem", _OUTCOME.get(resp.status_code, "refused"))
