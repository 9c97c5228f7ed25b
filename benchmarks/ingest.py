"""Ingest benchmark: readings/s the real gateway commits with rules on, against a bare
aiomqtt + COPY consumer and the broker's ceiling; publish-to-commit latency at a steady rate.

    .venv/bin/python benchmarks/ingest.py            # 100,000 readings; 20 s at 2,000/s
    .venv/bin/python benchmarks/ingest.py --quick    # 20,000 readings; 5 s

Loopback services in a temporary directory (LocalServices); a fleet of ``--patients``
enrolled as ``rpm demo`` does, about 10% with a crisis so rules fire. Throughput: N readings
are published (QoS 1, paho publisher processes) into each consumer's offline persistent
session, then the consumer drains them alone: the gateway (``benchmarks/_consumers.py``,
``rpm serve --role gateway,api`` beside ``--role workers``, or ``--together``), the bare
consumer, and ``mosquitto_sub``. Rate = N / (first batch in hand -> commit of the Nth);
steady = 10-90% of N. Latency: a fresh gateway live, publishers paced at ``--rate``;
measured_at = publish wall time, commit = when the reading's unit of work returned. CPU
seconds per part over the drain (sampled every 20 ms; start-up excluded), and of
other processes (machine busy time minus ours: the noise).
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/rules.py is named like the ``rules`` package, which the server imports: keep this
# folder behind the project on sys.path (``_common`` is still found).
sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))

import argparse
import asyncio
import math
import os
import platform
import shutil
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from _common import (
    fmt_ms,
    fmt_rate,
    percentile,
    run_with_services,
    utc,
)
from _consumers import BARE_TABLE
from _ingest_phases import (
    BARE_ID,
    GATEWAY_ID,
    Drain,
    Live,
    Run,
    drain_consumer,
    drain_mosquitto_sub,
    live_latency,
    prepare_database,
)
from _report import ok, p50_p99, tables
from _server import (
    program_version,
    stop_on_sigterm,
)

from simulators.localservices import LocalServices

# The targets on a 2-core machine.
TARGET_RATE = 15_000.0
TARGET_RATIO_TO_BARE = 0.6
TARGET_P99_MS = 250.0


# --- the report --------------------------------------------------------------------------------

_COUNTS = f"""
SELECT (SELECT count(*) FROM readings WHERE measured_at BETWEEN $1 AND $2) AS gateway_rows,
       (SELECT count(*) FROM readings) AS readings,
       (SELECT count(DISTINCT (device_id, metric, measured_at)) FROM readings) AS readings_distinct,
       (SELECT count(*) FROM {BARE_TABLE}) AS bare,
       (SELECT count(DISTINCT (device_id, metric, measured_at)) FROM {BARE_TABLE}) AS bare_distinct,
       (SELECT count(*) FROM quarantine) AS quarantined,
       (SELECT count(*) FROM alerts) AS alerts,
       (SELECT coalesce(sum(occurrences), 0) FROM alerts) AS occurrences,
       (SELECT count(*) FROM outbox) AS outbox,
       (SELECT count(delivered_at) FROM outbox) AS delivered"""


def _gc_note(summary: dict[str, Any]) -> str:
    if "gc_s" not in summary:
        return "GC n/a"
    return f"GC {summary['gc_s']:.1f} s, longest {summary['gc_longest_ms']:.0f} ms"


def _drain_row(d: Drain, label: str, n: int) -> tuple[str, str, str]:
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in d.cpu.items() if v and k != "others")
    note = f"{d.seconds:.2f} s; CPU s: {cpu}, others {d.cpu['others']:.1f}"
    if d.name == "gateway":
        note += f"; {_gc_note(d.summary)}"
    if not math.isnan(d.steady):
        note += f"; steady {fmt_rate(d.steady)}"
    if not d.complete:
        note += f"; INCOMPLETE: {d.received:,} of {n:,}"
    return (label, fmt_rate(d.rate), note)


def report(
    run: Run, info: dict[str, str], drains: list[Drain], live: Live
) -> tuple[str, dict[str, Any]]:
    """The table and the JSON result."""
    args, n = run.args, run.args.readings
    gateway, bare, broker = drains
    span = (utc(run.workload.span_start), utc(run.workload.span_end))
    c = run.sql(_COUNTS, *span)[0]
    duplicated = (c["readings"] - c["readings_distinct"]) + (c["bare"] - c["bare_distinct"])
    lost_by = {
        "gateway": gateway.published - c["gateway_rows"],
        "bare": bare.published - c["bare_distinct"],
        "mosquitto_sub": broker.published - broker.received,
        "live": live.published - live.stored,
    }
    lost = sum(max(0, v) for v in lost_by.values())
    redelivered = sum(int(s.get("duplicates", 0)) for s in (gateway.summary, live.summary))
    ratio_bare, ratio_broker = gateway.rate / bare.rate, gateway.rate / broker.rate
    p50, p99 = percentile(live.publish_to_commit, 50), percentile(live.publish_to_commit, 99)
    achieved = live.published / live.seconds
    batches = int(gateway.summary.get("batches", 0))
    versions = "/".join(metadata.version(p) for p in ("aiomqtt", "paho-mqtt", "asyncpg"))
    workers = "in the gateway's process" if args.together else "own process"
    sections = {
        "Environment": [
            ("CPUs", str(os.cpu_count()), f"load average {os.getloadavg()[0]:.2f} at the end"),
            ("PostgreSQL", info["postgres"], f"TimescaleDB {info['timescaledb']}"),
            ("Mosquitto", program_version("mosquitto").removeprefix("mosquitto version "), ""),
            ("Python", platform.python_version(), f"aiomqtt/paho-mqtt/asyncpg {versions}"),
            (
                "fleet",
                f"{args.patients} patients",
                f"batch {args.batch_max_messages} / {args.batch_max_wait_ms} ms; "
                f"{args.publishers} publishers; workers {workers}",
            ),
        ],
        f"Throughput: drain of {n:,} pre-loaded readings": [
            _drain_row(gateway, "gateway (rules on)", n),
            _drain_row(bare, "(a) bare aiomqtt + COPY", n),
            _drain_row(broker, "(b) broker ceiling, mosquitto_sub", n),
            ("gateway target", f">= {TARGET_RATE:,.0f}/s", ok(gateway.rate >= TARGET_RATE)),
            (
                "ratio to bare / broker",
                f"{ratio_bare:.2f} / {ratio_broker:.2f}",
                f">= {TARGET_RATIO_TO_BARE} to bare: {ok(ratio_bare >= TARGET_RATIO_TO_BARE)}",
            ),
            ("gateway units of work", f"{batches:,}", f"{n / max(batches, 1):.0f} readings each"),
        ],
        f"Latency: live at {args.rate:,.0f} readings/s for {args.seconds:g} s": [
            ("published", f"{live.published:,}", f"{fmt_rate(achieved)}"),
            ("publish -> commit p50 / p99", p50_p99(live.publish_to_commit), ""),
            ("p99 target", f"< {TARGET_P99_MS:.0f} ms", ok(p99 < TARGET_P99_MS)),
            ("publish -> commit max", fmt_ms(max(live.publish_to_commit, default=math.nan)), ""),
            ("  publish -> hand-off", p50_p99(live.publish_to_handoff), "p50 / p99"),
            ("  hand-off -> commit", p50_p99(live.handoff_to_commit), "p50 / p99"),
            ("  publish -> stored_at", p50_p99(live.publish_to_stored_at), "a lower bound"),
            (
                "gateway CPU",
                f"{100 * live.gateway_cpu / live.seconds:.0f}% of a core",
                f"others {live.others_cpu:.1f} s; {_gc_note(live.summary)}",
            ),
        ],
        "Integrity": [
            ("lost", f"{lost:,}", ", ".join(f"{k} {v}" for k, v in lost_by.items())),
            ("duplicated rows", f"{duplicated:,}", f"redeliveries skipped {redelivered:,}"),
            ("quarantined", f"{c['quarantined']:,}", ""),
            ("alerts opened", f"{c['alerts']:,}", f"{c['delivered']} SMS sent"),
        ],
    }
    notes = [f"PROFILED with py-spy: {args.profile}"] if args.profile is not None else []
    table = tables(sections, notes)
    result: dict[str, Any] = {
        "readings_per_s": round(gateway.rate, 1),
        "bare_aiomqtt_per_s": round(bare.rate, 1),
        "broker_ceiling_per_s": round(broker.rate, 1),
        "ratio_to_bare": round(ratio_bare, 3),
        "ratio_to_broker": round(ratio_broker, 3),
        "p50_ms_at_2k": round(p50, 2),
        "p99_ms_at_2k": round(p99, 2),
        "lost": lost,
        "duplicated": duplicated,
        "readings": n,
        "steady_readings_per_s": round(gateway.steady, 1),
        "readings_per_cpu_s": round(n / gateway.cpu["consumer"], 1),
        "roles": "together" if args.together else "split",
        "workers_cpu_s": gateway.summary.get("workers_cpu"),
        "live_rate_per_s": round(achieved, 1),
        "alerts_opened": c["alerts"],
        "quarantined": c["quarantined"],
        "redelivered_skipped": redelivered,
        "timescaledb": info["timescaledb"] != "off",
        "cpu_count": os.cpu_count(),
        "targets_met": {
            "readings_per_s": gateway.rate >= TARGET_RATE,
            "ratio_to_bare": ratio_bare >= TARGET_RATIO_TO_BARE,
            "p99_ms_at_2k": p99 < TARGET_P99_MS,
            "nothing_lost": lost == 0 and duplicated == 0,
        },
        "gateway_drain_cpu_s": {k: round(v, 2) for k, v in gateway.cpu.items()},
        "other_cpu_s": {
            "gateway_drain": round(gateway.cpu["others"], 2),
            "bare_drain": round(bare.cpu["others"], 2),
            "broker_drain": round(broker.cpu["others"], 2),
            "latency_phase": round(live.others_cpu, 2),
        },
        "profiled": args.profile is not None,
    }
    return table, result


# --- entry points ------------------------------------------------------------------------------


def benchmark(run: Run) -> tuple[str, dict[str, Any]]:
    say = run.say
    say(f"local services up in {run.work}; enrolling {run.args.patients} patients")
    info = asyncio.run(prepare_database(run.endpoints.database_url, run.workload))
    drains = []
    for name, role, client_id in (("gateway", "_gateway", GATEWAY_ID), ("bare", "_bare", BARE_ID)):
        say(f"{name}: pre-loading {run.args.readings:,} readings, then draining")
        drains.append(drain_consumer(run, name, role, client_id))
        say(f"{name}: {fmt_rate(drains[-1].rate)}")
    say(f"mosquitto_sub: pre-loading {run.args.readings:,} readings, then draining")
    drains.append(drain_mosquitto_sub(run))
    say(f"mosquitto_sub: {fmt_rate(drains[-1].rate)}")
    say(f"latency: gateway live, {run.args.rate:,.0f} readings/s for {run.args.seconds:g} s")
    live = live_latency(run)
    return report(run, info, drains, live)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--readings", type=int, default=None, help="pre-loaded per consumer (100,000)")
    p.add_argument("--seconds", type=float, default=None, help="latency phase length (20)")
    p.add_argument("--rate", type=float, default=2000.0, help="latency phase readings/s")
    p.add_argument("--quick", action="store_true", help="20,000 readings and 5 s")
    p.add_argument("--patients", type=int, default=500, help="three devices each")
    p.add_argument("--publishers", type=int, default=2, help="publisher processes")
    p.add_argument("--inflight", type=int, default=1000, help="paho max_inflight per publisher")
    p.add_argument("--batch-max-messages", type=int, default=2000)
    p.add_argument("--batch-max-wait-ms", type=int, default=20)
    p.add_argument("--timeout", type=float, default=120.0, help="per drain, seconds")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy each consumer into DIR (benchmarks/profile_split.py: CPU per stage)",
    )
    p.add_argument(
        "--together",
        action="store_true",
        help="the delivery workers in the gateway's process (rpm serve's default, --role all), "
        "not beside it (--role gateway,api + --role workers)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument(
        "--latency-dump",
        type=Path,
        default=None,
        help="write the live phase's readings as CSV (seconds since the first publish, "
        "publish -> hand-off and publish -> commit in ms) to FILE: where the slow ones fall",
    )
    args = p.parse_args(argv)
    if args.profile is not None:
        beside = Path(sys.executable).with_name("py-spy")
        args.py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
        if args.py_spy is None:
            p.error("--profile needs py-spy: uv pip install --python .venv/bin/python py-spy")
    args.readings = args.readings or (20_000 if args.quick else 100_000)
    args.seconds = args.seconds or (5.0 if args.quick else 20.0)
    if args.readings > 1_000_000:
        p.error("the broker queues at most 1,000,000 messages per session (max_queued_messages)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    stop_on_sigterm()

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        run = Run(args, services.start(), work)
        try:
            return benchmark(run)
        finally:
            run.kill_children()

    return run_with_services("rpm-bench-", body)


if __name__ == "__main__":
    raise SystemExit(main())
