"""The trend chart (``chart/{metric}.svg?days=N``): daily means read from the rollups
(docs/data-lifecycle.md), a day whose only reading was entered in error left out, and
malformed spans refused."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from rpm.api import charts
from rpm.domain import AcceptedReading, Metric, Reading
from rpm.server import Server
from rpm.storage import corrections
from rpm.storage import readings as reading_store
from rpm.storage.rollups import Bucket, Summary
from tests.dashboard_helpers import add_nurse, enroll, sign_in
from tests.lifecycle_support import correction_of

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


@pytest.mark.pure
def test_daily_means_are_one_point_per_day_at_noon() -> None:
    day = datetime(2026, 1, 2, tzinfo=UTC)
    buckets = [Bucket(day, 2, {"weight": Summary(2, 80.0, 82.0, 81.0)})]
    assert charts.daily_means(buckets) == [(day + timedelta(hours=12), {"weight": 81.0})]


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{server.settings.api.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client


def _markers(svg: str) -> int:
    """Points of the first series: matplotlib draws each marker as a <use> in its colour."""
    return len(re.findall(r"<use [^>]*fill: #0072b2", svg))


async def test_the_trend_chart_plots_daily_means_from_the_rollups(
    server: Server, http: httpx.AsyncClient
) -> None:
    assert server.pool is not None
    assert server.app is not None
    server.app.state.clock = lambda: NOW
    await add_nurse(server.pool)
    await enroll(server.pool, "pat-trend", {"scale-trend": "scale"}, ["heart_failure"])
    readings = [
        AcceptedReading(
            Reading("scale-trend", Metric.WEIGHT, {"weight": 80.0 + d + k}, at, at), "pat-trend"
        )
        for d in range(10)
        for k in range(2 if d else 1)  # day 0: one reading only
        for at in [NOW - timedelta(days=d, hours=3 + 4 * k)]
    ]
    async with server.pool.acquire() as conn:
        await reading_store.insert_new(conn, readings)
    assert (await sign_in(http)).status_code == 303
    url = "/dashboard/patients/pat-trend/chart/weight.svg"

    trend = await http.get(url, params={"days": "30"})
    assert trend.status_code == 200
    assert trend.headers["content-type"] == "image/svg+xml"
    assert "Weight (daily means, last 30 days)" in trend.text
    assert _markers(trend.text) == 10  # ten days, nineteen readings
    week = await http.get(url, params={"days": "3"})
    assert _markers(week.text) == 4  # the days overlapping the last 72 hours

    async with server.pool.acquire() as conn:  # today's only reading: entered in error
        await corrections.record(conn, [correction_of(readings[0])], NOW)
    trend = await http.get(url, params={"days": "30"})
    assert _markers(trend.text) == 9

    for bad in ("0", "-1", "ten", "99999"):
        refused = await http.get(url, params={"days": bad})
        assert 400 <= refused.status_code < 500, bad
