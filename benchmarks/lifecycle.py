"""Lifecycle benchmark on plain PostgreSQL: what partitioning (migration 0032) and the rollup
dirty log (0033) cost the ingest insert, what the scheduler's rollup refresh costs per reading,
and a year's daily trend read from the rollups against the same aggregate over raw rows.

    .venv/bin/python benchmarks/lifecycle.py           # 100,000 readings
    .venv/bin/python benchmarks/lifecycle.py --quick   # 20,000 readings

Loopback plain PostgreSQL (LocalServices, timescaledb=False, pg_partman when installed) in a
temporary directory, removed at the end. Two databases: one migrated to 0031 (readings
unpartitioned, as before) and one fully migrated (partitioned, with the dirty-log trigger).

1. Insert: batches of 2,000 new blood-pressure readings through ``readings.insert_new``,
   alternating batch by batch between: the 0031 schema; the partitioned table with the
   trigger; the partitioned table with the trigger disabled. Readings are spread over a year
   (every partition gets rows). Figure: microseconds per reading, median of the batches.
2. Refresh: one scheduler pass (``LifecycleScheduler.tick``) rolling up every dirty key the
   inserts left. Figure: microseconds per reading inserted, wall time of the pass.
3. Trend: one patient's daily series over 365 days, ``rollups.series`` against the raw
   aggregate query of the same buckets, ``--reads`` times each. Figure: median milliseconds.

The last line of output is one JSON object; the table before it explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

import asyncpg  # noqa: E402
from _common import BenchError, render_table  # noqa: E402

from rpm.domain import AcceptedReading, Metric, Reading  # noqa: E402
from rpm.storage import readings as reading_store  # noqa: E402
from rpm.storage import rollups  # noqa: E402
from rpm.storage.migrate import available, migrate  # noqa: E402
from rpm.storage.patient_readings import of_patient  # noqa: E402
from rpm.storage.pool import create_pool  # noqa: E402
from rpm.workers.lifecycle import LifecycleScheduler  # noqa: E402
from simulators.localservices import LocalServices  # noqa: E402

BATCH = 2000
START = datetime(2025, 1, 1, tzinfo=UTC)
_RAW_DAILY = f"""SELECT date_bin('1 day', measured_at, '2000-01-03 00:00:00+00') AS day,
                       count(*), min(v1), max(v1), avg(v1)  -- systolic: slot 1
                  FROM readings
                 WHERE {of_patient("$1::text")} AND metric = 'blood_pressure'
                   AND measured_at >= $2 AND measured_at < $3
                 GROUP BY 1 ORDER BY 1"""


_PATIENTS = """WITH p AS (
    SELECT 'pat-' || lpad(i::text, 4, '0') AS id, 'cuff-' || lpad(i::text, 4, '0') AS device
      FROM generate_series(0, $1::int - 1) i),
  made AS (INSERT INTO patients (id, display_name) SELECT id, 'bench' FROM p),
  cuffs AS (INSERT INTO devices (id, kind) SELECT device, 'bp_cuff' FROM p)
INSERT INTO device_bindings (device_id, patient_id, during)
SELECT device, id, tstzrange('2000-01-01', NULL) FROM p"""

# The insert of the 0031 schema (uid and jsonb components stored; migrations 0039, 0041).
_INSERT_0031 = """INSERT INTO readings (measured_at, device_id, metric, patient_id, uid,
                                          components, received_at)
   SELECT m, d, k, p, rpm_reading_uid(d, k, m), c::jsonb, r
     FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::timestamptz[]) AS t(m, d, k, p, c, r)
   ON CONFLICT DO NOTHING
   RETURNING device_id"""


def _columns_0031(rows: list[AcceptedReading]) -> list[list[Any]]:
    return [
        [a.reading.measured_at for a in rows],
        [a.reading.device_id for a in rows],
        [a.reading.metric.value for a in rows],
        [a.patient_id for a in rows],
        [json.dumps(dict(a.reading.values)) for a in rows],
        [a.reading.received_at for a in rows],
    ]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def batch(devices: int, b: int, n: int) -> list[AcceptedReading]:
    """Batch ``b``: each device's readings a few hours apart, batches interleaved in time."""
    out = []
    for i in range(n):
        d = i % devices
        at = START + timedelta(minutes=7 * b + 487 * (i // devices))
        values = {"systolic": 120.0 + (i + b) % 40, "diastolic": 80.0}
        out.append(
            AcceptedReading(
                Reading(f"cuff-{d:04d}", Metric.BLOOD_PRESSURE, values, at, at), f"pat-{d:04d}"
            )
        )
    return out


async def _database(admin_dsn: str, name: str, last: int | None) -> str:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(dsn)
    try:
        if last is None:
            await migrate(conn)
        else:
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " timescale boolean NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for m in available():
                if m.version <= last:
                    await conn.execute(m.sql)
    finally:
        await conn.close()
    return dsn


async def run_async(args: argparse.Namespace, admin_dsn: str) -> tuple[str, dict[str, Any]]:
    before_dsn = await _database(admin_dsn, "bench_0031", 31)
    after_dsn = await _database(admin_dsn, "bench_lifecycle", None)
    before = await create_pool(before_dsn, size=2)
    after = await create_pool(after_dsn, size=2)
    times: dict[str, list[float]] = {"0031": [], "partitioned": [], "no_trigger": []}
    try:
        async with after.acquire() as conn:  # patients and their bound cuffs (migration 0041)
            await conn.execute(_PATIENTS, args.devices)
        log(f"insert: {args.readings:,} readings in batches of {BATCH:,}")
        for b in range(args.readings // BATCH):
            rows = batch(args.devices, b, BATCH)
            variant = ("0031", "partitioned", "no_trigger")[b % 3]
            pool = before if variant == "0031" else after
            async with pool.acquire() as conn, conn.transaction():
                if variant == "no_trigger":
                    await conn.execute("ALTER TABLE readings DISABLE TRIGGER readings_rollup_dirty")
                t = time.perf_counter()
                if variant == "0031":
                    new = await conn.fetch(_INSERT_0031, *_columns_0031(rows))
                else:
                    new = await reading_store.insert_new(conn, rows, retracted=set())
                times[variant].append((time.perf_counter() - t) / BATCH)
                if variant == "no_trigger":
                    await conn.execute("ALTER TABLE readings ENABLE TRIGGER readings_rollup_dirty")
            if len(new) != BATCH:
                raise BenchError(f"batch {b}: {len(new)} of {BATCH} stored")
        async with after.acquire() as conn:
            stored = int(await conn.fetchval("SELECT count(*) FROM readings"))
            dirty = int(await conn.fetchval("SELECT count(*) FROM reading_rollup_dirty"))
            # Readings inserted without the trigger: mark their hours as the trigger would.
            await conn.execute(
                """INSERT INTO reading_rollup_dirty
                   SELECT DISTINCT patient_id, metric,
                          date_bin('1 hour', measured_at, '2000-01-03 00:00:00+00')
                     FROM readings"""
            )
        log(f"refresh: {stored:,} readings, {dirty:,} dirty keys from the trigger")
        t = time.perf_counter()
        result = await LifecycleScheduler(after).tick(START + timedelta(days=400))
        refresh_s = time.perf_counter() - t

        log(f"trend: {args.reads} reads of a year's daily series, each way")
        end = START + timedelta(days=365)
        from_rollups: list[float] = []
        from_raw: list[float] = []
        async with after.acquire() as conn:
            for i in range(args.reads):
                patient = f"pat-{i % args.devices:04d}"
                t = time.perf_counter()
                series = await rollups.series(
                    conn, patient, Metric.BLOOD_PRESSURE, START, end, "day"
                )
                from_rollups.append(time.perf_counter() - t)
                t = time.perf_counter()
                raw = await conn.fetch(_RAW_DAILY, patient, START, end)
                from_raw.append(time.perf_counter() - t)
                if len(series) != len(raw):
                    raise BenchError(f"{patient}: {len(series)} rollup days, {len(raw)} raw")
    finally:
        await before.close()
        await after.close()

    us = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    per_reading_refresh = refresh_s / stored * 1e6
    ms_rollup = statistics.median(from_rollups) * 1e3
    ms_raw = statistics.median(from_raw) * 1e3
    table = render_table(
        "Lifecycle on plain PostgreSQL (benchmarks/lifecycle.py)",
        [
            ("insert, 0031 schema (unpartitioned)", f"{us['0031']:.2f} µs/reading", "median"),
            ("insert, partitioned + dirty log", f"{us['partitioned']:.2f} µs/reading", "median"),
            ("insert, partitioned, no trigger", f"{us['no_trigger']:.2f} µs/reading", "median"),
            (
                "rollup refresh pass",
                f"{per_reading_refresh:.2f} µs/reading",
                f"{result.rollup_rows:,} log rows",
            ),
            ("year of daily means, rollups", f"{ms_rollup:.2f} ms", "median"),
            ("year of daily means, raw rows", f"{ms_raw:.2f} ms", "median"),
        ],
    )
    return table, {
        "readings": stored,
        "insert_us_0031": round(us["0031"], 2),
        "insert_us_partitioned": round(us["partitioned"], 2),
        "insert_us_partitioned_no_trigger": round(us["no_trigger"], 2),
        "refresh_us_per_reading": round(per_reading_refresh, 2),
        "trend_ms_rollups": round(ms_rollup, 2),
        "trend_ms_raw": round(ms_raw, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--readings", type=int, default=None, help="inserted in all (100,000)")
    p.add_argument("--quick", action="store_true", help="20,000 readings")
    p.add_argument("--devices", type=int, default=10, help="one patient each")
    p.add_argument("--reads", type=int, default=50, help="trend reads each way")
    args = p.parse_args(argv)
    if args.readings is None:
        args.readings = 20_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory(prefix="rpm-lifecycle-") as work:
        services = LocalServices(Path(work) / "services", timescaledb=False, log=lambda _: None)
        try:
            endpoints = services.start()
            table, result = asyncio.run(run_async(args, endpoints.database_url))
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        finally:
            services.stop()
    print(table)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
