"""The on-call page over HTTP against the whole running server: an admin adds a shift with
the form (a wrong CSRF token changes nothing: 403), an overlap and a backwards shift come
back with a notice, the shift shows in this week's table and as on call now, and the remove
button removes it; a nurse sees her team's rota without the form or buttons, and a change
she posts anyway is refused. The app's clock is pinned (a Wednesday)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from rpm.auth import hash_password
from rpm.server import Server
from rpm.storage import staff as staff_store
from rpm.storage import staff_auth
from tests.dashboard_helpers import NURSE_PASSWORD, TEAM, add_nurse, form_token, sign_in

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HTML = {"Accept": "text/html"}
PAGE = f"/dashboard/on-call?team={TEAM}"
ADD = f"/dashboard/on-call/{TEAM}/shifts"


@pytest.fixture
async def base(server: Server) -> str:
    assert server.pool is not None
    assert server.app is not None
    server.app.state.clock = lambda: NOW
    await add_nurse(server.pool)
    async with server.pool.acquire() as conn:
        await staff_auth.add_staff(
            conn,
            staff_id="ada.admin",
            display_name="Ada Admin",
            role="admin",
            password_hash=hash_password(NURSE_PASSWORD),
            phone="+15550000009",
        )
        await staff_store.add_member(conn, TEAM, "ada.admin")
    return f"http://127.0.0.1:{server.settings.api.port}"


@pytest.fixture
async def admin(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        assert (await sign_in(client, "ada.admin")).status_code == 303
        yield client


async def test_admin_adds_and_removes_a_shift_and_a_nurse_only_reads(
    admin: httpx.AsyncClient, base: str
) -> None:
    page = await admin.get(PAGE, headers=HTML)
    assert page.status_code == 200
    assert 'href="/dashboard/on-call" aria-current="page"' in page.text
    assert "Tier 1: <strong>nobody</strong>" in page.text
    csrf = form_token(page.text, "csrf-token")
    fields = {
        "staff_id": "ada.admin",
        "tier": "1",
        "start": "2026-11-25T08:00",
        "end": "2026-11-25T20:00",
    }

    refused = await admin.post(ADD, data={"csrf_token": "wrong", **fields})
    assert refused.status_code == 403
    added = await admin.post(ADD, data={"csrf_token": csrf, **fields})
    assert (added.status_code, added.headers["location"]) == (303, f"{PAGE}&done=added")
    overlap = await admin.post(ADD, data={"csrf_token": csrf, **fields, "staff_id": "nina.nurse"})
    assert overlap.headers["location"] == f"{PAGE}&problem=overlap"
    shown = await admin.get(overlap.headers["location"], headers=HTML)
    assert "That tier is already covered" in shown.text
    backwards = {**fields, "tier": "2", "end": "2026-11-25T07:00"}
    bad = await admin.post(ADD, data={"csrf_token": csrf, **backwards})
    assert bad.headers["location"] == f"{PAGE}&problem=invalid"
    garbled = await admin.post(ADD, data={"csrf_token": csrf, **fields, "start": "tomorrow"})
    assert garbled.headers["location"] == f"{PAGE}&problem=invalid"
    next_week = {
        **fields,
        "tier": "2",
        "staff_id": "nina.nurse",
        "start": "2026-12-01T08:00",
        "end": "2026-12-01T20:00",
    }
    assert (await admin.post(ADD, data={"csrf_token": csrf, **next_week})).status_code == 303

    page = (await admin.get(PAGE, headers=HTML)).text
    assert "Tier 1: <strong>ada.admin</strong>" in page
    assert "Tier 2: <strong>nobody</strong>" in page
    this_week, next_week_table = page.split('id="week-2"')
    assert "2026-11-25 08:00 UTC" in this_week
    assert "nina.nurse</td>" not in this_week
    assert "2026-12-01 08:00 UTC" in next_week_table
    shift_id = this_week.split('data-shift-id="')[1].split('"')[0]
    assert 'id="add-shift"' in page

    async with httpx.AsyncClient(base_url=base, timeout=10) as nurse:
        assert (await sign_in(nurse)).status_code == 303
        seen = await nurse.get("/dashboard/on-call", headers=HTML)
        assert seen.status_code == 200
        assert "Tier 1: <strong>ada.admin</strong>" in seen.text
        assert 'id="add-shift"' not in seen.text
        assert "/remove" not in seen.text
        nurse_csrf = form_token(seen.text, "csrf-token")
        tried = await nurse.post(
            f"/dashboard/on-call/{TEAM}/shifts/{shift_id}/remove", data={"csrf_token": nurse_csrf}
        )
        assert tried.headers["location"] == f"{PAGE}&problem=refused"

    remove = f"/dashboard/on-call/{TEAM}/shifts/{shift_id}/remove"
    assert (await admin.post(remove, data={"csrf_token": "wrong"})).status_code == 403
    removed = await admin.post(remove, data={"csrf_token": csrf})
    assert removed.headers["location"] == f"{PAGE}&done=removed"
    again = await admin.post(remove, data={"csrf_token": csrf})
    assert again.headers["location"] == f"{PAGE}&problem=missing"
    assert "Tier 1: <strong>nobody</strong>" in (await admin.get(PAGE, headers=HTML)).text
