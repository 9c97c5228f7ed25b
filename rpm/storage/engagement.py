# ruff: noqa: S608 - statements are built from fixed fragments and definitions compiled by
# rpm.engagement.segments; every value in them is a bind parameter.
"""SQL for the program between the alerts: patient facts and segments, campaign versions and
their planner, days with readings, and the interaction ledger (migration 0013).

Everything here is evaluated over the whole population in single statements: the facts of
every patient come from one query (:data:`FACTS_SQL`), a segment is a WHERE clause compiled
from its definition (``rpm.engagement.segments``), and a planner pass inserts its outbox rows
with ``INSERT ... SELECT``. No statement loops over patients in Python.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from rpm.domain import Severity
from rpm.domain.severity import sql_rank
from rpm.engagement import campaigns as campaign_spec
from rpm.engagement import segments as segment_spec
from rpm.engagement.campaigns import CampaignSpec, Trigger
from rpm.engagement.segments import SegmentSpec
from rpm.storage.pool import Conn

# The facts of every patient (rpm.engagement.segments.FACTS, plus the underscored columns the
# planner needs), at ``$1`` (now), for the care teams in ``$2`` (NULL: every team).
#
# Its cost stays linear in the patients a statement looks at, whatever PostgreSQL estimates:
# - the local date and time are computed once per time zone (``zone``), not per patient, so
#   a trigger's hour or weekday filters whole zones and the number of patients left is
#   estimated from patients' statistics. (Computed per patient in a materialised CTE, they
#   hid those statistics: PostgreSQL estimated 1 patient where thousands were due for a
#   weekly campaign and joined each to a whole aggregate in a nested loop, a pass of over
#   10 minutes at 100,000 patients; benchmarks/engagement.py.)
# - days with readings are counted per patient from a range of patient_days' primary key,
#   never by aggregating every patient's 30 days first; a count nothing uses is not made.
FACTS_SQL = f"""
WITH zone AS MATERIALIZED (
    SELECT z.timezone, z.local_now::date AS today, z.local_now::time AS local_time
      FROM (SELECT t.timezone, $1::timestamptz AT TIME ZONE t.timezone AS local_now
              FROM (SELECT DISTINCT timezone FROM patients
                     WHERE $2::text[] IS NULL OR care_team = ANY($2::text[])) t) z
), pl AS (
    SELECT p.id, p.care_team, p.programs, p.language, p.birth_date, p.created_at, p.phone,
           p.sms_consent, p.sms_opted_out_at, p.preferred_channel, p.timezone,
           zone.today, zone.local_time
      FROM patients p JOIN zone ON zone.timezone = p.timezone
     WHERE $2::text[] IS NULL OR p.care_team = ANY($2::text[])
), last AS (
    SELECT patient_id, max(measured_at) AS at FROM patient_metric_last GROUP BY patient_id
), open AS (
    SELECT patient_id, count(*) AS n, max({sql_rank("severity")}) AS top
      FROM alerts WHERE state <> 'resolved' GROUP BY patient_id
), news2 AS (
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
       days7.n::int AS days_with_readings_7d,
       days30.n::int AS days_with_readings_30d,
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
       (last.at AT TIME ZONE pl.timezone)::date AS _last_day
  FROM pl
  CROSS JOIN LATERAL (
      SELECT CASE WHEN pl.birth_date <= pl.today
                  THEN extract(year FROM age(pl.today, pl.birth_date))::int END AS age
  ) ages
  LEFT JOIN LATERAL (
      SELECT count(*) AS n FROM patient_days d
       WHERE d.patient_id = pl.id AND d.day > pl.today - 7 AND d.day <= pl.today
  ) days7 ON true
  LEFT JOIN LATERAL (
      SELECT count(*) AS n FROM patient_days d
       WHERE d.patient_id = pl.id AND d.day > pl.today - 30 AND d.day <= pl.today
  ) days30 ON true
  LEFT JOIN last ON last.patient_id = pl.id
  LEFT JOIN open ON open.patient_id = pl.id
  LEFT JOIN news2 ON news2.patient_id = pl.id
"""

# The facts a member list shows (the underscored columns are the planner's).
SHOWN_FACTS = tuple(segment_spec.FACTS)


def _teams(teams: frozenset[str] | None) -> list[str] | None:
    return None if teams is None else sorted(teams)


@contextlib.asynccontextmanager
async def _over_everyone(conn: Conn) -> AsyncIterator[None]:
    """A transaction (a savepoint inside one) without JIT compilation, for a statement over
    the whole population. Its index probes for every patient make its estimated cost high,
    so PostgreSQL would compile it (``jit_above_cost``;
    https://www.postgresql.org/docs/15/jit-decision.html): 0.2-0.6 s per statement at
    100,000 patients, more than the statement's own work, which is short probes that
    compiled code does not speed up. The setting lasts until the transaction ends."""
    async with conn.transaction():
        await conn.execute("SET LOCAL jit = off")
        yield


# --- patient_days ------------------------------------------------------------------------


async def touch_days(
    conn: Conn, patient_ids: Sequence[str], measured: Sequence[datetime], metrics: Sequence[str]
) -> None:
    """Count newly stored readings into their patients' local days (the unit of work calls
    this with the readings it inserted, duplicates left out)."""
    if not patient_ids:
        return
    await conn.execute(
        """INSERT INTO patient_days AS d (patient_id, day, readings, metrics)
           SELECT r.patient_id, (r.at AT TIME ZONE p.timezone)::date, count(*),
                  array_agg(DISTINCT r.metric ORDER BY r.metric)
             FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS r(patient_id, at, metric)
             JOIN patients p ON p.id = r.patient_id
            GROUP BY 1, 2
            ORDER BY 1, 2
           ON CONFLICT (patient_id, day) DO UPDATE
              SET readings = d.readings + excluded.readings,
                  metrics = ARRAY(SELECT DISTINCT m FROM unnest(d.metrics || excluded.metrics) m
                                   ORDER BY m)""",
        list(patient_ids),
        list(measured),
        list(metrics),
    )


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
    params: list[Any] = [now, _teams(teams)]
    counts = [
        f"count(*) FILTER (WHERE {segment_spec.compile_where(s.spec.where, params)})" for s in specs
    ]
    async with _over_everyone(conn):
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
    params: list[Any] = [now, _teams(teams)]
    where = segment_spec.compile_where(spec.where, params)
    params += [after, limit]
    n = len(params)
    async with _over_everyone(conn):
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


# --- campaigns ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignVersion:
    name: str
    version: int
    spec: CampaignSpec
    live: bool
    note: str | None
    actor: str
    created_at: datetime


def _campaign(row: asyncpg.Record) -> CampaignVersion:
    return CampaignVersion(
        row["name"],
        row["version"],
        campaign_spec.parse(row["definition"]),
        row["live"],
        row["note"],
        row["actor"],
        row["created_at"],
    )


async def publish_campaign(
    conn: Conn, name: str, spec: CampaignSpec, live: bool, actor: str, note: str | None
) -> tuple[int, bool]:
    """Store a new version (definition and whether it is live); (version, changed)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('campaign:' || $1))", name)
        current = await conn.fetchrow(
            """SELECT version, definition, live FROM campaign_versions WHERE name = $1
                ORDER BY version DESC LIMIT 1""",
            name,
        )
        document = spec.document()
        if current and current["definition"] == document and current["live"] == live:
            return int(current["version"]), False
        version = (int(current["version"]) if current else 0) + 1
        await conn.execute(
            """INSERT INTO campaign_versions (name, version, definition, live, note, actor)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            name,
            version,
            document,
            live,
            note,
            actor,
        )
        return version, True


async def current_campaigns(conn: Conn) -> list[CampaignVersion]:
    rows = await conn.fetch(
        """SELECT DISTINCT ON (name) name, version, definition, live, note, actor, created_at
             FROM campaign_versions ORDER BY name, version DESC"""
    )
    return [_campaign(r) for r in rows]


async def campaign(conn: Conn, name: str, version: int | None = None) -> CampaignVersion | None:
    row = await conn.fetchrow(
        """SELECT name, version, definition, live, note, actor, created_at
             FROM campaign_versions
            WHERE name = $1 AND ($2::int IS NULL OR version = $2)
            ORDER BY version DESC LIMIT 1""",
        name,
        version,
    )
    return _campaign(row) if row else None


async def campaign_history(conn: Conn, name: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT version, definition, live, note, actor, created_at
             FROM campaign_versions WHERE name = $1 ORDER BY version DESC""",
        name,
    )
    return [dict(r) for r in rows]


# The trigger of a campaign as SQL over the facts row ``f``: (condition, occurrence). ``$1``
# is now; values are bound through ``bind``.
def _trigger_sql(t: Trigger, bind: Any) -> tuple[str, str]:
    today_readings = (
        "EXISTS (SELECT 1 FROM patient_days d WHERE d.patient_id = f.patient_id "
        "AND d.day = f._today{metric})"
    )
    match t.kind:
        case "no_reading_by":
            metric = f" AND {bind(t.metric, 'text')} = ANY(d.metrics)" if t.metric else ""
            cond = (
                f"f._local_time >= {bind(t.local_time, 'time')} AND NOT "
                + today_readings.format(metric=metric)
            )
            return cond, "f._today::text"
        case "missed_days":
            return (
                f"f._last_day IS NOT NULL AND f._last_day < f._today - {bind(t.days, 'int')}",
                "'gap-after:' || f._last_day::text",
            )
        case "first_reading":
            return (
                today_readings.format(metric="")
                + " AND NOT EXISTS (SELECT 1 FROM patient_days d WHERE "
                "d.patient_id = f.patient_id AND d.day < f._today)",
                "'first'",
            )
        case "streak":
            n = bind(t.days, "int")
            return (
                f"(SELECT count(*) FROM patient_days d WHERE d.patient_id = f.patient_id "
                f"AND d.day > f._today - {n} AND d.day <= f._today) = {n}",
                "f._today::text",
            )
        case "alert_resolved":
            return (
                "ar.id IS NOT NULL",
                "'alert:' || ar.id::text",
            )
        case "weight_rising":
            return (
                f"wr.days = {bind(t.days, 'int')} + 1 AND wr.rising AND wr.gain >= "
                f"{bind(t.min_gain_kg, 'float8')} AND NOT EXISTS (SELECT 1 FROM alerts a "
                "WHERE a.patient_id = f.patient_id AND a.state <> 'resolved' "
                "AND a.rule_id LIKE '%weight%')",
                "f._today::text",
            )
        case _:
            return (
                f"extract(isodow FROM f._today) = {bind(t.weekday, 'int')} "
                f"AND f._local_time >= {bind(t.local_time, 'time')}",
                "to_char(f._today, 'IYYY-\"W\"IW')",
            )


def _expires_sql(t: Trigger) -> str:
    """When a message of this trigger is stale (a deferred one is then dropped): the end of
    the patient's local day, of the ISO week for a weekly one, a day after for an episode."""
    if t.kind == "weekly":
        return (
            "((f._today + (8 - extract(isodow FROM f._today))::int)::timestamp "
            "AT TIME ZONE f._timezone)"
        )
    if t.kind == "alert_resolved":
        return "($1::timestamptz + interval '1 day')"
    return "((f._today + 1)::timestamp AT TIME ZONE f._timezone)"


def _trigger_joins(t: Trigger, bind: Any) -> str:
    if t.kind == "alert_resolved":
        return """LEFT JOIN LATERAL (
            SELECT a.id FROM alerts a
             WHERE a.patient_id = f.patient_id AND a.state = 'resolved'
               AND a.resolved_at > $1::timestamptz - interval '1 day'
               AND a.resolved_at <= $1::timestamptz) ar ON true"""
    if t.kind == "weight_rising":
        n = bind(t.days, "int")
        return f"""CROSS JOIN LATERAL (
            SELECT count(*)::int AS days, bool_and(rise) AS rising,
                   max(kg) FILTER (WHERE day = f._today)
                   - max(kg) FILTER (WHERE day = f._today - {n}) AS gain
              FROM (SELECT day, kg, coalesce(kg > lag(kg) OVER (ORDER BY day), true) AS rise
                      FROM (SELECT (r.measured_at AT TIME ZONE f._timezone)::date AS day,
                                   avg((r.components->>'weight')::float8) AS kg
                              FROM readings r
                             WHERE r.patient_id = f.patient_id AND r.metric = 'weight'
                               AND r.measured_at > $1::timestamptz - ({n} + 2) * interval '1 day'
                               AND r.measured_at <= $1::timestamptz
                             GROUP BY 1) daily
                     WHERE day >= f._today - {n} AND day <= f._today) x) wr"""
    return ""


# Context columns a message may use (rpm.engagement.campaigns.PLACEHOLDERS), as SQL over
# ``f`` (and the laterals _context_joins adds when a message needs them).
_CONTEXT = {
    "days_measured_7d": "f.days_with_readings_7d",
    "days_measured_30d": "f.days_with_readings_30d",
    "days_since_last": "f.days_since_last_reading",
    "bp_avg_7d": "bp.avg",
    "weight_change_7d": "wc.change",
}


def _context_joins(used: frozenset[str]) -> str:
    joins = []
    if "bp_avg_7d" in used:
        joins.append("""LEFT JOIN LATERAL (
            SELECT round(avg((r.components->>'systolic')::float8))::int::text || '/'
                   || round(avg((r.components->>'diastolic')::float8))::int::text AS avg
              FROM readings r
             WHERE r.patient_id = f.patient_id AND r.metric = 'blood_pressure'
               AND r.measured_at > $1::timestamptz - interval '7 days'
               AND r.measured_at <= $1::timestamptz
            HAVING count(*) > 0) bp ON true""")
    if "weight_change_7d" in used:
        joins.append("""LEFT JOIN LATERAL (
            SELECT to_char(
                       (array_agg((r.components->>'weight')::float8 ORDER BY r.measured_at DESC))[1]
                     - (array_agg((r.components->>'weight')::float8 ORDER BY r.measured_at))[1],
                       'SG990.0') AS change
              FROM readings r
             WHERE r.patient_id = f.patient_id AND r.metric = 'weight'
               AND r.measured_at > $1::timestamptz - interval '7 days'
               AND r.measured_at <= $1::timestamptz
            HAVING count(*) > 1) wc ON true""")
    return "\n".join(joins)


def _context_sql(spec: CampaignSpec, bind: Any) -> str:
    parts = []
    for name in sorted(spec.placeholders):
        if name == "streak_days":
            parts.append(f"'{name}', {bind(spec.trigger.days, 'int')}")
        else:
            parts.append(f"'{name}', {_CONTEXT[name]}")
    return f"jsonb_build_object({', '.join(parts)})"


# Why an eligible-by-segment-and-trigger patient gets no message, in the order checked.
EXCLUSIONS = (
    ("no SMS consent", "NOT f.sms_consent"),
    ("opted out", "f.opted_out"),
    ("no phone number", "NOT f._has_phone"),
    (
        "open high or critical alert",
        f"f.open_alert_severity >= {int(Severity.HIGH)}",
    ),
)


@dataclass(frozen=True, slots=True)
class PlanQuery:
    sql: str
    params: list[Any]


def _selection(
    name: str,
    version: CampaignVersion,
    segment: SegmentSpec,
    now: datetime,
    daily_cap: int,
) -> tuple[str, list[Any], str]:
    """SELECT of every patient the segment and trigger pick, with the reason each would not
    get the message (NULL: would get it), its occurrence and its context."""
    spec = version.spec
    params: list[Any] = [now, None]

    def bind(value: Any, cast: str) -> str:
        params.append(value)
        return f"${len(params)}::{cast}"

    where = segment_spec.compile_where(segment.where, params)
    condition, occurrence = _trigger_sql(spec.trigger, bind)
    joins = _trigger_joins(spec.trigger, bind) + "\n" + _context_joins(spec.placeholders)
    context = _context_sql(spec, bind)
    campaign = bind(name, "text")
    cooldown = bind(spec.cooldown_days, "int")
    cap = bind(daily_cap, "int")
    reasons = " ".join(f"WHEN {sql} THEN '{reason}'" for reason, sql in EXCLUSIONS)
    sql = f"""
        SELECT f.patient_id, f.language, {occurrence} AS occurrence, {context} AS context,
               {_expires_sql(spec.trigger)} AS expires_at,
               CASE {reasons}
                    WHEN EXISTS (SELECT 1 FROM campaign_sends cs
                                  WHERE cs.campaign = {campaign} AND cs.patient_id = f.patient_id
                                    AND cs.occurrence = {occurrence}) THEN 'already planned'
                    WHEN {cooldown} > 0 AND EXISTS (
                         SELECT 1 FROM campaign_sends cs
                          WHERE cs.campaign = {campaign} AND cs.patient_id = f.patient_id
                            AND cs.planned_at > $1::timestamptz - {cooldown} * interval '1 day')
                         THEN 'cooldown'
                    WHEN (SELECT count(*) FROM campaign_sends cs
                           WHERE cs.patient_id = f.patient_id
                             AND cs.planned_at >= (f._today::timestamp AT TIME ZONE f._timezone)
                         ) >= {cap} THEN 'daily cap'
               END AS excluded
          FROM ({FACTS_SQL}) f
          {joins}
         WHERE {where} AND {condition}"""
    return sql, params, campaign


async def dry_run(
    conn: Conn,
    version: CampaignVersion,
    segment: SegmentSpec,
    now: datetime,
    daily_cap: int,
    limit: int = 200,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Who would get the message now, and why not the others: (up to ``limit`` rows,
    counts by outcome ('send' or the exclusion))."""
    sql, params, _ = _selection(version.name, version, segment, now, daily_cap)
    async with _over_everyone(conn):
        rows = await conn.fetch(
            f"""WITH picked AS ({sql})
                SELECT patient_id, language, occurrence, context, excluded,
                       count(*) OVER (PARTITION BY coalesce(excluded, 'send')) AS n
                  FROM picked ORDER BY excluded NULLS FIRST, patient_id""",
            *params,
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["excluded"] or "send"] = int(r["n"])
    return [dict(r) for r in rows[:limit]], counts


async def plan(
    conn: Conn, version: CampaignVersion, segment: SegmentSpec, now: datetime, daily_cap: int
) -> int:
    """One planner pass of a live campaign: an SMS outbox row and a ``campaign_sends`` row
    for each patient it picks and nothing excludes, once per occurrence. Returns how many."""
    sql, params, name = _selection(version.name, version, segment, now, daily_cap)
    params.append(version.version)
    v = f"${len(params)}::int"
    statement = f"""WITH picked AS ({sql}),
            box AS (
                INSERT INTO outbox (channel, dedupe_key, payload, created_at, next_attempt_at)
                SELECT 'sms', 'campaign:' || {name} || ':' || p.patient_id || ':' || p.occurrence,
                       jsonb_build_object('recipient', 'patient', 'template', 'campaign',
                                          'patient_id', p.patient_id, 'campaign', {name},
                                          'version', {v}, 'occurrence', p.occurrence,
                                          'expires_at', p.expires_at,
                                          'urgent', false, 'context', p.context),
                       $1::timestamptz, $1::timestamptz
                  FROM picked p WHERE p.excluded IS NULL
                ORDER BY p.patient_id
                ON CONFLICT (dedupe_key) DO NOTHING
                RETURNING id, payload->>'patient_id' AS patient_id,
                          payload->>'occurrence' AS occurrence
            ), sends AS (
                INSERT INTO campaign_sends (campaign, patient_id, occurrence, version,
                                            planned_at, outbox_id)
                SELECT {name}, b.patient_id, b.occurrence, {v}, $1::timestamptz, b.id
                  FROM box b
                ON CONFLICT DO NOTHING RETURNING 1
            )
            SELECT count(*) FROM sends"""
    async with _over_everyone(conn):
        count = await conn.fetchval(statement, *params)
    return int(count or 0)


async def open_severity(conn: Conn, patient_id: str) -> Severity | None:
    """The highest severity of the patient's open episodes; None when none is open."""
    rank = await conn.fetchval(
        f"SELECT max({sql_rank('severity')}) FROM alerts "
        "WHERE patient_id = $1 AND state <> 'resolved'",
        patient_id,
    )
    return Severity(rank) if rank else None


# --- the interaction ledger --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interaction:
    patient_id: str
    at: datetime
    kind: str
    channel: str
    direction: str
    ref: str
    campaign: str | None = None


async def record(conn: Conn, touches: Iterable[Interaction]) -> None:
    """Add touches to the ledger; one already recorded (same kind and ref) is kept as it was."""
    rows = [
        (t.patient_id, t.at, t.kind, t.channel, t.direction, t.campaign, t.ref) for t in touches
    ]
    if rows:
        await conn.executemany(
            """INSERT INTO interactions (patient_id, at, kind, channel, direction, campaign, ref)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (kind, ref) DO NOTHING""",
            rows,
        )


async def patient_ledger(
    conn: Conn, patient_id: str, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    """A patient's touches in [since, until), oldest first: each day with readings (kind
    ``readings``, at the local day's start) and every other interaction."""
    rows = await conn.fetch(
        """SELECT (d.day::timestamp AT TIME ZONE p.timezone) AS at, 'readings' AS kind,
                  'device' AS channel, 'inbound' AS direction, NULL::text AS campaign,
                  d.readings
             FROM patient_days d JOIN patients p ON p.id = d.patient_id
            WHERE d.patient_id = $1
              AND d.day >= ($2::timestamptz AT TIME ZONE p.timezone)::date
              AND d.day < ($3::timestamptz AT TIME ZONE p.timezone)::date
           UNION ALL
           SELECT at, kind, channel, direction, campaign, NULL
             FROM interactions
            WHERE patient_id = $1 AND at >= $2 AND at < $3
           ORDER BY at, kind""",
        patient_id,
        since,
        until,
    )
    return [dict(r) for r in rows]


async def engagement(
    conn: Conn,
    now: datetime,
    specs: Sequence[SegmentVersion],
    teams: frozenset[str] | None,
    days: int = 28,
) -> list[dict[str, Any]]:
    """Per segment (and ``"*"`` for everyone visible), over the last ``days`` days:
    patients, interactions per patient-year (days with readings, messages out, replies in,
    calls and nurse contacts, each one touch), reply rate (replies per program or alert
    message sent) and days with readings per patient per week, oldest week first."""
    params: list[Any] = [now, _teams(teams), days]
    members = []
    for s in specs:
        members.append(
            f"SELECT {_bound(params, s.name)} AS segment, f.patient_id FROM ({FACTS_SQL}) f "
            f"WHERE {segment_spec.compile_where(s.spec.where, params)}"
        )
    everyone = f"SELECT '*'::text AS segment, f.patient_id FROM ({FACTS_SQL}) f"
    union = " UNION ALL ".join([everyone, *members])
    statement = f"""WITH m AS ({union}),
            pats AS (
                SELECT DISTINCT m.patient_id,
                       greatest(p.created_at, $1::timestamptz - $3::int * interval '1 day')
                           AS since,
                       ($1::timestamptz AT TIME ZONE p.timezone)::date AS today
                  FROM m JOIN patients p ON p.id = m.patient_id
            ),
            exposure AS (
                SELECT patient_id, extract(epoch FROM $1::timestamptz - since) / 31557600.0 AS years
                  FROM pats
            ),
            reading_days AS (
                SELECT d.patient_id, count(*) AS n,
                       count(*) FILTER (WHERE pats.today - d.day BETWEEN 21 AND 27) AS w1,
                       count(*) FILTER (WHERE pats.today - d.day BETWEEN 14 AND 20) AS w2,
                       count(*) FILTER (WHERE pats.today - d.day BETWEEN 7 AND 13) AS w3,
                       count(*) FILTER (WHERE pats.today - d.day BETWEEN 0 AND 6) AS w4
                  FROM patient_days d JOIN pats USING (patient_id)
                 WHERE d.day > ($1::timestamptz AT TIME ZONE 'UTC')::date - $3::int - 1
                   AND d.day > pats.today - $3::int AND d.day <= pats.today
                 GROUP BY d.patient_id
            ),
            touches AS (
                SELECT i.patient_id, count(*) AS n,
                       count(*) FILTER (WHERE i.direction = 'outbound'
                                          AND i.kind IN ('campaign', 'checkin', 'alert')) AS out,
                       count(*) FILTER (WHERE i.direction = 'inbound') AS replies
                  FROM interactions i JOIN pats USING (patient_id)
                 WHERE i.at > $1::timestamptz - $3::int * interval '1 day'
                   AND i.at <= $1::timestamptz
                 GROUP BY i.patient_id
            )
            SELECT m.segment, count(*)::int AS patients,
                   sum(e.years) AS patient_years,
                   (coalesce(sum(rd.n), 0) + coalesce(sum(t.n), 0))::int AS interactions,
                   coalesce(sum(t.out), 0)::int AS messages_out,
                   coalesce(sum(t.replies), 0)::int AS replies,
                   coalesce(sum(rd.w1), 0)::int AS w1, coalesce(sum(rd.w2), 0)::int AS w2,
                   coalesce(sum(rd.w3), 0)::int AS w3, coalesce(sum(rd.w4), 0)::int AS w4
              FROM m JOIN exposure e USING (patient_id)
              LEFT JOIN reading_days rd USING (patient_id)
              LEFT JOIN touches t USING (patient_id)
             GROUP BY m.segment"""
    async with _over_everyone(conn):
        rows = await conn.fetch(statement, *params)
    out = []
    order = ["*", *(s.name for s in specs)]
    by_name = {r["segment"]: r for r in rows}
    for name in order:
        r = by_name.get(name)
        patients = int(r["patients"]) if r else 0
        years = float(r["patient_years"] or 0.0) if r else 0.0
        interactions = int(r["interactions"]) if r else 0
        sent = int(r["messages_out"]) if r else 0
        replies = int(r["replies"]) if r else 0
        weeks = [int(r[k]) if r else 0 for k in ("w1", "w2", "w3", "w4")]
        out.append(
            {
                "segment": name,
                "patients": patients,
                "interactions": interactions,
                "interactions_per_patient_year": round(interactions / years, 1) if years else None,
                "messages_out": sent,
                "replies": replies,
                "reply_rate": round(replies / sent, 3) if sent else None,
                "reading_days_per_patient_week": [
                    round(w / patients, 2) if patients else None for w in weeks
                ],
            }
        )
    return out


def _bound(params: list[Any], value: Any) -> str:
    params.append(value)
    return f"${len(params)}::text"
