"""The month-end report through the database and the API: the SQL gives what the pure
evaluation gives (the same boundaries as tests/test_billing_evaluate.py), the CSV, code
table versions, and team scoping. The API's clock is pinned to 1 July 2026, 12:00 UTC."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from rpm.api import billing
from rpm.billing.codes import default_table
from rpm.billing.periods import month_of
from rpm.storage import billing as store
from tests.billing_helpers import add_days, add_minutes, add_patient, add_time, first_days
from tests.helpers import api_app, staff_headers

NOW = datetime(2026, 7, 1, 12, tzinfo=UTC)
JUNE = month_of("2026-06")
JUNE_1 = date(2026, 6, 1)


async def _population(conn: asyncpg.Connection) -> None:
    # days with readings in the period June 1 - June 30
    for n in (1, 2, 15, 16, 30):
        await add_patient(conn, f"days-{n:02}", team="north", start=JUNE_1)
        await add_days(conn, f"days-{n:02}", first_days(JUNE_1, n))
    # minutes in June, with and without an interactive communication (no readings at all)
    for m in (9, 10, 19, 20, 39, 40, 60):
        await add_patient(conn, f"min-{m:02}", team="north")
        await add_minutes(conn, f"min-{m:02}", date(2026, 6, 10), m, interactive=True)
        await add_patient(conn, f"min-{m:02}-alone", team="south")
        await add_minutes(conn, f"min-{m:02}-alone", date(2026, 6, 10), m, interactive=False)
    # two devices on the same days: each day counts once
    await add_patient(conn, "two-devices", team="north", start=JUNE_1)
    await add_days(conn, "two-devices", first_days(JUNE_1, 15), "blood_pressure")
    await add_days(conn, "two-devices", first_days(JUNE_1, 15), "weight")
    # a period that crosses a month end: May 20 - June 18, then June 19 - July 18
    await add_patient(conn, "crossing", team="south", start=date(2026, 5, 20))
    await add_days(conn, "crossing", first_days(date(2026, 5, 25), 10))  # 7 in May, 3 in June
    await add_days(conn, "crossing", first_days(date(2026, 6, 25), 16))  # 6 in June, 10 July
    # enrolled mid-month, no start set: the first day with readings is the start
    await add_patient(conn, "mid-month", team="south")
    await add_days(conn, "mid-month", first_days(date(2026, 6, 15), 10))
    await add_minutes(conn, "mid-month", date(2026, 6, 20), 25, interactive=True)
    # set up in April: June's period earns device supply only
    await add_patient(conn, "set-up-before", team="north", start=date(2026, 4, 2))
    await add_days(conn, "set-up-before", first_days(date(2026, 4, 2), 3))
    await add_days(conn, "set-up-before", first_days(date(2026, 6, 1), 20))
    # time zone, deleted entries and other months
    await add_patient(conn, "new-york", team="north", timezone="America/New_York")
    late = datetime(2026, 7, 1, 2, tzinfo=UTC)  # June 30, 22:00 in New York: June
    await add_time(conn, "new-york", late, 20 * 60, "interactive_video")
    await add_time(conn, "new-york", datetime(2026, 6, 1, 3, tzinfo=UTC), 600)  # May 31 local
    await add_time(conn, "new-york", datetime(2026, 6, 15, tzinfo=UTC), 3600, deleted=True)


@pytest.fixture
async def http(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    app = api_app(pool)
    app.state.clock = lambda: NOW
    app.include_router(billing.router)
    async with pool.acquire() as conn:
        await _population(conn)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rpm.test"
    ) as client:
        yield client


async def _codes(pool: asyncpg.Pool, month: str = "2026-06") -> dict[str, str]:
    async with pool.acquire() as conn:
        reports = await store.month_report(conn, month_of(month), NOW, None)
    return {r.patient.patient_id: r.codes_text() for r in reports}


async def test_the_sql_gives_the_worked_examples(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    got = await _codes(pool)
    assert {k: v for k, v in got.items() if k.startswith("days-")} == {
        "days-01": "",
        "days-02": "99453 99445",
        "days-15": "99453 99445",
        "days-16": "99453 99454",
        "days-30": "99453 99454",
    }
    assert {k: v for k, v in got.items() if k.startswith("min-")} == {
        "min-09": "",
        "min-10": "99470",
        "min-19": "99470",
        "min-20": "99457",
        "min-39": "99457",
        "min-40": "99457 99458",
        "min-60": "99457 99458x2",
        **{f"min-{m:02}-alone": "" for m in (9, 10, 19, 20, 39, 40, 60)},
    }
    assert got["two-devices"] == "99453 99445"  # 15 days, not 30
    assert got["crossing"] == "99453 99445"  # May 20 - June 18: 10 days
    assert got["mid-month"] == "99457"  # no period ends in June; the minutes count
    assert got["set-up-before"] == "99454"
    assert got["new-york"] == "99457"  # 20 minutes on June 30 local; May's and deleted not
    july = await _codes(pool, "2026-07")
    assert july["crossing"] == "99454"  # June 19 - July 18: 16 days across the month end
    assert july["mid-month"] == "99453 99445"  # June 15 - July 14


async def test_the_json_report_has_evidence_and_missing(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    admin = await staff_headers(pool, "pm-lee")
    resp = await http.get(
        "/api/billing/report", params={"month": "2026-06", "limit": 3}, headers=admin
    )
    assert resp.status_code == 200
    body = resp.json()
    assert [p["patient_id"] for p in body["patients"]] == ["crossing", "days-01", "days-02"]
    assert body["next_after"] == "days-02"
    one = body["patients"][1]
    assert one["periods"] == [
        {
            "number": 0,
            "start": "2026-06-01",
            "last_day": "2026-06-30",
            "days_with_readings": 1,
            "days_left": 0,
        }
    ]
    assert {m["code"]: (m["days"], m["text"]) for m in one["missing"]}["99445"] == (
        1,
        "1 more day of readings (too late: its period has ended)",
    )
    assert one["evidence"]["days"] == ["2026-06-01"]
    page = await http.get(
        "/api/billing/report",
        params={"month": "2026-06", "after": "mid-month", "limit": 1},
        headers=admin,
    )
    ny = (
        await http.get(
            "/api/billing/report",
            params={"month": "2026-06", "after": "min-60-alone", "limit": 1},
            headers=admin,
        )
    ).json()["patients"][0]
    assert page.json()["patients"][0]["patient_id"] == "min-09"
    assert ny["patient_id"] == "new-york"
    assert ny["interactive_communications"] == 1
    assert [
        (e["activity"], e["duration_s"], e["interactive"]) for e in ny["evidence"]["time_entries"]
    ] == [("interactive_video", 1200, True)]
    assert "note" not in ny["evidence"]["time_entries"][0]
    assert ny["codes"][0]["evidence"] == "20 minutes in June 2026 over 1 time entry, 1 interactive"


async def test_the_csv(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    admin = await staff_headers(pool, "pm-lee")
    by_path = await http.get("/api/billing/report.csv", params={"month": "2026-06"}, headers=admin)
    by_accept = await http.get(
        "/api/billing/report", params={"month": "2026-06"}, headers=admin | {"Accept": "text/csv"}
    )
    by_format = await http.get(
        "/api/billing/report", params={"month": "2026-06", "format": "csv"}, headers=admin
    )
    assert by_path.text == by_accept.text == by_format.text
    assert by_path.headers["content-type"].startswith("text/csv")
    assert 'filename="billing-2026-06.csv"' in by_path.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(by_path.text)))
    assert list(rows[0]) == list(billing.CSV_COLUMNS)
    by_id = {r["patient_id"]: r for r in rows}
    assert len(rows) == 24
    assert by_id["days-16"]["codes"] == "99453 99454"
    assert by_id["days-16"]["period_start"] == "2026-06-01"
    assert by_id["days-16"]["days_with_readings"] == "16"
    assert by_id["min-60"]["codes"] == "99457 99458x2"
    assert by_id["min-19"]["missing"].startswith("99457: 1 more minute (too late")
    assert by_id["min-10-alone"]["missing"].startswith(
        "99470: an interactive communication (too late"
    )
    assert by_id["mid-month"]["period_start"] == ""


async def test_a_nurse_sees_her_teams_patients_only(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    nurse = await staff_headers(pool, "nurse-jo", "nurse", ["south"])
    rows = list(
        csv.DictReader(
            io.StringIO(
                (
                    await http.get(
                        "/api/billing/report.csv", params={"month": "2026-06"}, headers=nurse
                    )
                ).text
            )
        )
    )
    assert {r["patient_id"] for r in rows} == {
        "crossing",
        "mid-month",
        *(f"min-{m:02}-alone" for m in (9, 10, 19, 20, 39, 40, 60)),
    }
    page = (
        await http.get("/api/billing/report", params={"month": "2026-06"}, headers=nurse)
    ).json()
    assert len(page["patients"]) == 9
    async with pool.acquire() as conn:
        audited = await conn.fetch(
            "SELECT actor, patient_ids FROM audit_log WHERE resource = 'billing-report' ORDER BY id"
        )
    assert audited[0]["actor"] == "staff:nurse-jo"
    assert "crossing" in audited[0]["patient_ids"]
    refused = await http.post("/api/billing/code-tables", json={}, headers=nurse)
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("params", "says"),
    [({"month": "2026-13"}, "month"), ({"month": "2025-06"}, "no billing code table")],
)
async def test_bad_months_are_422(
    http: httpx.AsyncClient, pool: asyncpg.Pool, params: dict[str, str], says: str
) -> None:
    admin = await staff_headers(pool, "pm-lee")
    resp = await http.get("/api/billing/report", params=params, headers=admin)
    assert resp.status_code == 422
    assert says in resp.text


async def test_code_tables_are_versions(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    admin = await staff_headers(pool, "pm-lee")
    listing = (await http.get("/api/billing/code-tables", headers=admin)).json()
    assert [(v["version"], v["name"], v["actor"], v["in_use"]) for v in listing] == [
        (1, "cms-2026", "system", True)
    ]
    # a correction from July: 99470 gone
    doc = default_table().document() | {"name": "cms-2026-july", "effective_from": "2026-07-01"}
    doc["codes"] = [c for c in doc["codes"] if c["code"] != "99470"]
    doc["codes"] = [{**c, "excludes": []} if c["code"] == "99457" else c for c in doc["codes"]]
    resp = await http.post(
        "/api/billing/code-tables", json=doc, params={"note": "July change"}, headers=admin
    )
    assert resp.json() == {"version": 2, "name": "cms-2026-july", "changed": True}
    again = await http.post("/api/billing/code-tables", json=doc, headers=admin)
    assert again.json() == {"version": 2, "name": "cms-2026-july", "changed": False}
    bad = await http.post(
        "/api/billing/code-tables", json=doc | {"effective_from": "soon"}, headers=admin
    )
    assert bad.status_code == 422
    assert "effective_from: a date" in bad.text
    async with pool.acquire() as conn:
        await add_minutes(conn, "min-10", date(2026, 7, 2), 12, interactive=True)
    july = await _codes(pool, "2026-07")
    assert "99470" not in july["min-10"]
    assert (await _codes(pool))["min-10"] == "99470"  # June keeps its table
    listing = (await http.get("/api/billing/code-tables", headers=admin)).json()
    assert next((v["version"], v["note"], v["actor"]) for v in listing) == (
        2,
        "July change",
        "staff:pm-lee",
    )


async def test_report_statement_reads_only_the_month(pool: asyncpg.Pool) -> None:
    """Patients with years of history: the set-up lookup stops at the first qualifying
    period, and the rest reads only the month's ranges."""
    async with pool.acquire() as conn:
        await add_patient(conn, "veteran", start=date(2024, 1, 1))
        await add_days(conn, "veteran", first_days(date(2024, 1, 1), 900))
        reports = await store.month_report(conn, JUNE, NOW, None)
    (veteran,) = reports
    assert veteran.codes_text() == "99454"
    assert veteran.patient.setup_period == 0
    assert veteran.patient.periods[0].period.start == date(2024, 1, 1) + timedelta(days=30 * 29)


@pytest.mark.parametrize("connections", [1, 2])
async def test_the_whole_report_in_pages_is_the_report_in_one_statement(
    pool: asyncpg.Pool, connections: int
) -> None:
    async with pool.acquire() as conn:
        await _population(conn)
        whole = await store.month_report(conn, JUNE, NOW, None)
    async with pool.acquire() as a, pool.acquire() as b:
        paged = await store.whole_report([a, b][:connections], JUNE, NOW, None, page=4)
    assert len(whole) > 4 * 3  # several pages, turn about on the connections
    assert [r.document() for r in paged] == [r.document() for r in whole]
    north = await _team_report(pool, frozenset({"north"}))
    assert {r.patient.care_team for r in north} == {"north"}


async def _team_report(pool: asyncpg.Pool, teams: frozenset[str]) -> list[Any]:
    async with pool.acquire() as a, pool.acquire() as b:
        return await store.whole_report([a, b], JUNE, NOW, teams, page=3)


async def test_the_whole_report_reads_one_snapshot(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await _population(conn)
        before = {r.patient.patient_id: r.codes_text() for r in await _team_report(pool, None)}
    # Days written while the report runs (after its first page) are not in any page.
    async with pool.acquire() as a, pool.acquire() as b, pool.acquire() as writer:
        during = await store.whole_report(
            [WritesAfterItsFirstPage(a, writer), b],  # type: ignore[list-item]
            JUNE,
            NOW,
            None,
            page=3,
        )
    assert {r.patient.patient_id: r.codes_text() for r in during} == before
    assert (await _codes(pool))["two-devices"] != before["two-devices"]


class WritesAfterItsFirstPage:
    """A connection that, once its first page is read, has ``writer`` add days with readings
    (committed at once) while the report goes on."""

    def __init__(self, conn: Any, writer: Any) -> None:
        self._conn = conn
        self._writer = writer
        self._written = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def fetch(self, *args: Any) -> Any:
        rows = await self._conn.fetch(*args)
        if args[0] == store.REPORT_SQL and not self._written:
            self._written = True
            await add_days(self._writer, "days-30", first_days(date(2026, 5, 1), 30))
            await add_days(self._writer, "two-devices", first_days(date(2026, 6, 16), 14))
        return rows
