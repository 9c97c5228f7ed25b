"""Marking a reading entered in error from the patient page, in a real browser (Debian's
chromium driven by playwright) against the whole running server: the vitals table offers the
action per reading, the nurse gives a reason, the page comes back saying so with the reading
struck through, and the crisis alert it alone caused is withdrawn.

Screenshots go to ``$RPM_TEST_ARTIFACTS/dashboard/`` (default ``test-artifacts/``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.async_api import expect

from rpm.server import Server
from tests.browser import artifacts_dir, needs_chromium, watched_page
from tests.dashboard_helpers import NURSE_ID, NURSE_PASSWORD, add_nurse, enroll
from tests.fhir_helpers import message

pytestmark = needs_chromium


async def test_a_nurse_marks_a_crisis_reading_entered_in_error(
    server: Server, tmp_path: Path
) -> None:
    assert server.pool is not None
    assert server.pipeline is not None
    await add_nurse(server.pool)
    await enroll(server.pool, "pat-eie", {"cuff-eie": "bp_cuff"}, ["hypertension"])
    # Measured a few minutes before now: the gateway's clock checks stay on (max skew, age).
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    result = await server.pipeline.process(
        [message("cuff-eie", "blood_pressure", {"systolic": 200, "diastolic": 110}, at)]
    )
    assert result.stored == 1
    assert len(result.alerts_opened) == 1
    base = f"http://127.0.0.1:{server.settings.api.port}"
    async with watched_page(tmp_path / "chromium-profile") as (page, problems):
        await page.goto(base + "/dashboard/patients/pat-eie")
        await page.get_by_label("Sign-in name").fill(NURSE_ID)
        await page.get_by_label("Password").fill(NURSE_PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(base + "/dashboard/patients/pat-eie")
        await page.get_by_text("the newest readings as a table").click()
        row = page.locator("figure[data-metric=blood_pressure] tbody tr").first
        await row.get_by_label("Reason").fill("cuff on the wrong patient")
        await row.get_by_role("button", name="Mark entered in error").click()
        await expect(page.locator(".notice-done")).to_contain_text(
            "Reading marked entered in error"
        )
        await page.get_by_text("the newest readings as a table").click()
        row = page.locator("figure[data-metric=blood_pressure] tbody tr").first
        await expect(row).to_contain_text("Entered in error")
        await expect(row.locator("del")).to_contain_text("systolic 200")
        await expect(row.get_by_role("button", name="Mark entered in error")).to_have_count(0)
        await page.screenshot(path=artifacts_dir() / "corrections-1-marked.png", full_page=True)
        assert problems == []
    async with server.pool.acquire() as conn:
        state, by = await conn.fetchrow(
            "SELECT state, resolved_by FROM alerts WHERE id = $1", result.alerts_opened[0]
        )
    assert (state, by) == ("resolved", "system")
