"""A year of readings: load, bytes on disk, reads at size, restart-to-ready (docs/performance.md).

Builds ``--patients`` patients with ``--days`` days of readings (about 3.4 a day: blood
pressure twice, weight, SpO2 or glucose; ``benchmarks/_year_data.py``) loaded with COPY by
parallel processes, and ``--restart-patients`` monitored patients in all (devices, bindings,
``patient_metric_last``, open alerts). Then measures:

- bytes per reading on disk: the readings table with its indexes (its chunks' or partitions'
  when it has them), right after loading and after the lifecycle scheduler's packing job has
  run with its clock at the data's end (the indexes of the months, or chunks, closed for
  the default ``RPM_LIFECYCLE_PACK_AFTER_DAYS``, 3, rebuilt, as a server running through
  them would have; the open month is not, so the figure depends a little on where the end
  falls in its month); with TimescaleDB, again after compressing the chunks older than 7 days
  (``--no-compress`` skips it);
- through the HTTP API of ``rpm serve --role api`` (``--role gateway,workers`` beside it, as
  docker-compose.yml deploys them; ``benchmarks/_year_reads.py``), p50/p99 of the patient
  page (the dashboard view, the readings API, the blood-pressure chart), of
  ``/fhir/Observation?patient=&code=&date=ge..&date=lt..`` (a month), of the alert queue and of
  the monthly billing report;
- restart-to-ready (``benchmarks/_year_restart.py``): readings of ``--queued`` patients wait in
  the stopped server's MQTT session; seconds from the process's start to the first one
  accepted and evaluated (its alert stored).

Prints a table, then one JSON line (``readings``, ``bytes_per_reading`` (after packing;
``bytes_per_reading_loaded`` before),
``bytes_per_reading_compressed`` (the whole hypertable once compressed),
``bytes_per_compressed_chunk_reading`` (the compressed chunks alone), ``patient_page_p99_ms``,
``fhir_search_p99_ms``, ``alert_queue_p99_ms``, ``billing_report_p99_ms``,
``restart_ready_s``, ...).

    .venv/bin/python benchmarks/data_year.py --quick          # 1,000 patients x 90 days
    .venv/bin/python benchmarks/data_year.py                  # 10,000 x 365, 100,000 monitored
    .venv/bin/python benchmarks/data_year.py --dataset /tmp/year   # build once, reuse after

``--dataset DIR`` keeps the local services (the built database) in DIR and reuses them when
DIR holds a build of the same shape (patients, days, seed, flavour); without it everything
lives in a temporary directory removed at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/rules.py is named like the ``rules`` package: keep this folder behind the
# project on sys.path, and this checkout's project first (as panel.py does).
sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import _year_data as data
from _common import BenchError, children_of, run_with_services, server_env
from _panel_timing import sign_in_cookies
from _report import cpu_model, ok, progress, revision, tables
from _server import RpmServe, logins, postgres_info, stop_on_sigterm
from _year_reads import bearer_token, sample_patients, summary, time_reads
from _year_restart import publish_queued, restart_ready, stamp_now

from simulators.localservices import LocalServices, free_port

ROOT = Path(__file__).resolve().parents[1]
CLIENT_ID = "rpm-bench-year"
TARGETS = {"bytes": 150.0, "compressed": 40.0, "p99_ms": 100.0, "restart_s": 30.0}


async def readings_size(conn: Any) -> dict[str, int]:
    """Bytes of the readings table (heap and TOAST) and its indexes, chunks or partitions
    included."""
    hyper = await conn.fetchval(
        """SELECT count(*) FROM pg_extension e WHERE e.extname = 'timescaledb'
             AND EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                          WHERE hypertable_name = 'readings')"""
        if await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname='timescaledb'")
        else "SELECT 0"
    )
    if hyper:
        row = await conn.fetchrow("SELECT * FROM hypertable_detailed_size('readings')")
        # The compressed chunks alone: their bytes (data, TOAST, indexes) over their rows.
        packed = await conn.fetchrow(
            """SELECT coalesce(sum(s.compressed_heap_size + s.compressed_toast_size
                                   + s.compressed_index_size), 0) AS bytes,
                      coalesce(sum(s.numrows_pre_compression), 0) AS rows
                 FROM _timescaledb_catalog.compression_chunk_size s
                 JOIN _timescaledb_catalog.chunk c ON c.id = s.chunk_id
                 JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id
                WHERE h.table_name = 'readings'"""
        )
        return {
            "table": int(row["table_bytes"] or 0) + int(row["toast_bytes"] or 0),
            "indexes": int(row["index_bytes"] or 0),
            "total": int(row["total_bytes"] or 0),
            "parts": int(await conn.fetchval("SELECT count(*) FROM show_chunks('readings')")),
            "compressed_bytes": int(packed["bytes"]),
            "compressed_rows": int(packed["rows"]),
        }
    row = await conn.fetchrow(
        """SELECT coalesce(sum(pg_table_size(relid)), pg_table_size('readings')) AS t,
                  coalesce(sum(pg_indexes_size(relid)), pg_indexes_size('readings')) AS i,
                  greatest(count(*) FILTER (WHERE isleaf), 1) AS parts
             FROM pg_partition_tree('readings')"""  # no rows: not partitioned
    )
    return {
        "table": int(row["t"]),
        "indexes": int(row["i"]),
        "total": int(row["t"]) + int(row["i"]),
        "parts": int(row["parts"]),
    }


async def compress(conn: Any, end: datetime, say: Any) -> float:
    """TimescaleDB: compress the chunks older than 7 days (segment by metric, order by
    patient and time unless a migration configured compression); seconds taken."""
    configured = await conn.fetchval(
        """SELECT count(*) FROM timescaledb_information.compression_settings
            WHERE hypertable_name = 'readings'"""
    )
    if not configured:
        await conn.execute(
            """ALTER TABLE readings SET (timescaledb.compress,
                   timescaledb.compress_segmentby = 'metric',
                   timescaledb.compress_orderby = 'patient_id, measured_at DESC')"""
        )
    t0 = time.perf_counter()
    chunks = await conn.fetch(
        "SELECT c FROM show_chunks('readings', older_than => $1::timestamptz) c",
        end - timedelta(days=7),
    )
    for n, row in enumerate(chunks):
        await conn.execute("SELECT compress_chunk($1::regclass, if_not_compressed => true)", row[0])
        if n % 10 == 0:
            say(f"compressed {n + 1}/{len(chunks)} chunks ...")
    await conn.execute("ANALYZE readings")
    return time.perf_counter() - t0


async def steady_state(dsn: str, say: Any) -> float:
    """One missing-data pass, as a running server would have made (its alerts opened, their
    messages gone: the benchmark's patients have no phone), so a restart starts from the
    steady state; seconds the pass took."""
    from rpm.pipeline import IngestPipeline
    from rpm.storage.pool import create_pool
    from rpm.validation import ClockPolicy

    pool = await create_pool(dsn, size=2)
    try:
        pipeline = IngestPipeline(
            pool,
            ClockPolicy(max_skew=timedelta(minutes=5), max_age=timedelta(days=30)),
            rules_refresh_s=0,
        )
        t0 = time.perf_counter()
        result = await pipeline.check_missing()
        say(f"missing-data pass: {len(result.alerts_opened):,} alerts opened")
        seconds = time.perf_counter() - t0
        async with pool.acquire() as conn:
            await drain_outbox(conn)
        return seconds
    finally:
        await pool.close()


async def drain_outbox(conn: Any) -> None:
    """A running server's outbox is drained, not full: what is waiting is marked failed (the
    benchmark's patients have no phone; left, it would compete with the restart)."""
    await conn.execute(
        """UPDATE outbox SET failed_at = now(), last_error = 'benchmark: steady state'
            WHERE delivered_at IS NULL AND failed_at IS NULL"""
    )


def report_month(end: datetime) -> tuple[str, tuple[date, date]]:
    """The last whole month before ``end``: "YYYY-MM" and [first day, next month's first)."""
    last = (end - timedelta(days=1)).date().replace(day=1) - timedelta(days=1)
    first = last.replace(day=1)
    return f"{first:%Y-%m}", (first, last + timedelta(days=1))


async def run(args: argparse.Namespace, services: LocalServices, work: Path) -> tuple[str, dict]:
    from rpm.storage.migrate import migrate
    from rpm.storage.pool import connect

    say = progress("data_year", args.quiet)
    measured = revision("rpm")
    endpoints = services.start()
    dsn = endpoints.database_url
    marker = work / "built.json"
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    shape = data.Shape(args.patients, args.restart_patients, args.days, today, args.seed)
    password = secrets.token_urlsafe(18)
    conn = await connect(dsn)
    try:
        await migrate(conn)
        info = await postgres_info(conn)
        built = json.loads(marker.read_text()) if marker.exists() else None
        same = built is not None and {k: v for k, v in built["shape"].items() if k != "end"} == {
            k: v for k, v in shape.key().items() if k != "end"
        }
        if built is not None and not same:
            raise BenchError(f"{work} holds another build: {built['shape']}; remove it")
        if same:
            assert built is not None
            shape = data.Shape(
                **{**built["shape"], "end": datetime.fromisoformat(built["shape"]["end"])}
            )
            load = built["load"]
            size = built["size"]
            say(f"reusing the build in {work} (end {shape.end:%Y-%m-%d})")
            await data.reset_password(conn, password)
        else:
            month, _ = report_month(shape.end)
            say(f"building {shape.patients:,} patients x {shape.days} days, "
                f"{shape.monitored:,} monitored ...")  # fmt: skip
            await data.populate(conn, shape, date.fromisoformat(month + "-01"), password)
            load = await data.load_readings(dsn, conn, shape, say)
            load["finish_s"] = await data.finish(conn, shape, say)
            size = await readings_size(conn)  # before any compression
            if args.dataset:
                marker.write_text(json.dumps({"shape": shape.key(), "load": load, "size": size}))
        readings = int(await conn.fetchval("SELECT count(*) FROM readings"))
        _, pack_s = await data.pack_closed(dsn, shape.end, say)
        packed = await readings_size(conn)
        packed_parts = int(await conn.fetchval("SELECT count(*) FROM reading_partitions_packed"))
        monitored = int(await conn.fetchval("SELECT count(*) FROM patients"))
    finally:
        await conn.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = server_env(endpoints, CLIENT_ID, RPM_API_PORT=str(port))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if args.restart_only:  # a reused build: its server's MQTT session exists already
        steady_s, reads = 0.0, {}
        conn = await connect(dsn)
        try:
            await drain_outbox(conn)
        finally:
            await conn.close()
    else:
        steady_s = await steady_state(dsn, say)
        reads = await _reads(args, env, base, work, shape, password, say)

    # Restart: queued readings of distinct patients, the first of them a crisis.
    queued = [data.patient_id(1 + (k * 7919) % shape.monitored) for k in range(args.queued)]
    queued = [data.patient_id(1)] + [p for p in dict.fromkeys(queued) if p != data.patient_id(1)]
    _, fleet = logins(endpoints)
    at = stamp_now()
    publish_queued(fleet, queued, at)
    say(f"{len(queued):,} readings queued; restarting rpm serve ...")
    restart = await restart_ready(
        dsn,
        env,
        base,
        work / "restart.log",
        queued,
        at,
        py_spy=args.py_spy,
        profile=args.profile,
        say=say,
    )
    child = restart.pop("child")
    if args.profile:  # py-spy writes its profile when the server it recorded has exited
        for pid in children_of(child.proc.pid)[1:]:
            os.kill(pid, signal.SIGTERM)
        child.proc.wait(60)
    child.proc.terminate()
    child.stop(timeout=30)

    compressed = None
    compress_s = None
    if info["timescaledb"] != "off" and not (args.no_compress or args.restart_only):
        conn = await connect(dsn)
        try:
            say("compressing chunks older than 7 days ...")
            compress_s = await compress(conn, shape.end, say)
            compressed = await readings_size(conn)
        finally:
            await conn.close()

    if args.restart_only:
        rows = [(k.replace("_", " "), str(v), "") for k, v in restart.items()]
        note = f"load average {os.getloadavg()[0]:.2f}; {measured}"
        out = {"readings": readings, **{f"restart_{k}": v for k, v in restart.items()}}
        return tables({"Restart": rows}, [note]), {**out, "revision": measured}
    per = packed["total"] / readings
    per_loaded = size["total"] / readings
    per_c = compressed["total"] / readings if compressed else None
    # Per reading of the compressed chunks alone (the recent, uncompressed ones excluded).
    per_packed = (
        compressed["compressed_bytes"] / compressed["compressed_rows"]
        if compressed and compressed.get("compressed_rows")
        else None
    )
    packed_note = (
        f"{compressed['compressed_rows']:,} readings; target <= 40: {ok(per_packed <= 40)}"
        if compressed and per_packed is not None
        else ""
    )
    p99 = {k: v["p99_ms"] for k, v in reads.items()}
    page_p99 = max(p99["patient_page"], p99["patient_readings_api"])
    rows = [
        (k.replace("_", " "), f"{v['p50_ms']:,.1f} / {v['p99_ms']:,.1f} ms", f"{v['n']} requests")
        for k, v in reads.items()
    ]
    loaded = f"{load['readings']:,} by COPY in {load['load_s']:,.0f} s"
    summary_rows = [
        ("readings", f"{readings:,}", loaded),
        ("patients", f"{shape.patients:,} x {shape.days} days", f"{monitored:,} monitored"),
        (
            "bytes per reading",
            f"{per:,.1f}",
            f"after packing closed partitions ({packed_parts} of {packed['parts']} packed; "
            f"job {pack_s:,.0f} s): table {packed['table'] / readings:,.1f} + indexes "
            f"{packed['indexes'] / readings:,.1f}; target <= 150: {ok(per <= 150)}",
        ),
        (
            "  right after loading",
            f"{per_loaded:,.1f}",
            f"table {size['table'] / readings:,.1f} + indexes {size['indexes'] / readings:,.1f}",
        ),
        (
            "compressed",
            "n/a" if per_c is None else f"{per_c:,.1f}",
            "" if per_c is None else f"in {compress_s:,.0f} s; target <= 40: {ok(per_c <= 40)}",
        ),
        (
            "  compressed chunks alone",
            "n/a" if per_packed is None else f"{per_packed:,.1f}",
            packed_note,
        ),
        ("patient page p99", f"{page_p99:,.1f} ms", f"target <= 100: {ok(page_p99 <= 100)}"),
        (
            "FHIR search p99",
            f"{p99['fhir_search']:,.1f} ms",
            f"target <= 100: {ok(p99['fhir_search'] <= 100)}",
        ),
        (
            "restart to ready",
            f"{restart.get('ready_s', float('nan')):,.1f} s",
            f"server CPU {restart.get('ready_cpu_s', float('nan')):,.1f} s; "
            f"API {restart.get('api_s', float('nan')):,.1f} s, all {len(queued):,} queued "
            f"stored {restart.get('all_stored_s', float('nan')):,.1f} s; target <= 30: "
            f"{ok(restart.get('ready_s', 1e9) <= 30)}",
        ),
    ]
    table = tables(
        {"Reads through the HTTP API (p50 / p99)": rows, "Summary": summary_rows},
        [
            f"PostgreSQL {info['postgres']}, TimescaleDB {info['timescaledb']}; "
            f"load average {os.getloadavg()[0]:.2f}; {cpu_model()}; {measured}"
            + ("; PROFILED with py-spy" if args.profile else "")
        ],
    )
    result = {
        "readings": readings,
        "patients": shape.patients,
        "days": shape.days,
        "monitored_patients": monitored,
        "load_s": round(load["load_s"], 1),
        "bytes_per_reading": round(per, 1),
        "table_bytes_per_reading": round(packed["table"] / readings, 1),
        "index_bytes_per_reading": round(packed["indexes"] / readings, 1),
        "bytes_per_reading_loaded": round(per_loaded, 1),
        "index_bytes_per_reading_loaded": round(size["indexes"] / readings, 1),
        "partitions_packed": packed_parts,
        "pack_s": round(pack_s, 1),
        "bytes_per_reading_compressed": None if per_c is None else round(per_c, 1),
        "bytes_per_compressed_chunk_reading": None if per_packed is None else round(per_packed, 1),
        "patient_page_p99_ms": page_p99,
        "patient_chart_p99_ms": p99["patient_chart"],
        "fhir_search_p99_ms": p99["fhir_search"],
        "alert_queue_p99_ms": p99["alert_queue"],
        "billing_report_p99_ms": p99["billing_report"],
        "restart_ready_s": restart.get("ready_s"),
        "restart_ready_cpu_s": restart.get("ready_cpu_s"),
        "restart_api_s": restart.get("api_s"),
        "restart_all_queued_s": restart.get("all_stored_s"),
        "restart_queued": len(queued),
        "steady_missing_pass_s": round(steady_s, 1),
        "timescaledb": info["timescaledb"],
        "load_average": round(os.getloadavg()[0], 2),
        "reads": reads,
        "revision": measured,
    }
    return table, result


async def _reads(
    args: argparse.Namespace,
    env: dict[str, str],
    base: str,
    work: Path,
    shape: data.Shape,
    password: str,
    say: Any,
) -> dict[str, dict[str, float]]:
    """``rpm serve`` started as deployed (docker-compose.yml): the API in a process of its
    own, the gateway and the workers (timers, outbox) in another; the reads timed, both
    stopped."""
    rest = RpmServe(env, work / "serve-workers.log", base, roles="gateway,workers")
    server = RpmServe(env, work / "serve.log", base, roles="api")
    say("starting rpm serve (--role api; --role gateway,workers beside it) ...")
    try:
        await rest.start(wait=False)
        await server.start()
    except BaseException:
        server.stop()
        rest.stop()
        raise
    month, span = report_month(shape.end)
    try:
        rest.check_running()
        bearer = await bearer_token(base, data.NURSE, password)
        cookies = await sign_in_cookies(base, data.NURSE, password)
        patients = sample_patients(shape.patients, args.sample, args.seed)
        timings = await time_reads(base, bearer, cookies, patients, span, month, args.repeat, say)
        rest.check_running()  # the reads were made with the timers and the outbox running
    finally:
        server.stop()
        rest.stop()
    return summary(timings)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="1,000 patients x 90 days, 10,000 monitored"
    )
    p.add_argument("--patients", type=int, help="patients with readings every day (10,000)")
    p.add_argument("--days", type=int, help="days of readings (365)")
    p.add_argument("--restart-patients", type=int, help="monitored patients in all (100,000)")
    p.add_argument("--queued", type=int, default=1000, help="readings waiting at restart (1000)")
    p.add_argument("--sample", type=int, default=100, help="patients whose pages are read (100)")
    p.add_argument("--repeat", type=int, default=25, help="alert queue rounds (25)")
    p.add_argument("--seed", type=int, default=20261204)
    p.add_argument("--plain", action="store_true", help="plain PostgreSQL even with TimescaleDB")
    p.add_argument("--no-compress", action="store_true", help="skip TimescaleDB compression")
    p.add_argument("--dataset", type=Path, help="keep and reuse the built database in DIR")
    p.add_argument("--profile", type=Path, help="py-spy the restarted server into FILE (raw)")
    p.add_argument(
        "--restart-only", action="store_true", help="with --dataset: only the restart (and size)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = p.parse_args(argv)
    quick = {"patients": 1_000, "days": 90, "restart_patients": 10_000}
    full = {"patients": 10_000, "days": 365, "restart_patients": 100_000}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not 10 <= args.patients <= args.restart_patients or not 7 <= args.days <= 3660:
        p.error("--patients: 10 to --restart-patients; --days: 7 to 3660")
    if args.restart_only and args.dataset is None:
        p.error("--restart-only needs --dataset (a build whose server ran once)")
    args.py_spy = None
    if args.profile is not None:
        beside = Path(sys.executable).with_name("py-spy")
        args.py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
        if args.py_spy is None:
            p.error("--profile needs py-spy: uv pip install --python .venv/bin/python py-spy")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    stop_on_sigterm()
    return run_with_services(
        "rpm-bench-year-",
        lambda services, work: asyncio.run(run(args, services, work)),
        keep=args.keep,
        work=args.dataset,
        timescaledb=False if args.plain else None,
    )


if __name__ == "__main__":
    raise SystemExit(main())
