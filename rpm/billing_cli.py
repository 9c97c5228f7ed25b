"""``rpm billing``: the month-end report (a table or CSV) and the code tables (list, show,
publish from a file). docs/billing.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from rpm.api.billing import csv_text
from rpm.billing import codes as code_spec
from rpm.billing.periods import month_of
from rpm.domain.errors import InvalidCodeTable
from rpm.settings import Settings
from rpm.settings.local_option import add_local_option
from rpm.storage import billing as store
from rpm.storage.pool import connect

ACTOR = "cli"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], local: Path) -> None:
    """Add ``billing report`` and ``billing codes`` to the ``rpm`` command."""
    p = sub.add_parser("billing", help="month-end billing report and code tables")
    billing = p.add_subparsers(dest="billing_command", required=True)
    r = billing.add_parser(
        "report",
        help="codes earned per patient in a month, and what is missing",
        description="The month-end report of every patient (or of --team): device periods "
        "that end in the month, the month's minutes, the codes earned and what is missing.",
    )
    r.add_argument("--month", required=True, help="YYYY-MM")
    r.add_argument("--team", action="append", help="only this care team's patients (repeat)")
    r.add_argument("--csv", action="store_true", help="CSV on stdout (the API's columns)")
    c = billing.add_parser(
        "codes",
        help="code tables: list the versions, show one, publish a new one",
        description="Without options: every stored version. --show VERSION prints its "
        "document; --publish FILE checks a table document and stores it as a new version.",
    )
    c.add_argument("--show", type=int, metavar="VERSION")
    c.add_argument("--publish", type=Path, metavar="FILE")
    c.add_argument("--note", help="why (stored with the version)")
    for q in (r, c):
        add_local_option(q, local)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``rpm billing ...``; 0 done, 2 bad input."""
    try:
        if args.billing_command == "report":
            return asyncio.run(_report(args, settings))
        return asyncio.run(_codes(args, settings))
    except (InvalidCodeTable, ValueError, OSError) as exc:
        print(f"rpm billing {args.billing_command}: {exc}", file=sys.stderr)
        return 2


async def _report(args: argparse.Namespace, settings: Settings) -> int:
    month = month_of(args.month)
    teams = frozenset(args.team) if args.team else None
    url = settings.database.url.get_secret_value()
    conns = [await connect(url), await connect(url)]
    try:
        reports = await store.whole_report(conns, month, datetime.now(UTC), teams)
    finally:
        for conn in conns:
            await conn.close()
    if args.csv:
        sys.stdout.write(csv_text(reports))
        return 0
    print(f"{'patient':<24} {'days':>9} {'minutes':>7} {'codes':<24} missing")
    for r in reports:
        days = ",".join(str(d.days) for d in r.patient.periods) or "-"
        print(
            f"{r.patient.patient_id:<24} {days:>9} {r.patient.time.minutes:>7} "
            f"{r.codes_text() or '-':<24} {r.missing_text()}"
        )
    earned: dict[str, int] = {}
    for r in reports:
        for e in r.earned:
            earned[e.code] = earned.get(e.code, 0) + e.units
    summary = ", ".join(f"{c} {n}" for c, n in sorted(earned.items())) or "none"
    print(f"{len(reports)} patients, {args.month}; codes earned: {summary}")
    return 0


async def _codes(args: argparse.Namespace, settings: Settings) -> int:
    table = None
    if args.publish is not None:
        table = code_spec.parse(json.loads(args.publish.read_text(encoding="utf-8")))
    conn = await connect(settings.database.url.get_secret_value())
    try:
        if table is not None:
            version, changed = await store.publish_table(conn, table, ACTOR, args.note)
            said = "published as" if changed else "unchanged: already"
            print(f"{table.name}: {said} version {version}")
            return 0
        versions = await store.table_versions(conn)
    finally:
        await conn.close()
    if args.show is not None:
        found = [v for v in versions if v.version == args.show]
        if not found:
            print(f"rpm billing codes: no version {args.show}", file=sys.stderr)
            return 2
        print(json.dumps(found[0].table.document(), indent=2))
        return 0
    for v in versions:
        print(
            f"{v.version:>4}  {v.table.name:<20} from {v.table.effective_from}  "
            f"{v.actor:<20} {v.created_at:%Y-%m-%d %H:%M}  {v.note or ''}"
        )
    return 0
