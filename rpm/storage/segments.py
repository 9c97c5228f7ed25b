# ruff: noqa: S608 - statements are built from fixed fragments and definitions compiled by
# rpm.engagement.segments; every value in them is a bind parameter.
"""SQL for segments (migration 0013): every patient's facts in one query (:data:`FACTS_SQL`),
segment definitions as versions, and their sizes and members, each a WHERE clause compiled
from its definition (``rpm.engagement.segments``) over the whole population in one statement.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from rpm.domain import Severity
from rpm.domain.severity import sql_rank
from rpm.engagement import segments as segment_spec
from rpm.engagement.segments import SegmentSpec
from rpm.storage.pool import Conn

# The facts of every patient (rpm.engagement.segments.FACTS, plus the underscored columns the
# planner needs), at ``$1`` (now), for the care teams in ``$2`` (NULL: every team);
# :func:`facts_sql` with ``scoped``: only the patients of the time zones in ``$3`` and those
# in ``$4`` who live in a zone of ``$5`` (an incremental planner pass,
# rpm.engagement.planning), of part ``$6`` of ``$7``.
#
# Its cost stays linear in the patients a statement looks at, whatever PostgreSQL estimates:
# - the local date and time are computed once per time zone (``zone``), not per patient, so
#   a trigger's hour or weekday filters whole zones and the number of patients left is
#   estimated from patients' statistics. (Computed per patient in a materialised CTE, they
#   hid those statistics: PostgreSQL estimated 1 patient where thousands were due for a
#   weekly campaign and joined each to a whole aggregate in a nested loop, a pass of over
#   10 minutes at 100,000 patients; benchmarks/engagement.py.)
# - days with readings are counted from the patient's one row of patient_day_bits (migration
#   0036: a bitmap of the days of patient_days, kept by triggers), never by aggregating every
#   patient's 30 days first; a count nothing uses is not made. (Counted from a range of
#   patient_days per patient and window, they were the largest part of a zone's pass: at
#   100,000 patients, a probe per hypertension patient of the zone, 10-15 us each, for
#   bp-nudge's "fewer than 4 of the last 7 days"; benchmarks/engagement.py.)


def days_in_sql(bits: str, last_day: str, today: str, n: str, patient: str) -> str:
    """SQL for the days with readings of ``patient`` in (today - n, today]: from the
    patient's bitmap and its newest day (patient_day_bits; NULL: no days), or from
    patient_days when the bitmap cannot tell (a newest day far after ``today``), so the count
    is always that of patient_days."""
    return (
        f"coalesce(rpm_days_in({bits}, {last_day}, {today}, {n}), "
        f"(SELECT count(*) FROM patient_days d WHERE d.patient_id = {patient} "
        f"AND d.day > {today} - {n} AND d.day <= {today})::int)"
    )


def _days(n: str) -> str:
    return days_in_sql("bits.bits", "bits.last_day", "pl.today", n, "pl.id")


_FACTS = f"""
WITH zone AS MATERIALIZED (
    SELECT z.timezone, z.local_now::date AS today, z.local_now::time AS local_time
      FROM (SELECT t.timezone, $1::timestamptz AT TIME ZONE t.timezone AS local_now
              FROM ({{zones}}) t) z
), pl AS (
    {{patients}}
), {{aggregates}}news2 AS (
    SELECT patient_id, max({sql_rank("severity")}) AS top
      FROM alerts
     WHERE rule_id LIKE 'news2.%' AND opened_at > $1::timestamptz - interval '7 days'
     GROUP BY patient_id
)
SELECT pl.id AS patient_id,
       pl.care_team,
       pl.programs AS program,
       pl.language,
       ages.age,
       CASE WHEN ages.age IS NULL THEN NULL
            WHEN ages.age >= 90 THEN '90+'
            ELSE (ages.age / 5 * 5)::text || '-' || (ages.age / 5 * 5 + 4)::text END AS age_band,
       {_days("7")} AS days_with_readings_7d,
       {_days("30")} AS days_with_readings_30d,
       (pl.today - (last.at AT TIME ZONE pl.timezone)::date)::int AS days_since_last_reading,
       coalesce(open.n, 0)::int AS open_alerts,
       coalesce(open.top, 0)::int AS open_alert_severity,
       coalesce(news2.top, 0)::int AS news2_severity_7d,
       floor(extract(epoch FROM $1::timestamptz - pl.created_at) / 604800)::int
           AS weeks_since_enrolment,
       pl.sms_consent,
       pl.sms_opted_out_at IS NOT NULL AS opted_out,
       pl.preferred_channel AS channel,
       pl.phone IS NOT NULL AS _has_phone,
       pl.timezone AS _timezone,
       pl.today AS _today,
       pl.local_time AS _local_time,
       (last.at AT TIME ZONE pl.timezone)::date AS _last_day,
       bits.bits AS _bits,
       bits.last_day AS _bits_last_day,
       bits.first_day AS _first_day
  FROM pl
  CROSS JOIN LATERAL (
      SELECT CASE WHEN pl.birth_date <= pl.today
                  THEN extract(year FROM age(pl.today, pl.birth_date))::int END AS age
  ) ages
  LEFT JOIN patient_day_bits bits ON bits.patient_id = pl.id
  {{joins}}
  LEFT JOIN news2 ON news2.patient_id = pl.id
"""
# Over everyone, the newest reading and the open episodes of every patient are aggregated
# once; over a few patients (an incremental pass), each is probed by its index instead.
_AGGREGATES = f"""last AS (
    SELECT patient_id, max(measured_at) AS at FROM patient_metric_last GROUP BY patient_id
), open AS (
    SELECT patient_id, count(*) AS n, max({sql_rank("severity")}) AS top
      FROM alerts WHERE state <> 'resolved' GROUP BY patient_id
), """
_AGGREGATE_JOINS = """LEFT JOIN last ON last.patient_id = pl.id
  LEFT JOIN open ON open.patient_id = pl.id"""
_PROBES = f"""LEFT JOIN LATERAL (
      SELECT max(l.measured_at) AS at FROM patient_metric_last l WHERE l.patient_id = pl.id
  ) last ON true
  LEFT JOIN LATERAL (
      SELECT count(*) AS n, max({sql_rank("a.severity")}) AS top
        FROM alerts a WHERE a.patient_id = pl.id AND a.state <> 'resolved'
  ) open ON true"""
_ZONES = """SELECT DISTINCT timezone FROM patients
                     WHERE $2::text[] IS NULL OR care_team = ANY($2::text[])"""
_PATIENTS = """SELECT p.id, p.care_team, p.programs, p.language, p.birth_date, p.created_at,
           p.phone, p.sms_consent, p.sms_opted_out_at, p.preferred_channel, p.timezone,
           zone.today, zone.local_time
      FROM patients p JOIN zone ON zone.timezone = p.timezone
     WHERE ($2::text[] IS NULL OR p.care_team = ANY($2::text[]))"""
# The patients of an incremental pass: those of the zones in $3 (by patients_timezone) and
# those in $4 (by primary key) whose zone is in $5, each branch with an index of its own (one
# condition with OR over both was a scan of every patient testing each against the whole
# array). The zones come from the caller (rpm.storage.planning.zone_clocks), not from the
# patients named: finding those patients' zones first was a second probe per patient.
_SCOPED_ZONES = """SELECT DISTINCT unnest($3::text[] || $5::text[]) AS timezone"""
# Part $6 of $7 (by a hash of the id) only: the parts of one pass are disjoint sets of patients,
# planned side by side on as many connections (rpm.workers.campaigns).
_PART = "AND (hashtext(p.id) & 2147483647) % $7::int = $6::int"
# The patients named are read once, then matched to their zone: joined to the zones
# directly, PostgreSQL looked the whole list up again for each zone (5 zones, 5 probes per
# patient named; benchmarks/engagement.py).
_SCOPED_PATIENTS = f"""{_PATIENTS} AND p.timezone = ANY($3::text[]) {_PART}
    UNION ALL
    (WITH named AS MATERIALIZED (
        SELECT p.id, p.care_team, p.programs, p.language, p.birth_date, p.created_at,
               p.phone, p.sms_consent, p.sms_opted_out_at, p.preferred_channel, p.timezone
          FROM patients p
         WHERE p.id = ANY($4::text[]) AND p.timezone <> ALL($3::text[]) {_PART}
           AND ($2::text[] IS NULL OR p.care_team = ANY($2::text[])))
     SELECT named.*, zone.today, zone.local_time
       FROM named JOIN zone ON zone.timezone = named.timezone)"""


def facts_sql(*, scoped: bool = False) -> str:
    """The facts query; ``scoped``: of the zones in ``$3`` and the patients in ``$4`` of the
    zones in ``$5`` only, those of part ``$6`` of ``$7`` (by a hash of the id)."""
    if not scoped:
        return _FACTS.format(
            zones=_ZONES, patients=_PATIENTS, aggregates=_AGGREGATES, joins=_AGGREGATE_JOINS
        )
    return _FACTS.format(
        zones=_SCOPED_ZONES, patients=_SCOPED_PATIENTS, aggregates="", joins=_PROBES
    )


FACTS_SQL = facts_sql()

# The facts a member list shows (the underscored columns are the planner's).
SHOWN_FACTS = tuple(segment_spec.FACTS)


def teams_param(teams: frozenset[str] | None) -> list[str] | None:
    return None if teams is None else sorted(teams)


@contextlib.asynccontextmanager
async def over_everyone(conn: Conn) -> AsyncIterator[None]:
    """A transaction (a savepoint inside one) without JIT compilation, for a statement over
    the whole population. Its index probes for every patient make its estimated cost high,
    so PostgreSQL would compile it (``jit_above_cost``;
    https://www.postgresql.org/docs/15/jit-decision.html): 0.2-0.6 s per statement at
    100,000 patients, more than the statement's own work, which is short probes that
    compiled code does not speed up. The setting lasts until the transaction ends."""
    async with conn.transaction():
        await conn.execute("SET LOCAL jit = off")
        yield


# --- segments ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentVersion:
    name: str
    version: int
    spec: SegmentSpec
    note: str | None
    actor: str
    created_at: datetime


def _segment(row: asyncpg.Record) -> SegmentVersion:
    return SegmentVersion(
        row["name"],
        row["version"],
        segment_spec.parse(row["definition"]),
        row["note"],
        row["actor"],
        row["created_at"],
    )


async def publish_segment(
    conn: Conn, name: str, spec: SegmentSpec, actor: str, note: str | None
) -> tuple[int, bool]:
    """Store ``spec`` as the segment's new version; (version, changed). The same definition
    as the current one stores nothing."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('segment:' || $1))", name)
        current = await conn.fetchrow(
            """SELECT version, definition, retired FROM segment_versions WHERE name = $1
                ORDER BY version DESC LIMIT 1""",
            name,
        )
        document = spec.document()
        if current and not current["retired"] and current["definition"] == document:
            return int(current["version"]), False
        version = (int(current["version"]) if current else 0) + 1
        await conn.execute(
            """INSERT INTO segment_versions (name, version, definition, note, actor)
               VALUES ($1, $2, $3, $4, $5)""",
            name,
            version,
            document,
            note,
            actor,
        )
        return version, True


async def retire_segment(conn: Conn, name: str, actor: str, note: str | None) -> int | None:
    """Retire a segment (a new version saying so); None when there is no such segment."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('segment:' || $1))", name)
        current = await conn.fetchrow(
            """SELECT version, definition, retired FROM segment_versions WHERE name = $1
                ORDER BY version DESC LIMIT 1""",
            name,
        )
        if current is None or current["retired"]:
            return None
        version = int(current["version"]) + 1
        await conn.execute(
            """INSERT INTO segment_versions (name, version, definition, note, actor, retired)
               VALUES ($1, $2, $3, $4, $5, true)""",
            name,
            version,
            current["definition"],
            note,
            actor,
        )
        return version


async def current_segments(conn: Conn) -> list[SegmentVersion]:
    """The newest version of every segment not retired, by name."""
    rows = await conn.fetch(
        """SELECT DISTINCT ON (name) name, version, definition, note, actor, created_at, retired
             FROM segment_versions ORDER BY name, version DESC"""
    )
    return [_segment(r) for r in rows if not r["retired"]]


async def segment(conn: Conn, name: str) -> SegmentVersion | None:
    for s in await current_segments(conn):
        if s.name == name:
            return s
    return None


async def segment_history(conn: Conn, name: str) -> list[dict[str, Any]]:
    """Every version of a segment, newest first: the audit trail of its changes."""
    rows = await conn.fetch(
        """SELECT version, definition, note, actor, created_at, retired
             FROM segment_versions WHERE name = $1 ORDER BY version DESC""",
        name,
    )
    return [dict(r) for r in rows]


async def segment_sizes(
    conn: Conn, now: datetime, specs: Sequence[SegmentVersion], teams: frozenset[str] | None
) -> dict[str, int]:
    """Members of each segment at ``now``, all counted in one pass over the facts."""
    if not specs:
        return {}
    params: list[Any] = [now, teams_param(teams)]
    counts = [
        f"count(*) FILTER (WHERE {segment_spec.compile_where(s.spec.where, params)})" for s in specs
    ]
    async with over_everyone(conn):
        row = await conn.fetchrow(f"SELECT {', '.join(counts)} FROM ({FACTS_SQL}) f", *params)
    assert row is not None
    return {s.name: int(row[i]) for i, s in enumerate(specs)}


async def segment_members(
    conn: Conn,
    now: datetime,
    spec: SegmentSpec,
    teams: frozenset[str] | None,
    *,
    limit: int = 100,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """Members at ``now`` with their facts, by patient id; page with ``after``."""
    params: list[Any] = [now, teams_param(teams)]
    where = segment_spec.compile_where(spec.where, params)
    params += [after, limit]
    n = len(params)
    async with over_everyone(conn):
        rows = await conn.fetch(
            f"""SELECT {", ".join(f"f.{c}" for c in ("patient_id", *SHOWN_FACTS))}
                  FROM ({FACTS_SQL}) f
                 WHERE {where} AND (${n - 1}::text IS NULL OR f.patient_id > ${n - 1})
                 ORDER BY f.patient_id LIMIT ${n}""",
            *params,
        )
    return [_shown(dict(r)) for r in rows]


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    for name, fact in segment_spec.FACTS.items():
        if fact.type == "severity":
            rank = row.get(name) or 0
            row[name] = Severity(rank).label if rank else segment_spec.SEVERITY_NONE
    return row
