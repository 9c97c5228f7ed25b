"""FHIR benchmark: Observation JSON per second from the mapping, and the EHR push's outbox
drain rate to a local FHIR server.

    uv run python benchmarks/fhir.py            # 100,000 readings
    uv run python benchmarks/fhir.py --quick    # 20,000 readings (under a minute)

Everything runs on loopback in a temporary directory, removed at the end: LocalServices'
PostgreSQL (TimescaleDB when installed), and the EHR stand-in ``simulators/fhir_server.py``
in its own process.

1. Data. A virtual fleet (``--patients``, three devices each: blood-pressure cuff with pulse,
   pulse oximeter with pulse, scale; ``simulators.fleet``) gets N canonical readings spread
   over the last three days, stored through the real ingest unit of work
   (``IngestPipeline(fhir_push=True)``, rules on) in batches of ``--batch``: each batch stores
   its readings and one outbox item of push work. Not timed.
2. Mapping, one core, no I/O. The stored readings are read back as the API and the push read
   them (``rpm.storage.fhir``: uid, stored time, interpretation), then mapped again and again
   for at least ``--map-seconds``: (a) Observation dicts only, (b) dicts serialised with
   orjson (the headline: Observation JSON per second), (c) what the push sends: transaction
   Bundles of 100 entries, serialised. Rates are per CPU second of this single-threaded
   process (``time.process_time``), with wall-clock rates beside them; the garbage collector
   runs as under ``rpm serve`` (start-up objects frozen, young generation at 50,000). For
   contrast, fhir.resources validation of a sample: why the hot path builds plain JSON.
3. Push. The outbox holds N/``--batch`` items. ``rpm.fhir.push.FhirPushWorker`` with its
   real httpx client drains them into the local FHIR server (``--concurrency`` transactions in
   flight, ``--bundle`` entries each, conditional creates), which answers as a FHIR server
   does but skips fhir.resources validation unless ``--validate`` (validation is the
   server's CPU, not ours). Rate = Observations delivered / wall time from the first claim to
   the last item marked delivered. The server's counts then show every Observation stored
   once: lost and duplicated must be 0.

CPU seconds per part (worker, PostgreSQL, FHIR server) are shown next to the push figures.
``--profile FILE`` runs the push under cProfile (slower: not for figures), writes the stats
to FILE and prints the top entries.
The last line of output is one JSON object; the table before it explains the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like fhir.resources' ``fhir`` package: keep its own folder behind the
# project root on sys.path, so ``import fhir`` finds the package and ``_common`` is found.
_HERE = str(Path(__file__).resolve().parent)
_ROOT = Path(_HERE).parent
sys.path[:] = [p for p in sys.path if p not in ("", _HERE)] + [str(_ROOT), _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
from _common import (  # noqa: E402
    BenchError,
    Child,
    children_of,
    cpu_seconds,
    fmt_rate,
    pid_from_file,
    render_table,
    run_with_services,
)

from rpm.domain import RawMessage  # noqa: E402
from rpm.fhir.bundles import push_entries, transaction  # noqa: E402
from rpm.fhir.ehr import EhrClient  # noqa: E402
from rpm.fhir.mapping import RecordedReading, recorded_observations  # noqa: E402
from rpm.fhir.push import FhirPushWorker, PushConfig  # noqa: E402
from rpm.pipeline import IngestPipeline  # noqa: E402
from rpm.settings import EhrSettings, RuleSettings  # noqa: E402
from rpm.storage import fhir as fhir_store  # noqa: E402
from rpm.storage.migrate import migrate  # noqa: E402
from rpm.storage.pool import connect, create_pool  # noqa: E402
from rpm.validation import ClockPolicy  # noqa: E402
from simulators.demo import seed  # noqa: E402
from simulators.fleet import (  # noqa: E402
    VirtualPatient,
    encode_canonical,
    make_fleet,
    reading,
    topic,
)
from simulators.localservices import LocalServices  # noqa: E402

TARGET_OBSERVATIONS_PER_S = 100_000.0
SEED = 2026


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- 1. data ----------------------------------------------------------------------------------


def fleet_messages(patients: int, count: int) -> tuple[list[VirtualPatient], list[RawMessage]]:
    """A fleet, and ``count`` canonical readings over its devices, from three days ago up to
    an hour ago."""
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(days=3), now - timedelta(hours=1)
    fleet = make_fleet(patients, start=start, end=end, seed=SEED)
    devices = [(p, d) for p in fleet for d in p.devices]
    rng = np.random.default_rng(SEED)
    span = (end - start).total_seconds()
    out = []
    for i in range(count):
        patient, device = devices[i % len(devices)]
        t = start + timedelta(seconds=(i + 0.5) * span / count)
        body = encode_canonical(reading(patient, device, t, rng))
        out.append(
            RawMessage("mqtt", "canonical", device.device_id, body, now, topic(device.device_id))
        )
    return fleet, out


async def ingest(dsn: str, args: argparse.Namespace) -> list[RecordedReading]:
    """Enroll the fleet, store the readings with push work; return them as stored."""
    fleet, messages = fleet_messages(args.patients, args.readings)
    pool = await create_pool(dsn, size=4)
    try:
        async with pool.acquire() as conn:
            await seed(conn, fleet, since=datetime.now(UTC) - timedelta(days=30))
        rules = RuleSettings()  # as `rpm serve` runs
        pipeline = IngestPipeline(
            pool, ClockPolicy(), rules_refresh_s=rules.refresh_s, fhir_push=True
        )
        stored = 0
        for i in range(0, len(messages), args.batch):
            stored += (await pipeline.process(messages[i : i + args.batch])).stored
        if stored != len(messages):
            raise BenchError(f"stored {stored} of {len(messages)} readings")
        async with pool.acquire() as conn:
            keys = [
                (r["device_id"], r["metric"], r["measured_at"].isoformat())
                for r in await conn.fetch("SELECT device_id, metric, measured_at FROM readings")
            ]
            return await fhir_store.recorded_by_keys(conn, keys)
    finally:
        await pool.close()


# --- 2. mapping -------------------------------------------------------------------------------


def timed(work: Callable[[], int], min_seconds: float) -> tuple[float, float, int]:
    """Run ``work`` (returns Observations made) until ``min_seconds`` of CPU have passed;
    return (CPU s, wall s, Observations)."""
    made = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.process_time() - cpu0 < min_seconds:
        made += work()
    return time.process_time() - cpu0, time.perf_counter() - wall0, made


def mapping_figures(recorded: Sequence[RecordedReading], min_seconds: float) -> dict[str, Any]:
    def dicts() -> int:
        n = 0
        for rec in recorded:
            n += len(recorded_observations(rec))
        return n

    def as_json() -> int:
        n = 0
        dumps = orjson.dumps
        for rec in recorded:
            for obs in recorded_observations(rec):
                dumps(obs)
                n += 1
        return n

    def bundles() -> int:
        n = 0
        for i in range(0, len(recorded), 60):  # about 100 Observations per Bundle
            entries = push_entries(recorded[i : i + 60], "urn:rpm:patient")
            orjson.dumps(transaction(entries))
            n += len(entries)
        return n

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)  # as rpm serve runs (rpm/cli.py)
    out: dict[str, Any] = {}
    for name, work in (("dicts", dicts), ("json", as_json), ("bundles", bundles)):
        cpu, wall, made = timed(work, min_seconds)
        out[name] = {"cpu_s": cpu, "wall_s": wall, "observations": made}
    gc.unfreeze()
    from fhir.resources.R4B.observation import Observation

    sample = [obs for rec in recorded[:1000] for obs in recorded_observations(rec)]
    cpu0 = time.process_time()
    for obs in sample:
        Observation.model_validate(obs)
    out["validation"] = {"cpu_s": time.process_time() - cpu0, "observations": len(sample)}
    return out


# --- 3. push ---------------------------------------------------------------------------------


async def push(
    dsn: str, base_url: str, args: argparse.Namespace, server_pid: int, postmaster: int | None
) -> dict[str, Any]:
    pool = await create_pool(dsn, size=args.concurrency + 2)
    client = EhrClient(base_url, timeout_s=30.0, max_connections=args.concurrency)
    config = PushConfig.from_settings(
        EhrSettings(
            fhir_base_url=base_url, concurrency=args.concurrency, bundle_max_entries=args.bundle
        ),
        poll_interval_s=0.01,
    )
    worker = FhirPushWorker(pool, client, config)
    try:
        async with pool.acquire() as conn:
            items = await conn.fetchval("SELECT count(*) FROM outbox WHERE channel = 'fhir'")
        pg_pids = children_of(postmaster) if postmaster else []
        cpu_pg0, cpu_ehr0 = cpu_seconds(pg_pids), cpu_seconds([server_pid])
        profiler = cProfile.Profile() if args.profile else None
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        while True:
            if await worker.drain_once() == 0:
                async with pool.acquire() as conn:
                    left = await fhir_store.backlog(conn)
                if left["items"] == 0:
                    break
                await asyncio.sleep(0.01)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
            stats = io.StringIO()
            pstats.Stats(profiler, stream=stats).sort_stats("tottime").print_stats(25)
            log(stats.getvalue())
        cpu_pg = cpu_seconds(children_of(postmaster) if postmaster else []) - cpu_pg0
        cpu_ehr = cpu_seconds([server_pid]) - cpu_ehr0
        async with httpx.AsyncClient() as http:
            stats = (await http.get(base_url.removesuffix("/fhir") + "/_stats")).json()
        async with pool.acquire() as conn:
            failed = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE channel = 'fhir' AND failed_at IS NOT NULL"
            )
        c = worker.counters
        return {
            "items": items,
            "wall_s": wall,
            "cpu_worker_s": cpu,
            "cpu_postgres_s": cpu_pg,
            "cpu_ehr_s": cpu_ehr,
            "delivered": c.created + c.existing,
            "bundles": c.bundles,
            "refused": c.refused,
            "failed_items": failed,
            "server": stats,
        }
    finally:
        await worker.close()
        await pool.close()


# --- the run ------------------------------------------------------------------------------------


def rate(observations: int, seconds: float) -> float:
    return observations / seconds if seconds > 0 else float("nan")


def report(
    args: argparse.Namespace, expected: int, mapping: dict[str, Any], pushed: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    m = {k: v for k, v in mapping.items() if k != "validation"}
    per_cpu = {k: rate(v["observations"], v["cpu_s"]) for k, v in m.items()}
    per_wall = {k: rate(v["observations"], v["wall_s"]) for k, v in m.items()}
    validation = rate(mapping["validation"]["observations"], mapping["validation"]["cpu_s"])
    push_rate = rate(pushed["delivered"], pushed["wall_s"])
    server = pushed["server"]
    lost = expected - server["stored"]
    target_ok = per_cpu["json"] >= TARGET_OBSERVATIONS_PER_S
    mapping_rows = [
        (
            "(a) Observation dicts",
            fmt_rate(per_cpu["dicts"]),
            f"wall {fmt_rate(per_wall['dicts'])}",
        ),
        (
            "(b) Observation JSON (orjson)",
            fmt_rate(per_cpu["json"]),
            f"wall {fmt_rate(per_wall['json'])}; target >= 100,000/s: "
            + ("met" if target_ok else "NOT met"),
        ),
        (
            "(c) transaction Bundles, serialised",
            fmt_rate(per_cpu["bundles"]),
            f"wall {fmt_rate(per_wall['bundles'])}; per Observation, 100 a Bundle",
        ),
        ("fhir.resources validation", fmt_rate(validation), "for contrast: the tests' check"),
    ]
    push_rows = [
        (
            "outbox drain to the FHIR server",
            fmt_rate(push_rate),
            f"{pushed['delivered']:,} Observations, {pushed['items']} items, "
            f"{pushed['bundles']} Bundles in {pushed['wall_s']:.1f} s",
        ),
        ("CPU: worker (this process)", f"{pushed['cpu_worker_s']:.1f} s", ""),
        ("CPU: PostgreSQL", f"{pushed['cpu_postgres_s']:.1f} s", ""),
        (
            "CPU: FHIR server",
            f"{pushed['cpu_ehr_s']:.1f} s",
            "validating with fhir.resources" if args.validate else "not validating (--validate)",
        ),
        (
            "stored at the EHR / lost / duplicated",
            f"{server['stored']:,}",
            f"lost {lost}, duplicated {server['duplicates']}, refused {pushed['refused']}, "
            f"failed items {pushed['failed_items']}",
        ),
    ]
    table = "\n\n".join(
        [
            render_table(
                f"FHIR mapping, one core ({args.readings:,} stored readings, "
                f"{expected:,} Observations a pass)",
                mapping_rows,
            ),
            render_table(
                f"EHR push (concurrency {args.concurrency}, {args.bundle} entries a Bundle)",
                push_rows,
            ),
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}",
        ]
    )
    result = {
        "observations_per_s": round(per_cpu["json"]),
        "observations_per_s_wall": round(per_wall["json"]),
        "observation_dicts_per_s": round(per_cpu["dicts"]),
        "bundle_observations_per_s": round(per_cpu["bundles"]),
        "validation_per_s": round(validation),
        "push_per_s": round(push_rate),
        "push_observations": pushed["delivered"],
        "push_items": pushed["items"],
        "push_bundles": pushed["bundles"],
        "push_wall_s": round(pushed["wall_s"], 3),
        "push_cpu_worker_s": round(pushed["cpu_worker_s"], 2),
        "push_cpu_postgres_s": round(pushed["cpu_postgres_s"], 2),
        "push_cpu_ehr_s": round(pushed["cpu_ehr_s"], 2),
        "lost": lost,
        "duplicated": server["duplicates"],
        "readings": args.readings,
        "quick": args.quick,
        "validate": args.validate,
    }
    return table, result


async def run(args: argparse.Namespace, dsn: str, services_root: Path, work: Path) -> Any:
    conn = await connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    log(f"storing {args.readings:,} readings through the ingest unit of work ...")
    recorded = await ingest(dsn, args)
    expected = sum(len(recorded_observations(r)) for r in recorded)
    log(f"mapping {len(recorded):,} readings ({expected:,} Observations) repeatedly ...")
    mapping = mapping_figures(recorded, args.map_seconds)
    argv = [sys.executable, "-m", "simulators.fhir_server", "--port", "0"]
    if not args.validate:
        argv.append("--no-validate")
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    server = Child("fhir-server", argv, env, work / "fhir_server.log")
    try:
        base_url = str(server.expect("ready", 30)["base_url"])
        log(f"pushing to {base_url} ...")
        postmaster = pid_from_file(services_root / "pg" / "postmaster.pid")
        pushed = await push(dsn, base_url, args, server.proc.pid, postmaster)
    finally:
        server.stop()
    return report(args, expected, mapping, pushed)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--readings", type=int, default=None, help="stored readings (100,000)")
    p.add_argument("--quick", action="store_true", help="20,000 readings, shorter timing")
    p.add_argument("--patients", type=int, default=500, help="three devices each")
    p.add_argument("--batch", type=int, default=1000, help="readings per ingest batch / item")
    p.add_argument("--map-seconds", type=float, default=None, help="CPU s per mapping figure")
    p.add_argument("--concurrency", type=int, default=4, help="transactions in flight")
    p.add_argument("--bundle", type=int, default=100, help="entries per transaction Bundle")
    p.add_argument("--validate", action="store_true", help="the FHIR server validates Bundles")
    p.add_argument(
        "--profile", type=Path, default=None, help="cProfile the push into FILE (slower)"
    )
    args = p.parse_args(argv)
    if args.readings is None:
        args.readings = 20_000 if args.quick else 100_000
    if args.map_seconds is None:
        args.map_seconds = 1.0 if args.quick else 3.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        endpoints = services.start()
        return asyncio.run(run(args, endpoints.database_url, work / "services", work))

    return run_with_services("rpm-bench-fhir-", body)


if __name__ == "__main__":
    raise SystemExit(main())
