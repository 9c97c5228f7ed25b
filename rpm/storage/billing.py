"""SQL for billing (migration 0019): code table versions, and the month-end report's rows.

:data:`REPORT_SQL` answers, in one statement over the patients asked for, each patient's
monitoring start, the days with readings of each device period that ends in the month, the
first day on which a period reached the set-up code's days, and the month's time (seconds,
entries, interactive ones). Each is an index range per patient (``patient_days``' primary
key, ``time_entries_patient``), so its cost is linear in the patients and never reads a
history past the month. The rules are applied per patient in Python
(``rpm.billing.evaluate``) on those rows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from rpm.billing import codes as code_spec
from rpm.billing.codes import CodeTable
from rpm.billing.evaluate import MonthTime, PatientMonth, PeriodDays, Report, evaluate
from rpm.billing.periods import PERIOD_DAYS, Period, device_period, numbered_period
from rpm.storage.pool import Conn
from rpm.storage.segments import over_everyone, teams_param

# --- code tables ---------------------------------------------------------------------------

DEFAULT_NOTE = "the default shipped with the server (rpm/billing/tables/cms-2026.json)"


@dataclass(frozen=True, slots=True)
class TableVersion:
    version: int
    table: CodeTable
    note: str | None
    actor: str
    created_at: datetime

    def document(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.table.name,
            "effective_from": self.table.effective_from,
            "definition": self.table.document(),
            "note": self.note,
            "actor": self.actor,
            "created_at": self.created_at,
        }


def _version(row: asyncpg.Record) -> TableVersion:
    return TableVersion(
        row["version"],
        code_spec.parse(row["definition"]),
        row["note"],
        row["actor"],
        row["created_at"],
    )


async def _store(conn: Conn, table: CodeTable, actor: str, note: str | None) -> tuple[int, bool]:
    """Store ``table`` as a new version, under an advisory lock; (version, changed). The
    same document as its name's newest version stores nothing."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('billing-code-tables'))")
        current = await conn.fetchrow(
            """SELECT version, definition FROM billing_code_tables WHERE name = $1
                ORDER BY version DESC LIMIT 1""",
            table.name,
        )
        document = table.document()
        if current and current["definition"] == document:
            return int(current["version"]), False
        version = int(
            await conn.fetchval("SELECT coalesce(max(version), 0) + 1 FROM billing_code_tables")
        )
        await conn.execute(
            """INSERT INTO billing_code_tables (version, name, effective_from, definition,
                                                note, actor)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            version,
            table.name,
            table.effective_from,
            document,
            note,
            actor,
        )
        return version, True


async def publish_table(
    conn: Conn, table: CodeTable, actor: str, note: str | None
) -> tuple[int, bool]:
    """Publish a code table as a new version; (version, changed)."""
    await table_versions(conn)  # the default first, so it stays version 1
    return await _store(conn, table, actor, note)


async def table_versions(conn: Conn) -> list[TableVersion]:
    """Every stored version, oldest first; the default is stored when none is."""
    rows = await conn.fetch(
        """SELECT version, definition, note, actor, created_at
             FROM billing_code_tables ORDER BY version"""
    )
    if not rows:
        await _store(conn, code_spec.default_table(), "system", DEFAULT_NOTE)
        return await table_versions(conn)
    return [_version(r) for r in rows]


async def tables_in_use(conn: Conn) -> list[CodeTable]:
    """The newest version of each named table, oldest version first (``codes.in_force``
    prefers the later of two with the same date: the newer version)."""
    newest: dict[str, TableVersion] = {}
    for v in await table_versions(conn):
        newest[v.table.name] = v
    return [v.table for v in sorted(newest.values(), key=lambda v: v.version)]


# --- the month-end report ------------------------------------------------------------------

# $1 the month's first day, $2 the next month's first day, $3 care teams (NULL: all), $4 page
# after this patient id, $5 page size (NULL: all), $6 the set-up code's days (NULL: no
# set-up code), $7 the interactive activities, $8 now.
#
# Device period k runs from start + 30k to start + 30k + 29; it is in the month when that
# last day is: k from ceil((month start - start - 29) / 30) to
# ceil((next month start - start - 29) / 30) - 1, at most two of them. (30 is
# rpm.billing.periods.PERIOD_DAYS, checked below.)
REPORT_SQL = """
WITH pl AS MATERIALIZED (
    SELECT p.id, p.care_team, p.timezone,
           coalesce(p.monitoring_started_on,
                    (SELECT min(d.day) FROM patient_days d WHERE d.patient_id = p.id)) AS start
      FROM patients p
     WHERE ($3::text[] IS NULL OR p.care_team = ANY($3::text[]))
       AND ($4::text IS NULL OR p.id > $4::text)
     ORDER BY p.id
     LIMIT $5::int
), zone AS MATERIALIZED (
    -- the month's bounds and today in each time zone, computed once per zone, not per row
    SELECT z.timezone, ($1::date::timestamp AT TIME ZONE z.timezone) AS lo,
           ($2::date::timestamp AT TIME ZONE z.timezone) AS hi,
           ($8::timestamptz AT TIME ZONE z.timezone)::date AS today
      FROM (SELECT DISTINCT timezone FROM pl) z
), tm AS (
    -- the month's time, aggregated in one pass over the month's entries (time_entries_started),
    -- each entry in its patient's local month
    SELECT e.patient_id, sum(e.duration_s)::bigint AS seconds, count(*)::int AS entries,
           count(*) FILTER (WHERE e.activity = ANY($7::text[]))::int AS interactive,
           min(e.started_at) FILTER (WHERE e.activity = ANY($7::text[])) AS first_interactive
      FROM time_entries e JOIN pl ON pl.id = e.patient_id JOIN zone z ON z.timezone = pl.timezone
     WHERE e.deleted_at IS NULL
       AND e.started_at >= ($1::date::timestamp AT TIME ZONE 'UTC') - interval '1 day'
       AND e.started_at < ($2::date::timestamp AT TIME ZONE 'UTC') + interval '1 day'
       AND e.started_at >= z.lo AND e.started_at < z.hi
     GROUP BY e.patient_id
)
SELECT pl.id AS patient_id, pl.care_team, pl.start, z.today,
       per.ks, per.days, setup.day AS setup_day,
       coalesce(t.seconds, 0) AS seconds, coalesce(t.entries, 0) AS entries,
       coalesce(t.interactive, 0) AS interactive, t.first_interactive
  FROM pl
  LEFT JOIN LATERAL (
      SELECT array_agg(k ORDER BY k) AS ks,
             array_agg((SELECT count(*) FROM patient_days d
                         WHERE d.patient_id = pl.id
                           AND d.day >= pl.start + 30 * k
                           AND d.day < pl.start + 30 * (k + 1))::int ORDER BY k) AS days
        FROM generate_series(
                 greatest(0, ceil(($1::date - pl.start - 29) / 30.0)::int),
                 ceil(($2::date - pl.start - 29) / 30.0)::int - 1) k
       WHERE pl.start IS NOT NULL
  ) per ON true
  LEFT JOIN LATERAL (
      SELECT s.day FROM (
          SELECT d.day, lag(d.day, $6::int - 1) OVER (ORDER BY d.day) AS back
            FROM patient_days d
           WHERE $6::int IS NOT NULL AND per.ks IS NOT NULL
             AND d.patient_id = pl.id AND d.day >= pl.start AND d.day < $2::date
      ) s
       WHERE s.back IS NOT NULL
         AND (s.back - pl.start) / 30 = (s.day - pl.start) / 30
       LIMIT 1
  ) setup ON true
  JOIN zone z ON z.timezone = pl.timezone
  LEFT JOIN tm t ON t.patient_id = pl.id
 ORDER BY pl.id
"""
assert PERIOD_DAYS == 30, "REPORT_SQL counts 30-day device periods"


def _patient_month(row: asyncpg.Record, month: Period) -> PatientMonth:
    start: date | None = row["start"]
    periods: tuple[PeriodDays, ...] = ()
    setup_period = None
    next_end = None
    if start is not None:
        ks = row["ks"] or []
        periods = tuple(
            PeriodDays(numbered_period(start, k), n)
            for k, n in zip(ks, row["days"] or [], strict=True)
        )
        if row["setup_day"] is not None:
            setup_period = (row["setup_day"] - start).days // PERIOD_DAYS
        if not periods:
            next_end = device_period(start, max(start, month.end)).last_day
    first = row["first_interactive"]
    time = MonthTime(
        int(row["seconds"]),
        row["entries"],
        row["interactive"],
        first.isoformat() if first is not None else None,
    )
    return PatientMonth(
        row["patient_id"],
        month,
        start,
        periods,
        setup_period,
        time,
        row["today"],
        row["care_team"],
        next_end,
    )


async def _report_args(
    conn: Conn, month: Period, now: datetime
) -> tuple[list[CodeTable], list[Any]]:
    """The tables in use and REPORT_SQL's parameters but the page ($3 to $5 are set per call)."""
    tables = await tables_in_use(conn)
    table = code_spec.in_force(tables, month.last_day)
    setup = table.setup
    args = [
        month.start,
        month.end,
        None,
        None,
        None,
        setup.min_days if setup else None,
        sorted(table.interactive_activities),
        now,
    ]
    return tables, args


async def month_report(
    conn: Conn,
    month: Period,
    now: datetime,
    teams: frozenset[str] | None,
    *,
    after: str | None = None,
    limit: int | None = None,
) -> list[Report]:
    """The month-end report of the patients of ``teams`` (None: every patient), by id."""
    tables, args = await _report_args(conn, month, now)
    args[2:5] = [teams_param(teams), after, limit]
    async with over_everyone(conn):
        rows = await conn.fetch(REPORT_SQL, *args)
    return [evaluate(_patient_month(r, month), tables) for r in rows]


PAGE = 10_000  # patients per statement of a whole report


async def whole_report(
    conns: Sequence[Conn],
    month: Period,
    now: datetime,
    teams: frozenset[str] | None,
    *,
    page: int = PAGE,
) -> list[Report]:
    """The month-end report of every patient of ``teams`` (None: all), by id, as of one
    snapshot of the database.

    The statement runs a page of ``page`` patients at a time, turn about on the connections
    given, so that PostgreSQL computes the next page while this process evaluates the last
    one (the rules, per patient, are Python's part of the time): with two connections the
    report takes about the longer of the two parts, not their sum. The connections share one
    exported snapshot (``pg_export_snapshot``), read only and repeatable read, so the pages
    see the same data whatever is written meanwhile.
    """
    tables, args = await _report_args(conns[0], month, now)
    args[2] = teams_param(teams)
    args[4] = page
    async with contextlib.AsyncExitStack() as stack:
        for c in conns:
            await stack.enter_async_context(
                c.transaction(isolation="repeatable_read", readonly=True)
            )
        if len(conns) > 1:
            snapshot = await conns[0].fetchval("SELECT pg_export_snapshot()")
            for c in conns[1:]:
                await c.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        for c in conns:
            await c.execute("SET LOCAL jit = off")  # as over_everyone, for each page
        reports: list[Report] = []
        turn = 0
        pending: asyncio.Future[list[asyncpg.Record]] | None = asyncio.ensure_future(
            conns[0].fetch(REPORT_SQL, *args)
        )
        while pending is not None:
            rows = await pending
            pending = None
            if len(rows) == page:
                turn = (turn + 1) % len(conns)
                args[3] = rows[-1]["patient_id"]
                pending = asyncio.ensure_future(conns[turn].fetch(REPORT_SQL, *args))
                await asyncio.sleep(0)  # let it send its statement before the CPU work below
            reports.extend(evaluate(_patient_month(r, month), tables) for r in rows)
        return reports


async def evidence(
    conn: Conn, reports: Sequence[Report], interactive: frozenset[str]
) -> dict[str, dict[str, Any]]:
    """The rows behind a page of reports: each patient's days with readings in its periods
    and the month's time entries (who, when, how long, which activity; never the note)."""
    ids = [r.patient.patient_id for r in reports]
    if not ids:
        return {}
    ranges = [
        (r.patient.patient_id, pd.period.start, pd.period.end)
        for r in reports
        for pd in r.patient.periods
    ]
    month = reports[0].patient.month
    days = await conn.fetch(
        """SELECT d.patient_id, d.day FROM patient_days d
             JOIN unnest($1::text[], $2::date[], $3::date[]) AS r(patient_id, s, e)
               ON d.patient_id = r.patient_id AND d.day >= r.s AND d.day < r.e
            ORDER BY d.patient_id, d.day""",
        [r[0] for r in ranges],
        [r[1] for r in ranges],
        [r[2] for r in ranges],
    )
    entries = await conn.fetch(
        """SELECT e.id, e.patient_id, e.staff_id, e.started_at, e.duration_s, e.activity
             FROM time_entries e JOIN patients p ON p.id = e.patient_id
            WHERE e.patient_id = ANY($1::text[]) AND e.deleted_at IS NULL
              AND e.started_at >= ($2::date::timestamp AT TIME ZONE p.timezone)
              AND e.started_at < ($3::date::timestamp AT TIME ZONE p.timezone)
            ORDER BY e.patient_id, e.started_at, e.id""",
        ids,
        month.start,
        month.end,
    )
    found: dict[str, dict[str, Any]] = {i: {"days": [], "time_entries": []} for i in ids}
    for d in days:
        found[d["patient_id"]]["days"].append(d["day"])
    for e in entries:
        found[e["patient_id"]]["time_entries"].append(
            {
                "id": e["id"],
                "staff_id": e["staff_id"],
                "started_at": e["started_at"],
                "duration_s": e["duration_s"],
                "activity": e["activity"],
                "interactive": e["activity"] in interactive,
            }
        )
    return found
