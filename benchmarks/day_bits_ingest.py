"""What patient_day_bits (migration 0036) costs the ingest: ``touch_days`` per batch, with the
bitmap's triggers and without.

    uv run python benchmarks/day_bits_ingest.py            # 10,000 patients, 400 batches
    uv run python benchmarks/day_bits_ingest.py --quick    # 2,000 patients, 100 batches

On a migrated database of its own (LocalServices' PostgreSQL, in a temporary directory),
``--patients`` patients in five time zones each send ``--per-day`` readings a day at their own
times; the readings arrive in time order in batches of ``--batch`` (250), each counted into its
patients' local days by ``rpm.storage.engagement.touch_days`` in a transaction of its own, as
the ingest unit of work does (the first reading of a patient's local day inserts a row of
patient_days, the others update it). Batches alternate between the bitmap's triggers enabled
and disabled (``ALTER TABLE ... DISABLE TRIGGER``; the change log's triggers stay), so both
see the same machine; the figures are medians per batch, and the difference per reading.
The last line is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from _common import machine_busy_seconds, run_with_services

from rpm.storage.engagement import touch_days
from rpm.storage.migrate import migrate
from simulators.localservices import LocalServices

START = datetime(2026, 6, 1, tzinfo=UTC)
ZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Europe/Madrid",
    "Asia/Tokyo",
)
TRIGGERS = ("patient_days_bits_added", "patient_days_bits_removed")


def readings(patients: int, per_day: int, batches: int, size: int) -> list[tuple[str, datetime]]:
    """Readings in time order, ``batches * size`` of them: each patient ``per_day`` a day at
    fixed times of their own (seeded)."""
    rng = random.Random(7)
    offsets = [sorted(rng.uniform(0, 86_400) for _ in range(per_day)) for _ in range(patients)]
    out: list[tuple[str, datetime]] = []
    day = 0
    while len(out) < batches * size:
        base = START + timedelta(days=day)
        today = [
            (base + timedelta(seconds=s), f"p{k:07d}") for k in range(patients) for s in offsets[k]
        ]
        out += [(p, at) for at, p in sorted(today)]
        day += 1
    return out[: batches * size]


async def run(dsn: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.execute(
            """INSERT INTO patients (id, display_name, timezone)
               SELECT 'p' || lpad(i::text, 7, '0'), 'bench', ($2::text[])[1 + i % 5]
                 FROM generate_series(0, $1 - 1) i""",
            args.patients,
            list(ZONES),
        )
        await conn.execute("VACUUM ANALYZE patients")
        stream = readings(args.patients, args.per_day, args.batches, args.batch)
        times: dict[bool, list[float]] = {True: [], False: []}
        inserted: dict[bool, int] = {True: 0, False: 0}
        busy0 = machine_busy_seconds()
        for k in range(args.batches):
            on = k % 2 == 0
            verb = "ENABLE" if on else "DISABLE"
            for t in TRIGGERS:
                await conn.execute(f"ALTER TABLE patient_days {verb} TRIGGER {t}")
            batch = stream[k * args.batch : (k + 1) * args.batch]
            before = await conn.fetchval("SELECT count(*) FROM patient_days")
            t0 = time.perf_counter()
            async with conn.transaction():
                await touch_days(
                    conn,
                    [p for p, _ in batch],
                    [at for _, at in batch],
                    ["blood_pressure"] * len(batch),
                )
            times[on].append(time.perf_counter() - t0)
            inserted[on] += await conn.fetchval("SELECT count(*) FROM patient_days") - before
        busy = machine_busy_seconds() - busy0
        # The bitmaps kept on every other batch are wrong; what matters here is the cost.
    finally:
        await conn.close()
    with_ms = 1000 * statistics.median(times[True])
    without_ms = 1000 * statistics.median(times[False])
    per_reading_us = 1000 * (with_ms - without_ms) / args.batch
    load = [round(x, 2) for x in os.getloadavg()]
    half = args.batches // 2
    table = "\n".join(
        [
            f"touch_days, batches of {args.batch} readings, {args.patients:,} patients, "
            f"median of {half} batches each (interleaved)",
            f"  with the bitmap's triggers     {with_ms:6.2f} ms a batch "
            f"({inserted[True] / half:.0f} new patient-days a batch)",
            f"  without                        {without_ms:6.2f} ms a batch",
            f"  difference                     {per_reading_us:6.2f} us a reading",
            f"  machine busy {busy:.1f} s of CPU; load average {' '.join(map(str, load))}",
        ]
    )
    result = {
        "patients": args.patients,
        "batch": args.batch,
        "batches": args.batches,
        "with_ms": round(with_ms, 3),
        "without_ms": round(without_ms, 3),
        "per_reading_us": round(per_reading_us, 2),
        "new_days_per_batch": round(inserted[True] / half, 1),
        "loadavg": load,
    }
    return table, result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--patients", type=int, default=None, help="patients (10,000)")
    p.add_argument("--batches", type=int, default=None, help="batches (400)")
    p.add_argument("--batch", type=int, default=250, help="readings a batch (250)")
    p.add_argument("--per-day", type=int, default=3, help="readings a patient a day (3)")
    p.add_argument("--quick", action="store_true", help="2,000 patients, 100 batches")
    args = p.parse_args(argv)
    args.patients = args.patients or (2_000 if args.quick else 10_000)
    args.batches = args.batches or (100 if args.quick else 400)

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        endpoints = services.start()
        return asyncio.run(run(endpoints.database_url, args))

    return run_with_services("rpm-bench-day-bits-", body)


if __name__ == "__main__":
    raise SystemExit(main())
