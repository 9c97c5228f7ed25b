# ruff: noqa: S608 - statements are built from fixed fragments and definitions compiled by
# rpm.engagement.segments; every value in them is a bind parameter.
"""SQL for days with readings (``patient_days``, kept by the ingest unit of work) and the
interaction ledger with the engagement figures per segment (migration 0013). Segments are in
``rpm.storage.segments``, campaigns and their planner in ``rpm.storage.campaigns``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rpm.domain import Severity
from rpm.domain.severity import sql_rank
from rpm.engagement import segments as segment_spec
from rpm.storage.patient_readings import of_patient
from rpm.storage.pool import Conn
from rpm.storage.segments import FACTS_SQL, SegmentVersion, over_everyone, teams_param

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


async def recount_days(
    conn: Conn, patient_ids: Sequence[str], measured: Sequence[datetime]
) -> None:
    """Count again the local days of these readings from what is stored, leaving out readings
    marked entered-in-error (migration 0029); a day left with none is removed, so billing and
    adherence count only days with a valid reading."""
    if not patient_ids:
        return
    await conn.execute(
        f"""WITH k AS (
               SELECT DISTINCT r.patient_id, (r.at AT TIME ZONE p.timezone)::date AS day,
                      p.timezone
                 FROM unnest($1::text[], $2::timestamptz[]) AS r(patient_id, at)
                 JOIN patients p ON p.id = r.patient_id),
           counted AS (
               SELECT k.patient_id, k.day, count(x.metric) AS n,
                      coalesce(array_agg(DISTINCT x.metric::text ORDER BY x.metric::text)
                                   FILTER (WHERE x.metric IS NOT NULL), '{{}}') AS metrics
                 FROM k
                 LEFT JOIN readings x
                        ON {of_patient("k.patient_id", "x")}
                       AND x.measured_at >= (k.day::timestamp AT TIME ZONE k.timezone)
                       AND x.measured_at < ((k.day + 1)::timestamp AT TIME ZONE k.timezone)
                       AND NOT EXISTS (SELECT 1 FROM reading_corrections c
                                        WHERE c.device_id = x.device_id
                                          AND c.metric = x.metric::text
                                          AND c.measured_at = x.measured_at)
                GROUP BY 1, 2),
           gone AS (
               DELETE FROM patient_days d USING counted c
                WHERE d.patient_id = c.patient_id AND d.day = c.day AND c.n = 0)
           UPDATE patient_days d SET readings = c.n, metrics = c.metrics
             FROM counted c
            WHERE d.patient_id = c.patient_id AND d.day = c.day AND c.n > 0""",
        list(patient_ids),
        list(measured),
    )


async def rebuild_day_bits(conn: Conn) -> int:
    """Compute every patient's bitmap of days (patient_day_bits, migration 0036) again from
    patient_days: for a load that wrote patient_days with its triggers off (bulk set-up).
    How many patients have one."""
    await conn.execute("DELETE FROM patient_day_bits")
    status = await conn.execute(
        """INSERT INTO patient_day_bits (patient_id, last_day, first_day, bits)
           SELECT d.patient_id, x.last_day, x.first_day,
                  bit_or(rpm_day_bits_shift(1, x.last_day - d.day))
             FROM patient_days d
             JOIN (SELECT patient_id, max(day) AS last_day, min(day) AS first_day
                     FROM patient_days GROUP BY patient_id) x USING (patient_id)
            WHERE d.day > x.last_day - 62
            GROUP BY 1, 2, 3"""
    )
    return int(status.split()[-1])


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
    params: list[Any] = [now, teams_param(teams), days]
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
    async with over_everyone(conn):
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
