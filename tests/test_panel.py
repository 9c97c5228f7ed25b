"""The patient panel API (docs/panel.md): its columns, the flags at their thresholds, filters,
sorting, paging and care-team scoping, and the notifications that keep it live. The API's
clock is pinned (``app.state.clock``); patients, days, time entries and alerts are rows
written with SQL (time entries have no API on this branch)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from rpm.api import panel
from rpm.billing.codes import default_table, parse
from rpm.billing.needs import Thresholds, thresholds_of
from rpm.billing.periods import device_period
from rpm.engagement import segments as segment_spec
from rpm.storage import billing as billing_store
from rpm.storage import panel as panel_store
from rpm.storage import segments as segment_store
from rpm.storage import staff as staff_store
from tests.helpers import api_app, staff_headers

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)  # 10:00 in New York, a Friday
TZ = "America/New_York"
TODAY = date(2026, 11, 20)  # local
START = date(2026, 11, 1)  # period 0: Nov 1 to Nov 30, 11 days left on Nov 20


async def add_patient(
    conn: asyncpg.Connection,
    pid: str,
    *,
    team: str = "north",
    name: str | None = None,
    programs: Sequence[str] = ("hypertension",),
    start: date | None = START,
    days: int = 0,
    first_day: date | None = None,
) -> None:
    """A patient of ``team`` with readings on ``days`` consecutive local days from
    ``first_day`` (default: the monitoring start)."""
    await staff_store.create_team(conn, team, f"Team {team}")
    await conn.execute(
        """INSERT INTO patients (id, display_name, timezone, programs, care_team,
                                 monitoring_started_on)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        pid,
        name or f"Name of {pid}",
        TZ,
        list(programs),
        team,
        start,
    )
    since = first_day or start or TODAY
    await conn.execute(
        """INSERT INTO patient_days (patient_id, day, readings, metrics)
           SELECT $1, $2::date + i, 1, '{blood_pressure}' FROM generate_series(0, $3 - 1) i""",
        pid,
        since,
        days,
    )


async def add_time(
    conn: asyncpg.Connection,
    pid: str,
    seconds: int,
    activity: str = "data_review",
    at: datetime = NOW - timedelta(days=1),
    deleted: bool = False,
) -> None:
    await conn.execute(
        """INSERT INTO staff (id, display_name, role, password_hash)
           VALUES ('nina', 'Nina', 'nurse', '!') ON CONFLICT DO NOTHING"""
    )
    await conn.execute(
        """INSERT INTO time_entries (patient_id, staff_id, started_at, duration_s, activity,
                                     source, deleted_at)
           VALUES ($1, 'nina', $2, $3, $4, 'manual', $5)""",
        pid,
        at,
        seconds,
        activity,
        NOW if deleted else None,
    )


async def add_alert(
    conn: asyncpg.Connection, pid: str, rule: str, severity: str, state: str = "open"
) -> None:
    await conn.execute(
        """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation,
                               evidence)
           VALUES ($1, $2, $3, $4, 't', 'e', '{}')""",
        pid,
        rule,
        severity,
        state,
    )


async def add_reading(conn: asyncpg.Connection, pid: str, at: datetime, sys: int) -> None:
    # The patient's cuff, bound from the start (a patient's readings are found through the
    # patient's devices: migration 0041).
    await conn.execute(
        """INSERT INTO devices (id, kind) VALUES ($1, 'bp_cuff') ON CONFLICT DO NOTHING""",
        f"{pid}-cuff",
    )
    await conn.execute(
        """INSERT INTO device_bindings (device_id, patient_id, during)
           SELECT $1, $2, tstzrange('2000-01-01', NULL)
            WHERE NOT EXISTS (SELECT 1 FROM device_bindings WHERE device_id = $1)""",
        f"{pid}-cuff",
        pid,
    )
    await conn.execute(
        """INSERT INTO readings (measured_at, device_id, metric, patient_id, v1, v2, received_at)
           VALUES ($1, $2, 'blood_pressure', $3, $4, 80, $1)""",  # systolic, diastolic
        at,
        f"{pid}-cuff",
        pid,
        sys,
    )
    await conn.execute(
        """INSERT INTO patient_metric_last (patient_id, metric, measured_at)
           VALUES ($1, 'blood_pressure', $2)
           ON CONFLICT (patient_id, metric) DO UPDATE SET measured_at = excluded.measured_at""",
        pid,
        at,
    )


@pytest.fixture
async def app_http(pool: asyncpg.Pool) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = api_app(pool)
    app.state.clock = lambda: NOW  # thresholds: the billing code table in force (CMS 2026)
    app.include_router(panel.router)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rpm.test"
    ) as client:
        yield app, client


@pytest.fixture
async def http(app_http: tuple[Any, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_http[1]


async def get(http: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> Any:
    resp = await http.get("/api/panel", headers=headers, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def by_id(body: Any) -> dict[str, Any]:
    return {p["patient_id"]: p for p in body["patients"]}


async def test_columns_of_one_patient(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", programs=["hypertension", "heart_failure"], days=11)
        await add_time(conn, "p1", 600, "interactive_phone")
        await add_time(conn, "p1", 300)
        await add_time(conn, "p1", 900, deleted=True)  # deleted: not counted
        await add_time(conn, "p1", 900, at=datetime(2026, 11, 1, 3, 30, tzinfo=UTC))  # Oct 31
        await add_time(conn, "p1", 60, at=datetime(2026, 11, 1, 4, 30, tzinfo=UTC))  # Nov 1
        await add_alert(conn, "p1", "bp.high", "HIGH")
        await add_alert(conn, "p1", "bp.low", "MEDIUM")
        await add_alert(conn, "p1", "bp.crisis", "CRITICAL", "resolved")
        await add_reading(conn, "p1", NOW - timedelta(hours=2), 150)
        await add_reading(conn, "p1", NOW - timedelta(hours=1), 132)
    admin = await staff_headers(pool)
    body = await get(http, admin)
    assert body["total"] == 1
    assert body["thresholds"] == {
        "days_needed": 16,
        "minutes_needed": 20,
        "interactive_needed": True,
    }
    [p] = body["patients"]
    assert p["display_name"] == "Name of p1"
    assert p["programs"] == ["hypertension", "heart_failure"]
    assert p["today"] == "2026-11-20"
    assert p["device_period"] == {
        "number": 0,
        "start": "2026-11-01",
        "last_day": "2026-11-30",
        "days_with_readings": 11,
        "days_left": 11,
    }
    assert p["needs_readings"] == {
        "flag": True,
        "more_days": 5,
        "days_left": 11,
        "reachable": True,
        "text": "5 more days, 11 days left",
    }
    assert p["month"] == {"month": "2026-11", "seconds": 960, "minutes": 16.0, "interactive": True}
    assert p["needs_time"] == {
        "flag": True,
        "more_minutes": 4,
        "interactive_missing": False,
        "text": "4 more minutes",
    }
    assert p["open_alerts"] == {"count": 2, "top_severity": "high"}
    [m] = p["metrics"]
    assert (m["metric"], m["values"], m["age_s"]) == (
        "blood_pressure",
        {"systolic": 132, "diastolic": 80},
        3600.0,
    )
    assert p["last_reading_at"] == m["measured_at"]


@pytest.mark.parametrize(
    ("days", "flag", "text"),
    [(15, True, "1 more day, 11 days left"), (16, False, "enough days")],
)
async def test_needs_readings_at_its_threshold(
    http: httpx.AsyncClient, pool: asyncpg.Pool, days: int, flag: bool, text: str
) -> None:
    async with pool.acquire() as conn:
        # The days are before the start of this period too: only the period's count.
        await add_patient(conn, "p", start=START, days=days + 5, first_day=START - timedelta(5))
    body = await get(http, await staff_headers(pool))
    [p] = body["patients"]
    assert p["device_period"]["days_with_readings"] == days
    assert (p["needs_readings"]["flag"], p["needs_readings"]["text"]) == (flag, text)
    flagged = await get(http, await staff_headers(pool), flag="readings")
    assert flagged["total"] == (1 if flag else 0)


async def test_the_flags_follow_the_billing_code_table_in_force(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p", start=START, days=12)
        headers = await staff_headers(pool)
        assert (await get(http, headers))["thresholds"]["days_needed"] == 16
        # A table in force from before NOW that asks 12 days for the top device code.
        document = default_table().document()
        document["name"] = "cms-2026-amended"
        for code in document["codes"]:
            if code["code"] == "99445":
                code["max_days"] = 11
            if code["code"] == "99454":
                code["min_days"] = 12
        await billing_store.publish_table(conn, parse(document), "staff:pm", "amended")
    body = await get(http, headers)
    assert body["thresholds"]["days_needed"] == 12
    [p] = body["patients"]
    assert p["needs_readings"]["flag"] is False


def test_thresholds_of_the_default_table() -> None:
    assert thresholds_of(default_table()) == Thresholds(16, 20, True)


@pytest.mark.parametrize(
    ("seconds", "activity", "interactive_needed", "flag", "text"),
    [
        (19 * 60, "interactive_video", True, True, "1 more minute"),
        (19 * 60 + 1, "interactive_video", True, True, "1 more minute"),
        (20 * 60, "interactive_video", True, False, "enough time"),
        (20 * 60, "care_coordination", True, True, "an interactive call (phone or video)"),
        (20 * 60, "care_coordination", False, False, "enough time"),
        (
            19 * 60,
            "data_review",
            True,
            True,
            "1 more minute and an interactive call (phone or video)",
        ),
    ],
)
async def test_needs_time_at_its_threshold(
    app_http: tuple[Any, httpx.AsyncClient],
    pool: asyncpg.Pool,
    seconds: int,
    activity: str,
    interactive_needed: bool,
    flag: bool,
    text: str,
) -> None:
    app, http = app_http
    app.state.panel_thresholds = Thresholds(interactive_needed=interactive_needed)
    async with pool.acquire() as conn:
        await add_patient(conn, "p", days=20)
        await add_time(conn, "p", seconds, activity)
    [p] = (await get(http, await staff_headers(pool)))["patients"]
    assert (p["needs_time"]["flag"], p["needs_time"]["text"]) == (flag, text)
    flagged = await get(http, await staff_headers(pool), flag="time")
    assert flagged["total"] == (1 if flag else 0)


async def test_what_counts_as_interactive_is_the_code_tables(
    app_http: tuple[Any, httpx.AsyncClient], pool: asyncpg.Pool
) -> None:
    """A table that counts only video calls as interactive: a phone call's 25 minutes are
    enough time, but the month still needs an interactive call, in the row and the filter."""
    app, http = app_http
    app.state.panel_thresholds = Thresholds(interactive_activities=frozenset({"interactive_video"}))
    async with pool.acquire() as conn:
        await add_patient(conn, "p", days=20)
        await add_time(conn, "p", 25 * 60, "interactive_phone")
    [p] = (await get(http, await staff_headers(pool)))["patients"]
    assert p["month"]["interactive"] is False
    assert p["needs_time"]["flag"] is True
    assert (await get(http, await staff_headers(pool), flag="time"))["total"] == 1


async def test_periods_in_sql_agree_with_device_period(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Every day has readings; the SQL's count is the days of the period so far, as
    rpm.billing.periods.device_period draws it, at every boundary."""
    offsets = [0, 1, 15, 16, 29, 30, 31, 45, 59, 60, 61, -3]
    async with pool.acquire() as conn:
        for off in offsets:
            start = TODAY - timedelta(days=off)
            await add_patient(
                conn, f"s{off:+03d}", start=start, days=70, first_day=TODAY - timedelta(69)
            )
        # No monitoring start: from the first day with readings.
        await add_patient(conn, "first", start=None, days=40, first_day=TODAY - timedelta(39))
        await add_patient(conn, "never", start=None, days=0)
    body = await get(http, await staff_headers(pool), limit=200)
    rows = by_id(body)
    for off in offsets:
        p = rows[f"s{off:+03d}"]
        period = device_period(TODAY - timedelta(days=off), TODAY)
        assert p["device_period"]["start"] == period.start.isoformat(), off
        so_far = max(0, (TODAY - period.start).days + 1)  # a start still to come: none yet
        assert p["device_period"]["days_with_readings"] == so_far, off
        assert p["device_period"]["days_left"] == period.days_left(TODAY), off
    assert rows["first"]["monitoring_start"] == (TODAY - timedelta(39)).isoformat()
    assert rows["first"]["device_period"]["number"] == 1
    assert rows["first"]["device_period"]["days_with_readings"] == 10
    assert rows["never"]["device_period"] is None
    assert rows["never"]["needs_readings"]["text"] == "no readings yet: 16 days needed"
    # The SQL's flags (the filter) are the pure code's (the rows' flags).
    flagged = await get(http, await staff_headers(pool), flag="readings", limit=200)
    assert set(by_id(flagged)) == {k for k, p in rows.items() if p["needs_readings"]["flag"]}


async def test_filters_sorting_and_paging(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "a", name="Zoe", days=20, programs=["diabetes"])
        await add_patient(conn, "b", name="Adam", days=3)
        await add_patient(conn, "c", name="Maya", days=16)
        await add_patient(conn, "d", name="Bea", days=9)
        await add_time(conn, "a", 1500, "interactive_phone")
        await add_time(conn, "c", 300)
        await add_alert(conn, "b", "bp.low", "LOW")
        await add_alert(conn, "d", "bp.crisis", "CRITICAL")
        await add_reading(conn, "c", NOW - timedelta(days=2), 140)
        await add_reading(conn, "a", NOW - timedelta(hours=3), 120)
        await segment_store.publish_segment(
            conn,
            "few-days",
            segment_spec.parse(
                {"where": {"fact": "days_with_readings_30d", "op": "<", "value": 10}}
            ),
            "staff:test",
            None,
        )
    h = await staff_headers(pool)

    async def ids(**params: Any) -> list[str]:
        return [p["patient_id"] for p in (await get(http, h, **params))["patients"]]

    assert await ids() == ["b", "d", "c", "a"]  # by name
    assert await ids(sort="name", direction="desc") == ["a", "c", "d", "b"]
    assert await ids(sort="patient") == ["a", "b", "c", "d"]
    assert await ids(sort="days") == ["b", "d", "c", "a"]
    assert await ids(sort="days", direction="desc") == ["a", "c", "d", "b"]
    assert await ids(sort="minutes", direction="desc") == ["a", "c", "b", "d"]
    assert await ids(sort="alerts", direction="desc") == ["d", "b", "a", "c"]
    assert await ids(sort="last_reading") == ["b", "d", "c", "a"]  # never measured first
    assert await ids(sort="last_reading", direction="desc") == ["a", "c", "b", "d"]
    assert await ids(program="diabetes") == ["a"]
    assert await ids(flag="readings") == ["b", "d"]
    assert await ids(flag="time") == ["b", "d", "c"]
    assert await ids(flag="any") == ["b", "d", "c"]
    assert await ids(flag="none") == ["a"]
    assert await ids(segment="few-days") == ["b", "d"]
    assert await ids(segment="few-days", flag="none") == []

    first = await get(http, h, sort="patient", limit=3)
    assert (first["total"], [p["patient_id"] for p in first["patients"]]) == (4, ["a", "b", "c"])
    second = await get(http, h, sort="patient", limit=3, offset=3)
    assert (second["total"], [p["patient_id"] for p in second["patients"]]) == (4, ["d"])
    past = await get(http, h, sort="patient", limit=3, offset=9)
    assert (past["total"], past["patients"]) == (4, [])


async def test_nurses_see_their_teams_only(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "n1", team="north")
        await add_patient(conn, "n2", team="north")
        await add_patient(conn, "s1", team="south")
        await add_patient(conn, "w1", team="west")
    nurse = await staff_headers(pool, "nurse-kim", "nurse", ["north", "west"])
    admin = await staff_headers(pool)
    assert set(by_id(await get(http, nurse))) == {"n1", "n2", "w1"}
    assert set(by_id(await get(http, nurse, team="west"))) == {"w1"}
    assert (
        await http.get("/api/panel", headers=nurse, params={"team": "south"})
    ).status_code == 404
    assert (await http.get("/api/panel", headers=admin, params={"team": "nope"})).status_code == 404
    assert set(by_id(await get(http, admin))) == {"n1", "n2", "s1", "w1"}
    assert set(by_id(await get(http, admin, team="south"))) == {"s1"}
    async with pool.acquire() as conn:
        audited = await conn.fetchval(
            "SELECT patient_ids FROM audit_log WHERE resource = 'panel' AND actor = $1",
            "staff:nurse-kim",
        )
    assert sorted(audited) == ["n1", "n2", "w1"]


@pytest.mark.parametrize(
    "params",
    [
        {"sort": "display_name"},
        {"direction": "up"},
        {"flag": "maybe"},
        {"limit": 0},
        {"limit": 201},
        {"offset": -1},
        {"segment": "Not A Name"},
    ],
)
async def test_bad_parameters_are_422(
    http: httpx.AsyncClient, pool: asyncpg.Pool, params: dict[str, Any]
) -> None:
    resp = await http.get("/api/panel", headers=await staff_headers(pool), params=params)
    assert resp.status_code == 422


async def test_an_unknown_segment_is_404(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    resp = await http.get(
        "/api/panel", headers=await staff_headers(pool), params={"segment": "nope"}
    )
    assert resp.status_code == 404


async def test_time_entries_and_batches_notify_the_panel_in_chunks(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """One notification per statement however many rows, each under PostgreSQL's limit."""
    heard: list[str] = []
    listener = await asyncpg.connect(db_url)
    await listener.add_listener(panel_store.PANEL_CHANNEL, lambda *a: heard.append(a[3]))
    try:
        async with pool.acquire() as conn:
            ids = [f"patient-with-a-long-identifier-{i:05d}" for i in range(600)]
            for pid in ids:
                await add_patient(conn, pid)
            heard.clear()
            await conn.execute(
                """INSERT INTO staff (id, display_name, role, password_hash)
                   VALUES ('nina', 'Nina', 'nurse', '!')"""
            )
            await conn.execute(
                """INSERT INTO time_entries (patient_id, staff_id, started_at, duration_s,
                                             activity, source)
                   SELECT p, 'nina', $2, 60, 'data_review', 'manual'
                     FROM unnest($1::text[]) p, generate_series(1, 3)""",
                ids,
                NOW,
            )
            await asyncio.sleep(0.2)
            named = [p for h in heard for p in json.loads(h)["patients"]]
            assert sorted(named) == ids
            assert 2 <= len(heard) <= 5
            assert all(len(h.encode()) < 8000 for h in heard)
            heard.clear()
            await conn.execute(
                "UPDATE time_entries SET deleted_at = now() WHERE patient_id = $1", ids[0]
            )
            await panel_store.notify_patients(conn, ["x", "y"])
            await asyncio.sleep(0.2)
            assert [json.loads(h)["patients"] for h in heard] == [[ids[0]], ["x", "y"]]
    finally:
        await listener.close()


@pytest.mark.pure
def test_changed_patients_reads_both_kinds_of_notification() -> None:
    assert panel_store.changed_patients('{"patients": ["a", "b", 3]}') == ["a", "b"]
    assert panel_store.changed_patients('{"alert_id": 1, "patient_id": "c"}') == ["c"]
    assert panel_store.changed_patients('{"stored": 3}') == []
    assert panel_store.changed_patients("not json") == []
    assert panel_store.changed_patients("[1]") == []


@pytest.mark.pure
def test_patient_payloads_name_each_patient_once_under_the_limit() -> None:
    ids = [f"p-{i:05d}" for i in range(3000)] + ["p-00001", 'odd"\\id' * 50]
    payloads = panel_store.patient_payloads(ids)
    named = [p for body in payloads for p in json.loads(body)["patients"]]
    assert sorted(named) == sorted(set(ids))
    assert all(len(body.encode()) <= panel_store.NOTIFY_BYTES for body in payloads)
    assert len(payloads) >= 4
    assert panel_store.patient_payloads([]) == []
