"""SQL behind the rule engine's state: history to rebuild it, and what the timer reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from rpm.domain import AcceptedReading, Metric

from .patient_readings import of_patient, of_patients
from .pool import Conn
from .reading_values import row_values

History = list[tuple[str, Metric, datetime, Mapping[str, float]]]


async def history(
    conn: Conn,
    patient_ids: Iterable[str],
    since: datetime,
    capacity: Mapping[Metric, int],
) -> History:
    """Each patient's newest readings per metric since ``since`` (at most the buffer capacity)."""
    ids = list(set(patient_ids))
    if not ids:
        return []
    metrics = list(capacity)
    rows = await conn.fetch(
        f"""SELECT patient_id, metric, measured_at, v1, v2, v3 FROM (
               SELECT r.patient_id, r.metric, r.measured_at, r.v1, r.v2, r.v3,
                      row_number() OVER (PARTITION BY r.patient_id, r.metric
                                         ORDER BY r.measured_at DESC) AS k,
                      c.cap
                 FROM readings r
                 JOIN unnest($2::rpm_metric[], $3::int[]) AS c(metric, cap) ON c.metric = r.metric
                WHERE {of_patients("$1::text[]", "r")} AND r.measured_at >= $4
                  AND NOT EXISTS (SELECT 1 FROM reading_corrections x  -- entered-in-error
                                   WHERE x.device_id = r.device_id AND x.metric = r.metric::text
                                     AND x.measured_at = r.measured_at)
           ) newest
          WHERE k <= cap""",  # noqa: S608 - fixed fragments
        ids,
        [m.value for m in metrics],
        [capacity[m] for m in metrics],
        since,
    )
    return [
        (
            r["patient_id"],
            Metric(r["metric"]),
            r["measured_at"],
            row_values(r),
        )
        for r in rows
    ]


async def armed(conn: Conn, patient_ids: Iterable[str]) -> list[tuple[str, str]]:
    """(patient, rule) of unresolved alerts whose condition has not been seen to clear: the
    leading rule and every other rule that contributed to the episode."""
    rows = await conn.fetch(
        """SELECT DISTINCT a.patient_id, r.rule_id FROM alerts a,
                  LATERAL (SELECT a.rule_id UNION
                           SELECT c->>'rule_id' FROM jsonb_array_elements(a.contributions) c)
                  AS r(rule_id)
            WHERE a.patient_id = ANY($1::text[]) AND a.state <> 'resolved'
              AND a.condition_cleared_at IS NULL""",
        list(set(patient_ids)),
    )
    return [(r["patient_id"], r["rule_id"]) for r in rows]


def newest_by_metric(readings: Sequence[AcceptedReading]) -> dict[tuple[str, str], datetime]:
    """The newest measured time per (patient, metric) among ``readings``."""
    newest: dict[tuple[str, str], datetime] = {}
    for a in readings:
        key = (a.patient_id, a.reading.metric.value)
        t = a.reading.measured_at
        if key not in newest or t > newest[key]:
            newest[key] = t
    return newest


async def recompute_last(conn: Conn, keys: Iterable[tuple[str, str]]) -> None:
    """The newest measured time per (patient, metric) again from the readings not marked
    entered-in-error (after a correction); none left removes the row."""
    pairs = sorted(set(keys))
    if not pairs:
        return
    await conn.execute(
        f"""WITH k AS (
               SELECT k.p, k.m,
                      (SELECT max(r.measured_at) FROM readings r
                        WHERE {of_patient("k.p", "r")} AND r.metric = k.m::rpm_metric
                          AND NOT EXISTS (SELECT 1 FROM reading_corrections x
                                           WHERE x.device_id = r.device_id
                                             AND x.metric = r.metric::text
                                             AND x.measured_at = r.measured_at)) AS newest
                 FROM unnest($1::text[], $2::text[]) AS k(p, m)),
           gone AS (
               DELETE FROM patient_metric_last l USING k
                WHERE l.patient_id = k.p AND l.metric = k.m AND k.newest IS NULL)
           UPDATE patient_metric_last l SET measured_at = k.newest
             FROM k WHERE l.patient_id = k.p AND l.metric = k.m AND k.newest IS NOT NULL""",  # noqa: S608
        [p for p, _ in pairs],
        [m for _, m in pairs],
    )


async def touch_last(conn: Conn, newest: Mapping[tuple[str, str], datetime]) -> None:
    """Keep the newest measured time per patient and metric (for the missing-data timer)."""
    if not newest:
        return
    keys = sorted(newest)  # a fixed lock order: concurrent batches cannot deadlock
    await conn.execute(
        """INSERT INTO patient_metric_last AS l (patient_id, metric, measured_at)
           SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
           ON CONFLICT (patient_id, metric) DO UPDATE SET measured_at = excluded.measured_at
            WHERE l.measured_at < excluded.measured_at""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [newest[k] for k in keys],
    )


# Which device kinds measure a metric: a silent scale says nothing about the BP cuff.
DEVICE_KINDS: Mapping[Metric, tuple[str, ...]] = {
    Metric.BLOOD_PRESSURE: ("bp_cuff",),
    Metric.WEIGHT: ("scale",),
    Metric.SPO2: ("pulse_oximeter",),
    Metric.GLUCOSE: ("glucometer",),
    Metric.BODY_TEMPERATURE: ("thermometer",),
    Metric.HEART_RATE: ("bp_cuff", "pulse_oximeter", "other"),
    Metric.RESPIRATORY_RATE: ("other",),
}


@dataclass(frozen=True, slots=True)
class Watched:
    """A patient with devices bound now, as the missing-data timer sees them."""

    patient_id: str
    programs: tuple[str, ...]
    overrides: Mapping[str, Mapping[str, float]]
    since: datetime  # earliest current binding: monitoring began
    heard: Mapping[str, datetime]  # device kind -> newest message of any kind
    last: Mapping[str, datetime]  # metric -> newest reading

    def device_heard(self, metric: Metric) -> datetime | None:
        times = [self.heard[k] for k in DEVICE_KINDS[metric] if self.heard.get(k)]
        if not times:  # no device of a matching kind: any of the patient's devices
            times = [t for t in self.heard.values() if t]
        return max(times, default=None)


async def watched(
    conn: Conn, after: str = "", limit: int | None = None
) -> tuple[list[Watched], str | None]:
    """Patients with a device bound now, with last readings and device heartbeats: those
    whose id sorts after ``after``, at most ``limit`` of them (None: all), in id order; and
    the id to go on after (None: no more).

    A slice at a time, so the missing-data timer never holds the unit of work for the whole
    population (100,000 patients: docs/operations.md, "Restart")."""
    ids = [
        r["patient_id"]
        for r in await conn.fetch(
            """SELECT DISTINCT patient_id FROM device_bindings
                WHERE during @> now() AND patient_id > $1
                ORDER BY patient_id LIMIT $2""",
            after,
            limit,
        )
    ]
    if not ids:
        return [], None
    rows = await conn.fetch(
        """WITH kinds AS (
               SELECT b.patient_id, d.kind, min(lower(b.during)) AS since,
                      max(d.last_seen_at) AS heard
                 FROM device_bindings b JOIN devices d ON d.id = b.device_id
                WHERE b.patient_id = ANY($1::text[])
                  AND b.during @> now() AND d.retired_at IS NULL
                GROUP BY b.patient_id, d.kind),
           bound AS (
               SELECT patient_id, min(since) AS since,
                      jsonb_object_agg(kind, heard) AS heard
                 FROM kinds GROUP BY patient_id)
           SELECT p.id, p.programs, p.rule_overrides, bound.since, bound.heard,
                  (SELECT coalesce(jsonb_object_agg(l.metric, l.measured_at), '{}')
                     FROM patient_metric_last l WHERE l.patient_id = p.id) AS last
             FROM bound JOIN patients p ON p.id = bound.patient_id
            ORDER BY p.id""",
        ids,
    )
    found = [
        Watched(
            r["id"],
            tuple(r["programs"]),
            r["rule_overrides"] or {},
            r["since"],
            {k: datetime.fromisoformat(v) for k, v in r["heard"].items() if v},
            {k: datetime.fromisoformat(v) for k, v in r["last"].items()},
        )
        for r in rows
    ]
    return found, ids[-1] if limit is not None and len(ids) >= limit else None
