"""``rpm on-call``: list, add and remove a care team's on-call shifts, straight from the
database (like ``rpm time``; docs/alerts.md#on-call-rotas).

An operator's tool: whoever can run it can read the database, so it applies no team
scoping. Every command is written to the audit log like an API request (role ``cli``, status
200). Exit status: 0 done, 1 no such team or shift, an overlap, or an unmigrated database;
2 invalid input (a shift ending before it starts, someone outside the team).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from rpm.domain.errors import InvalidRequestError, NotFoundError, ShiftOverlap
from rpm.settings import Settings
from rpm.settings.local_option import add_local_option
from rpm.storage import audit as audit_store
from rpm.storage import staff as staff_store
from rpm.storage.pool import Conn, connect
from rpm.storage.staff import Shift

Clock = Callable[[], datetime]


def _when(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a zone (Z or +hh:mm): {text!r}")
    return t


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], local: Path) -> None:
    """Add ``on-call list|add|remove`` to the ``rpm`` command's subcommands."""
    p = sub.add_parser("on-call", help="care teams' on-call shifts: list, add, remove")
    cmds = p.add_subparsers(dest="on_call_command", required=True)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        c = cmds.add_parser(name, help=help_, description=help_)
        c.add_argument("team", help="care team id")
        c.add_argument("--json", action="store_true", help="print JSON instead of text")
        add_local_option(c, local)
        return c

    c = command("list", "the team's shifts in a window (default: now and the next 14 days)")
    c.add_argument("--from", dest="start", type=_when, help="ISO 8601 with a zone")
    c.add_argument("--to", dest="end", type=_when, help="ISO 8601 with a zone")

    c = command("add", "put a team member on call at a tier for [start, end)")
    c.add_argument("--staff", required=True, help="staff id of an active team member")
    c.add_argument("--tier", type=int, choices=(1, 2), required=True)
    c.add_argument("--start", type=_when, required=True, help="ISO 8601 with a zone")
    c.add_argument("--end", type=_when, required=True, help="ISO 8601 with a zone")

    c = command("remove", "remove one of the team's shifts")
    c.add_argument("shift", type=int, help="shift id (from list)")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def run(args: argparse.Namespace, settings: Settings, clock: Clock = _utcnow) -> int:
    """Run ``rpm on-call ...``; the exit status."""
    return asyncio.run(_run(args, settings, clock))


async def _run(args: argparse.Namespace, settings: Settings, clock: Clock) -> int:
    name = f"rpm on-call {args.on_call_command}"
    conn = await connect(settings.database.url.get_secret_value())
    try:
        if not await staff_store.team_exists(conn, args.team):
            raise NotFoundError(f"no team {args.team!r}")
        if args.on_call_command == "list":
            await _list(conn, args, clock())
        elif args.on_call_command == "add":
            await _add(conn, args)
        else:
            await _remove(conn, args)
    except InvalidRequestError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except (NotFoundError, ShiftOverlap) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except asyncpg.UndefinedTableError:
        print(f"{name}: the database is not migrated: run `rpm migrate`", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    return 0


def _as_dict(s: Shift) -> dict[str, object]:
    return {
        "id": s.id,
        "team": s.team_id,
        "tier": s.tier,
        "staff_id": s.staff_id,
        "start": s.start.isoformat(),
        "end": s.end.isoformat(),
        "reachable": s.reachable,
        "created_by": s.created_by,
    }


def _line(s: Shift) -> str:
    paged = "" if s.reachable else "  (cannot be paged: inactive or no phone)"
    return (
        f"{s.id:>6}  tier {s.tier}  {s.staff_id:<20}  "
        f"{s.start.astimezone(UTC):%Y-%m-%d %H:%M} - {s.end.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        f"{paged}"
    )


async def _list(conn: Conn, args: argparse.Namespace, now: datetime) -> None:
    start = args.start or now
    end = args.end or start + timedelta(days=14)
    if not start < end:
        raise InvalidRequestError("--to must be after --from")
    found = await staff_store.shifts(conn, args.team, start, end)
    await _audit(conn, args, "read", args.team)
    if args.json:
        print(json.dumps([_as_dict(s) for s in found], indent=2))
        return
    print(f"team {args.team}: {len(found)} shift(s) from {start.isoformat()} to {end.isoformat()}")
    for s in found:
        print(_line(s))


async def _add(conn: Conn, args: argparse.Namespace) -> None:
    actor = f"cli:{getpass.getuser()}"
    async with conn.transaction():
        shift_id = await staff_store.set_on_call(
            conn, args.team, args.tier, args.staff, args.start, args.end, actor
        )
        await _audit(conn, args, "create", args.team)
        made = await staff_store.shift(conn, args.team, shift_id)
    assert made is not None
    print(json.dumps(_as_dict(made), indent=2) if args.json else f"added\n{_line(made)}")


async def _remove(conn: Conn, args: argparse.Namespace) -> None:
    async with conn.transaction():
        found = await staff_store.shift(conn, args.team, args.shift)
        if found is None or not await staff_store.remove_shift(conn, args.team, args.shift):
            raise NotFoundError(f"team {args.team} has no shift {args.shift}")
        await _audit(conn, args, "delete", f"{args.team}/{args.shift}")
    print(json.dumps(_as_dict(found), indent=2) if args.json else f"removed\n{_line(found)}")


async def _audit(conn: Conn, args: argparse.Namespace, action: str, rid: str) -> None:
    await audit_store.append_cli(
        conn,
        actor=f"cli:{getpass.getuser()}",
        command=f"rpm on-call {args.on_call_command}",
        action=action,
        resource="on-call",
        resource_id=rid,
    )
