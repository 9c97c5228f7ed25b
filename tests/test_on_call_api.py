"""On-call rotas over the API against the real database: an admin adds, lists and removes
shifts; an overlap of the tier's cover is 409; a shift ending before it starts, someone
outside the team and a window the wrong way round are 422; a nurse reads her own team's rota
(and who is on call now), gets 403 on a change and 404 for another team; every answer is in
the audit log. The API's clock is pinned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from rpm.api import on_call
from rpm.storage import staff as staff_store
from rpm.storage import staff_auth
from tests.helpers import api_app, staff_headers

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
ROTA = "/api/teams/north/on-call"


@pytest.fixture
async def http(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    app = api_app(pool)
    app.state.clock = lambda: NOW
    app.include_router(on_call.router)
    async with pool.acquire() as conn:
        for staff_id, phone in (("ann", "+15550000001"), ("bob", None), ("sam", "+15550000003")):
            await staff_auth.add_staff(
                conn,
                staff_id=staff_id,
                display_name="N",
                role="nurse",
                password_hash="!",
                phone=phone,
            )
        for team in ("north", "south"):
            await staff_store.create_team(conn, team, team)
        for member in ("ann", "bob"):
            await staff_store.add_member(conn, "north", member)
        await staff_store.add_member(conn, "south", "sam")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rpm.test"
    ) as client:
        yield client


def shift(staff_id: str, tier: int, from_h: float, to_h: float) -> dict[str, Any]:
    return {
        "staff_id": staff_id,
        "tier": tier,
        "start": (NOW + timedelta(hours=from_h)).isoformat(),
        "end": (NOW + timedelta(hours=to_h)).isoformat(),
    }


async def test_admin_adds_lists_and_removes_shifts(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    admin = await staff_headers(pool)
    first = await http.post(ROTA, json=shift("ann", 1, -2, 10), headers=admin)
    assert first.status_code == 201, first.text
    made = first.json()
    assert (made["team"], made["tier"], made["staff_id"], made["reachable"]) == (
        "north",
        1,
        "ann",
        True,
    )
    assert made["created_by"] == "staff:test.admin"
    second = await http.post(ROTA, json=shift("bob", 2, -2, 10), headers=admin)
    assert second.status_code == 201
    assert second.json()["reachable"] is False  # no phone: escalation cannot page bob
    later = await http.post(ROTA, json=shift("bob", 1, 10, 20), headers=admin)  # back to back
    assert later.status_code == 201

    rota = (await http.get(ROTA, headers=admin)).json()
    assert rota["on_call_now"] == {"1": "ann", "2": "bob"}
    assert [(s["staff_id"], s["tier"]) for s in rota["shifts"]] == [
        ("ann", 1),
        ("bob", 2),
        ("bob", 1),
    ]
    # The window: only shifts overlapping [from, to).
    window = {
        "from": (NOW + timedelta(hours=12)).isoformat(),
        "to": (NOW + timedelta(hours=13)).isoformat(),
    }
    narrow = (await http.get(ROTA, params=window, headers=admin)).json()
    assert [s["id"] for s in narrow["shifts"]] == [later.json()["id"]]

    # Escalation reads the same rows (active with a phone only).
    async with pool.acquire() as conn:
        assert await staff_store.on_call_for(conn, ["north"], NOW) == {"north": {1: "ann"}}

    gone = await http.delete(f"{ROTA}/{made['id']}", headers=admin)
    assert gone.status_code == 200
    assert gone.json()["id"] == made["id"]
    assert (await http.delete(f"{ROTA}/{made['id']}", headers=admin)).status_code == 404
    rota = (await http.get(ROTA, headers=admin)).json()
    assert rota["on_call_now"] == {"1": None, "2": "bob"}


async def test_overlap_is_409_and_bad_shifts_are_422(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    admin = await staff_headers(pool)
    assert (await http.post(ROTA, json=shift("ann", 1, 0, 8), headers=admin)).status_code == 201

    overlap = await http.post(ROTA, json=shift("bob", 1, 7, 12), headers=admin)
    assert overlap.status_code == 409
    assert "already covered" in overlap.json()["detail"]
    # The other tier at the same time is fine.
    assert (await http.post(ROTA, json=shift("bob", 2, 7, 12), headers=admin)).status_code == 201

    backwards = await http.post(ROTA, json=shift("ann", 2, 20, 14), headers=admin)
    assert backwards.status_code == 422
    empty = await http.post(ROTA, json=shift("ann", 2, 20, 20), headers=admin)
    assert empty.status_code == 422
    outsider = await http.post(ROTA, json=shift("sam", 2, 20, 24), headers=admin)
    assert outsider.status_code == 422
    assert "not an active member" in outsider.json()["detail"]
    tier3 = await http.post(ROTA, json=shift("ann", 3, 20, 24), headers=admin)
    assert tier3.status_code == 422
    naive = {**shift("ann", 2, 20, 24), "start": "2026-11-24T11:00:00"}
    assert (await http.post(ROTA, json=naive, headers=admin)).status_code == 422
    window = {"from": NOW.isoformat(), "to": (NOW - timedelta(hours=1)).isoformat()}
    assert (await http.get(ROTA, params=window, headers=admin)).status_code == 422
    too_long = {"from": NOW.isoformat(), "to": (NOW + timedelta(days=93)).isoformat()}
    assert (await http.get(ROTA, params=too_long, headers=admin)).status_code == 422
    no_team = await http.post(
        "/api/teams/nowhere/on-call", json=shift("ann", 2, 20, 24), headers=admin
    )
    assert no_team.status_code == 404


async def test_nurse_reads_her_teams_rota_only_and_changes_nothing(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    admin = await staff_headers(pool)
    made = (await http.post(ROTA, json=shift("ann", 1, -1, 5), headers=admin)).json()
    nurse = await staff_headers(pool, "nina", "nurse", teams=["north"])

    rota = await http.get(ROTA, headers=nurse)
    assert rota.status_code == 200
    assert rota.json()["on_call_now"]["1"] == "ann"
    assert (await http.post(ROTA, json=shift("bob", 2, 0, 4), headers=nurse)).status_code == 403
    assert (await http.delete(f"{ROTA}/{made['id']}", headers=nurse)).status_code == 403
    # Another team's rota is not found, exactly like a team that does not exist.
    other = await http.get("/api/teams/south/on-call", headers=nurse)
    missing = await http.get("/api/teams/nowhere/on-call", headers=nurse)
    assert (other.status_code, missing.status_code) == (404, 404)
    assert other.json()["detail"] == missing.json()["detail"]
    # A shift of another team is not found under this one.
    south = await http.post("/api/teams/south/on-call", json=shift("sam", 1, 0, 4), headers=admin)
    assert (await http.delete(f"{ROTA}/{south.json()['id']}", headers=admin)).status_code == 404

    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT actor, action, resource_id, route, status FROM audit_log "
            "WHERE resource = 'on-call' ORDER BY id"
        )
    seen = [(r["actor"], r["action"], r["resource_id"], r["status"]) for r in rows]
    assert seen == [
        ("staff:test.admin", "create", "north", 201),
        ("staff:nina", "read", "north", 200),
        ("staff:nina", "read", "south", 404),
        ("staff:nina", "read", "nowhere", 404),
        ("staff:test.admin", "create", "south", 201),
        ("staff:test.admin", "delete", f"north/{south.json()['id']}", 404),
    ]
    assert rows[0]["route"] == "POST /api/teams/{team_id}/on-call"
