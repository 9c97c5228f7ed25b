"""The population of ``benchmarks/engagement.py``, built in the database with set-based SQL
(``generate_series``; no row passes through Python): patients, 30 days of days with readings,
the last 8 days of readings, open and resolved alerts, the alert SMS already sent on the
benchmark's day, and the readings measured during that day, which wait in ``bench_plan`` and
arrive hour by hour as the pinned clock advances (:func:`arrive`).

Every draw is ``hashint8`` of the patient's number and a salt, so the population is the same
on every run and on every machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rpm.storage.engagement import rebuild_day_bits

ZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Europe/Madrid",
    "Asia/Tokyo",
)
HISTORY_DAYS = 30  # local days with readings (patient_days) before the benchmark's day
READING_DAYS = 8  # readings rows: the days the read paths (bp_avg_7d, weight_change_7d) touch
TEAMS = 8


@dataclass(frozen=True, slots=True)
class Mix:
    """Shares of the population (fractions); the defaults are the documented mix."""

    hypertension: float = 0.55  # alone
    both: float = 0.15  # hypertension and heart failure
    heart_failure: float = 0.10  # alone; the rest COPD
    daily: float = 0.50  # measure on 92 % of days
    often: float = 0.25  # 60 %
    seldom: float = 0.15  # 25 %
    stopped: float = 0.05  # 85 % until 3-12 days ago, then never; the rest never measured
    twice_daily: float = 0.20  # morning and evening
    no_phone: float = 0.01
    no_consent: float = 0.05
    opted_out: float = 0.02
    spanish: float = 0.20  # and everyone in Madrid
    critical_open: float = 0.005
    high_acknowledged: float = 0.005
    medium_open: float = 0.02
    resolved: float = 0.01
    alert_sms: float = 0.04  # patients with 1-3 alert SMS already sent on the day


def u(i: str, salt: int | str) -> str:
    """SQL for a uniform draw in [0, 1) for patient number ``i`` and ``salt``."""
    return f"((hashint8(({i})::bigint * 1000 + ({salt})) & 2147483647) / 2147483648.0)"


_CARE_TEAMS = f"""INSERT INTO care_teams (id, title)
SELECT 'team-' || t, 'Team ' || t FROM generate_series(0, {TEAMS - 1}) t
ON CONFLICT DO NOTHING"""

_BENCH_TABLES = """
CREATE UNLOGGED TABLE bench_patients (
    i integer PRIMARY KEY, id text NOT NULL, timezone text NOT NULL, u_program float8,
    u_class float8, mtime time, twice boolean, stopped_for integer, u_alert float8,
    u_sms float8);
CREATE UNLOGGED TABLE bench_plan (
    patient_id text NOT NULL, i integer NOT NULL, metric text NOT NULL, timezone text NOT NULL,
    measured_at timestamptz NOT NULL)"""

# $1 patients, $2 twice-daily share
_BENCH_PATIENTS = f"""INSERT INTO bench_patients
SELECT i, 'p' || lpad(i::text, 6, '0'), (ARRAY{list(ZONES)!r})[1 + i % {len(ZONES)}],
       {u("i", 1)}, {u("i", 2)}, '06:00'::time + floor({u("i", 3)} * 420) * interval '1 minute',
       {u("i", 4)} < $2, 3 + floor({u("i", 11)} * 10)::int, {u("i", 12)}, {u("i", 13)}
  FROM generate_series(1, $1::int) i"""

# $1 start, $2 no phone, $3 no consent, $4 opted out, $5 Spanish, $6 hypertension, $7 both,
# $8 heart failure
_PATIENTS = f"""INSERT INTO patients (id, display_name, phone, sms_consent, language, timezone,
                      programs, created_at, sms_opted_out_at, quiet_hours_start,
                      quiet_hours_end, birth_date, care_team)
SELECT b.id, 'Patient ' || b.i,
       CASE WHEN {u("b.i", 5)} < $2 THEN NULL ELSE '+1555' || lpad(b.i::text, 7, '0') END,
       {u("b.i", 6)} >= $3,
       CASE WHEN b.timezone = 'Europe/Madrid' OR {u("b.i", 14)} < $5 THEN 'es' ELSE 'en' END,
       b.timezone,
       CASE WHEN b.u_program < $6 THEN ARRAY['hypertension']
            WHEN b.u_program < $6 + $7 THEN ARRAY['heart_failure', 'hypertension']
            WHEN b.u_program < $6 + $7 + $8 THEN ARRAY['heart_failure']
            ELSE ARRAY['copd'] END,
       $1::timestamptz - (35 + floor({u("b.i", 10)} * 700)) * interval '1 day',
       CASE WHEN {u("b.i", 7)} < $4 THEN $1::timestamptz - interval '10 days' END,
       CASE WHEN {u("b.i", 8)} < 0.10 THEN '22:00'::time
            WHEN {u("b.i", 8)} < 0.15 THEN '20:00'::time ELSE '21:00'::time END,
       CASE WHEN {u("b.i", 8)} < 0.10 THEN '07:00'::time
            WHEN {u("b.i", 8)} < 0.15 THEN '09:00'::time ELSE '08:00'::time END,
       CASE WHEN {u("b.i", 9)} < 0.03 THEN NULL
            ELSE date '1930-01-01' + floor({u("b.i", 9)} * 60 * 365)::int END,
       'team-' || (b.i % {TEAMS})
  FROM bench_patients b"""

# Every reading of the history and of the benchmark's day, as (patient, metric, time): the
# metrics of the patient's programs on each local day they measure, at their own time of day
# (06:00-12:59 local, and 11 hours later for the twice-daily). $1 start, $2..$5 the
# adherence classes' shares.
_PLAN = f"""INSERT INTO bench_plan
WITH pd AS (
    SELECT b.i, b.id, b.timezone, b.mtime, b.twice, p.programs, b.stopped_for,
           ($1::timestamptz AT TIME ZONE b.timezone)::date AS day0,
           CASE WHEN b.u_class < $2 THEN 0.92
                WHEN b.u_class < $2 + $3 THEN 0.60
                WHEN b.u_class < $2 + $3 + $4 THEN 0.25
                WHEN b.u_class < $2 + $3 + $4 + $5 THEN 0.85
                ELSE 0 END AS p_day,
           b.u_class >= $2 + $3 + $4 AND b.u_class < $2 + $3 + $4 + $5 AS stopped
      FROM bench_patients b JOIN patients p ON p.id = b.id
), days AS (
    SELECT pd.*, pd.day0 + k AS day
      FROM pd, generate_series(-{HISTORY_DAYS}, 1) k
     WHERE {u("pd.i", "100 + k")} < pd.p_day AND NOT (pd.stopped AND k > -pd.stopped_for)
)
SELECT d.id, d.i, m.metric, d.timezone,
       (d.day + d.mtime + n * interval '11 hours')::timestamp AT TIME ZONE d.timezone
  FROM days d
  CROSS JOIN LATERAL unnest(d.programs) pr(program)
  JOIN (VALUES ('hypertension', 'blood_pressure'), ('heart_failure', 'weight'),
               ('copd', 'spo2')) m(program, metric) ON m.program = pr.program
  CROSS JOIN LATERAL generate_series(0, CASE WHEN d.twice THEN 1 ELSE 0 END) n"""

_EPOCH = "extract(epoch FROM b.measured_at)::bigint"
# A reading's components: the patient's own level and a little noise per reading; for one
# heart-failure patient in twenty a weight rising 0.3 kg a day. $1 is the start (the trend's
# origin).
# In the row's slots (rpm/storage/reading_values.py): v1 systolic, weight or spo2; v2
# diastolic; v3 pulse.
_COMPONENTS = f"""(CASE b.metric
    WHEN 'blood_pressure'
        THEN 112 + floor({u("b.i", 20)} * 40 + {u("b.i", f"{_EPOCH} % 997")} * 12)
    WHEN 'weight' THEN round((55 + {u("b.i", 23)} * 60
        + CASE WHEN {u("b.i", 24)} < 0.05
               THEN 0.3 * extract(epoch FROM b.measured_at - $1::timestamptz) / 86400
               ELSE 0 END
        + ({u("b.i", f"{_EPOCH} % 983")} - 0.5) * 0.6)::numeric, 1)
    ELSE 91 + floor({u("b.i", 25)} * 8)
END)::float8,
(CASE WHEN b.metric = 'blood_pressure'
      THEN 68 + floor({u("b.i", 21)} * 22 + {u("b.i", f"{_EPOCH} % 991")} * 6) END)::float8,
(CASE WHEN b.metric = 'blood_pressure' THEN 58 + floor({u("b.i", 22)} * 30) END)::float8"""

# The readings of bench_plan measured in ($2, $3], stored as the ingest path stores them.
_READINGS = f"""INSERT INTO readings (measured_at, device_id, metric, patient_id, v1, v2, v3,
                      received_at)
SELECT b.measured_at, b.patient_id || '-' || b.metric, b.metric::rpm_metric, b.patient_id,
       {_COMPONENTS}, b.measured_at + interval '20 seconds'
  FROM bench_plan b
 WHERE b.measured_at > $2::timestamptz AND b.measured_at <= $3::timestamptz"""

# A device per patient and metric of the plan, bound since $1: a patient's readings are
# found through the patient's devices (migration 0041).
_DEVICES = """WITH d AS (SELECT DISTINCT patient_id || '-' || metric AS id, patient_id, metric
                           FROM bench_plan),
     made AS (INSERT INTO devices (id, kind)
              SELECT id, CASE metric WHEN 'blood_pressure' THEN 'bp_cuff'
                                     WHEN 'weight' THEN 'scale' ELSE 'pulse_oximeter' END
                FROM d RETURNING id)
INSERT INTO device_bindings (device_id, patient_id, during)
SELECT d.id, d.patient_id, tstzrange($1::timestamptz, NULL) FROM d JOIN made USING (id)"""

# Days with readings and the newest reading per patient and metric for readings measured in
# ($1, $2], merged as the unit of work merges them (rpm.storage.engagement.touch_days,
# rpm.storage.rule_state.touch_last).
_DAYS = """INSERT INTO patient_days AS d (patient_id, day, readings, metrics)
SELECT b.patient_id, (b.measured_at AT TIME ZONE b.timezone)::date, count(*),
       array_agg(DISTINCT b.metric ORDER BY b.metric)
  FROM bench_plan b WHERE b.measured_at > $1::timestamptz AND b.measured_at <= $2::timestamptz
 GROUP BY 1, 2
ON CONFLICT (patient_id, day) DO UPDATE
   SET readings = d.readings + excluded.readings,
       metrics = ARRAY(SELECT DISTINCT x FROM unnest(d.metrics || excluded.metrics) x ORDER BY x)"""

_LAST = """INSERT INTO patient_metric_last AS l (patient_id, metric, measured_at)
SELECT b.patient_id, b.metric, max(b.measured_at)
  FROM bench_plan b WHERE b.measured_at > $1::timestamptz AND b.measured_at <= $2::timestamptz
 GROUP BY 1, 2
ON CONFLICT (patient_id, metric) DO UPDATE SET measured_at = excluded.measured_at
 WHERE l.measured_at < excluded.measured_at"""

# Alerts: open critical episodes and acknowledged high ones (campaigns must leave those
# patients alone), open medium ones, and high ones resolved yesterday. $1 start, $2..$5 shares.
_ALERTS = """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation,
                    evidence, first_reading_uid, last_reading_uid, opened_at, updated_at,
                    resolved_at, last_fired_at, program, group_key)
SELECT b.id, a.rule_id, a.severity, a.state, a.title, 'benchmark', '{}'::jsonb,
       gen_random_uuid(), gen_random_uuid(), $1::timestamptz - interval '30 hours',
       $1::timestamptz - interval '2 hours',
       CASE WHEN a.state = 'resolved' THEN $1::timestamptz - interval '20 hours' END,
       $1::timestamptz - interval '2 hours', 'hypertension', a.rule_id
  FROM bench_patients b
  CROSS JOIN LATERAL (
      SELECT * FROM (VALUES
          (0.0, $2::float8, 'hypertension.crisis', 'CRITICAL', 'open', 'BP crisis'),
          ($2, $2 + $3, 'hypertension.stage2', 'HIGH', 'acknowledged', 'BP high'),
          ($2 + $3, $2 + $3 + $4, 'hypertension.rising', 'MEDIUM', 'open', 'BP rising'),
          ($2 + $3 + $4, $2 + $3 + $4 + $5, 'hypertension.stage2', 'HIGH', 'resolved',
           'BP high')) v(lo, hi, rule_id, severity, state, title)
       WHERE b.u_alert >= v.lo AND b.u_alert < v.hi) a"""

# Alert SMS Twilio already took on the benchmark's local day (the local date of $1 + 12 h in
# each zone): 1-3 for a few patients, from 08:15 local, the first one urgent. They count
# against the daily cap of every campaign message of that day. $1 start, $2 share.
_ALERT_SMS = f"""WITH m AS (
    SELECT b.id, k,
           ((($1::timestamptz + interval '12 hours') AT TIME ZONE b.timezone)::date
            + time '08:15' + k * interval '30 minutes')::timestamp AT TIME ZONE b.timezone AS at
      FROM bench_patients b, generate_series(0, 2) k
     WHERE b.u_sms < $2 AND k < 1 + floor({u("b.i", 15)} * 3)
), o AS (
    INSERT INTO outbox (channel, dedupe_key, payload, created_at, next_attempt_at, attempts,
                        delivered_at)
    SELECT 'sms', 'bench-alert:' || m.id || ':' || m.k,
           jsonb_build_object('recipient', 'patient', 'template', 'alert',
                              'patient_id', m.id, 'severity', 'MEDIUM', 'title', 'BP',
                              'urgent', m.k = 0),
           m.at, m.at, 1, m.at
      FROM m
    RETURNING id, payload->>'patient_id' AS patient_id, created_at
)
INSERT INTO sms_messages (direction, outbox_id, patient_id, twilio_sid, status, body,
                          created_at, updated_at)
SELECT 'outbound', o.id, o.patient_id, 'SMbench' || lpad(o.id::text, 27, '0'), 'delivered',
       'alert', o.created_at, o.created_at
  FROM o"""

_COUNTED = ("patients", "patient_days", "patient_metric_last", "readings", "alerts", "sms_messages")


async def build(
    conn: Any, patients: int, start: datetime, mix: Mix = Mix(), say: Callable[[str], None] = print
) -> dict[str, int]:
    """Everything before ``start`` (the first instant of the benchmark's day); the readings
    of the day wait in ``bench_plan``. Returns row counts; ``say`` hears each step's time."""
    m = mix
    before = start - timedelta(days=365)
    steps: list[tuple[str, str, tuple[Any, ...]]] = [
        ("care teams", _CARE_TEAMS, ()),
        ("work tables", _BENCH_TABLES, ()),
        ("draws", _BENCH_PATIENTS, (patients, m.twice_daily)),
        (
            "patients",
            _PATIENTS,
            (
                start,
                m.no_phone,
                m.no_consent,
                m.opted_out,
                m.spanish,
                m.hypertension,
                m.both,
                m.heart_failure,
            ),
        ),
        ("reading plan", _PLAN, (start, m.daily, m.often, m.seldom, m.stopped)),
        ("plan index", "CREATE INDEX ON bench_plan (measured_at)", ()),
        ("plan statistics", "ANALYZE bench_plan", ()),
        ("devices", _DEVICES, (before,)),
        ("patient_days", _DAYS, (before, start)),
        ("patient_metric_last", _LAST, (before, start)),
        ("readings", _READINGS, (start, start - timedelta(days=READING_DAYS), start)),
        (
            "alerts",
            _ALERTS,
            (start, m.critical_open, m.high_acknowledged, m.medium_open, m.resolved),
        ),
        ("alert SMS", _ALERT_SMS, (start, m.alert_sms)),
    ]
    async with conn.transaction():
        # Set-up only: every id below comes from bench_patients, so the foreign keys hold by
        # construction and their per-row triggers are skipped (the role is a superuser).
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("SET LOCAL work_mem = '256MB'")
        for name, sql, args in steps:
            t0 = time.perf_counter()
            await conn.execute(sql, *args)
            say(f"{name}: {time.perf_counter() - t0:.1f} s")
        # patient_days' triggers were off: its bitmaps (migration 0036), as they would be.
        t0 = time.perf_counter()
        await rebuild_day_bits(conn)
        say(f"patient_day_bits: {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    for table in (*_COUNTED, "patient_day_bits", "outbox", "care_teams"):
        await conn.execute(f"VACUUM ANALYZE {table}")
    say(f"vacuum analyze: {time.perf_counter() - t0:.1f} s")
    counts = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in _COUNTED}
    counts["day_readings"] = int(
        await conn.fetchval(
            "SELECT count(*) FROM bench_plan WHERE measured_at > $1 AND measured_at <= $2",
            start,
            start + timedelta(days=1),
        )
    )
    return counts


async def arrive(conn: Any, start: datetime, after: datetime, until: datetime) -> int:
    """The readings measured in (after, until] arrive: stored, counted into their local days
    and their patient's newest reading, as the ingest unit of work does. How many."""
    async with conn.transaction():
        status = await conn.execute(_READINGS, start, after, until)
        await conn.execute(_DAYS, after, until)
        await conn.execute(_LAST, after, until)
    return int(status.split()[-1])


async def drop(conn: Any) -> None:
    await conn.execute("DROP TABLE IF EXISTS bench_plan, bench_patients")
