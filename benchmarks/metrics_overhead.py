"""What the Prometheus metrics cost the ingest path, measured alone (no broker, no database).

Per unit of work the pipeline calls ``IngestMetrics.batch`` once and observes the rule step
once; this times both over typical batch results, and the rendering of /metrics (without the
database figures). End-to-end throughput before/after is ``benchmarks/ingest.py --quick``,
whose noise on a shared machine is far above this cost; this script gives the cost itself.

    .venv/bin/python benchmarks/metrics_overhead.py
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/rules.py is named like the ``rules`` package: keep this folder off the front of
# sys.path so the imports below find the packages.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p not in ("", _HERE)]

import asyncio  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from rpm.metrics import Metrics  # noqa: E402
from rpm.pipeline import BatchResult  # noqa: E402

ROUNDS = 200_000


def per_call_us(fn: object, rounds: int) -> float:
    assert callable(fn)
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds * 1e6


def main() -> None:
    metrics = Metrics()
    ingest = metrics.ingest
    full = BatchResult(messages=2000, stored=1980, duplicates=12, quarantined=8)
    full.quarantine_reasons = {"malformed": 5, "unknown_device": 3}
    full.alerts_opened = [1, 2]
    single = BatchResult(messages=1, stored=1)

    def batch_full() -> None:
        ingest.batch("mqtt", full, 0.012)
        ingest.rule_step_seconds.observe(0.004)

    def batch_single() -> None:
        ingest.batch("http", single, 0.003)
        ingest.rule_step_seconds.observe(0.0002)

    for f in (batch_full, batch_single):  # warm up
        per_call_us(f, 1000)
    full_us = per_call_us(batch_full, ROUNDS)
    single_us = per_call_us(batch_single, ROUNDS)

    async def renders(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await metrics.render()
        return (time.perf_counter() - start) / n * 1000

    render_ms = asyncio.run(renders(500))
    per_reading_ns = full_us * 1000 / full.messages
    # The gateway's cost per reading at the README's reference figure (8,470 readings/s).
    share = per_reading_ns / (1e9 / 8470)

    rows = [
        ("batch of 2,000 (reasons, alerts, rule step)", f"{full_us:.2f} µs"),
        ("batch of 1 (webhook)", f"{single_us:.2f} µs"),
        ("per reading in a batch of 2,000", f"{per_reading_ns:.2f} ns"),
        ("share of the gateway's time per reading at 8,470/s", f"{share:.5%}"),
        ("render /metrics (no database figures)", f"{render_ms:.2f} ms"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>12}")
    print(
        json.dumps(
            {
                "batch_2000_us": round(full_us, 3),
                "batch_1_us": round(single_us, 3),
                "per_reading_ns": round(per_reading_ns, 3),
                "share_of_reading_cost": round(share, 7),
                "render_ms": round(render_ms, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
