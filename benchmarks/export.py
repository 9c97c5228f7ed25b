"""Export and hostile-input benchmark: `rpm export` rows per second and its peak memory as the
table grows, and the cost of the ingest endpoint's guards (JSON depth scan, token bucket).

    uv run python benchmarks/export.py            # 1,000,000 readings
    uv run python benchmarks/export.py --quick    # 200,000 readings (under a minute)

Everything runs on loopback in a temporary directory, removed at the end (LocalServices'
PostgreSQL, TimescaleDB when installed).

1. Data, not timed: ``--patients`` patients with birth dates, and N blood-pressure readings
   spread over 30 days, written with COPY.
2. Export: the real command (``python -m rpm.cli export``) in a child process, run twice,
   on N/5 and on N readings. Rate = readings rows / wall time of the whole command (start-up,
   all four files, manifest). Peak RSS is the child's maximum resident set (getrusage): with
   server-side cursors it should not grow with N.
3. Guards, one core, in process: ``rpm.json_depth.max_depth`` over 1 MiB bodies (a
   100,000-reading canonical batch cut to 1 MiB, and 500,000 nested arrays), median of
   ``--repeat`` runs; ``TokenBuckets.take`` calls per second.

The last line of output is one JSON object; the table before it explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from _common import BenchError, render_table, run_with_services  # noqa: E402

from rpm.json_depth import max_depth  # noqa: E402
from rpm.rate_limit import TokenBuckets  # noqa: E402
from rpm.storage.migrate import migrate  # noqa: E402
from rpm.storage.pool import connect  # noqa: E402
from simulators.localservices import LocalServices  # noqa: E402

KEY = "benchmark-export-key-0123456789-abcdefghij"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def load(dsn: str, patients: int, readings: int) -> None:
    conn = await connect(dsn)
    try:
        await migrate(conn)
        await conn.execute("TRUNCATE readings")
        await conn.execute("DELETE FROM patients")
        await conn.copy_records_to_table(
            "patients",
            columns=["id", "display_name", "programs", "birth_date"],
            records=[
                (f"pat-{i:05d}", f"Name {i}", ["hypertension"], date(1930 + i % 70, 1 + i % 12, 1))
                for i in range(patients)
            ],
        )
        start = datetime.now(UTC) - timedelta(days=30)
        step = timedelta(days=30) / max(1, readings // patients)
        batch: list[tuple[Any, ...]] = []
        for n in range(readings):
            p = n % patients
            at = start + step * (n // patients)
            batch.append(
                (
                    at,
                    f"cuff-{p:05d}",
                    "blood_pressure",
                    f"pat-{p:05d}",
                    110.0 + n % 60,  # systolic, diastolic, pulse: the slots
                    70.0 + n % 30,
                    60.0 + n % 40,
                    at,
                )
            )
            if len(batch) == 50_000:
                await _copy(conn, batch)
                batch = []
        if batch:
            await _copy(conn, batch)
        await conn.execute("ANALYZE readings")
    finally:
        await conn.close()


async def _copy(conn: Any, batch: list[tuple[Any, ...]]) -> None:
    columns = list(zip(*batch, strict=True))
    await conn.execute(
        """INSERT INTO readings (measured_at, device_id, metric, patient_id, v1, v2, v3,
                                 received_at)
           SELECT m, d, k, p, v1, v2, v3, r
             FROM unnest($1::timestamptz[], $2::text[], $3::rpm_metric[], $4::text[],
                         $5::float8[], $6::float8[], $7::float8[], $8::timestamptz[])
                  AS t(m, d, k, p, v1, v2, v3, r)""",
        *[list(c) for c in columns],
    )


def export_once(dsn: str, out: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env.update(RPM_DATABASE_URL=dsn, RPM_EXPORT_KEY=KEY, PYTHONPATH=str(_ROOT))
    # The child reports its own peak resident set (getrusage of itself, in KiB on Linux).
    script = (
        "import resource, sys\n"
        "from rpm.cli import main\n"
        f"code = main(['export', '--out', {str(out)!r}])\n"
        "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise BenchError(f"rpm export failed: {done.stderr[-2000:]}")
    peak = int(done.stderr.rsplit("maxrss", 1)[1].split()[0])
    rows = json.loads((out / "manifest.json").read_text())["files"]["readings.csv"]["rows"]
    return {
        "rows": rows,
        "wall_s": wall,
        "rows_per_s": rows / wall,
        "peak_rss_mib": peak / 1024,
        "mib_written": sum(f.stat().st_size for f in out.iterdir()) / 2**20,
    }


def guards(repeat: int) -> dict[str, float]:
    reading = {
        "device_id": "SN-1",
        "metric": "blood_pressure",
        "measured_at": "2026-11-23T08:00:00Z",
        "values": {"systolic": 128, "diastolic": 81, "pulse": 64},
    }
    batch = json.dumps([reading] * 12_000).encode()[: 2**20]
    nested = b"[" * (2**19) + b"]" * (2**19)
    figures: dict[str, float] = {}
    for name, body in (("batch", batch), ("nested", nested)):
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            max_depth(body)
            times.append(time.perf_counter() - t0)
        figures[f"depth_scan_{name}_ms_per_mib"] = statistics.median(times) * 1000
    buckets = TokenBuckets(rate=1e9, burst=10**9)
    calls = 200_000
    t0 = time.perf_counter()
    for i in range(calls):
        buckets.take(f"integration-{i % 50}", t0)
    figures["token_bucket_takes_per_s"] = calls / (time.perf_counter() - t0)
    return figures


def run(args: argparse.Namespace, dsn: str, work: Path) -> tuple[str, dict[str, Any]]:
    results: dict[str, Any] = {}
    for n in (args.readings // 5, args.readings):
        log(f"loading {n:,} readings ...")
        asyncio.run(load(dsn, args.patients, n))
        log(f"exporting {n:,} readings ...")
        results[str(n)] = export_once(dsn, work / f"export-{n}")
    g = guards(args.repeat)
    small, large = results[str(args.readings // 5)], results[str(args.readings)]
    rows = [
        (
            f"rpm export, {small['rows']:,} readings",
            f"{small['rows_per_s']:,.0f}/s",
            f"{small['wall_s']:.1f} s wall, peak RSS {small['peak_rss_mib']:.0f} MiB",
        ),
        (
            f"rpm export, {large['rows']:,} readings",
            f"{large['rows_per_s']:,.0f}/s",
            f"{large['wall_s']:.1f} s wall, peak RSS {large['peak_rss_mib']:.0f} MiB, "
            f"{large['mib_written']:.0f} MiB written",
        ),
        (
            "depth scan, 1 MiB canonical batch",
            f"{g['depth_scan_batch_ms_per_mib']:.1f} ms",
            f"median of {args.repeat}",
        ),
        (
            "depth scan, 1 MiB nested arrays",
            f"{g['depth_scan_nested_ms_per_mib']:.1f} ms",
            f"median of {args.repeat}",
        ),
        ("token bucket take()", f"{g['token_bucket_takes_per_s']:,.0f}/s", "50 keys"),
    ]
    table = render_table("Export and ingest guards", rows)
    result = {
        "export_rows_per_s_small": round(small["rows_per_s"]),
        "export_rows_per_s_large": round(large["rows_per_s"]),
        "export_peak_rss_mib_small": round(small["peak_rss_mib"], 1),
        "export_peak_rss_mib_large": round(large["peak_rss_mib"], 1),
        "readings_small": small["rows"],
        "readings_large": large["rows"],
        **{k: round(v, 2) for k, v in g.items()},
    }
    return table, result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--readings", type=int, default=None, help="largest export (1,000,000)")
    p.add_argument("--quick", action="store_true", help="200,000 readings")
    p.add_argument("--patients", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=21, help="runs per depth-scan figure")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.readings is None:
        args.readings = 200_000 if args.quick else 1_000_000

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        return run(args, services.start().database_url, work)

    return run_with_services("rpm-bench-export-", body)


if __name__ == "__main__":
    raise SystemExit(main())
