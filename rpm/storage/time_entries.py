"""SQL for time tracking: ``time_entries``, ``time_entry_events`` and ``time_timers``
(migration 0018; docs/time-tracking.md). The only module that issues SQL for them.

Every creation, edit and deletion of an entry writes its ``time_entry_events`` row (the
value before and after) in the same transaction as the change. An edit or deletion names
the version it was made against; a different stored version is ``StaleVersion`` (409).
A deleted entry keeps its row (``deleted_at`` set) and its history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from rpm.billing.time import Activity, EntryValues
from rpm.domain.errors import StaleVersion, TimeEntryNotFound, TimerRunning
from rpm.storage.pool import Conn

_COLUMNS = (
    "id, patient_id, staff_id, started_at, duration_s, activity, note, source, version, "
    "created_at, updated_at, deleted_at"
)


@dataclass(frozen=True, slots=True)
class TimeEntry:
    """A stored time entry."""

    id: int
    values: EntryValues
    version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @property
    def patient_id(self) -> str:
        return self.values.patient_id

    @property
    def staff_id(self) -> str:
        return self.values.staff_id

    def snapshot(self) -> dict[str, Any]:
        """The entry as ``time_entry_events.old``/``new`` record it (JSON values)."""
        v = self.values
        return {
            "patient_id": v.patient_id,
            "staff_id": v.staff_id,
            "started_at": v.started_at.isoformat(),
            "duration_s": v.duration_s,
            "activity": v.activity.value,
            "note": v.note,
            "source": v.source,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class Timer:
    """A running timer (one per staff member)."""

    staff_id: str
    patient_id: str
    activity: Activity
    started_at: datetime
    note: str


@dataclass(frozen=True, slots=True)
class Event:
    """One row of an entry's history."""

    id: int
    entry_id: int
    action: str  # create, edit, delete
    actor: str
    at: datetime
    old: dict[str, Any] | None
    new: dict[str, Any] | None


def _entry(r: asyncpg.Record) -> TimeEntry:
    return TimeEntry(
        id=r["id"],
        values=EntryValues(
            patient_id=r["patient_id"],
            staff_id=r["staff_id"],
            started_at=r["started_at"],
            duration_s=r["duration_s"],
            activity=Activity(r["activity"]),
            note=r["note"],
            source=r["source"],
        ),
        version=r["version"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        deleted_at=r["deleted_at"],
    )


def _timer(r: asyncpg.Record) -> Timer:
    return Timer(
        r["staff_id"], r["patient_id"], Activity(r["activity"]), r["started_at"], r["note"]
    )


async def _event(
    conn: Conn,
    entry_id: int,
    action: str,
    actor: str,
    at: datetime,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
) -> None:
    await conn.execute(
        "INSERT INTO time_entry_events (entry_id, action, actor, at, old, new) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        entry_id,
        action,
        actor,
        at,
        None if old is None else dict(old),
        None if new is None else dict(new),
    )


# --- patients ---------------------------------------------------------------------------


async def patient(conn: Conn, patient_id: str) -> tuple[str | None, str] | None:
    """(care team, time zone) of a patient; None when there is no such patient."""
    row = await conn.fetchrow("SELECT care_team, timezone FROM patients WHERE id = $1", patient_id)
    return None if row is None else (row["care_team"], row["timezone"])


# --- entries ----------------------------------------------------------------------------


async def create(
    conn: Conn,
    values: EntryValues,
    actor: str,
    at: datetime,
    audit_extra: Mapping[str, Any] | None = None,
) -> TimeEntry:
    """Store a (checked) entry and its ``create`` event; ``audit_extra`` goes into the
    event's ``new`` beside the entry (a capped timer's real elapsed time)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""INSERT INTO time_entries (patient_id, staff_id, started_at, duration_s, activity,
                                          note, source, created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                RETURNING {_COLUMNS}""",  # noqa: S608 - fixed columns
            values.patient_id,
            values.staff_id,
            values.started_at,
            values.duration_s,
            values.activity.value,
            values.note,
            values.source,
            at,
        )
        assert row is not None  # INSERT ... RETURNING
        entry = _entry(row)
        await _event(
            conn, entry.id, "create", actor, at, None, {**entry.snapshot(), **(audit_extra or {})}
        )
    return entry


async def get(conn: Conn, entry_id: int) -> TimeEntry | None:
    """The entry, deleted or not; None when there is none."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM time_entries WHERE id = $1",  # noqa: S608 - fixed columns
        entry_id,
    )
    return None if row is None else _entry(row)


async def _locked(conn: Conn, entry_id: int, version: int | None) -> TimeEntry:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM time_entries WHERE id = $1 FOR UPDATE",  # noqa: S608
        entry_id,
    )
    if row is None or row["deleted_at"] is not None:
        raise TimeEntryNotFound("no such time entry (or it was deleted)")
    entry = _entry(row)
    if version is not None and version != entry.version:
        raise StaleVersion(
            f"the entry is at version {entry.version}, not {version}: someone changed it; "
            "read it again"
        )
    return entry


async def edit(
    conn: Conn, entry_id: int, version: int, values: EntryValues, actor: str, at: datetime
) -> TimeEntry:
    """Replace the entry's values if it is still at ``version`` (else ``StaleVersion``), with
    its ``edit`` event; the version goes up by one (an edit changing nothing stores nothing)."""
    async with conn.transaction():
        old = await _locked(conn, entry_id, version)
        if old.values == values:
            return old  # nothing changes: no new version, no event
        row = await conn.fetchrow(
            f"""UPDATE time_entries
                   SET patient_id = $2, staff_id = $3, started_at = $4, duration_s = $5,
                       activity = $6, note = $7, version = version + 1, updated_at = $8
                 WHERE id = $1
             RETURNING {_COLUMNS}""",  # noqa: S608 - fixed columns
            entry_id,
            values.patient_id,
            values.staff_id,
            values.started_at,
            values.duration_s,
            values.activity.value,
            values.note,
            at,
        )
        assert row is not None  # the row is locked
        new = _entry(row)
        await _event(conn, entry_id, "edit", actor, at, old.snapshot(), new.snapshot())
    return new


async def delete(
    conn: Conn, entry_id: int, version: int | None, actor: str, at: datetime
) -> TimeEntry:
    """Mark the entry deleted (at ``version`` when given, else ``StaleVersion``), with its
    ``delete`` event holding the value it had."""
    async with conn.transaction():
        old = await _locked(conn, entry_id, version)
        row = await conn.fetchrow(
            f"""UPDATE time_entries SET deleted_at = $2, updated_at = $2, version = version + 1
                 WHERE id = $1 RETURNING {_COLUMNS}""",  # noqa: S608 - fixed columns
            entry_id,
            at,
        )
        assert row is not None  # the row is locked
        await _event(conn, entry_id, "delete", actor, at, old.snapshot(), None)
    return _entry(row)


async def for_patient(
    conn: Conn, patient_id: str, start: datetime, end: datetime, limit: int = 1000
) -> list[TimeEntry]:
    """The patient's entries (not deleted) starting in [start, end), oldest first."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM time_entries
             WHERE patient_id = $1 AND started_at >= $2 AND started_at < $3
               AND deleted_at IS NULL
             ORDER BY started_at, id
             LIMIT $4""",  # noqa: S608 - fixed columns
        patient_id,
        start,
        end,
        limit,
    )
    return [_entry(r) for r in rows]


async def history(conn: Conn, entry_id: int) -> list[Event]:
    """The entry's events, oldest first."""
    rows = await conn.fetch(
        "SELECT id, entry_id, action, actor, at, old, new FROM time_entry_events "
        "WHERE entry_id = $1 ORDER BY id",
        entry_id,
    )
    return [Event(**dict(r)) for r in rows]


# --- timers -----------------------------------------------------------------------------


async def start_timer(
    conn: Conn, staff_id: str, patient_id: str, activity: Activity, at: datetime, note: str
) -> Timer:
    """Start the staff member's timer; ``TimerRunning`` when one runs already."""
    row = await conn.fetchrow(
        """INSERT INTO time_timers (staff_id, patient_id, activity, started_at, note)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (staff_id) DO NOTHING
           RETURNING staff_id, patient_id, activity, started_at, note""",
        staff_id,
        patient_id,
        activity.value,
        at,
        note,
    )
    if row is None:
        raise TimerRunning("your timer is already running: stop or discard it first")
    return _timer(row)


async def timer(conn: Conn, staff_id: str) -> Timer | None:
    """The staff member's running timer, if any."""
    row = await conn.fetchrow(
        "SELECT staff_id, patient_id, activity, started_at, note FROM time_timers "
        "WHERE staff_id = $1",
        staff_id,
    )
    return None if row is None else _timer(row)


async def take_timer(conn: Conn, staff_id: str) -> Timer:
    """Remove the staff member's timer and return it (``TimeEntryNotFound`` when none runs).
    Two stops at once: one takes it, the other finds none."""
    row = await conn.fetchrow(
        "DELETE FROM time_timers WHERE staff_id = $1 "
        "RETURNING staff_id, patient_id, activity, started_at, note",
        staff_id,
    )
    if row is None:
        raise TimeEntryNotFound("no timer is running")
    return _timer(row)
