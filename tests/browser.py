"""What the dashboard's browser tests share: Debian's chromium driven by playwright, a page
that records what would go unseen (script errors, CSP violations the page reports, answers of
400 and over), and where screenshots go (``$RPM_TEST_ARTIFACTS/dashboard/``, default
``test-artifacts/`` in the repository root)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (scripts/test.sh installs it)",
)


def artifacts_dir() -> Path:
    root = Path(os.environ.get("RPM_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts")
    out = root / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    return out


@asynccontextmanager
async def watched_page(profile: Path) -> AsyncIterator[tuple[Page, list[str]]]:
    """A page of a fresh chromium profile in ``profile``, and the list of problems it saw
    (a test ends by asserting it is empty)."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
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
            yield page, problems
        finally:
            await context.close()
