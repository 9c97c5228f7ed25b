"""Billing API: the month-end report (JSON, a page at a time, or CSV) and the code tables as
versions (docs/billing.md).

The report (``billing-read``: nurses and admins) is scoped to the caller's care teams and
audited with the ids of the patients it lists. Publishing a code table
(``billing-manage``: admins) stores a new version naming its author; versions are never
changed.
"""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from rpm.billing import codes as code_spec
from rpm.billing.evaluate import Report
from rpm.billing.periods import Period, month_of
from rpm.domain.errors import InvalidRequestError
from rpm.storage import billing as store

from .access import CanManageBilling, CanReadBilling, Principal, audit
from .deps import ClockDep, PoolDep

router = APIRouter(prefix="/api/billing", tags=["billing"])

MAX_PAGE = 1000
Month = Annotated[str | None, Query(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", description="YYYY-MM")]
Note = Annotated[str | None, Query(max_length=500)]
CSV_TYPE = "text/csv; charset=utf-8"
CSV_COLUMNS = (
    "patient_id",
    "care_team",
    "month",
    "monitoring_start",
    "period_start",
    "period_end",
    "days_with_readings",
    "minutes",
    "time_entries",
    "interactive_communications",
    "first_interactive_at",
    "codes",
    "missing",
    "table",
)


class Published(BaseModel):
    version: int
    name: str
    changed: bool


def _month(month: str | None, clock: Any) -> Period:
    if month is None:
        return month_of(f"{clock():%Y-%m}")
    try:
        return month_of(month)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None


@router.get("/report", responses={200: {"content": {"text/csv": {}}}})
async def report(
    who: CanReadBilling,
    pool: PoolDep,
    clock: ClockDep,
    request: Request,
    month: Month = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    after: Annotated[str | None, Query(max_length=200)] = None,
    format: Annotated[Literal["json", "csv"] | None, Query()] = None,
) -> Any:
    """The month-end report (``month``: YYYY-MM, default this month), a page of patients by
    id: codes earned with their evidence, and what the others still need. ``after`` pages
    on. As CSV (every patient, no paging) with ``format=csv`` or ``Accept: text/csv``."""
    if format == "csv" or (format is None and _wants_csv(request)):
        return await _csv(who, pool, clock, request, month)
    period = _month(month, clock)
    async with pool.acquire() as conn:
        reports = await store.month_report(
            conn, period, clock(), who.teams, after=after, limit=limit
        )
        tables = await store.tables_in_use(conn)
        interactive = code_spec.in_force(tables, period.last_day).interactive_activities
        behind = await store.evidence(conn, reports, interactive)
    ids = [r.patient.patient_id for r in reports]
    audit(request, who, "read", "billing-report", ids, f"{period.start:%Y-%m}")
    return {
        "month": f"{period.start:%Y-%m}",
        "patients": [r.document() | {"evidence": behind[r.patient.patient_id]} for r in reports],
        "next_after": ids[-1] if len(ids) == limit else None,
    }


@router.get("/report.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
async def report_csv(
    who: CanReadBilling,
    pool: PoolDep,
    clock: ClockDep,
    request: Request,
    month: Month = None,
) -> Response:
    """The month-end report of every patient the caller sees, as CSV (docs/billing.md)."""
    return await _csv(who, pool, clock, request, month)


def _wants_csv(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and "application/json" not in accept


async def _csv(
    who: Principal, pool: Any, clock: Any, request: Request, month: str | None
) -> Response:
    period = _month(month, clock)
    async with pool.acquire() as first, pool.acquire() as second:
        reports = await store.whole_report([first, second], period, clock(), who.teams)
    key = f"{period.start:%Y-%m}"
    audit(request, who, "read", "billing-report", [r.patient.patient_id for r in reports], key)
    return Response(
        csv_text(reports),
        media_type=CSV_TYPE,
        headers={"Content-Disposition": f'attachment; filename="billing-{key}.csv"'},
    )


def csv_text(reports: list[Report]) -> str:
    """The report as CSV, one row per patient (columns: ``CSV_COLUMNS``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in reports:
        p = r.patient
        writer.writerow(
            [
                _cell(p.patient_id),
                _cell(p.care_team or ""),
                f"{p.month.start:%Y-%m}",
                p.monitoring_start.isoformat() if p.monitoring_start else "",
                ";".join(d.period.start.isoformat() for d in p.periods),
                ";".join(d.period.last_day.isoformat() for d in p.periods),
                ";".join(str(d.days) for d in p.periods),
                p.time.minutes,
                p.time.entries,
                p.time.interactive,
                p.time.interactive_first or "",
                r.codes_text(),
                r.missing_text(),
                r.table,
            ]
        )
    return out.getvalue()


def _cell(text: str) -> str:
    """A text a spreadsheet would run as a formula (=, +, -, @ first) is quoted with '."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# --- code tables ---------------------------------------------------------------------------


@router.get("/code-tables")
async def code_tables(_who: CanReadBilling, pool: PoolDep) -> list[dict[str, Any]]:
    """Every version of every code table, newest first, with who published it and why;
    ``in_use``: the newest version of its name (tables apply from their ``effective_from``)."""
    async with pool.acquire() as conn:
        versions = await store.table_versions(conn)
    newest = {v.table.name: v.version for v in versions}
    return [
        v.document() | {"in_use": newest[v.table.name] == v.version} for v in reversed(versions)
    ]


@router.post("/code-tables", response_model=Published)
async def publish_code_table(
    who: CanManageBilling,
    pool: PoolDep,
    document: Annotated[dict[str, Any], Body()],
    note: Note = None,
) -> Published:
    """Publish a code table (docs/billing.md) as a new version; the same document as its
    name's newest version changes nothing."""
    table = code_spec.parse(document)
    async with pool.acquire() as conn:
        version, changed = await store.publish_table(conn, table, who.actor, note)
    return Published(version=version, name=table.name, changed=changed)
