"""What the dashboard's pages show: the templates with their filters, and the values they
are given (the patient's alerts in order, the vitals with their charts, readings as text,
the time-tracking section)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from fastapi import Request
from fastapi.templating import Jinja2Templates

from rpm.billing.time import Activity
from rpm.domain import DISPLAY_UNITS, METRICS, Metric
from rpm.domain.severity import NAMES
from rpm.storage import readings as reading_store
from rpm.storage import rule_programs
from rpm.storage.pool import Conn

from . import charts

HERE = Path(__file__).parent
READINGS_SHOWN = 10  # per metric, in the patient view's tables

templates = Jinja2Templates(directory=HERE / "templates")


async def programs(conn: Conn) -> dict[str, str]:
    """Care programs to filter by (name → title); ``general`` applies to everyone."""
    rows = await rule_programs.active_versions(conn)
    return {
        r["program"]: str(r["spec"].get("title") or r["program"])
        for r in rows
        if r["program"] != "general"
    }


def patient_alert_order(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unresolved first, most severe then oldest; then resolved ones, newest first."""

    def rank(a: Mapping[str, Any]) -> int:
        sev = a.get("severity")
        return NAMES.index(sev) if sev in NAMES else len(NAMES)

    unresolved = [a for a in alerts if a.get("state") != "resolved"]
    resolved = [a for a in alerts if a.get("state") == "resolved"]
    unresolved.sort(key=lambda a: (rank(a), str(a.get("opened_at", ""))))
    resolved.sort(key=lambda a: str(a.get("opened_at", "")), reverse=True)
    return unresolved + resolved


def vitals(
    patient_id: str,
    newest: Mapping[Metric, list[reading_store.StoredReading]],
    charted: Mapping[Metric, reading_store.ChartSummary],
) -> list[dict[str, Any]]:
    """Per metric with readings: chart address, text alternative (``charted``: what the chart
    of the metric's newest readings holds), the newest readings (``newest``, those entered in
    error included, marked; charts leave them out)."""
    out = []
    for metric in Metric:
        rows = newest.get(metric)
        if not rows:
            continue
        out.append(
            {
                "metric": metric.value,
                "title": charts.METRIC_TITLES[metric],
                "chart": f"/dashboard/patients/{patient_id}/chart/{metric.value}.svg",
                "alt": charts.describe_summary(
                    metric, charted.get(metric, reading_store.NO_READINGS)
                ),
                "readings": [
                    {
                        "measured_at": s.accepted.reading.measured_at,
                        "values": _format_values(metric, s.accepted.reading.values),
                        "device": s.accepted.reading.device_id,
                        "uid": str(s.accepted.reading.uid),
                        "in_error": s.entered_in_error_at is not None,
                    }
                    for s in rows[:READINGS_SHOWN]
                ],
            }
        )
    return out


def _format_values(metric: Metric, values: Mapping[str, float]) -> str:
    """``systolic 192, diastolic 124 mmHg; pulse 88 /min``."""
    groups: dict[str, list[str]] = {}
    for c in METRICS[metric].components:
        if c.name in values:
            unit = DISPLAY_UNITS.get(c.ucum, c.ucum)
            groups.setdefault(unit, []).append(f"{c.name.replace('_', ' ')} {values[c.name]:g}")
    return "; ".join(f"{', '.join(parts)} {unit}" for unit, parts in groups.items())


def _when(value: datetime | str | None) -> str:
    if value is None:
        return ""
    t = datetime.fromisoformat(value) if isinstance(value, str) else value
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso(value: datetime | str | None) -> str:
    if value is None:
        return ""
    t = datetime.fromisoformat(value) if isinstance(value, str) else value
    return t.astimezone(UTC).isoformat()


# Filters the templates use: times shown in UTC, and machine-readable in <time datetime>.
templates.env.filters["when"] = _when
templates.env.filters["iso"] = _iso
templates.env.globals["severity_order"] = " ".join(NAMES)  # most urgent first
templates.env.globals["severity_class"] = lambda s: f"sev sev-{str(s).lower()}"


# --- time tracking on the patient page (docs/time-tracking.md) ----------------------------

ApiCall = Callable[..., Awaitable[httpx.Response]]
TIME_DONE = {
    "started": "Timer started.",
    "stopped": "Timer stopped: its time is recorded below.",
    "capped": "Timer stopped. It ran past the longest entry allowed, so that maximum was "
    "recorded: edit the entry if the time was different.",
    "discarded": "Timer discarded: nothing was recorded.",
    "added": "Time entry added.",
    "edited": "Time entry saved.",
    "deleted": "Time entry deleted (it stays in the history).",
}
TIME_PROBLEMS = {
    "running": "Your timer is already running: stop it first.",
    "stale": "Someone changed this entry since the page was loaded: check it and try again.",
    "missing": "There is no such time entry, or no timer running.",
    "invalid": "Not saved: the start must not be in the future, the duration must be between "
    "1 minute and the longest entry allowed, and the note at most 2,000 characters.",
    "refused": "The server refused the request.",
}


def _local_input(value: str, zone: ZoneInfo) -> str:
    """An ISO time as a ``datetime-local`` input's value in ``zone`` (to the second)."""
    return datetime.fromisoformat(value).astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S")


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


async def time_panel(
    request: Request, patient_id: str, call: ApiCall, now: datetime
) -> dict[str, Any]:
    """The time-tracking section of the patient page, from the API as the signed-in staff
    member: her timer, the patient's entries of this month (the patient's time zone)."""
    listing = await call(request, "GET", f"/api/patients/{patient_id}/time-entries")
    if listing.status_code != 200:  # a role without time tracking: no section
        return {"available": False}
    found = await call(request, "GET", "/api/timer")
    timer = found.json() if found.status_code == 200 else None
    data = listing.json()
    zone = ZoneInfo(data["timezone"])
    entries = [
        {
            **e,
            "start_local": _local_input(e["started_at"], zone).replace("T", " ")[:16],
            "start_input": _local_input(e["started_at"], zone),
            "minutes": f"{e['duration_s'] / 60:.2f}".rstrip("0").rstrip("."),
            "duration": _duration(e["duration_s"]),
        }
        for e in reversed(data["entries"])  # newest first
    ]
    query = request.query_params
    return {
        "available": True,
        "timer": timer,
        "timer_here": bool(timer and timer["patient_id"] == patient_id),
        "entries": entries,
        "total": data["total"],
        "month": data["month"],
        "timezone": data["timezone"],
        "now_input": now.astimezone(zone).strftime("%Y-%m-%dT%H:%M"),
        "activities": [(a.value, a.label) for a in Activity],
        "done": TIME_DONE.get(query.get("time", "")),
        "problem": TIME_PROBLEMS.get(query.get("time_problem", "")),
    }


templates.env.filters["duration"] = _duration
