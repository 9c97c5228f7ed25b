"""The patient panel's server time with one care team of 10,000 patients (docs/panel.md).

Builds a population with set-based SQL (``--patients`` in the nurse's team, ``--others`` in
another team): 60 days of ``patient_days`` at adherences from 5% to 95%, the newest reading
of three metrics per patient (``patient_metric_last`` and its readings), open alerts for one
patient in eight, this month's time entries (some interactive) and a published segment;
then starts ``rpm serve`` and times every sort and filter of ``GET /api/panel`` and of the
dashboard page (``benchmarks/_panel_timing.py``). Prints a table, then one JSON line with
``patients`` and ``panel_p99_ms``.

    .venv/bin/python benchmarks/panel.py --patients 10000
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/rules.py is named like the ``rules`` package, which the server imports: keep this
# folder behind the project on sys.path (``_common`` is still found), as rules.py does; and
# this checkout's project first (the virtualenv may have another checkout installed).
sys.path.sort(key=lambda p: p in ("", str(Path(__file__).resolve().parent)))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any

import httpx
from _common import run_with_services, server_env
from _panel_timing import panel_p99_ms, sign_in_cookies
from _report import cpu_model, progress, revision, tables
from _server import RpmServe, postgres_info, stop_on_sigterm

from simulators.localservices import LocalServices, free_port

ROOT = Path(__file__).resolve().parents[1]
TEAM = "bench-team"
NURSE = "bench.nurse"
SEGMENT = "bp-low-adherence"
TARGET_MS = 500.0

# (statement, its parameters by name: patients, team, others, nurse)
POPULATION_SQL: list[tuple[str, tuple[str, ...]]] = [
    ("SELECT setseed(0.16)", ()),
    (
        """INSERT INTO care_teams (id, title)
           VALUES ($1::text, 'Benchmark team'), ('others', 'Others') ON CONFLICT DO NOTHING""",
        ("team",),
    ),
    # Monitoring started 0-89 days ago (one in five: NULL, from the first day with readings).
    (
        """INSERT INTO patients (id, display_name, timezone, programs, care_team,
                                 monitoring_started_on, created_at)
           SELECT 'pp' || lpad(i::text, 7, '0'), 'Patient ' || left(md5(i::text), 10),
                  (ARRAY['America/New_York', 'America/Chicago', 'America/Denver',
                         'America/Los_Angeles'])[1 + i % 4],
                  CASE i % 3 WHEN 0 THEN '{hypertension}'
                             WHEN 1 THEN '{heart_failure,hypertension}'
                             ELSE '{diabetes}' END::text[],
                  CASE WHEN i <= $1::int THEN $2::text ELSE 'others' END,
                  CASE WHEN i % 5 = 0 THEN NULL ELSE current_date - (i * 7919) % 90 END,
                  now() - interval '120 days'
             FROM generate_series(1, $1::int + $3::int) i""",
        ("patients", "team", "others"),
    ),
    # Days with readings over the last 60 days, at the patient's own adherence (``0 * d``:
    # a draw per day, not one per patient hoisted out of the join).
    (
        """INSERT INTO patient_days (patient_id, day, readings, metrics)
           SELECT p.id, current_date - d, 2, '{blood_pressure,heart_rate}'
             FROM patients p CROSS JOIN generate_series(0, 59) d
            WHERE random() + 0 * d < 0.05 + (hashtext(p.id) & 1023) / 1100.0""",
        (),
    ),
    # Each patient's devices, bound from the start (a patient's readings are found through
    # the patient's devices: migration 0041).
    (
        """WITH made AS (
               INSERT INTO devices (id, kind)
               SELECT p.id || '-' || m.metric, m.kind FROM patients p
                CROSS JOIN (VALUES ('blood_pressure', 'bp_cuff'), ('heart_rate', 'bp_cuff'),
                                   ('weight', 'scale')) AS m(metric, kind)
               RETURNING id)
           INSERT INTO device_bindings (device_id, patient_id, during)
           SELECT id, split_part(id, '-', 1), tstzrange(now() - interval '1 year', NULL)
             FROM made""",
        (),
    ),
    (
        """INSERT INTO readings (measured_at, device_id, metric, patient_id, v1, v2, v3,
                                 received_at)
           SELECT t.at, p.id || '-' || t.metric, t.metric::rpm_metric, p.id, t.v1, t.v2, t.v3,
                  t.at
             FROM patients p
             JOIN LATERAL (SELECT max(day) AS day FROM patient_days d WHERE d.patient_id = p.id) l
               ON l.day IS NOT NULL
            CROSS JOIN LATERAL (VALUES
                  -- systolic, diastolic, pulse; pulse; weight (the slots)
                  ('blood_pressure', l.day + time '08:00', 110 + (hashtext(p.id) & 63),
                   70 + (hashtext(p.id) & 15), 72),
                  ('heart_rate', l.day + time '08:00', 72, NULL, NULL),
                  ('weight', l.day + time '07:30', 60 + (hashtext(p.id) & 31), NULL, NULL)
            ) AS t(metric, at, v1, v2, v3)""",
        (),
    ),
    (
        """INSERT INTO patient_metric_last (patient_id, metric, measured_at)
           SELECT patient_id, metric, max(measured_at) FROM readings GROUP BY 1, 2""",
        (),
    ),
    (
        """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation, evidence,
                               opened_at)
           SELECT id, 'bench.rule', (ARRAY['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'])[1 + i % 4],
                  CASE WHEN i % 3 = 0 THEN 'acknowledged' ELSE 'open' END, 'Benchmark alert',
                  'benchmark', '{}', now() - (i % 48) * interval '1 hour'
             FROM (SELECT id, row_number() OVER (ORDER BY id) AS i FROM patients) p
            WHERE i % 8 = 0""",
        (),
    ),
    (
        """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation, evidence,
                               opened_at, resolved_at)
           SELECT id, 'bench.old', 'HIGH', 'resolved', 'Old alert', 'benchmark', '{}',
                  now() - interval '20 days', now() - interval '19 days'
             FROM patients WHERE hashtext(id) % 4 = 0""",
        (),
    ),
    # 0-4 entries this month per patient, one in five interactive, and some deleted.
    (
        """INSERT INTO time_entries (patient_id, staff_id, started_at, duration_s, activity,
                                     source, deleted_at)
           SELECT p.id, $1::text,
                  date_trunc('month', now()) + random() * (now() - date_trunc('month', now())),
                  60 + (random() * 840)::int,
                  CASE WHEN random() < 0.2 THEN 'interactive_phone' ELSE 'data_review' END,
                  'manual', CASE WHEN random() < 0.05 THEN now() END
             FROM patients p CROSS JOIN LATERAL generate_series(1, abs(hashtext(p.id)) % 5) n""",
        ("nurse",),
    ),
    # The steady state of a running system: autovacuum has set the visibility map (index-only
    # scans skip the heap) and the statistics are current.
    ("VACUUM ANALYZE", ()),
]


async def populate(conn: Any, patients: int, others: int, password: str) -> dict[str, int]:
    from rpm.auth import hash_password
    from rpm.engagement import segments as segment_spec
    from rpm.storage import rule_programs, staff_auth
    from rpm.storage import segments as segment_store
    from rpm.storage import staff as staff_store

    await rule_programs.seed_builtin(conn)
    await staff_auth.add_staff(
        conn,
        staff_id=NURSE,
        display_name="Benchmark Nurse",
        role="nurse",
        password_hash=await asyncio.to_thread(hash_password, password),
        phone=None,
        replace=True,
    )
    values = {"patients": patients, "team": TEAM, "others": others, "nurse": NURSE}
    for sql, names in POPULATION_SQL:
        await conn.execute(sql, *(values[n] for n in names))
    await staff_store.add_member(conn, TEAM, NURSE)
    await segment_store.publish_segment(
        conn,
        SEGMENT,
        segment_spec.parse(
            {
                "where": {
                    "all": [
                        {"fact": "program", "op": "includes", "value": "hypertension"},
                        {"fact": "days_with_readings_7d", "op": "<", "value": 4},
                    ]
                }
            }
        ),
        "staff:bench",
        None,
    )
    counts = {}
    for table in ("patients", "patient_days", "readings", "alerts", "time_entries"):
        counts[table] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    return counts


async def run(args: argparse.Namespace, endpoints: Any, work: Path) -> tuple[str, dict[str, Any]]:
    from rpm.storage.migrate import migrate
    from rpm.storage.pool import connect

    say = progress("panel", args.quiet)
    measured = revision("rpm")
    password = secrets.token_urlsafe(18)
    conn = await connect(endpoints.database_url)
    try:
        await migrate(conn)
        info = await postgres_info(conn)
        say(f"building {args.patients:,} patients of one team and {args.others:,} others ...")
        t0 = time.perf_counter()
        counts = await populate(conn, args.patients, args.others, password)
        build_s = time.perf_counter() - t0
    finally:
        await conn.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = server_env(endpoints, "rpm-bench-panel", RPM_API_PORT=str(port))
    # This checkout's server, whichever one the virtualenv's ``rpm`` script was installed from.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    server = RpmServe(env, work / "serve.log", base)
    say("starting rpm serve ...")
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            token = await http.post(
                "/api/auth/token", json={"username": NURSE, "password": password}
            )
            token.raise_for_status()
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        cookies = await sign_in_cookies(base, NURSE, password)
        say(f"timing every sort and filter, {args.repeat} requests each ...")
        timed = await panel_p99_ms(
            base,
            headers,
            cookies=cookies,
            program="diabetes",
            segment=SEGMENT,
            repeat=args.repeat,
        )
    finally:
        server.stop()
    rows = [
        (label, f"{c['p50_ms']:,.1f} / {c['p99_ms']:,.1f} ms", "")
        for label, c in timed["cases"].items()
    ]
    worst = timed["panel_p99_ms"]
    summary = [
        ("patients in the team", f"{args.patients:,}", f"{args.others:,} in another team"),
        ("rows", f"{counts['patient_days']:,}", "patient_days (60 days)"),
        ("", f"{counts['time_entries']:,}", "time entries this month"),
        ("", f"{counts['alerts']:,}", "alerts"),
        ("built in", f"{build_s:,.1f} s", ""),
        (
            "worst p99",
            f"{worst:,.1f} ms",
            "target <= 500: " + ("ok" if worst <= TARGET_MS else "MISSED"),
        ),
    ]
    table = tables(
        {
            "Patient panel: server time per request (p50 / p99)": rows,
            "Summary": summary,
        },
        [
            f"{timed['requests']} requests, one at a time, on loopback; "
            f"PostgreSQL {info['postgres']}, TimescaleDB {info['timescaledb']}; "
            f"{cpu_model()}; {measured}"
        ],
    )
    result = {
        "patients": args.patients,
        "other_patients": args.others,
        "panel_p99_ms": worst,
        "panel_p50_ms": timed["panel_p50_ms"],
        "requests": timed["requests"],
        "build_s": round(build_s, 1),
        "revision": measured,
    }
    return table, result


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--patients", type=int, default=10_000, help="in the nurse's team (10,000)")
    p.add_argument("--others", type=int, default=0, help="patients of another team (0)")
    p.add_argument("--repeat", type=int, default=10, help="requests per case (10)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if not 10 <= args.patients <= 1_000_000 or not 0 <= args.others <= 1_000_000:
        p.error("--patients: 10 to 1,000,000; --others: 0 to 1,000,000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    stop_on_sigterm()

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        endpoints = services.start()
        return asyncio.run(run(args, endpoints, work))

    return run_with_services("rpm-bench-panel-", body, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
