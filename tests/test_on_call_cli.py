"""``rpm on-call`` through the ``rpm`` command's main function, against the real database:
add, list (text and ``--json``), remove; an overlap and an unknown team or shift exit 1, a
shift ending before it starts or naming someone outside the team exits 2; each command that
succeeded is in the audit log. Times are relative to the moment of the test."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from rpm.cli import main as rpm_main
from rpm.storage import staff as staff_store
from rpm.storage import staff_auth


async def rpm(*argv: str) -> int:
    return await asyncio.to_thread(rpm_main, ["on-call", *argv])


async def test_add_list_remove_and_refusals(
    pool: asyncpg.Pool,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RPM_DATABASE_URL", db_url)
    async with pool.acquire() as conn:
        for staff_id in ("ann", "sam"):
            await staff_auth.add_staff(
                conn,
                staff_id=staff_id,
                display_name="N",
                role="nurse",
                password_hash="!",
                phone=None,
            )
        await staff_store.create_team(conn, "north", "North")
        await staff_store.add_member(conn, "north", "ann")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    end = start + timedelta(hours=12)
    when = ["--start", start.isoformat(), "--end", end.isoformat()]

    assert await rpm("add", "north", "--staff", "ann", "--tier", "1", *when, "--json") == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["staff_id"], added["tier"], added["reachable"]) == ("ann", 1, False)

    assert await rpm("list", "north") == 0
    out = capsys.readouterr().out
    assert "team north: 1 shift(s)" in out
    assert f"{added['id']:>6}  tier 1  ann" in out
    assert "cannot be paged" in out  # no phone
    assert await rpm("list", "north", "--json") == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)] == [added["id"]]

    assert await rpm("add", "north", "--staff", "ann", "--tier", "1", *when) == 1
    assert "already covered" in capsys.readouterr().err
    assert await rpm("add", "north", "--staff", "sam", "--tier", "2", *when) == 2
    assert "not an active member" in capsys.readouterr().err
    backwards = ["--start", end.isoformat(), "--end", start.isoformat()]
    assert await rpm("add", "north", "--staff", "ann", "--tier", "2", *backwards) == 2
    assert "end after it starts" in capsys.readouterr().err
    assert await rpm("list", "nowhere") == 1
    capsys.readouterr()

    assert await rpm("remove", "north", str(added["id"])) == 0
    assert capsys.readouterr().out.startswith("removed\n")
    assert await rpm("remove", "north", str(added["id"])) == 1
    assert await rpm("list", "north", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []

    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT role, action, resource_id, route FROM audit_log "
            "WHERE resource = 'on-call' ORDER BY id"
        )
    assert [(r["action"], r["resource_id"]) for r in rows] == [
        ("create", "north"),
        ("read", "north"),
        ("read", "north"),
        ("delete", f"north/{added['id']}"),
        ("read", "north"),
    ]
    assert {r["role"] for r in rows} == {"cli"}
    assert rows[0]["route"] == "CLI rpm on-call add"
