"""Patients, days with readings and time entries for the billing tests, in plain SQL (the
time-entry API is another module's; these insert what it would store)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from rpm.storage import engagement as days_store
from rpm.storage import staff as staff_store


async def add_patient(
    conn: asyncpg.Connection,
    patient_id: str,
    *,
    team: str | None = None,
    timezone: str = "UTC",
    start: date | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO patients (id, display_name, timezone, monitoring_started_on)
           VALUES ($1, $2, $3, $4)""",
        patient_id,
        f"Name of {patient_id}",
        timezone,
        start,
    )
    if team is not None:
        if await conn.fetchval("SELECT 1 FROM care_teams WHERE id = $1", team) is None:
            await staff_store.create_team(conn, team, f"Team {team}")
        await staff_store.set_patient_team(conn, patient_id, team)


async def add_days(
    conn: asyncpg.Connection, patient_id: str, days: Iterable[date], metric: str = "weight"
) -> None:
    """Readings at 09:00 local on each day, counted as the ingest unit of work counts them."""
    tz = ZoneInfo(await conn.fetchval("SELECT timezone FROM patients WHERE id = $1", patient_id))
    at = [datetime.combine(d, time(9), tz).astimezone(UTC) for d in days]
    await days_store.touch_days(conn, [patient_id] * len(at), at, [metric] * len(at))


def first_days(start: date, n: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(n)]


async def add_staff(conn: asyncpg.Connection, staff_id: str = "nurse-kim") -> str:
    await conn.execute(
        """INSERT INTO staff (id, display_name, role, password_hash) VALUES ($1, $1, 'nurse', '!')
           ON CONFLICT (id) DO NOTHING""",
        staff_id,
    )
    return staff_id


async def add_time(
    conn: asyncpg.Connection,
    patient_id: str,
    started_at: datetime,
    seconds: int,
    activity: str = "data_review",
    *,
    staff_id: str = "nurse-kim",
    deleted: bool = False,
) -> int:
    await add_staff(conn, staff_id)
    return int(
        await conn.fetchval(
            """INSERT INTO time_entries (patient_id, staff_id, started_at, duration_s, activity,
                                         note, source, deleted_at)
               VALUES ($1, $2, $3::timestamptz, $4, $5, 'private note', 'manual',
                       CASE WHEN $6::boolean THEN $3::timestamptz END)
               RETURNING id""",
            patient_id,
            staff_id,
            started_at,
            seconds,
            activity,
            deleted,
        )
    )


async def add_minutes(
    conn: asyncpg.Connection, patient_id: str, day: date, minutes: int, interactive: bool
) -> None:
    """``minutes`` in three entries on ``day`` (noon UTC on), the first interactive or not."""
    at = datetime.combine(day, time(12), UTC)
    parts = [minutes // 3, minutes // 3, minutes - 2 * (minutes // 3)]
    for i, m in enumerate(p for p in parts if p):
        activity = "interactive_phone" if interactive and i == 0 else "data_review"
        await add_time(conn, patient_id, at + timedelta(hours=i), m * 60, activity)
