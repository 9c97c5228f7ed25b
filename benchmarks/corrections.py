"""Corrections benchmark: what the retraction check costs the ingest insert, and how fast
retractions go through the unit of work.

    .venv/bin/python benchmarks/corrections.py           # 100,000 readings, 2,000 retractions
    .venv/bin/python benchmarks/corrections.py --quick   # 20,000 readings, 500 retractions

Loopback PostgreSQL in a temporary directory (LocalServices; TimescaleDB when installed),
removed at the end.

1. Insert: batches of 2,000 new blood-pressure readings through ``readings.insert_new``, whose
   RETURNING asks, per new reading, whether a stored retraction already marks it (one probe of
   ``reading_corrections``' primary key), against the same INSERT without that question,
   alternating batch by batch on fresh readings. ``--corrections`` rows sit in
   ``reading_corrections`` (pending retractions of readings never sent) so the probes hit a
   table that is not empty. Figure: microseconds per reading, median of the batches.
2. Retractions: ``--retractions`` stored crisis readings (each opened an alert) retracted by
   FHIR Observations with status entered-in-error, ``--per-unit`` messages per unit of work,
   through ``IngestPipeline.process`` (decode, attribute, record, alerts withdrawn, days and
   newest times recounted, FHIR push item). Figure: retractions per second, wall time.

The last line of output is one JSON object; the table before it explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from _common import BenchError, render_table, run_with_services  # noqa: E402

from rpm.domain import AcceptedReading, Metric, RawMessage, Reading  # noqa: E402
from rpm.pipeline import IngestPipeline  # noqa: E402
from rpm.storage import readings as reading_store  # noqa: E402
from rpm.storage import registry  # noqa: E402
from rpm.storage.migrate import migrate  # noqa: E402
from rpm.storage.pool import create_pool  # noqa: E402
from rpm.validation import ClockPolicy  # noqa: E402
from simulators.localservices import LocalServices  # noqa: E402

BATCH = 2000
# The insert as it was before corrections: the comparison of phase 1.
_PLAIN_INSERT = """INSERT INTO readings
       (measured_at, device_id, metric, patient_id, v1, v2, received_at, original,
        interpretation)
   SELECT m, d, k, p, v1, v2, r, o::jsonb, i
     FROM unnest($1::timestamptz[], $2::text[], $3::rpm_metric[], $4::text[], $5::float8[],
                 $6::float8[], $7::timestamptz[], $8::text[], $9::text[])
          AS t(m, d, k, p, v1, v2, r, o, i)
   ON CONFLICT DO NOTHING
   RETURNING device_id, metric, measured_at"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def batch(devices: int, start: datetime, n: int) -> list[AcceptedReading]:
    out = []
    for i in range(n):
        d = i % devices
        at = start + timedelta(seconds=i // devices)
        values = {"systolic": 120.0 + i % 40, "diastolic": 80.0}
        reading = Reading(f"cuff-{d:04d}", Metric.BLOOD_PRESSURE, values, at, at)
        out.append(AcceptedReading(reading, f"pat-{d:04d}"))
    return out


async def run_async(args: argparse.Namespace, dsn: str) -> tuple[str, dict[str, Any]]:
    pool = await create_pool(dsn, size=4)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        since = now - timedelta(days=60)
        async with pool.acquire() as conn:
            await migrate(conn)
            for d in range(args.devices):
                await registry.upsert_patient(
                    conn,
                    patient_id=f"pat-{d:04d}",
                    display_name=f"P{d}",
                    phone=None,
                    sms_consent=False,
                    programs=["hypertension"],
                )
                await registry.enroll_device(
                    conn,
                    device_id=f"cuff-{d:04d}",
                    kind="bp_cuff",
                    patient_id=f"pat-{d:04d}",
                    since=since,
                )
            # Pending retractions of readings that never come: a table that is not empty.
            await conn.execute(
                """INSERT INTO reading_corrections (device_id, metric, measured_at, uid,
                          patient_id, sent_status, source, actor, reason, corrected_at)
                   SELECT 'cuff-' || lpad((g % $1)::text, 4, '0'), 'blood_pressure',
                          $2::timestamptz - g * interval '1 millisecond',
                          rpm_reading_uid('cuff-' || lpad((g % $1)::text, 4, '0'),
                                          'blood_pressure',
                                          $2::timestamptz - g * interval '1 millisecond'),
                          'pat-' || lpad((g % $1)::text, 4, '0'), 'cancelled', 'vendor',
                          'integration:bench', 'bench', now()
                     FROM generate_series(1, $3) AS g""",
                args.devices,
                since,
                args.corrections,
            )
        log(f"insert: {args.readings:,} readings in batches of {BATCH:,}")
        checked: list[float] = []
        plain: list[float] = []
        start = since + timedelta(days=1)
        for b in range(args.readings // BATCH):
            rows = batch(args.devices, start + timedelta(hours=b), BATCH)
            async with pool.acquire() as conn, conn.transaction():
                t = time.perf_counter()
                if b % 2 == 0:
                    new = await reading_store.insert_new(conn, rows, retracted=set())
                    checked.append((time.perf_counter() - t) / BATCH)
                else:
                    new = await conn.fetch(
                        _PLAIN_INSERT,
                        [a.reading.measured_at for a in rows],
                        [a.reading.device_id for a in rows],
                        [a.reading.metric.value for a in rows],
                        [a.patient_id for a in rows],
                        [a.reading.values["systolic"] for a in rows],
                        [a.reading.values["diastolic"] for a in rows],
                        [a.reading.received_at for a in rows],
                        [None] * BATCH,
                        [None] * BATCH,
                    )
                    plain.append((time.perf_counter() - t) / BATCH)
            if len(new) != BATCH:
                raise BenchError(f"batch {b}: {len(new)} of {BATCH} stored")

        log(f"retractions: {args.retractions:,}, {args.per_unit} per unit of work")
        pipeline = IngestPipeline(pool, ClockPolicy(), rules_refresh_s=3600, fhir_push=True)
        crisis_at = [
            now - timedelta(hours=2) + timedelta(seconds=i) for i in range(args.retractions)
        ]

        def fhir(i: int, status: str) -> RawMessage:
            d = i % args.devices
            obs: dict[str, Any] = {
                "resourceType": "Observation",
                "status": status,
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                "effectiveDateTime": crisis_at[i].isoformat(),
            }
            if status == "final":
                obs["component"] = [
                    {
                        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                        "valueQuantity": {"value": v, "code": "mm[Hg]"},
                    }
                    for code, v in (("8480-6", 200), ("8462-4", 110))
                ]
            return RawMessage("mqtt", "fhir", f"cuff-{d:04d}", json.dumps(obs).encode(), now)

        opened = 0
        for lo in range(0, args.retractions, args.per_unit):
            part = range(lo, min(lo + args.per_unit, args.retractions))
            done = await pipeline.process([fhir(i, "final") for i in part])
            opened += len(done.alerts_opened)
        t = time.perf_counter()
        retracted = 0
        for lo in range(0, args.retractions, args.per_unit):
            part = range(lo, min(lo + args.per_unit, args.retractions))
            done = await pipeline.process([fhir(i, "entered-in-error") for i in part])
            retracted += done.retracted
        wall = time.perf_counter() - t
        if retracted != args.retractions:
            raise BenchError(f"{retracted} of {args.retractions} retracted")
        async with pool.acquire() as conn:
            withdrawn = await conn.fetchval(
                "SELECT count(*) FROM alert_events WHERE action = 'withdraw'"
            )
            annotated = await conn.fetchval(
                "SELECT count(*) FROM alert_events WHERE action = 'evidence_entered_in_error'"
            )
    finally:
        await pool.close()

    us_checked = statistics.median(checked) * 1e6
    us_plain = statistics.median(plain) * 1e6
    rate = args.retractions / wall
    table = render_table(
        "Corrections (benchmarks/corrections.py)",
        [
            ("insert, with the retraction check", f"{us_checked:.2f} µs/reading", "median"),
            ("insert, without it", f"{us_plain:.2f} µs/reading", "median"),
            ("pending retractions in the table", f"{args.corrections:,}", "probed"),
            ("retractions through the unit of work", f"{rate:,.0f}/s", "wall time"),
            ("alerts opened by the readings", f"{opened:,}", ""),
            ("alerts withdrawn / annotated", f"{withdrawn:,} / {annotated:,}", ""),
        ],
    )
    result = {
        "insert_us_per_reading_checked": round(us_checked, 2),
        "insert_us_per_reading_plain": round(us_plain, 2),
        "pending_corrections": args.corrections,
        "retractions_per_s": round(rate),
        "alerts_opened": opened,
        "alerts_withdrawn": withdrawn,
        "alerts_annotated": annotated,
    }
    return table, result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--readings", type=int, default=None, help="inserted in phase 1 (100,000)")
    p.add_argument("--retractions", type=int, default=None, help="phase 2 (2,000)")
    p.add_argument("--quick", action="store_true", help="20,000 readings, 500 retractions")
    p.add_argument("--devices", type=int, default=200, help="one patient each")
    p.add_argument("--corrections", type=int, default=100_000, help="pending retractions")
    p.add_argument("--per-unit", type=int, default=100, help="messages per unit of work")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.readings is None:
        args.readings = 20_000 if args.quick else 100_000
    if args.retractions is None:
        args.retractions = 500 if args.quick else 2_000

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        return asyncio.run(run_async(args, services.start().database_url))

    return run_with_services("rpm-bench-corrections-", body)


if __name__ == "__main__":
    raise SystemExit(main())
