"""The patient panel in a real browser (Debian's chromium driven by playwright) against the
whole running server: sign in, open the panel from the navigation, filter and sort it, then
watch a reading published over MQTT and a time entry written to the database update their
rows without a reload.

Screenshots go to ``$RPM_TEST_ARTIFACTS/dashboard/`` (default ``test-artifacts/``)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from playwright.async_api import expect

from rpm.local_endpoints import ServiceEndpoints
from rpm.server import Server
from tests import helpers
from tests.browser import artifacts_dir, needs_chromium, watched_page
from tests.dashboard_helpers import NURSE_ID, NURSE_PASSWORD, add_nurse, enroll

pytestmark = needs_chromium

LIVE_WITHIN_S = 3.0


async def test_the_panel_filters_sorts_and_updates_live(
    server: Server, services: ServiceEndpoints, tmp_path: Path
) -> None:
    pool = server.pool
    assert pool is not None
    await add_nurse(pool)
    await enroll(pool, "pat-panel-a", {"cuff-panel-a": "bp_cuff"}, ["hypertension"])
    await enroll(pool, "pat-panel-b", {"cuff-panel-b": "bp_cuff"}, ["diabetes"])
    # The server's clock is pinned to noon UTC yesterday (patients here live in UTC): a day
    # well inside one calendar month's minutes and one device period whatever the wall
    # clock says, and a reading measured then is neither in the future nor too old.
    now = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), time(12), UTC)
    server.app.state.clock = lambda: now
    today = now.date()
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE patients SET display_name = $2, monitoring_started_on = $3 WHERE id = $1",
            "pat-panel-a",
            "Ada Panel",
            today - timedelta(days=5),
        )
        await conn.execute(
            "UPDATE patients SET display_name = $2, monitoring_started_on = $3 WHERE id = $1",
            "pat-panel-b",
            "Ben Panel",
            today - timedelta(days=20),
        )
        # Ben measured on 17 of the 21 days so far: enough; Ada on none yet.
        await conn.execute(
            """INSERT INTO patient_days (patient_id, day, readings, metrics)
               SELECT 'pat-panel-b', $1::date - i, 1, '{blood_pressure}'
                 FROM generate_series(0, 16) i""",
            today,
        )
    base = f"http://127.0.0.1:{server.settings.api.port}"
    shots = artifacts_dir()
    async with watched_page(tmp_path / "chromium-profile") as (page, problems):
        # 1. Sign in, then open the panel from the navigation.
        await page.goto(base + "/dashboard/panel")
        await expect(page).to_have_url(re.compile(r"/dashboard/sign-in\?next="))
        await page.get_by_label("Sign-in name").fill(NURSE_ID)
        await page.get_by_label("Password").fill(NURSE_PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await (
            page.get_by_role("navigation", name="Main")
            .get_by_role("link", name="Patient panel")
            .click()
        )
        await expect(page).to_have_url(base + "/dashboard/panel")
        await expect(page.get_by_role("heading", name="Patient panel")).to_be_visible()
        rows = page.locator("#panel-rows tr[data-patient-id]")
        await expect(rows).to_have_count(2)
        ada = page.locator('#panel-rows tr[data-patient-id="pat-panel-a"]')
        ben = page.locator('#panel-rows tr[data-patient-id="pat-panel-b"]')
        await expect(ada.locator('[data-field="needs"]')).to_contain_text(
            "Needs readings: 16 more days, 25 days left"
        )
        await expect(ben.locator('[data-field="days"]')).to_contain_text("17")
        await expect(ben.locator('[data-field="needs"]')).not_to_contain_text("Needs readings")
        await expect(ben.locator('[data-field="needs"]')).to_contain_text(
            "Needs time: 20 more minutes and an interactive call"
        )
        await page.screenshot(path=shots / "panel-1.png", full_page=True)

        # 2. Filter: only who needs readings; then everyone again.
        await page.get_by_label("Flags").select_option("readings")
        await expect(page).to_have_url(re.compile(r"flag=readings"))
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-patient-id", "pat-panel-a")
        await page.get_by_label("Flags").select_option("")
        await expect(rows).to_have_count(2)

        # 3. Sort by days with readings, most first, then fewest first.
        await page.get_by_role("link", name=re.compile("^Days with readings")).click()
        await expect(page).to_have_url(re.compile(r"sort=days&direction=asc"))
        await expect(rows.first).to_have_attribute("data-patient-id", "pat-panel-a")
        await page.get_by_role("link", name=re.compile("^Days with readings")).click()
        await expect(page).to_have_url(re.compile(r"sort=days&direction=desc"))
        await expect(rows.first).to_have_attribute("data-patient-id", "pat-panel-b")
        header = page.locator("th[aria-sort]")
        await expect(header).to_have_attribute("aria-sort", "descending")
        await expect(page.locator("#live-status")).to_contain_text("Live")

        # 4. A reading over MQTT: Ada's row shows it, and a day counted, with no reload.
        await page.evaluate("window.rpmSamePage = true")
        loop = asyncio.get_running_loop()
        published = loop.time()
        result = await asyncio.to_thread(
            helpers.mosquitto_pub,
            services.mqtt_port,
            services.mqtt_device_username,
            services.mqtt_device_password,
            "rpm/v1/devices/cuff-panel-a/readings",
            json.dumps(
                {
                    "metric": "blood_pressure",
                    "measured_at": now.isoformat(),
                    "values": {"systolic": 121, "diastolic": 79, "pulse": 70},
                }
            ).encode(),
        )
        assert result.returncode == 0, result.stderr
        await expect(ada.locator('[data-field="latest"]')).to_contain_text(
            "121/79 mmHg", timeout=LIVE_WITHIN_S * 1000 + 3000
        )
        print(f"reading shown {loop.time() - published:.3f} s after mosquitto_pub started")
        await expect(ada.locator('[data-field="needs"]')).to_contain_text("15 more days")
        await expect(ada).to_have_class(re.compile("updated"))
        assert await page.evaluate("window.rpmSamePage === true"), "the page reloaded"

        # 5. A time entry (as the time API would write it): Ben's minutes, live.
        written = loop.time()
        async with pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO time_entries (patient_id, staff_id, started_at, duration_s,
                                             activity, source)
                   VALUES ('pat-panel-b', $1, $2::timestamptz - interval '1 minute', 1260,
                           'interactive_video', 'manual')""",
                NURSE_ID,
                now,
            )
        minutes = ben.locator('[data-field="minutes"]')
        await expect(minutes).to_contain_text("21.0", timeout=LIVE_WITHIN_S * 1000 + 3000)
        print(f"time entry shown {loop.time() - written:.3f} s after it was written")
        await expect(minutes).to_contain_text("interactive call done")
        await expect(ben.locator('[data-field="needs"]')).to_contain_text("On track")
        assert await page.evaluate("window.rpmSamePage === true"), "the page reloaded"
        await page.screenshot(path=shots / "panel-2-live.png", full_page=True)
        assert problems == []
