"""Time tracking over the API and in storage, against the real database: entries created,
edited (a stale version is 409) and deleted with their history, team scoping (404), bounds
(422), who may record and change whose time, the timer (one per staff member, capped,
surviving another client), and the audit log. The API's clock is pinned (``Clock``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from rpm.api import time_entries, timer
from rpm.auth import API_KEY_PREFIX, token_hash
from rpm.billing.time import Activity, EntryValues
from rpm.domain.errors import StaleVersion, TimeEntryNotFound
from rpm.settings import Settings
from rpm.storage import registry, staff_auth
from rpm.storage import staff as staff_store
from rpm.storage import time_entries as store
from tests.helpers import api_app, staff_headers

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
NORTH, SOUTH = "pat-north", "pat-south"


class Clock:
    """The app's clock: pinned, moved on by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def http(pool: asyncpg.Pool, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    app = api_app(pool)
    app.state.settings = Settings()
    app.state.clock = clock
    app.include_router(time_entries.router)
    app.include_router(timer.router)
    async with pool.acquire() as conn:
        for patient, team, zone in ((NORTH, "north", "America/New_York"), (SOUTH, "south", "UTC")):
            await registry.upsert_patient(
                conn,
                patient_id=patient,
                display_name="Test Patient",
                phone=None,
                sms_consent=False,
                timezone=zone,
            )
            await staff_store.create_team(conn, team, team)
            await staff_store.set_patient_team(conn, patient, team)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rpm.test"
    ) as client:
        yield client


def manual(
    minutes: float = 12, ago_h: float = 2, activity: str = "data_review", **more: Any
) -> dict[str, Any]:
    return {
        "started_at": (NOW - timedelta(hours=ago_h)).isoformat(),
        "duration_s": int(minutes * 60),
        "activity": activity,
        **more,
    }


async def test_create_edit_delete_with_history_and_optimistic_locking(
    http: httpx.AsyncClient, pool: asyncpg.Pool, clock: Clock
) -> None:
    nurse = await staff_headers(pool, "nina", "nurse", ["north"])
    url = f"/api/patients/{NORTH}/time-entries"
    created = await http.post(url, json=manual(note=" reviewed the week's BP "), headers=nurse)
    assert created.status_code == 201, created.text
    entry = created.json()
    assert entry["staff_id"] == "nina"
    assert (entry["version"], entry["source"], entry["note"]) == (
        1,
        "manual",
        "reviewed the week's BP",
    )
    assert entry["activity_label"] == "Data review"
    assert not entry["interactive"]
    assert entry["ended_at"] == "2026-11-23T13:12:00Z"

    # Edit at version 1: version 2. Again at version 1: stale, 409, nothing changes.
    clock.advance(minutes=1)
    path = f"/api/time-entries/{entry['id']}"
    edited = await http.patch(
        path,
        json={"version": 1, "duration_s": 1500, "activity": "interactive_phone"},
        headers=nurse,
    )
    assert edited.status_code == 200, edited.text
    assert (edited.json()["version"], edited.json()["duration_s"]) == (2, 1500)
    assert edited.json()["interactive"] is True
    stale = await http.patch(path, json={"version": 1, "note": "mine"}, headers=nurse)
    assert stale.status_code == 409
    assert "version 2, not 1" in stale.json()["detail"]
    assert (await http.get(path, headers=nurse)).json()["note"] == "reviewed the week's BP"

    # The month's list and total (New York's November), then a stale and a real deletion.
    listing = (await http.get(url, headers=nurse)).json()
    assert (listing["month"], listing["timezone"]) == ("2026-11", "America/New_York")
    assert listing["start"] == "2026-11-01T04:00:00Z"
    assert [e["id"] for e in listing["entries"]] == [entry["id"]]
    assert listing["total"] == {"seconds": 1500, "minutes": 25, "entries": 1, "interactive": True}
    assert (await http.delete(path, params={"version": 1}, headers=nurse)).status_code == 409
    clock.advance(minutes=1)
    deleted = await http.delete(path, params={"version": 2}, headers=nurse)
    assert deleted.status_code == 200
    assert deleted.json()["deleted_at"] == "2026-11-23T15:02:00Z"
    assert (await http.get(url, headers=nurse)).json()["entries"] == []
    assert (
        await http.patch(path, json={"version": 3, "note": "x"}, headers=nurse)
    ).status_code == 404
    assert (await http.delete(path, headers=nurse)).status_code == 404

    # The history: who, when, the value before and after each change.
    history = (await http.get(path + "/history", headers=nurse)).json()
    assert [(h["action"], h["actor"]) for h in history] == [
        ("create", "staff:nina"),
        ("edit", "staff:nina"),
        ("delete", "staff:nina"),
    ]
    create, edit, delete = history
    assert create["old"] is None
    assert create["new"]["duration_s"] == 720
    assert (edit["old"]["duration_s"], edit["old"]["activity"], edit["old"]["version"]) == (
        720,
        "data_review",
        1,
    )
    assert (edit["new"]["duration_s"], edit["new"]["activity"]) == (1500, "interactive_phone")
    assert delete["old"]["duration_s"] == 1500
    assert delete["new"] is None
    assert delete["at"] == "2026-11-23T15:02:00Z"

    async with pool.acquire() as conn:
        audited = await conn.fetch(
            "SELECT action, resource, patient_ids, status FROM audit_log "
            "WHERE resource IN ('time-entries', 'time-entry') ORDER BY id"
        )
    assert [(a["action"], a["status"]) for a in audited][:4] == [
        ("create", 201),
        ("edit", 200),
        ("edit", 409),
        ("read", 200),
    ]
    assert all(a["patient_ids"] == [NORTH] for a in audited)


async def test_another_teams_patient_and_its_entries_are_404(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    nurse = await staff_headers(pool, "nina", "nurse", ["north"])
    admin = await staff_headers(pool, "ada")
    theirs = (
        await http.post(f"/api/patients/{SOUTH}/time-entries", json=manual(), headers=admin)
    ).json()
    path = f"/api/time-entries/{theirs['id']}"
    answers = [
        await http.get(f"/api/patients/{SOUTH}/time-entries", headers=nurse),
        await http.post(f"/api/patients/{SOUTH}/time-entries", json=manual(), headers=nurse),
        await http.get("/api/patients/nobody/time-entries", headers=nurse),
        await http.get(path, headers=nurse),
        await http.patch(path, json={"version": 1, "note": "x"}, headers=nurse),
        await http.delete(path, headers=nurse),
        await http.get(path + "/history", headers=nurse),
        await http.post(
            "/api/timer", json={"patient_id": SOUTH, "activity": "data_review"}, headers=nurse
        ),
        await http.get("/api/time-entries/999999", headers=admin),
    ]
    assert [a.status_code for a in answers] == [404] * len(answers)
    # Refusals are audited without the patient: the log does not say who it was.
    async with pool.acquire() as conn:
        refused = await conn.fetch(
            "SELECT patient_ids FROM audit_log WHERE status = 404 AND actor = 'staff:nina'"
        )
    assert len(refused) == 8
    assert all(r["patient_ids"] == [] for r in refused)


async def test_bounds_and_malformed_input_are_4xx_saying_why(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    nurse = await staff_headers(pool, "nina", "nurse", ["north"])
    url = f"/api/patients/{NORTH}/time-entries"
    cases = {
        "duration_s must be between 1 and 14400": manual(minutes=241),
        "in the future": {**manual(), "started_at": (NOW + timedelta(minutes=1)).isoformat()},
        "ends in the future": manual(minutes=30, ago_h=0.25),
        "more than 366 days ago": manual(ago_h=24 * 400),
    }
    for problem, body in cases.items():
        resp = await http.post(url, json=body, headers=nurse)
        assert (resp.status_code, problem in resp.json()["detail"]) == (422, True), resp.text
    for body in (
        manual(minutes=0),
        manual(activity="lunch"),
        manual(note="x" * 2001),
        {**manual(), "started_at": "2026-11-23T09:00:00"},  # no time zone
        {**manual(), "surprise": 1},
        {"duration_s": 60},
    ):
        assert (await http.post(url, json=body, headers=nurse)).status_code == 422, body
    for params in ({"from": NOW.isoformat()}, {"month": "2026-13"}, {"month": "Nov"}):
        assert (await http.get(url, params=params, headers=nurse)).status_code == 422, params
    ranged = await http.get(
        url,
        params={"from": (NOW - timedelta(days=1)).isoformat(), "to": NOW.isoformat()},
        headers=nurse,
    )
    assert ranged.status_code == 200
    assert ranged.json()["month"] is None


async def test_who_records_and_changes_whose_time(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    nina = await staff_headers(pool, "nina", "nurse", ["north"])
    omar = await staff_headers(pool, "omar", "nurse", ["north"])
    admin = await staff_headers(pool, "ada")
    url = f"/api/patients/{NORTH}/time-entries"
    for_other = await http.post(url, json=manual(staff_id="omar"), headers=nina)
    assert for_other.status_code == 403
    unknown = await http.post(url, json=manual(staff_id="ghost"), headers=admin)
    assert unknown.status_code == 422
    on_behalf = await http.post(url, json=manual(staff_id="nina"), headers=admin)
    assert on_behalf.status_code == 201
    assert on_behalf.json()["staff_id"] == "nina"
    path = f"/api/time-entries/{on_behalf.json()['id']}"
    # Omar sees Nina's entry (same team) but may not change it; an admin may, and Nina may.
    assert (await http.get(path, headers=omar)).status_code == 200
    assert (
        await http.patch(path, json={"version": 1, "note": "x"}, headers=omar)
    ).status_code == 403
    assert (await http.delete(path, headers=omar)).status_code == 403
    by_admin = await http.patch(path, json={"version": 1, "staff_id": "omar"}, headers=admin)
    assert by_admin.json()["staff_id"] == "omar"
    # An edit that changes nothing stores nothing.
    same = await http.patch(path, json={"version": 2, "staff_id": "omar"}, headers=admin)
    assert same.json()["version"] == 2
    history = (await http.get(path + "/history", headers=admin)).json()
    assert [h["action"] for h in history] == ["create", "edit"]
    assert history[0]["actor"] == "staff:ada"
    assert history[0]["new"]["staff_id"] == "nina"

    # An API key holds no time-tracking scope.
    key = API_KEY_PREFIX + "time-test-key"
    async with pool.acquire() as conn:
        await staff_auth.create_api_key(
            conn,
            key_id="ehr",
            name="EHR",
            scopes=("fhir:read",),
            integration=None,
            key_hash=token_hash(key),
            created_by="staff:ada",
        )
    as_key = {"Authorization": f"Bearer {key}"}
    assert (await http.get(url, headers=as_key)).status_code == 403
    assert (await http.get("/api/timer", headers=as_key)).status_code == 403


async def test_the_timer_one_per_staff_member_survives_another_client_and_stops_into_an_entry(
    http: httpx.AsyncClient, pool: asyncpg.Pool, clock: Clock
) -> None:
    nurse = await staff_headers(pool, "nina", "nurse", ["north"])
    assert (await http.get("/api/timer", headers=nurse)).json() is None
    start = {"patient_id": NORTH, "activity": "interactive_video", "note": "weekly call"}
    started = await http.post("/api/timer", json=start, headers=nurse)
    assert started.status_code == 201, started.text
    assert started.json()["elapsed_s"] == 0
    assert started.json()["max_s"] == 14_400
    again = await http.post("/api/timer", json={**start, "patient_id": NORTH}, headers=nurse)
    assert again.status_code == 409
    assert "already running" in again.json()["detail"]

    # Another browser (a new token of the same nurse) sees the same running timer.
    clock.advance(minutes=7, seconds=30)
    elsewhere = await staff_headers(pool, "nina")
    running = (await http.get("/api/timer", headers=elsewhere)).json()
    assert (running["patient_id"], running["elapsed_s"], running["over_limit"]) == (
        NORTH,
        450,
        False,
    )
    assert running["started_at"] == "2026-11-23T15:00:00Z"

    stopped = await http.post(
        "/api/timer/stop", json={"note": "weekly call, meds ok"}, headers=elsewhere
    )
    assert stopped.status_code == 201, stopped.text
    got = stopped.json()
    assert (got["elapsed_s"], got["capped"]) == (450, False)
    entry = got["entry"]
    assert (entry["source"], entry["duration_s"], entry["activity"]) == (
        "timer",
        450,
        "interactive_video",
    )
    assert (entry["started_at"], entry["note"], entry["staff_id"]) == (
        "2026-11-23T15:00:00Z",
        "weekly call, meds ok",
        "nina",
    )
    assert (await http.get("/api/timer", headers=nurse)).json() is None
    assert (await http.post("/api/timer/stop", headers=nurse)).status_code == 404
    listing = (await http.get(f"/api/patients/{NORTH}/time-entries", headers=nurse)).json()
    assert listing["total"]["interactive"] is True
    assert listing["total"]["seconds"] == 450


async def test_a_timer_left_running_is_capped_and_one_can_be_discarded(
    http: httpx.AsyncClient, pool: asyncpg.Pool, clock: Clock
) -> None:
    nurse = await staff_headers(pool, "nina", "nurse", ["north"])
    start = {"patient_id": NORTH, "activity": "data_review"}
    assert (await http.post("/api/timer", json=start, headers=nurse)).status_code == 201
    clock.advance(hours=9)
    running = (await http.get("/api/timer", headers=nurse)).json()
    assert running["over_limit"] is True
    stopped = (await http.post("/api/timer/stop", headers=nurse)).json()
    assert (stopped["capped"], stopped["elapsed_s"], stopped["entry"]["duration_s"]) == (
        True,
        32_400,
        14_400,
    )
    history = (
        await http.get(f"/api/time-entries/{stopped['entry']['id']}/history", headers=nurse)
    ).json()
    assert history[0]["new"]["timer_elapsed_s"] == 32_400

    assert (await http.post("/api/timer", json=start, headers=nurse)).status_code == 201
    clock.advance(minutes=3)
    discarded = await http.delete("/api/timer", headers=nurse)
    assert discarded.status_code == 200
    assert discarded.json()["elapsed_s"] == 180
    assert (await http.delete("/api/timer", headers=nurse)).status_code == 404
    listing = (await http.get(f"/api/patients/{NORTH}/time-entries", headers=nurse)).json()
    assert [e["duration_s"] for e in listing["entries"]] == [14_400]  # nothing from the discard


# --- storage ------------------------------------------------------------------------------


async def test_storage_refuses_stale_versions_and_two_stops_take_one_timer(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn, patient_id="p1", display_name="P", phone=None, sms_consent=False
        )
        await staff_auth.add_staff(
            conn, staff_id="nina", display_name="N", role="nurse", password_hash="!", phone=None
        )
        values = EntryValues("p1", "nina", NOW - timedelta(hours=1), 300, Activity.DATA_REVIEW)
        entry = await store.create(conn, values, "staff:nina", NOW)
        changed = EntryValues("p1", "nina", values.started_at, 600, Activity.DATA_REVIEW)
        edited = await store.edit(conn, entry.id, 1, changed, "staff:nina", NOW)
        assert edited.version == 2
        with pytest.raises(StaleVersion):
            await store.edit(conn, entry.id, 1, values, "staff:nina", NOW)
        with pytest.raises(StaleVersion):
            await store.delete(conn, entry.id, 1, "staff:nina", NOW)
        events = await store.history(conn, entry.id)
        assert [(e.action, (e.old or {}).get("duration_s")) for e in events] == [
            ("create", None),
            ("edit", 300),
        ]
        await store.start_timer(conn, "nina", "p1", Activity.DATA_REVIEW, NOW, "")

    async def stop() -> str:
        async with pool.acquire() as conn:
            try:
                await store.take_timer(conn, "nina")
            except TimeEntryNotFound:
                return "none"
            return "taken"

    assert sorted(await asyncio.gather(stop(), stop())) == ["none", "taken"]
