"""Reads of the reading rollups (readings_hourly, readings_daily; migration 0033): one query
shape on TimescaleDB (continuous aggregates) and plain PostgreSQL (tables kept by the
lifecycle scheduler).

The rollups count every stored reading. Buckets that hold a reading entered in error
(reading_corrections) or that the scheduler has not rolled up yet (reading_rollup_dirty,
plain PostgreSQL) are recomputed here from their raw rows, leaving the corrected readings
out, so a series always equals the raw aggregate of the readings not entered in error
(tests/test_rollups.py). Only those buckets touch raw rows: an index range per bucket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from rpm.domain import METRICS, Metric
from rpm.storage.corrections import NOT_CORRECTED
from rpm.storage.patient_readings import of_patient
from rpm.storage.pool import Conn

Grain = Literal["hour", "day"]
_ORIGIN = "'2000-01-03 00:00:00+00'"  # time_bucket's default origin
_SLOTS = (1, 2, 3)


@dataclass(frozen=True, slots=True)
class Summary:
    """One component's readings in a bucket."""

    count: int
    min: float
    max: float
    mean: float


@dataclass(frozen=True, slots=True)
class Bucket:
    """A patient's readings of a metric in one hour or UTC day (``start``)."""

    start: datetime
    count: int  # readings, whatever their components
    components: Mapping[str, Summary]


_COLUMNS = ", ".join(f"c{i}_n, c{i}_min, c{i}_max, c{i}_sum" for i in _SLOTS)
_RAW_COLUMNS = ", ".join(
    f"count(v{i}) AS c{i}_n, min(v{i}) AS c{i}_min, max(v{i}) AS c{i}_max, sum(v{i}) AS c{i}_sum"
    for i in _SLOTS
)
_NO_COLUMNS = ", ".join("0, NULL::float8, NULL::float8, NULL::float8" for _ in _SLOTS)
_VALUES = ", ".join(f"v{i}" for i in _SLOTS)


def _query(table: str, width: str) -> str:
    # $1 patient, $2 metric, $3 start, $4 end (both on bucket boundaries). The buckets to
    # recompute come back with ``fix`` true and no figures. The rollups' metric is an
    # rpm_metric with TimescaleDB (the continuous aggregates group readings.metric), a text on
    # plain PostgreSQL: compared as text.
    return f"""
    WITH fix AS (
        SELECT date_bin('{width}', measured_at, {_ORIGIN}) AS bucket
          FROM reading_corrections
         WHERE patient_id = $1 AND metric = $2 AND measured_at >= $3 AND measured_at < $4
        UNION
        SELECT date_bin('{width}', hour, {_ORIGIN})
          FROM reading_rollup_dirty
         WHERE patient_id = $1 AND metric = $2 AND hour >= $3 AND hour < $4)
    SELECT false AS fix, bucket, n, {_COLUMNS}
      FROM {table}
     WHERE patient_id = $1 AND metric::text = $2 AND bucket >= $3 AND bucket < $4
       AND bucket NOT IN (SELECT bucket FROM fix)
    UNION ALL
    SELECT true, bucket, 0, {_NO_COLUMNS} FROM fix
     ORDER BY 2"""  # noqa: S608 - constant fragments


def _raw(width: str) -> str:
    # $1 patient, $2 metric, $3 start of the first bucket, $4 end of the last, $5 the buckets.
    # Explicit bounds: the planner prunes partitions and chunks to those few buckets.
    return f"""
    SELECT date_bin('{width}', measured_at, {_ORIGIN}) AS bucket, count(*) AS n, {_RAW_COLUMNS}
      FROM (SELECT measured_at, {_VALUES}
              FROM readings
             WHERE {of_patient("$1::text")} AND metric = $2::rpm_metric
               AND measured_at >= $3 AND measured_at < $4
               AND date_bin('{width}', measured_at, {_ORIGIN}) = ANY($5::timestamptz[])
               AND {NOT_CORRECTED}) r
     GROUP BY 1"""  # noqa: S608 - constant fragments


_QUERIES: Mapping[Grain, str] = {
    "hour": _query("readings_hourly", "1 hour"),
    "day": _query("readings_daily", "1 day"),
}
_RAW: Mapping[Grain, str] = {"hour": _raw("1 hour"), "day": _raw("1 day")}
_WIDTHS: Mapping[Grain, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
_ORIGIN_AT = datetime(2000, 1, 3, tzinfo=UTC)
_TICK = timedelta(microseconds=1)


def _floor(t: datetime, width: timedelta) -> datetime:
    """The start of the bucket holding ``t`` (date_bin with the origin above)."""
    return _ORIGIN_AT + ((t - _ORIGIN_AT) // width) * width


async def series(
    conn: Conn, patient_id: str, metric: Metric, start: datetime, end: datetime, grain: Grain
) -> list[Bucket]:
    """The buckets of ``grain`` overlapping [start, end) that hold readings not entered in
    error, oldest first (the first and last bucket whole, not cut at start and end)."""
    width = _WIDTHS[grain]
    lo = _floor(start, width)
    hi = _floor(end - _TICK, width) + width
    if hi <= lo:
        return []
    rows = await conn.fetch(_QUERIES[grain], patient_id, metric.value, lo, hi)
    fix = [r["bucket"] for r in rows if r["fix"]]
    if fix:
        rows = [r for r in rows if not r["fix"]]
        rows += await conn.fetch(
            _RAW[grain], patient_id, metric.value, fix[0], fix[-1] + width, fix
        )
        rows.sort(key=lambda r: r["bucket"])
    names = [c.name for c in METRICS[metric].components]
    out = []
    for r in rows:
        parts = {}
        for slot, name in zip(_SLOTS, names, strict=False):
            n = r[f"c{slot}_n"]
            if n:
                parts[name] = Summary(
                    n, r[f"c{slot}_min"], r[f"c{slot}_max"], r[f"c{slot}_sum"] / n
                )
        if r["n"]:
            out.append(Bucket(r["bucket"], r["n"], parts))
    return out
