# ruff: noqa: S608 - statements are built from fixed fragments and definitions compiled by
# rpm.engagement.segments; every value in them is a bind parameter.
"""SQL for campaigns (migration 0013): their versions, and the planner: a campaign's segment,
trigger, exclusions and message figures evaluated over the facts of every patient
(``rpm.storage.segments.FACTS_SQL``) in one ``INSERT ... SELECT`` into the SMS outbox, once
per occurrence; the dry run is the same selection, read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from rpm.domain import Severity
from rpm.engagement import campaigns as campaign_spec
from rpm.engagement import segments as segment_spec
from rpm.engagement.campaigns import CampaignSpec, Trigger
from rpm.engagement.segments import SegmentSpec
from rpm.storage.patient_readings import of_patient
from rpm.storage.pool import Conn
from rpm.storage.segments import days_in_sql, facts_sql, over_everyone

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


# A per-patient test of a row's existence, as a scalar subquery: PostgreSQL never turns one
# into a join, so it stays an index probe for each patient that reaches it. (As EXISTS, it
# may become a hash join over the whole table when PostgreSQL expects many patients: a
# sequential scan of every patient's 30 days, 0.5-0.7 s, for a pass naming a few thousand;
# benchmarks/engagement.py.)
def _probe(source: str) -> str:
    return f"coalesce((SELECT true FROM {source} LIMIT 1), false)"


# The trigger of a campaign as SQL over the facts row ``f``: (condition, occurrence). ``$1``
# is now; values are bound through ``bind``.
def _trigger_sql(t: Trigger, bind: Any) -> tuple[str, str]:
    today_readings = "patient_days d WHERE d.patient_id = f.patient_id AND d.day = f._today"

    def days_in(n: str) -> str:  # from the patient's bitmap of days (migration 0036)
        return days_in_sql("f._bits", "f._bits_last_day", "f._today", n, "f.patient_id")

    match t.kind:
        case "no_reading_by":
            # Of a metric: the metrics of today's row of patient_days, a probe.
            no_reading = (
                "NOT " + _probe(f"{today_readings} AND {bind(t.metric, 'text')} = ANY(d.metrics)")
                if t.metric
                else f"{days_in('1')} = 0"
            )
            return (
                f"f._local_time >= {bind(t.local_time, 'time')} AND {no_reading}",
                "f._today::text",
            )
        case "missed_days":
            return (
                f"f._last_day IS NOT NULL AND f._last_day < f._today - {bind(t.days, 'int')}",
                "'gap-after:' || f._last_day::text",
            )
        case "first_reading":
            return (f"{days_in('1')} = 1 AND f._first_day >= f._today", "'first'")
        case "streak":
            n = bind(t.days, "int")
            return (f"{days_in(n)} = {n}", "f._today::text")
        case "alert_resolved":
            return (
                "ar.id IS NOT NULL",
                "'alert:' || ar.id::text",
            )
        case "weight_rising":
            return (
                f"wr.days = {bind(t.days, 'int')} + 1 AND wr.rising AND wr.gain >= "
                f"{bind(t.min_gain_kg, 'float8')} AND NOT "
                + _probe(
                    "alerts a WHERE a.patient_id = f.patient_id AND a.state <> 'resolved' "
                    "AND a.rule_id LIKE '%weight%'"
                ),
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
                                   avg(r.v1) AS kg  -- weight: its only slot
                              FROM readings r
                             WHERE {_OF_PATIENT} AND r.metric = 'weight'
                               AND NOT EXISTS (SELECT 1 FROM reading_corrections c
                                                WHERE c.device_id = r.device_id
                                                  AND c.metric = r.metric::text
                                                  AND c.measured_at = r.measured_at)
                               AND r.measured_at > $1::timestamptz - ({n} + 2) * interval '1 day'
                               AND r.measured_at < ((f._today + 1)::timestamp
                                                    AT TIME ZONE f._timezone)
                             GROUP BY 1) daily
                     WHERE day >= f._today - {n} AND day <= f._today) x) wr"""
    return ""


_OF_PATIENT = of_patient("f.patient_id", "r")

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
        joins.append(f"""LEFT JOIN LATERAL (
            SELECT round(avg(r.v1))::int::text || '/'  -- systolic, diastolic: slots 1, 2
                   || round(avg(r.v2))::int::text AS avg
              FROM readings r
             WHERE {_OF_PATIENT} AND r.metric = 'blood_pressure'
               AND r.measured_at > $1::timestamptz - interval '7 days'
               AND r.measured_at <= $1::timestamptz
            HAVING count(*) > 0) bp ON true""")
    if "weight_change_7d" in used:
        joins.append(f"""LEFT JOIN LATERAL (
            SELECT to_char(
                       (array_agg(r.v1 ORDER BY r.measured_at DESC))[1]  -- weight: slot 1
                     - (array_agg(r.v1 ORDER BY r.measured_at))[1],
                       'FMSG990.0') AS change  -- '+1.2': FM, no padding after the sign
              FROM readings r
             WHERE {_OF_PATIENT} AND r.metric = 'weight'
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
class PlanScope:
    """The patients an incremental pass looks at: every patient of ``zones``, and those of
    ``patients`` who live in one of ``patient_zones`` (rpm.engagement.planning); of them,
    part ``part`` of ``parts`` only (by a hash of the id: the parts are disjoint, and each
    patient's outcome depends on that patient's rows alone, so they can be planned side by
    side)."""

    zones: tuple[str, ...]
    patients: tuple[str, ...]
    patient_zones: tuple[str, ...] = ()
    part: int = 0
    parts: int = 1

    @property
    def empty(self) -> bool:
        return not self.zones and not (self.patients and self.patient_zones)


def _selection(
    name: str,
    version: CampaignVersion,
    segment: SegmentSpec,
    now: datetime,
    daily_cap: int,
    scope: PlanScope | None = None,
) -> tuple[str, list[Any], str]:
    """SELECT of every patient the segment and trigger pick (of ``scope`` only, when given),
    with the reason each would not get the message (NULL: would get it), its occurrence and
    its context."""
    spec = version.spec
    params: list[Any] = [now, None]
    if scope is not None:
        params += [list(scope.zones), list(scope.patients), list(scope.patient_zones)]
        params += [scope.part, scope.parts]

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
    # Probes of campaign_sends' primary key and (patient_id, planned_at) index for the
    # patients picked: as EXISTS, PostgreSQL hashed every send of the campaign instead.
    already = _probe(
        f"campaign_sends cs WHERE cs.campaign = {campaign} AND cs.patient_id = f.patient_id "
        f"AND cs.occurrence = {occurrence}"
    )
    in_cooldown = _probe(
        f"campaign_sends cs WHERE cs.patient_id = f.patient_id AND cs.campaign = {campaign} "
        f"AND cs.planned_at > $1::timestamptz - {cooldown} * interval '1 day'"
    )
    sql = f"""
        SELECT f.patient_id, f.language, {occurrence} AS occurrence, {context} AS context,
               {_expires_sql(spec.trigger)} AS expires_at,
               CASE {reasons}
                    WHEN {already} THEN 'already planned'
                    WHEN {cooldown} > 0 AND {in_cooldown} THEN 'cooldown'
                    WHEN (SELECT count(*) FROM campaign_sends cs
                           WHERE cs.patient_id = f.patient_id
                             AND cs.planned_at >= (f._today::timestamp AT TIME ZONE f._timezone)
                         ) >= {cap} THEN 'daily cap'
               END AS excluded
          FROM ({facts_sql(scoped=scope is not None)}) f
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
    async with over_everyone(conn):
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
    conn: Conn,
    version: CampaignVersion,
    segment: SegmentSpec,
    now: datetime,
    daily_cap: int,
    scope: PlanScope | None = None,
) -> int:
    """One planner pass of a live campaign: an SMS outbox row and a ``campaign_sends`` row
    for each patient it picks (of ``scope``, when given; else of everyone) and nothing
    excludes, once per occurrence. Returns how many."""
    sql, params, name = _selection(version.name, version, segment, now, daily_cap, scope)
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
    async with over_everyone(conn):
        count = await conn.fetchval(statement, *params)
    return int(count or 0)
