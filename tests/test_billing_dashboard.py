"""The billing page of the dashboard, served by the whole server to a signed-in nurse: the
month's patients of her team with their codes and what is missing, a month picker, and the
CSV link working with her session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date

import httpx
import pytest

from rpm.server import Server
from tests.billing_helpers import add_days, add_minutes, add_patient, first_days
from tests.dashboard_helpers import TEAM, add_nurse, sign_in

HTML = {"Accept": "text/html"}


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{server.settings.api.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client


async def test_a_nurse_sees_her_teams_month_end_report(
    server: Server, http: httpx.AsyncClient
) -> None:
    assert server.pool is not None
    await add_nurse(server.pool)
    async with server.pool.acquire() as conn:
        await add_patient(conn, "pat-16", team=TEAM, start=date(2026, 6, 1))
        await add_days(conn, "pat-16", first_days(date(2026, 6, 1), 16))
        await add_minutes(conn, "pat-16", date(2026, 6, 5), 14, interactive=False)
        await add_patient(conn, "pat-other", team="elsewhere", start=date(2026, 6, 1))

    assert (await sign_in(http)).status_code == 303
    page = await http.get("/dashboard/billing", params={"month": "2026-06"}, headers=HTML)
    assert page.status_code == 200
    assert "Billing, June 2026" in page.text
    assert 'href="/dashboard/patients/pat-16"' in page.text
    assert "pat-other" not in page.text
    assert "99454" in page.text
    assert "99470: an interactive communication" in page.text
    assert 'value="2026-06"' in page.text
    assert 'href="/dashboard/billing?month=2026-05"' in page.text
    assert 'aria-current="page">Billing' in page.text
    link = 'href="/api/billing/report.csv?month=2026-06"'
    assert link in page.text
    download = await http.get("/api/billing/report.csv", params={"month": "2026-06"})
    assert download.status_code == 200
    assert download.text.splitlines()[1].startswith("pat-16,")
    bad = await http.get("/dashboard/billing", params={"month": "2026-13"}, headers=HTML)
    assert bad.status_code == 422
