"""``rpm time`` through the ``rpm`` command's main function, against the real database: add,
list (text and ``--json``), edit at a version (a stale one exits 1), delete, and the history
with the old values; bad input exits 2. Times are relative to the moment of the test, and
the month listed is the one the entry starts in, so the test holds on any day."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from rpm.cli import main as rpm_main
from rpm.storage import registry, staff_auth


async def rpm(*argv: str) -> int:
    return await asyncio.to_thread(rpm_main, ["time", *argv])


async def test_add_list_edit_delete_and_history(
    pool: asyncpg.Pool,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RPM_DATABASE_URL", db_url)
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn,
            patient_id="pat-cli",
            display_name="P",
            phone=None,
            sms_consent=False,
            timezone="Europe/Paris",
        )
        await staff_auth.add_staff(
            conn, staff_id="nina", display_name="N", role="nurse", password_hash="!", phone=None
        )
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    month = (
        f"{start.astimezone(UTC).astimezone(__import__('zoneinfo').ZoneInfo('Europe/Paris')):%Y-%m}"
    )

    assert (
        await rpm(
            "add",
            "pat-cli",
            "--staff",
            "nina",
            "--minutes",
            "12.5",
            "--activity",
            "interactive_phone",
            "--start",
            start.isoformat(),
            "--note",
            "called about dizziness",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("added entry 1 (version 1): patient pat-cli, nina,")
    assert "12:30, Interactive communication (phone)" in out

    assert await rpm("list", "pat-cli", "--month", month) == 0
    text = capsys.readouterr().out
    assert (
        f"Patient pat-cli, {month} (Europe/Paris): 1 entries, 12 min, "
        "interactive communication: yes" in text
    )
    assert "called about dizziness" in text
    assert await rpm("list", "pat-cli", "--month", month, "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["total"] == {"seconds": 750, "minutes": 12, "entries": 1, "interactive": True}
    assert listed["entries"][0]["version"] == 1

    assert await rpm("edit", "1", "--staff", "nina", "--version", "1", "--minutes", "20") == 0
    assert "entry 1 is at version 2" in capsys.readouterr().out
    assert await rpm("edit", "1", "--staff", "nina", "--version", "1", "--note", "x") == 1
    assert "version 2, not 1" in capsys.readouterr().err
    assert await rpm("delete", "1", "--staff", "nina", "--version", "2", "--json") == 0
    assert json.loads(capsys.readouterr().out)["deleted_at"] is not None

    assert await rpm("history", "1") == 0
    history = capsys.readouterr().out.splitlines()
    assert history[0] == "Entry 1 of patient pat-cli:"
    assert [line.split()[2] for line in history[1:]] == ["create", "edit", "delete"]
    assert "duration_s 750 -> 1200" in history[2]
    assert await rpm("history", "1", "--json") == 0
    events = json.loads(capsys.readouterr().out)
    assert events[2]["old"]["duration_s"] == 1200
    assert events[2]["actor"] == "staff:nina"

    # Bad input: 2; unknown things: 1.
    assert (
        await rpm(
            "add", "pat-cli", "--staff", "ghost", "--minutes", "5", "--activity", "data_review"
        )
        == 2
    )
    assert (
        await rpm(
            "add", "pat-cli", "--staff", "nina", "--minutes", "500", "--activity", "data_review"
        )
        == 2
    )
    assert "between 1 and 14400" in capsys.readouterr().err
    assert (
        await rpm("add", "nobody", "--staff", "nina", "--minutes", "5", "--activity", "data_review")
        == 1
    )
    assert await rpm("delete", "99", "--staff", "nina") == 1
    async with pool.acquire() as conn:
        audited = await conn.fetch(
            "SELECT actor, action, role FROM audit_log "
            "WHERE route LIKE 'CLI rpm time %' ORDER BY id"
        )
    assert [(a["action"], a["role"]) for a in audited][:3] == [
        ("create", "cli"),
        ("read", "cli"),
        ("read", "cli"),
    ]
