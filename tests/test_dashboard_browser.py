"""The dashboard in a real browser (Debian's chromium driven by playwright) against the whole
running server: sign in through the form, watch a crisis reading published over MQTT appear
in the open queue without a reload, acknowledge it there, and open the patient view.

Screenshots go to ``$RPM_TEST_ARTIFACTS/dashboard/`` (default ``test-artifacts/`` in the
repository root)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from playwright.async_api import expect

from rpm.local_endpoints import ServiceEndpoints
from rpm.server import Server
from tests import helpers
from tests.browser import artifacts_dir, needs_chromium, watched_page
from tests.dashboard_helpers import NURSE_ID, NURSE_PASSWORD, add_nurse, crisis_reading, enroll

LIVE_WITHIN_S = 2.0

pytestmark = needs_chromium


async def test_a_crisis_reading_appears_live_is_acknowledged_and_explained(
    server: Server, services: ServiceEndpoints, tmp_path: Path
) -> None:
    assert server.pool is not None
    await add_nurse(server.pool)
    await enroll(server.pool, "pat-browser", {"cuff-browser": "bp_cuff"}, ["hypertension"])
    base = f"http://127.0.0.1:{server.settings.api.port}"
    shots = artifacts_dir()
    async with watched_page(tmp_path / "chromium-profile") as (page, problems):
        # 1. Sign in through the form (the queue sends us there first).
        await page.goto(base + "/")
        await expect(page).to_have_url(re.compile(r"/dashboard/sign-in\?next="))
        await page.get_by_label("Sign-in name").fill(NURSE_ID)
        await page.get_by_label("Password").fill(NURSE_PASSWORD)
        await page.screenshot(path=shots / "1-sign-in.png")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(base + "/dashboard/")
        await expect(page.get_by_role("heading", name="Triage queue")).to_be_visible()
        await expect(page.locator("#live-status")).to_contain_text("Live")
        await expect(page.locator("#queue-rows")).not_to_contain_text("Loading alerts")

        # 2. A crisis reading over MQTT: its alert appears without a reload.
        await page.evaluate("window.rpmSamePage = true")
        loop = asyncio.get_running_loop()
        published = loop.time()
        result = await asyncio.to_thread(
            helpers.mosquitto_pub,
            services.mqtt_port,
            services.mqtt_device_username,
            services.mqtt_device_password,
            "rpm/v1/devices/cuff-browser/readings",
            crisis_reading(),
        )
        assert result.returncode == 0, result.stderr
        row = page.locator(
            '#queue-rows tr[data-patient-id="pat-browser"]', has_text="Hypertensive crisis"
        )
        await row.wait_for(state="visible", timeout=LIVE_WITHIN_S * 1000 + 3000)
        seen_after = loop.time() - published
        print(f"alert row visible {seen_after:.3f} s after mosquitto_pub started")
        assert seen_after < LIVE_WITHIN_S, f"the alert took {seen_after:.2f} s to appear"
        assert await page.evaluate("window.rpmSamePage === true"), "the page reloaded"
        await expect(row.locator(".sev")).to_have_text("Critical")  # text, not colour only
        await expect(row).to_contain_text("Hypertensive crisis")
        await expect(row.locator('[data-field="state"]')).to_have_text("Open")
        await expect(page.locator("#announcer")).to_contain_text(
            "New critical alert for patient pat-browser"
        )
        await page.screenshot(path=shots / "2-queue-new-alert.png")

        # 3. Acknowledge it from the queue, with the keyboard.
        ack = row.get_by_role("button", name=re.compile(r"^Acknowledge"))
        await ack.focus()
        await page.keyboard.press("Enter")
        await expect(row.locator('[data-field="state"]')).to_have_text("Acknowledged")
        await expect(row.get_by_role("button", name=re.compile(r"^Acknowledge"))).to_have_count(0)
        # Focus stays in the row (on its link, the button being gone), live updates or not.
        link = row.get_by_role("link", name="Hypertensive crisis", exact=True)
        await expect(link).to_be_focused()
        assert await page.evaluate("window.rpmSamePage === true"), "the page reloaded"
        await page.screenshot(path=shots / "3-queue-acknowledged.png")

        # 4. Filters: by care program (the patient is in hypertension) and by state.
        await page.get_by_label("Care program").select_option("diabetes")
        await expect(row).to_have_count(0)
        await expect(page).to_have_url(base + "/dashboard/?program=diabetes")
        await page.get_by_label("Care program").select_option("hypertension")
        await expect(row).to_have_count(1)
        await page.get_by_label("State").select_option("open")
        await expect(row).to_have_count(0)
        await page.get_by_label("State").select_option("acknowledged")
        await expect(row).to_have_count(1)
        assert await page.evaluate("window.rpmSamePage === true"), "the page reloaded"

        # 5. The patient view: the explanation, the history, and the chart.
        await link.click()
        await expect(page).to_have_url(re.compile(r"/dashboard/patients/pat-browser\?alert="))
        await expect(page.locator("#explanation")).to_contain_text("192/124 mmHg")
        await expect(page.locator("#alert-state")).to_have_text("Acknowledged")
        await expect(page.locator("table.history")).to_contain_text(f"staff:{NURSE_ID}")
        chart = page.locator('figure[data-metric="blood_pressure"] img')
        await expect(chart).to_have_attribute("alt", re.compile(r"^Blood pressure: 1 reading"))
        await page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=await chart.element_handle()
        )
        svg = await page.context.request.get(base + (await chart.get_attribute("src") or ""))
        assert svg.status == 200
        assert svg.headers["content-type"] == "image/svg+xml"
        assert "Hypertensive crisis" in await svg.text()
        await page.screenshot(path=shots / "4-patient-view.png", full_page=True)
        assert problems == []
