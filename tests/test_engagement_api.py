"""The engagement API: segments and campaigns published as versions by an admin, read by a
nurse among their own team's patients, dry runs that send nothing, figures per segment and
contacts recorded in the ledger. The API's clock is pinned (``app.state.clock``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import httpx
import pytest

from rpm.api import engagement
from rpm.settings import Settings
from rpm.storage import rule_programs
from rpm.storage import staff as staff_store
from tests.helpers import api_app, staff_headers
from tests.test_engagement import NOW, NUDGE, add_patient, bp_at, ingest

BP = {
    "description": "hypertension",
    "where": {"fact": "program", "op": "includes", "value": "hypertension"},
}


@pytest.fixture
async def http(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    app = api_app(pool)
    app.state.settings = Settings()
    app.state.clock = lambda: NOW
    app.include_router(engagement.router)
    async with pool.acquire() as conn:
        await rule_programs.seed_builtin(conn)
        for patient, team in (("p-north-1", "north"), ("p-north-2", "north"), ("p-south", "south")):
            await add_patient(conn, patient)
            await staff_store.create_team(conn, team, team)
            await staff_store.set_patient_team(conn, patient, team)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rpm.test"
    ) as client:
        yield client


async def test_an_admin_publishes_and_a_nurse_sees_her_teams_members(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    admin = await staff_headers(pool, "pm-lee")
    nurse = await staff_headers(pool, "nurse-kim", "nurse", ["north"])

    resp = await http.put("/api/segments/bp", json=BP, headers=admin, params={"note": "first"})
    assert resp.json() == {"name": "bp", "version": 1, "changed": True}
    again = await http.put("/api/segments/bp", json=BP, headers=admin)
    assert again.json() == {"name": "bp", "version": 1, "changed": False}
    refused = await http.put("/api/segments/bp", json=BP, headers=nurse)
    assert refused.status_code == 403

    listing = (await http.get("/api/segments", headers=admin)).json()
    assert [(s["name"], s["size"]) for s in listing] == [("bp", 3)]
    assert listing[0]["explained"] == "program includes hypertension"
    mine = (await http.get("/api/segments/bp", headers=nurse)).json()
    assert mine["size"] == 2
    assert [m["patient_id"] for m in mine["members"]] == ["p-north-1", "p-north-2"]
    paged = (await http.get("/api/segments/bp", headers=admin, params={"limit": 2})).json()
    assert paged["next_after"] == "p-north-2"
    rest = await http.get(
        "/api/segments/bp", headers=admin, params={"limit": 2, "after": paged["next_after"]}
    )
    assert [m["patient_id"] for m in rest.json()["members"]] == ["p-south"]

    versions = (await http.get("/api/segments/bp/versions", headers=nurse)).json()
    assert [(v["version"], v["actor"], v["note"]) for v in versions] == [
        (1, "staff:pm-lee", "first")
    ]
    async with pool.acquire() as conn:
        audited = await conn.fetch(
            "SELECT actor, patient_ids FROM audit_log WHERE resource = 'segment-members' "
            "ORDER BY id"
        )
    assert (audited[0]["actor"], audited[0]["patient_ids"]) == (
        "staff:nurse-kim",
        ["p-north-1", "p-north-2"],
    )


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"where": {"fact": "shoe_size", "op": "=", "value": 9}}, "unknown fact 'shoe_size'"),
        ({"where": {"fact": "language", "op": "<", "value": "en"}}, "takes the operators"),
        ({"where": {"all": []}}, "a non-empty list"),
        ({"where": {"fact": "open_alert_severity", "op": ">=", "value": "dire"}}, "a severity"),
        ({"where": {"fact": "age", "op": "=", "value": "; DROP TABLE patients"}}, "whole number"),
        ({"description": "no where"}, "needs 'where'"),
    ],
)
async def test_a_bad_segment_is_refused_with_where_it_is_wrong(
    http: httpx.AsyncClient, pool: asyncpg.Pool, document: dict[str, object], says: str
) -> None:
    resp = await http.put("/api/segments/bad", json=document, headers=await staff_headers(pool))
    assert resp.status_code == 422
    assert says in resp.json()["detail"]


async def test_a_campaign_is_published_paused_dry_run_and_made_live(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    admin = await staff_headers(pool, "pm-lee")
    async with pool.acquire() as conn:
        await conn.execute("UPDATE patients SET sms_consent = false WHERE id = 'p-south'")
    await ingest(pool, [bp_at("p-north-2-dev", NOW - timedelta(days=1), 140, 90)])
    await http.put("/api/segments/bp-patients", json=BP, headers=admin)

    resp = await http.put("/api/campaigns/nudge", json=NUDGE, headers=admin)
    assert resp.json() == {"name": "nudge", "version": 1, "changed": True}
    [listed] = (await http.get("/api/campaigns", headers=admin)).json()
    assert listed["live"] is False
    assert listed["trigger_explained"] == ("no blood_pressure reading today by 10:00 local time")

    dry = (await http.post("/api/campaigns/nudge/dry-run", headers=admin)).json()
    assert dry["counts"] == {"send": 2, "no SMS consent": 1}
    by_patient = {p["patient_id"]: p for p in dry["patients"]}
    assert by_patient["p-north-2"]["message"] == (
        "No blood pressure yet today. You measured on 1 of the last 7 days (average 140/90). "
        "Reply STOP to opt out."
    )
    assert by_patient["p-south"]["excluded"] == "no SMS consent"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0  # a dry run sends nothing

    live = await http.put(
        "/api/campaigns/nudge", json=NUDGE, headers=admin, params={"live": "true"}
    )
    assert live.json() == {"name": "nudge", "version": 2, "changed": True}
    history = (await http.get("/api/campaigns/nudge/versions", headers=admin)).json()
    assert [(v["version"], v["live"]) for v in history] == [(2, True), (1, False)]

    bad = await http.put(
        "/api/campaigns/nudge", json={**NUDGE, "messages": {"es": "hola"}}, headers=admin
    )
    assert bad.status_code == 422
    assert "'en'" in bad.json()["detail"]
    unknown = await http.put(
        "/api/campaigns/nudge", json={**NUDGE, "messages": {"en": "Hi {name}"}}, headers=admin
    )
    assert unknown.status_code == 422
    assert "unknown placeholder {name}" in unknown.json()["detail"]


async def test_contacts_are_recorded_once_and_counted_in_the_figures(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    nurse = await staff_headers(pool, "nurse-kim", "nurse", ["north"])
    call = {"channel": "phone", "at": (NOW - timedelta(hours=3)).isoformat(), "ref": "call-1"}
    for _ in range(2):
        resp = await http.post("/api/patients/p-north-1/interactions", json=call, headers=nurse)
        assert resp.status_code == 201
    other_team = await http.post("/api/patients/p-south/interactions", json=call, headers=nurse)
    assert other_team.status_code == 404

    ledger = (await http.get("/api/patients/p-north-1/interactions", headers=nurse)).json()
    assert [(t["kind"], t["channel"]) for t in ledger["touches"]] == [("nurse", "phone")]
    assert ledger["interactions_per_patient_year"] == round(365.25 / 28, 1)
    hidden = await http.get("/api/patients/p-south/interactions", headers=nurse)
    assert hidden.status_code == 404

    figures = (await http.get("/api/engagement", headers=nurse)).json()
    [everyone] = figures
    assert everyone["segment"] == "*"
    assert everyone["patients"] == 2  # the nurse's team
    assert everyone["interactions"] == 1
