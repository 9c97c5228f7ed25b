"""Time tracking on the patient page in a real browser (Debian's chromium driven by
playwright) against the whole running server: start the timer, reload and see it still
running (its state is the server's ``time_timers`` row), stop it and see the entry in this
month's list, then edit and delete the entry. The app's clock is pinned and moved on by the
test, so the durations are exact.

Screenshots go to ``$RPM_TEST_ARTIFACTS/dashboard/`` (default ``test-artifacts/``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import ConsoleMessage, async_playwright, expect

from rpm.server import Server
from tests.dashboard_helpers import NURSE_ID, NURSE_PASSWORD, add_nurse, enroll
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, artifacts_dir

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (scripts/test.sh installs it)",
)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_the_timer_survives_a_reload_and_stops_into_an_entry(
    server: Server, tmp_path: Path
) -> None:
    assert server.pool is not None
    assert server.app is not None
    clock = Clock(NOW)
    server.app.state.clock = clock
    await add_nurse(server.pool)
    await enroll(server.pool, "pat-time", {}, ["hypertension"])
    base = f"http://127.0.0.1:{server.settings.api.port}"
    shots = artifacts_dir()
    problems: list[str] = []  # script errors and CSP violations the page reports

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on(
                "response",
                lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            await page.goto(base + "/dashboard/patients/pat-time")
            await page.get_by_label("Sign-in name").fill(NURSE_ID)
            await page.get_by_label("Password").fill(NURSE_PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page).to_have_url(base + "/dashboard/patients/pat-time")
            section = page.locator("#time")
            await expect(section.get_by_role("heading", name="Time tracking")).to_be_visible()
            await expect(page.locator("#time-total")).to_contain_text("0 minutes in 0 entries")

            # 1. Start the timer with an activity: the clock runs.
            await section.get_by_label("Timer activity").select_option(
                label="Interactive communication (phone)"
            )
            await section.get_by_role("button", name="Start timer").click()
            await expect(section.locator(".notice-done")).to_have_text("Timer started.")
            clock_text = page.locator("#timer-clock")
            await expect(clock_text).to_have_text(re.compile(r"^0:0[0-9]$"))
            await expect(clock_text).to_have_text(re.compile(r"^0:0[1-9]$"), timeout=3000)

            # 2. 7 min 30 s later (the server's clock), a reload shows the same timer.
            clock.now = NOW + timedelta(minutes=7, seconds=30)
            await page.evaluate("window.rpmSamePage = true")
            await page.reload()
            assert await page.evaluate("window.rpmSamePage === undefined"), "not reloaded"
            await expect(section).to_contain_text("Timer running")
            await expect(section).to_contain_text("Interactive communication (phone)")
            await expect(clock_text).to_have_text(re.compile(r"^7:3[0-9]$"))
            await page.screenshot(path=shots / "time-1-running.png", full_page=True)

            # 3. Stop it with a note: the entry is in this month's list.
            await section.get_by_label("Note for the entry").fill("weekly call, BP fine")
            await section.get_by_role("button", name="Stop timer").click()
            await expect(section.locator(".notice-done")).to_contain_text("Timer stopped")
            await expect(clock_text).to_have_count(0)
            row = page.locator("#time-entries tbody tr")
            await expect(row).to_have_count(1)
            await expect(row).to_contain_text("7:30")
            await expect(row).to_contain_text("Interactive communication (phone)")
            await expect(row).to_contain_text("timer")
            await expect(row).to_contain_text("weekly call, BP fine")
            await expect(row).to_contain_text(NURSE_ID)
            await expect(page.locator("#time-total")).to_contain_text(
                "7 minutes in 1 entry; interactive communication: yes"
            )
            await page.screenshot(path=shots / "time-2-stopped.png", full_page=True)

            # 4. An hour later, edit the entry to 20 minutes, then delete it.
            clock.now = NOW + timedelta(hours=1)
            await row.get_by_text("Edit or delete").click()
            await row.get_by_label("Minutes").fill("20")
            await row.get_by_role("button", name="Save").click()
            await expect(section.locator(".notice-done")).to_have_text("Time entry saved.")
            await expect(row).to_contain_text("20:00")
            await expect(page.locator("#time-total")).to_contain_text("20 minutes in 1 entry")
            await row.get_by_text("Edit or delete").click()
            await row.get_by_role("button", name="Delete entry").click()
            await expect(section.locator(".notice-done")).to_contain_text("Time entry deleted")
            await expect(section).to_contain_text("No time recorded this month.")
            assert problems == []
        finally:
            await context.close()

    async with server.pool.acquire() as conn:
        actions = await conn.fetch("SELECT action, actor FROM time_entry_events ORDER BY id")
    assert [(a["action"], a["actor"]) for a in actions] == [
        ("create", f"staff:{NURSE_ID}"),
        ("edit", f"staff:{NURSE_ID}"),
        ("delete", f"staff:{NURSE_ID}"),
    ]
