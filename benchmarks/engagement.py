"""Engagement benchmark: segments and campaigns over a population with 30 days of history,
through a day of planner passes and the SMS worker's drain to the local Twilio stand-in.

    uv run python benchmarks/engagement.py            # 100,000 patients (about 5 minutes)
    uv run python benchmarks/engagement.py --quick    # 10,000 patients (under a minute)

Everything runs on loopback in a temporary directory, removed at the end: LocalServices'
PostgreSQL (TimescaleDB when installed) and the Twilio stand-in (``simulators.twilio_sink``)
in this process, on the same event loop as the worker. The clock is pinned: the benchmark's
day is Wednesday 10 June 2026, 00:00 to 23:00 UTC, and nothing reads the wall clock but the
timings.

1. Population, not timed (``_engagement_data``: set-based SQL, no row through Python).
   ``--patients`` patients in five time zones (New York, Chicago, Los Angeles, Madrid, Tokyo),
   English or Spanish, in the hypertension (70 %), heart-failure (25 %) or COPD (20 %)
   programs, 5 % without SMS consent, 2 % opted out, 1 % without a phone, 15 % with quiet
   hours other than 21:00-08:00. Adherence: half measure on 92 % of days, a quarter on 60 %,
   15 % on 25 %, 5 % stopped 3-12 days ago, 5 % never measured; each at their own time of day
   (06:00-12:59 local; a fifth again 11 hours later), one reading per metric of their
   programs. What the engagement code reads is there as the unit of work keeps it:
   ``patient_days`` for 30 days, ``patient_metric_last``, and ``readings`` for the last 8 days
   only (the placeholders ``bp_avg_7d`` and ``weight_change_7d`` read 7 days; 30 days of
   readings would triple the set-up time for rows nothing reads). 1 % of patients have an
   open critical or acknowledged high alert, 2 % an open medium one; 4 % already had 1-3
   alert SMS on the benchmark's local day (from 08:15 local), which count against the cap.
2. Segments. Six are published with ``rpm.storage.engagement.publish_segment``.
   ``segment_eval_s``: the wall time of one ``segment_sizes`` call (one statement counting the
   members of all six over the whole population, at 00:00 UTC), median of ``--repeat`` calls;
   then the first page (100) of ``segment_members`` of each.
3. A day of triggers. Three live campaigns: ``bp-nudge`` (no blood pressure by 11:00 local,
   low-adherence hypertension patients), ``gap-check`` (no reading on the last 2 days, every
   patient) and ``hf-weekly`` (Wednesdays from 10:00 local, heart-failure patients), whose
   messages use every kind of placeholder. They have been live for weeks: what they planned
   before the day (yesterday's nudges, the gaps already open) is there (``--launch``: they go
   live at 00:00 UTC, and the first pass plans everything due by then). Every hour of the
   day, the readings measured in that hour arrive (stored, counted into their days, as the
   unit of work does; not timed), ``CampaignPlanner.tick`` runs at that hour (timed), an
   urgent alert SMS is queued behind the pass's messages, and the real ``SmsOutboxWorker``
   drains everything due at that hour to the stand-in (timed; the worker's defaults, daily
   cap 3). ``planned_per_s``: messages planned / wall time of all 24 passes, idle ones
   included; ``sent_per_s``: messages the stand-in accepted / wall time of the drains. A pass
   that runs past ``--pass-timeout`` is cancelled by PostgreSQL and counted.
4. Checks, in SQL of the benchmark's own (``_engagement_checks``): each message the stand-in
   accepted, at the pinned hour of its drain, against the recipient's settings: more messages
   in a local day than the daily cap (alert SMS included), a campaign message in quiet hours,
   to a patient without consent or opted out, or during an open high or critical alert, a
   message in the wrong language or to nobody we know. Each must be 0. Beside them: a
   campaign's two messages on one local day, and a day's message sent on a later day.

The last line of output is one JSON object; the table before it explains it
(``_engagement_report``).
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
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import _engagement_checks as checks
import _engagement_data as data
import asyncpg
from _common import (
    children_of,
    cpu_seconds,
    machine_busy_seconds,
    pid_from_file,
    run_with_services,
)
from _engagement_report import Day, SegmentFigures, report
from _report import progress, revision
from _server import (
    TWILIO_SID,
    TWILIO_TOKEN,
    postgres_info,
    stop_on_sigterm,
)

from alerts.sms import TwilioSms
from rpm.engagement import campaigns, segments
from rpm.settings import ApiSettings, SmsSettings
from rpm.storage import campaigns as campaign_store
from rpm.storage import segments as segment_store
from rpm.storage.migrate import migrate
from rpm.storage.pool import connect, create_pool
from rpm.workers.campaigns import CampaignPlanner
from rpm.workers.sms_config import DeliveryConfig
from rpm.workers.sms_outbox import SmsOutboxWorker
from simulators.localservices import LocalServices
from simulators.twilio_sink import TwilioSink

START = datetime(2026, 6, 10, tzinfo=UTC)  # a Wednesday, 00:00 UTC
HOURS = 24
DAILY_CAP = 3  # SmsSettings' default
ACTOR = "staff:bench"

SEGMENTS: dict[str, dict[str, Any]] = {
    "bp-low-adherence": {
        "description": "hypertension patients who measured on fewer than 4 of the last 7 days",
        "where": {
            "all": [
                {"fact": "program", "op": "includes", "value": "hypertension"},
                {"fact": "days_with_readings_7d", "op": "<", "value": 4},
            ]
        },
    },
    "heart-failure": {"where": {"fact": "program", "op": "includes", "value": "heart_failure"}},
    "spanish": {"where": {"fact": "language", "op": "=", "value": "es"}},
    "enrolled": {"where": {"fact": "weeks_since_enrolment", "op": ">=", "value": 0}},
    "lapsed": {
        "where": {
            "any": [
                {"fact": "days_since_last_reading", "op": ">=", "value": 3},
                {"fact": "days_since_last_reading", "op": "is_null", "value": True},
            ]
        }
    },
    "older-at-risk": {
        "where": {
            "all": [
                {"fact": "age", "op": ">=", "value": 75},
                {"fact": "open_alert_severity", "op": ">=", "value": "medium"},
                {"fact": "days_with_readings_30d", "op": "<", "value": 20},
            ]
        }
    },
}

# Each message opens with a fixed text, so the checks can tell campaign and language apart.
CAMPAIGNS: dict[str, dict[str, Any]] = {
    "bp-nudge": {
        "segment": "bp-low-adherence",
        "trigger": {"kind": "no_reading_by", "local_time": "11:00", "metric": "blood_pressure"},
        "messages": {
            "en": "No blood pressure yet today. You measured on {days_measured_7d} of the last "
            "7 days (average {bp_avg_7d}). Reply STOP to opt out.",
            "es": "Hoy no hay presión todavía. Midió {days_measured_7d} de los últimos 7 días "
            "(media {bp_avg_7d}). Responda STOP para no recibir más.",
        },
    },
    "gap-check": {
        "segment": "enrolled",
        "trigger": {"kind": "missed_days", "days": 2},
        "messages": {
            "en": "We have had no reading from you for {days_since_last} days. Is your device "
            "working? Reply HELP for help.",
            "es": "No tenemos lecturas suyas desde hace {days_since_last} días. ¿Funciona su "
            "aparato? Responda HELP para ayuda.",
        },
    },
    "hf-weekly": {
        "segment": "heart-failure",
        "trigger": {"kind": "weekly", "weekday": "wed", "local_time": "10:00"},
        "messages": {
            "en": "Your week: readings on {days_measured_7d} of 7 days, weight {weight_change_7d} "
            "kg.",
            "es": "Su semana: medidas en {days_measured_7d} de 7 días, peso {weight_change_7d} kg.",
        },
    },
}
PREFIXES = {
    (name, language): text.split("{", 1)[0]
    for name, c in CAMPAIGNS.items()
    for language, text in c["messages"].items()
}


def postgres_cpu(root: Path) -> float:
    """CPU seconds PostgreSQL has used so far: the postmaster, its living backends, and those
    that have exited (parallel workers, autovacuum), which the postmaster has reaped."""
    postmaster = pid_from_file(root / "pg" / "postmaster.pid")
    if postmaster is None:
        return 0.0
    total = cpu_seconds(children_of(postmaster))
    try:
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime
    except (OSError, IndexError, ValueError):
        pass
    return total


# An urgent alert SMS queued right after each pass, as the ingest unit of work queues one
# (its outbox row is due from the time it is written, after the pass's rows): each for another
# patient no campaign writes to (COPD, never measured, no SMS yet), so it counts against
# nobody's cap. How long it waits behind the pass's campaign messages is a figure.
URGENT_SMS = """
WITH who AS (
    SELECT p.id, p.phone FROM patients p
     WHERE 'copd' = ANY(p.programs) AND p.sms_consent AND p.phone IS NOT NULL
       AND p.sms_opted_out_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM patient_metric_last l WHERE l.patient_id = p.id)
       AND NOT EXISTS (SELECT 1 FROM sms_messages m WHERE m.patient_id = p.id)
     ORDER BY p.id OFFSET $2 LIMIT 1
), queued AS (
    INSERT INTO outbox (channel, dedupe_key, payload, next_attempt_at)
    SELECT 'sms', 'bench-urgent:' || who.id,
           jsonb_build_object('recipient', 'patient', 'template', 'alert', 'patient_id', who.id,
                              'severity', 'CRITICAL', 'title', 'Blood pressure very high',
                              'urgent', true),
           $1::timestamptz
      FROM who
    RETURNING id
)
SELECT who.phone, queued.id FROM who, queued"""


def yesterday_sql() -> str:
    """What the campaigns planned before the day, as if live for weeks (``$1`` the start):
    the nudge of each patient's last local day whose nudge hour had passed, and the gap each
    patient was already in an hour before. Without it the first pass plans all of those at
    once, as on the day campaigns go live (``--launch``)."""
    nudge, gap = CAMPAIGNS["bp-nudge"]["trigger"], CAMPAIGNS["gap-check"]["trigger"]
    hours, minutes = (int(x) for x in nudge["local_time"].split(":"))
    return f"""
INSERT INTO campaign_sends (campaign, patient_id, occurrence, version, planned_at)
SELECT 'bp-nudge', p.id,
       (($1::timestamptz AT TIME ZONE p.timezone)
        - interval '{hours} hours {minutes} minutes')::date::text,
       1, $1::timestamptz - interval '1 day'
  FROM patients p
UNION ALL
SELECT 'gap-check', p.id, 'gap-after:' || l.day::text, 1, $1::timestamptz - interval '1 day'
  FROM patients p
  JOIN LATERAL (SELECT (max(m.measured_at) AT TIME ZONE p.timezone)::date AS day
                  FROM patient_metric_last m WHERE m.patient_id = p.id) l ON true
 WHERE l.day < (($1::timestamptz - interval '1 hour') AT TIME ZONE p.timezone)::date
               - {int(gap["days"])}"""


# --- segments ----------------------------------------------------------------------------------


async def measure_segments(conn: Any, repeat: int, root: Path) -> SegmentFigures:
    for name, document in SEGMENTS.items():
        await segment_store.publish_segment(conn, name, segments.parse(document), ACTOR, None)
    current = await segment_store.current_segments(conn)
    machine0, pg0, own0 = machine_busy_seconds(), postgres_cpu(root), time.process_time()
    runs, sizes = [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        sizes = await segment_store.segment_sizes(conn, START, current, None)
        runs.append(time.perf_counter() - t0)
    members = {}
    for s in current:
        t0 = time.perf_counter()
        await segment_store.segment_members(conn, START, s.spec, None, limit=100)
        members[s.name] = time.perf_counter() - t0
    ours = postgres_cpu(root) - pg0 + time.process_time() - own0
    return SegmentFigures(sizes, runs, members, machine_busy_seconds() - machine0 - ours)


# --- the day -----------------------------------------------------------------------------------


def timing_plan(day: Day, this_pass: dict[str, float]) -> Callable[[], None]:
    """Time each campaign's ``plan`` as the planner calls it (into ``this_pass``, by name);
    returns the undo."""
    real = campaign_store.plan

    async def timed(
        conn: Any, version: campaign_store.CampaignVersion, *args: Any, **kw: Any
    ) -> int:
        t0 = time.perf_counter()
        try:
            return await real(conn, version, *args, **kw)
        finally:
            took = time.perf_counter() - t0
            this_pass[version.name] = took
            day.plan_s[version.name] = day.plan_s.get(version.name, 0.0) + took

    campaign_store.plan = timed  # type: ignore[assignment]

    def undo() -> None:
        campaign_store.plan = real  # type: ignore[assignment]

    return undo


async def run_day(
    dsn: str, root: Path, sink: TwilioSink, channel: TwilioSms, args: argparse.Namespace
) -> Day:
    day = Day()
    clock = [START]
    pool = await create_pool(dsn, size=4)
    config = DeliveryConfig.from_settings(
        SmsSettings(daily_cap=DAILY_CAP), ApiSettings(dashboard_url="https://rpm.example.org")
    )
    worker = SmsOutboxWorker(pool, channel, config, clock=lambda: clock[0])
    planner = CampaignPlanner(
        pool, DAILY_CAP, clock=lambda: clock[0], connections=args.planner_connections
    )
    this_pass: dict[str, float] = {}
    undo = timing_plan(day, this_pass)
    say = progress("engagement", args.quiet)
    machine0, pg0, own0 = machine_busy_seconds(), postgres_cpu(root), time.process_time()
    try:
        async with pool.acquire() as conn:
            for name, document in CAMPAIGNS.items():
                await campaign_store.publish_campaign(
                    conn, name, campaigns.parse(document), True, ACTOR, None
                )
            if not args.launch:
                await conn.execute(yesterday_sql(), START)
        for hour in range(HOURS):
            now = START + timedelta(hours=hour)
            clock[0] = now
            if hour:
                async with pool.acquire() as conn:
                    day.arrived += await data.arrive(conn, START, now - timedelta(hours=1), now)
            pg_before = postgres_cpu(root)
            t0 = time.perf_counter()
            this_pass.clear()
            try:
                done = await planner.tick(now)
            except asyncpg.QueryCanceledError:  # the pass's transaction is rolled back
                day.timeouts += 1
                say(f"{now:%H:%M}: a planner pass ran past {args.pass_timeout:g} s: cancelled")
            else:
                for name, n in done.planned.items():
                    day.planned[name] = day.planned.get(name, 0) + n
                    if n > day.busiest.get(name, (0, 0.0))[0]:
                        day.busiest[name] = (n, this_pass.get(name, 0.0))
            day.passes_s.append(time.perf_counter() - t0)
            pg_planned = postgres_cpu(root)
            day.pg_plan_cpu_s += pg_planned - pg_before
            async with pool.acquire() as conn:
                queued = await conn.fetchrow(URGENT_SMS, now, hour)
            urgent, urgent_id = queued if queued is not None else (None, None)
            t0, c0, first = time.perf_counter(), time.process_time(), len(sink.messages)
            began = datetime.now(UTC)
            while n := await worker.drain_once():
                day.handled += n
            day.drain_s += time.perf_counter() - t0
            day.drain_cpu_s += time.process_time() - c0
            day.pg_drain_cpu_s += postgres_cpu(root) - pg_planned
            new = sink.messages[first:]
            async with pool.acquire() as conn:  # the stand-in's clock has whole seconds
                delivered = await conn.fetchval(
                    "SELECT delivered_at FROM outbox WHERE id = $1", urgent_id
                )
            for k, m in enumerate(new):
                if m.to == urgent and delivered is not None:
                    day.urgent.append(((delivered - began).total_seconds(), k))
            day.sent += [
                checks.Sent(m.sid, m.to, m.body or "", now, urgent=m.to == urgent) for m in new
            ]
            say(
                f"{now:%H:%M} UTC: pass {day.passes_s[-1]:.2f} s, {day.planned_total:,} planned "
                f"so far; {len(new):,} sent in {time.perf_counter() - t0:.1f} s"
            )
    finally:
        undo()
        await pool.close()
    day.pg_cpu_s = postgres_cpu(root) - pg0
    day.own_cpu_s = time.process_time() - own0
    day.others_cpu_s = machine_busy_seconds() - machine0 - day.pg_cpu_s - day.own_cpu_s
    return day


# --- the run -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, dsn: str, root: Path) -> tuple[str, dict[str, Any]]:
    say = progress("engagement", args.quiet)
    measured = revision("rpm")  # now: the code imported, not the tree at the end
    conn = await connect(dsn)
    try:
        await migrate(conn)
        info = await postgres_info(conn)
        say(f"building {args.patients:,} patients with 30 days of history ...")
        t0 = time.perf_counter()
        rows = await data.build(conn, args.patients, START, say=lambda line: say(f"  {line}"))
        build_s = time.perf_counter() - t0
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(
            f'ALTER DATABASE "{database}" SET statement_timeout = {int(args.pass_timeout * 1000)}'
        )
        say("segments ...")
        seg = await measure_segments(conn, args.repeat, root)
    finally:
        await conn.close()
    sink = TwilioSink(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN)
    await sink.start()
    channel = TwilioSms(
        account_sid=TWILIO_SID,
        auth_token=TWILIO_TOKEN,
        from_number="+15550009999",
        base_url=sink.base_url,
        validity_period_s=900,
    )
    try:
        say("a day of planner passes and drains ...")
        day = await run_day(dsn, root, sink, channel, args)
    finally:
        await channel.close()
        await sink.stop()
    conn = await connect(dsn)
    try:
        found = await checks.check(conn, day.sent, PREFIXES, DAILY_CAP)
        twice = await checks.duplicates(conn)
        outcome = await checks.outcomes(conn)
    finally:
        await conn.close()
    info["revision"] = measured
    return report(args, info, rows, build_s, seg, day, found, twice, outcome, CAMPAIGNS, DAILY_CAP)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--patients", type=int, default=None, help="population (100,000)")
    p.add_argument("--quick", action="store_true", help="10,000 patients")
    p.add_argument("--repeat", type=int, default=5, help="segment_sizes calls (median of 5)")
    p.add_argument(
        "--pass-timeout",
        type=float,
        default=120.0,
        help="statement_timeout in s: a planner pass running longer is cancelled (120)",
    )
    p.add_argument(
        "--launch",
        action="store_true",
        help="the campaigns go live at 00:00: the first pass plans everything due by then",
    )
    p.add_argument(
        "--planner-connections",
        type=int,
        default=2,
        help="connections a planner pass plans its parts on, side by side (2)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    args.patients = args.patients or (10_000 if args.quick else 100_000)
    if not 100 <= args.patients <= 999_999:
        p.error("--patients: 100 to 999,999")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    stop_on_sigterm()

    def body(services: LocalServices, work: Path) -> tuple[str, dict[str, Any]]:
        endpoints = services.start()
        return asyncio.run(run(args, endpoints.database_url, Path(endpoints.root)))

    return run_with_services("rpm-bench-engagement-", body, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
