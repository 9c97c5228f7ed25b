"""SQL for the readings table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from rpm.domain import AcceptedReading, Metric, Reading
from rpm.storage.corrections import CORRECTED_AT
from rpm.storage.patient_readings import newest
from rpm.storage.pool import Conn
from rpm.storage.reading_keys import by_uid_filter, key_args
from rpm.storage.reading_values import row_values, slots_of, values_of

ReadingKey = tuple[str, str, datetime]


async def insert_new(
    conn: Conn,
    accepted: Sequence[AcceptedReading],
    interpretations: Sequence[str | None] | None = None,
    *,
    retracted: set[ReadingKey] | None = None,
) -> list[AcceptedReading]:
    """Insert readings, skipping those already stored; return only the new ones.

    One statement per batch: the rows travel as parallel arrays and the
    primary key (device, metric, measured time) drops duplicates.
    ``interpretations`` (N/H/HH/L/LL per reading, from the threshold rules) are stored
    with them for the record. ``retracted`` receives the keys of new readings that a
    retraction stored before them already marked entered-in-error (migration 0029).
    """
    if not accepted:
        return []
    rows = await conn.fetch(
        """WITH ins AS (
               INSERT INTO readings
                      (measured_at, device_id, metric, patient_id, v1, v2, v3, received_at,
                       original, interpretation)
               SELECT m, d, k, p, v1, v2, v3, r, o::jsonb, i
                 FROM unnest($1::timestamptz[], $2::text[], $3::rpm_metric[], $4::text[],
                             $5::float8[], $6::float8[], $7::float8[], $8::timestamptz[],
                             $9::text[], $10::text[])
                      AS t(m, d, k, p, v1, v2, v3, r, o, i)
               ON CONFLICT DO NOTHING
               RETURNING device_id, metric, measured_at)
           SELECT ins.device_id, ins.metric::text AS metric, ins.measured_at,
                  ($11 AND x.device_id IS NOT NULL) AS retracted
             FROM ins
             LEFT JOIN reading_corrections x
                    ON $11 AND x.device_id = ins.device_id AND x.metric = ins.metric::text
                   AND x.measured_at = ins.measured_at""",
        [a.reading.measured_at for a in accepted],
        [a.reading.device_id for a in accepted],
        [a.reading.metric.value for a in accepted],
        [a.patient_id for a in accepted],
        *_slot_arrays(accepted),
        [a.reading.received_at for a in accepted],
        [_json(a.reading.original) for a in accepted],
        list(interpretations) if interpretations is not None else [None] * len(accepted),
        retracted is not None,
    )
    new: set[ReadingKey] = {(r["device_id"], r["metric"], r["measured_at"]) for r in rows}
    if retracted is not None:
        retracted.update(
            (r["device_id"], r["metric"], r["measured_at"]) for r in rows if r["retracted"]
        )
    out: list[AcceptedReading] = []
    for a in accepted:
        key = key_of(a)
        if key in new:
            new.discard(key)  # a duplicate inside the batch is new only once
            out.append(a)
    return out


def _slot_arrays(
    accepted: Sequence[AcceptedReading],
) -> tuple[list[float], list[float | None], list[float | None]]:
    v1: list[float] = []
    v2: list[float | None] = []
    v3: list[float | None] = []
    for a in accepted:
        s1, s2, s3 = slots_of(a.reading.metric, a.reading.values)
        v1.append(s1)
        v2.append(s2)
        v3.append(s3)
    return v1, v2, v3


def key_of(a: AcceptedReading) -> ReadingKey:
    """The reading's primary key (device, metric, measured time)."""
    return (a.reading.device_id, a.reading.metric.value, a.reading.measured_at)


@dataclass(frozen=True, slots=True)
class StoredReading:
    accepted: AcceptedReading
    stored_at: datetime
    entered_in_error_at: datetime | None = None  # marked entered-in-error (migration 0029)


def _from_row(r: asyncpg.Record) -> StoredReading:
    reading = Reading(
        device_id=r["device_id"],
        metric=Metric(r["metric"]),
        values=row_values(r),
        measured_at=r["measured_at"],
        received_at=r["received_at"],
    )
    return StoredReading(
        AcceptedReading(reading, r["patient_id"]), r["stored_at"], r.get("corrected_at")
    )


async def for_patient(
    conn: Conn,
    patient_id: str,
    *,
    metrics: Sequence[str] | None = None,
    limit: int = 100,
) -> list[StoredReading]:
    """A patient's most recent readings, newest first (those entered in error included, with
    ``entered_in_error_at``)."""
    columns = f"""measured_at, device_id, metric, patient_id, v1, v2, v3, received_at, stored_at,
                  {CORRECTED_AT} AS corrected_at"""
    # Per metric asked for (every metric when none is), the newest; then the newest of those.
    rows = await conn.fetch(
        f"""SELECT w.*
              FROM unnest(coalesce($2::rpm_metric[], enum_range(NULL::rpm_metric))) AS m(metric)
             CROSS JOIN LATERAL ({newest(columns, "$1::text", "m.metric", "$3")}) AS w
             ORDER BY w.measured_at DESC
             LIMIT $3""",  # noqa: S608 - fixed fragments
        patient_id,
        list(metrics) if metrics else None,
        limit,
    )
    return [_from_row(r) for r in rows]


@dataclass(frozen=True, slots=True)
class ChartSummary:
    """What a chart of a metric's newest readings holds: how many (those entered in error
    left out), the first and last measured times, and the newest values."""

    count: int
    first_at: datetime | None
    last_at: datetime | None
    latest: Mapping[str, float] | None


NO_READINGS = ChartSummary(0, None, None, None)

# The metrics a patient has readings of: patient_metric_last holds each metric with a reading
# not entered in error (kept by the unit of work, rule_state.touch_last/recompute_last), and
# reading_corrections the patient's readings marked in error (a metric may have only those).
_PATIENT_METRICS = """SELECT metric FROM patient_metric_last WHERE patient_id = $1
                      UNION SELECT metric FROM reading_corrections WHERE patient_id = $1"""


_NEWEST_COLUMNS = f"""measured_at, device_id, v1, v2, v3, received_at, stored_at,
                      {CORRECTED_AT} AS corrected_at"""
_CHART_COLUMNS = f"measured_at, v1, v2, v3, {CORRECTED_AT} AS corrected_at"
_METRIC = "m.metric::rpm_metric"  # a metric of _PATIENT_METRICS (text)


async def newest_by_metric(
    conn: Conn, patient_id: str, limit: int
) -> dict[Metric, list[StoredReading]]:
    """Each metric's ``limit`` newest readings of a patient, newest first (those entered in
    error included): one index range per metric the patient has, never the whole history."""
    rows = await conn.fetch(
        f"""SELECT w.*, m.metric, $1::text AS patient_id
              FROM ({_PATIENT_METRICS}) AS m
              CROSS JOIN LATERAL ({newest(_NEWEST_COLUMNS, "$1::text", _METRIC, "$2")}) AS w
             ORDER BY m.metric, w.measured_at DESC""",  # noqa: S608 - fixed fragments
        patient_id,
        limit,
    )
    out: dict[Metric, list[StoredReading]] = {}
    for r in rows:
        stored = _from_row(r)
        out.setdefault(stored.accepted.reading.metric, []).append(stored)
    return out


async def chart_summaries(conn: Conn, patient_id: str, limit: int) -> dict[Metric, ChartSummary]:
    """Per metric the patient has, a summary of the chart of its ``limit`` newest readings
    (as ``for_patient(metrics=[m], limit=limit)`` less those entered in error), computed in
    the database: only the newest reading's values leave it."""
    rows = await conn.fetch(
        f"""SELECT m.metric, s.*
              FROM ({_PATIENT_METRICS}) AS m
              CROSS JOIN LATERAL (
                  SELECT count(*) AS count, min(w.measured_at) AS first_at,
                         max(w.measured_at) AS last_at,
                         (array_agg(w.v1 ORDER BY w.measured_at DESC))[1] AS l1,
                         (array_agg(w.v2 ORDER BY w.measured_at DESC))[1] AS l2,
                         (array_agg(w.v3 ORDER BY w.measured_at DESC))[1] AS l3
                    FROM ({newest(_CHART_COLUMNS, "$1::text", _METRIC, "$2")})
                         AS w
                   WHERE w.corrected_at IS NULL) AS s""",  # noqa: S608 - fixed fragments
        patient_id,
        limit,
    )
    return {
        Metric(r["metric"]): ChartSummary(
            r["count"],
            r["first_at"],
            r["last_at"],
            None if r["l1"] is None else values_of(r["metric"], r["l1"], r["l2"], r["l3"]),
        )
        for r in rows
    }


async def by_uid(conn: Conn, uid: str) -> StoredReading | None:
    key = key_args(uid)
    if key is None:
        return None
    row = await conn.fetchrow(
        f"""SELECT measured_at, device_id, metric, patient_id, v1, v2, v3, received_at, stored_at
              FROM readings WHERE {by_uid_filter("readings", 1)}""",  # noqa: S608
        *key,
    )
    return _from_row(row) if row else None


def _json(original: Mapping[str, object]) -> str | None:
    return orjson.dumps(dict(original)).decode() if original else None
