# ruff: noqa: S608 - statements are built from fixed fragments; every value is a bind parameter.
"""SQL for incremental campaign planning (migration 0020): each campaign's last pass
(``campaign_planner_state``), the change log the triggers write (``fact_changes``), the time
zones' wall clocks, and the patients a pass must look at besides whole zones
(rpm.engagement.planning decides which).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rpm.engagement.planning import Crossings, PlanKey, PlannerState, phase_ranges
from rpm.storage.pool import Conn


async def watermark(conn: Conn) -> int:
    """The oldest transaction still running: every change of an older one is visible now,
    a change of this one or a newer one may not be yet."""
    return int(await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))


async def state(conn: Conn, campaign: str) -> PlannerState | None:
    row = await conn.fetchrow(
        """SELECT version, segment, segment_version, daily_cap, planned_to,
                  watermark::text AS watermark, full_at
             FROM campaign_planner_state WHERE campaign = $1""",
        campaign,
    )
    if row is None:
        return None
    key = PlanKey(row["version"], row["segment"], row["segment_version"], row["daily_cap"])
    return PlannerState(key, row["planned_to"], int(row["watermark"]), row["full_at"])


async def save_state(conn: Conn, campaign: str, s: PlannerState) -> None:
    await conn.execute(
        """INSERT INTO campaign_planner_state AS c (campaign, version, segment, segment_version,
                                                    daily_cap, planned_to, watermark, full_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7::text::xid8, $8)
           ON CONFLICT (campaign) DO UPDATE
              SET version = excluded.version, segment = excluded.segment,
                  segment_version = excluded.segment_version, daily_cap = excluded.daily_cap,
                  planned_to = excluded.planned_to, watermark = excluded.watermark,
                  full_at = excluded.full_at""",
        campaign,
        s.key.version,
        s.key.segment,
        s.key.segment_version,
        s.key.daily_cap,
        s.planned_to,
        str(s.watermark),
        s.full_at,
    )


async def zone_clocks(
    conn: Conn, prev: datetime, now: datetime
) -> list[tuple[str, datetime, datetime]]:
    """Every patient's time zone with its wall-clock time at ``prev`` and at ``now``, as the
    facts query computes them (PostgreSQL's time zone data). The zones are read by skipping
    through ``patients_timezone``, a probe per zone."""
    rows = await conn.fetch(
        """WITH RECURSIVE z AS (
               (SELECT timezone FROM patients ORDER BY timezone LIMIT 1)
               UNION ALL
               SELECT (SELECT p.timezone FROM patients p WHERE p.timezone > z.timezone
                        ORDER BY p.timezone LIMIT 1)
                 FROM z WHERE z.timezone IS NOT NULL)
           SELECT timezone, $1::timestamptz AT TIME ZONE timezone AS prev,
                  $2::timestamptz AT TIME ZONE timezone AS now
             FROM z WHERE timezone IS NOT NULL""",
        prev,
        now,
    )
    return [(r["timezone"], r["prev"], r["now"]) for r in rows]


async def changed_patients(
    conn: Conn,
    campaign: str,
    since_watermark: int,
    prev: datetime,
    now: datetime,
    crossings: Crossings,
) -> list[str]:
    """Patients whose data changed in a transaction the last pass may not have seen, or for
    whom an instant of ``crossings`` passed in (prev, now], by id. Their zones are not looked
    up here: the planner's statement keeps those of the zones it looks at (each a probe of
    the patient it makes anyway)."""
    params: list[Any] = [str(since_watermark)]

    def bind(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    sources = ["SELECT unnest(patient_ids) FROM fact_changes WHERE xid >= $1::text::xid8"]
    if crossings.enrolment_week:
        ranges = phase_ranges(prev, now)
        if ranges is None:
            sources.append("SELECT id FROM patients")
        for lo, hi in ranges or ():
            sources.append(
                f"SELECT id FROM patients WHERE rpm_week_phase_us(created_at) > {bind(lo)}::bigint "
                f"AND rpm_week_phase_us(created_at) <= {bind(hi)}::bigint"
            )
    if crossings.news2_window:  # as the fact: opened_at > now - 7 days
        sources.append(
            "SELECT patient_id FROM alerts WHERE rule_id LIKE 'news2.%' "
            f"AND opened_at > {bind(prev)}::timestamptz - interval '7 days' "
            f"AND opened_at <= {bind(now)}::timestamptz - interval '7 days'"
        )
    if crossings.resolution:  # as the trigger: resolved_at <= now
        sources.append(
            f"SELECT patient_id FROM alerts WHERE resolved_at > {bind(prev)}::timestamptz "
            f"AND resolved_at <= {bind(now)}::timestamptz"
        )
    if crossings.cooldown_days:  # as the exclusion: planned_at > now - cooldown days
        c, days = bind(campaign), bind(crossings.cooldown_days)
        sources.append(
            f"SELECT patient_id FROM campaign_sends WHERE campaign = {c}::text "
            f"AND planned_at > {bind(prev)}::timestamptz - {days}::int * interval '1 day' "
            f"AND planned_at <= {bind(now)}::timestamptz - {days}::int * interval '1 day'"
        )
    rows = await conn.fetch(
        f"SELECT DISTINCT id FROM ({' UNION ALL '.join(sources)}) s (id) ORDER BY id", *params
    )
    return [r["id"] for r in rows]


async def prune(conn: Conn, campaigns: Sequence[str], since: datetime) -> int:
    """Forget the changes every listed campaign planned since ``since`` has seen (all of
    them when none has): a campaign not planned since then is evaluated in full next."""
    status = await conn.execute(
        """DELETE FROM fact_changes
            WHERE xid < coalesce((SELECT min(watermark) FROM campaign_planner_state
                                   WHERE campaign = ANY($1::text[]) AND planned_to >= $2),
                                 pg_snapshot_xmin(pg_current_snapshot()))""",
        list(campaigns),
        since,
    )
    return int(status.split()[-1])
