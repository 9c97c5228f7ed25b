"""The segments and engagement pages of the dashboard, served by the whole server to a
signed-in nurse: each segment with its size and members among her team's patients, and the
figures per segment with a chart that says in words what it draws."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from rpm.engagement import segments
from rpm.server import Server
from rpm.storage import segments as segment_store
from tests.dashboard_helpers import add_nurse, enroll, sign_in

HTML = {"Accept": "text/html"}


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{server.settings.api.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client


async def test_a_nurse_sees_segments_their_members_and_the_engagement_figures(
    server: Server, http: httpx.AsyncClient
) -> None:
    assert server.pool is not None
    await add_nurse(server.pool)
    await enroll(server.pool, "pat-hf-1", {"scale-1": "scale"}, ["heart_failure"])
    await enroll(server.pool, "pat-hf-2", {"scale-2": "scale"}, ["heart_failure"])
    await enroll(server.pool, "pat-elsewhere", {"scale-3": "scale"}, ["heart_failure"], "other")
    spec = segments.parse(
        {
            "description": "Heart-failure patients",
            "where": {"fact": "program", "op": "includes", "value": "heart_failure"},
        }
    )
    async with server.pool.acquire() as conn:
        await segment_store.publish_segment(conn, "hf", spec, "staff:admin", None)

    assert (await sign_in(http)).status_code == 303
    listing = await http.get("/dashboard/segments", headers=HTML)
    assert listing.status_code == 200
    assert 'href="/dashboard/segments/hf"' in listing.text
    assert "program includes heart_failure" in listing.text
    size = re.search(r'<td class="num">(\d+)</td>', listing.text)
    assert size is not None
    assert size.group(1) == "2"  # her team's two, not the other team's patient

    members = await http.get("/dashboard/segments/hf", headers=HTML)
    assert members.status_code == 200
    assert 'href="/dashboard/patients/pat-hf-1"' in members.text
    assert "pat-elsewhere" not in members.text
    assert members.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in members.headers["content-security-policy"]
    missing = await http.get("/dashboard/segments/nothing-here", headers=HTML)
    assert missing.status_code == 404

    figures = await http.get("/dashboard/engagement", headers=HTML)
    assert figures.status_code == 200
    assert "<h2" in figures.text
    assert "Every patient" in figures.text
    assert re.search(r"<title id=\"chart-\d+-title\">.*goal of 50 to 100", figures.text)
    assert not re.search(r"<script(?![^>]*src=)", figures.text)


async def test_the_pages_need_a_session(http: httpx.AsyncClient) -> None:
    for page in ("/dashboard/segments", "/dashboard/segments/hf", "/dashboard/engagement"):
        resp = await http.get(page, headers=HTML)
        assert resp.status_code == 303
        assert resp.headers["location"].startswith("/dashboard/sign-in")
