"""``rpm time``: list, add, edit and delete a patient's time entries, and read an entry's
history, straight from the database (like ``rpm staff``; docs/time-tracking.md).

It is an operator's tool: whoever can run it can read the database, so it applies no care
team scoping. Changes name the staff member who makes them (``--staff``): the entry's
author on ``add``, the actor of its history on every change. Every command is written to
the audit log like an API request (role ``cli``, status 200). Exit status: 0 done, 1 not found or a
stale version, 2 invalid input.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from rpm.billing.periods import calendar_month, month_of
from rpm.billing.time import Activity, EntryValues, checked, month_span, month_total
from rpm.domain.errors import InvalidTimeEntry, NotFoundError, StaleVersion
from rpm.settings import Settings
from rpm.settings.local_option import add_local_option
from rpm.storage import audit as audit_store
from rpm.storage import staff as staff_store
from rpm.storage import time_entries as store
from rpm.storage.pool import Conn, connect
from rpm.storage.time_entries import Event, TimeEntry

Clock = Callable[[], datetime]
ACTIVITIES = [a.value for a in Activity]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], local: Path) -> None:
    """Add ``time list|add|edit|delete|history`` to the ``rpm`` command's subcommands."""
    p = sub.add_parser("time", help="time entries: list, add, edit, delete, history")
    cmds = p.add_subparsers(dest="time_command", required=True)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        c = cmds.add_parser(name, help=help_, description=help_)
        c.add_argument("--json", action="store_true", help="print JSON instead of text")
        add_local_option(c, local)
        return c

    c = command("list", "a patient's entries of one calendar month, with the total")
    c.add_argument("patient", help="patient id")
    c.add_argument("--month", help="YYYY-MM in the patient's time zone (default: this month)")

    c = command("add", "record time spent on a patient")
    c.add_argument("patient", help="patient id")
    c.add_argument("--staff", required=True, help="who spent the time (a staff id)")
    c.add_argument("--minutes", type=float, required=True, help="how long, e.g. 12 or 7.5")
    c.add_argument("--activity", required=True, choices=ACTIVITIES)
    c.add_argument(
        "--start", type=_when, help="when it started, ISO 8601 with a zone (default: --minutes ago)"
    )
    c.add_argument("--note", default="", help="what was done (may hold patient data)")

    c = command("edit", "change an entry made at a known version")
    c.add_argument("entry", type=int, help="entry id")
    c.add_argument("--staff", required=True, help="who makes the change (a staff id)")
    c.add_argument("--version", type=int, required=True, help="the version you read (list)")
    c.add_argument("--minutes", type=float)
    c.add_argument("--activity", choices=ACTIVITIES)
    c.add_argument("--start", type=_when)
    c.add_argument("--note")

    c = command("delete", "delete an entry (kept in its history)")
    c.add_argument("entry", type=int, help="entry id")
    c.add_argument("--staff", required=True, help="who deletes it (a staff id)")
    c.add_argument("--version", type=int, help="refuse unless the entry is at this version")

    c = command("history", "an entry's creation, edits and deletion with the old values")
    c.add_argument("entry", type=int, help="entry id")


def _when(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2026-11-23T09:30-05:00")
    return at


def _utcnow() -> datetime:
    return datetime.now(UTC)


def run(args: argparse.Namespace, settings: Settings, clock: Clock = _utcnow) -> int:
    """``rpm time ...``; the exit status."""
    return asyncio.run(_run(args, settings, clock))


async def _run(args: argparse.Namespace, settings: Settings, clock: Clock) -> int:
    name = f"rpm time {args.time_command}"
    try:
        conn = await connect(settings.database.url.get_secret_value())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"{name}: cannot reach the database: {type(exc).__name__}", file=sys.stderr)
        return 1
    try:
        command = _COMMANDS[args.time_command]
        out = await command(conn, args, settings, clock)
    except (InvalidTimeEntry, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except (NotFoundError, StaleVersion) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except asyncpg.UndefinedTableError:
        print(f"{name}: the database is not migrated: run `rpm migrate`", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    print(json.dumps(out[0], indent=2, default=str) if args.json else out[1])
    return 0


# --- the commands: (JSON, text) ---------------------------------------------------------

Out = tuple[Any, str]


async def _list(conn: Conn, args: argparse.Namespace, _s: Settings, clock: Clock) -> Out:
    zone = await _patient_zone(conn, args.patient)
    period = month_of(args.month) if args.month else calendar_month(clock().astimezone(zone).date())
    start, end = month_span(period, zone)
    entries = await store.for_patient(conn, args.patient, start, end, limit=5000)
    await _audit(conn, args, "read", "time-entries", args.patient, args.patient)
    total = month_total((e.values.duration_s, e.values.activity) for e in entries)
    month = f"{period.start:%Y-%m}"
    data = {
        "patient_id": args.patient,
        "month": month,
        "timezone": zone.key,
        "entries": [_json(e) for e in entries],
        "total": {
            "seconds": total.seconds,
            "minutes": total.minutes,
            "entries": total.entries,
            "interactive": total.interactive,
        },
    }
    lines = [
        f"Patient {args.patient}, {month} ({zone.key}): {total.entries} entries, "
        f"{total.minutes} min, interactive communication: {'yes' if total.interactive else 'no'}"
    ]
    if entries:
        lines.append(
            f"{'id':>6}  {'start (local)':16}  {'min:s':>6}  {'activity':34}  "
            f"{'staff':12}  {'source':6}  {'v':>2}  note"
        )
    for e in entries:
        v = e.values
        lines.append(
            f"{e.id:>6}  {v.started_at.astimezone(zone):%Y-%m-%d %H:%M}  "
            f"{_mmss(v.duration_s):>6}  {v.activity.label:34}  {v.staff_id:12}  {v.source:6}  "
            f"{e.version:>2}  {_one_line(v.note)}"
        )
    return data, "\n".join(lines)


async def _add(conn: Conn, args: argparse.Namespace, settings: Settings, clock: Clock) -> Out:
    now = clock()
    await _patient_zone(conn, args.patient)
    await _staff(conn, args.staff)
    duration = _seconds(args.minutes)
    start = args.start or now - timedelta(seconds=duration)
    values = EntryValues(
        args.patient, args.staff, start, duration, Activity(args.activity), args.note
    )
    values = checked(values, now, settings.time_tracking.policy())
    entry = await store.create(conn, values, f"staff:{args.staff}", now)
    await _audit(conn, args, "create", "time-entries", str(entry.id), args.patient)
    return _json(entry), f"added entry {entry.id} (version 1): {_summary(entry)}"


async def _edit(conn: Conn, args: argparse.Namespace, settings: Settings, clock: Clock) -> Out:
    now = clock()
    await _staff(conn, args.staff)
    entry = await _entry(conn, args.entry)
    old = entry.values
    values = replace(
        old,
        started_at=args.start or old.started_at,
        duration_s=old.duration_s if args.minutes is None else _seconds(args.minutes),
        activity=Activity(args.activity) if args.activity else old.activity,
        note=old.note if args.note is None else args.note,
    )
    values = checked(values, now, settings.time_tracking.policy())
    edited = await store.edit(conn, args.entry, args.version, values, f"staff:{args.staff}", now)
    await _audit(conn, args, "edit", "time-entry", str(args.entry), old.patient_id)
    return _json(edited), f"entry {edited.id} is at version {edited.version}: {_summary(edited)}"


async def _delete(conn: Conn, args: argparse.Namespace, _s: Settings, clock: Clock) -> Out:
    await _staff(conn, args.staff)
    entry = await _entry(conn, args.entry)
    deleted = await store.delete(conn, args.entry, args.version, f"staff:{args.staff}", clock())
    await _audit(conn, args, "delete", "time-entry", str(args.entry), entry.patient_id)
    return _json(deleted), f"deleted entry {deleted.id}: {_summary(deleted)}"


async def _history(conn: Conn, args: argparse.Namespace, _s: Settings, _c: Clock) -> Out:
    entry = await store.get(conn, args.entry)
    if entry is None:
        raise NotFoundError(f"no time entry {args.entry}")
    events = await store.history(conn, args.entry)
    await _audit(conn, args, "history", "time-entry", str(args.entry), entry.patient_id)
    data = [
        {"id": e.id, "action": e.action, "actor": e.actor, "at": e.at, "old": e.old, "new": e.new}
        for e in events
    ]
    lines = [f"Entry {entry.id} of patient {entry.patient_id}:"]
    lines += [
        f"  {e.at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z  {e.action:6}  {e.actor:20}  {_change(e)}"
        for e in events
    ]
    return data, "\n".join(lines)


_COMMANDS: dict[str, Callable[..., Any]] = {
    "list": _list,
    "add": _add,
    "edit": _edit,
    "delete": _delete,
    "history": _history,
}


# --- helpers ----------------------------------------------------------------------------


async def _patient_zone(conn: Conn, patient_id: str) -> ZoneInfo:
    found = await store.patient(conn, patient_id)
    if found is None:
        raise NotFoundError(f"no patient {patient_id}")
    try:
        return ZoneInfo(found[1])
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


async def _staff(conn: Conn, staff_id: str) -> None:
    if not await staff_store.exists(conn, staff_id):
        raise InvalidTimeEntry(f"--staff: no active staff member {staff_id!r}")


async def _entry(conn: Conn, entry_id: int) -> TimeEntry:
    entry = await store.get(conn, entry_id)
    if entry is None or entry.deleted_at is not None:
        raise NotFoundError(f"no time entry {entry_id} (or it was deleted)")
    return entry


async def _audit(
    conn: Conn, args: argparse.Namespace, action: str, resource: str, rid: str, patient: str
) -> None:
    staff = getattr(args, "staff", None)
    await audit_store.append_cli(
        conn,
        actor=f"staff:{staff}" if staff else f"cli:{getpass.getuser()}",
        command=f"rpm time {args.time_command}",
        action=action,
        resource=resource,
        resource_id=rid,
        patient_ids=(patient,),
    )


def _seconds(minutes: float) -> int:
    if not minutes > 0:
        raise InvalidTimeEntry("--minutes must be more than 0")
    return round(minutes * 60)


def _mmss(seconds: int) -> str:
    return f"{seconds // 60}:{seconds % 60:02d}"


def _one_line(note: str, width: int = 60) -> str:
    flat = re.sub(r"\s+", " ", note)
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _summary(e: TimeEntry) -> str:
    v = e.values
    return (
        f"patient {v.patient_id}, {v.staff_id}, {v.started_at:%Y-%m-%d %H:%M}Z, "
        f"{_mmss(v.duration_s)}, {v.activity.label}"
    )


def _json(e: TimeEntry) -> dict[str, Any]:
    return {"id": e.id, **e.snapshot(), "deleted_at": e.deleted_at}


def _change(e: Event) -> str:
    old, new = e.old or {}, e.new or {}
    if e.action == "create":
        return f"{_mmss(new['duration_s'])} {new['activity']} from {new['started_at']}"
    if e.action == "delete":
        return f"was {_mmss(old['duration_s'])} {old['activity']} from {old['started_at']}"
    keys: Sequence[str] = ("staff_id", "started_at", "duration_s", "activity", "note")
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(changed) or "no change"
