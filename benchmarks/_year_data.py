"""The population of ``benchmarks/data_year.py``: a year of readings loaded with COPY.

``--patients`` patients (ids ``y000001`` ...) measure for ``--days`` days up to the build's
end: a blood pressure in the morning and one in the evening, a weight, and an SpO2 (the
heart-failure half) or a glucose (the diabetes half), each day with the patient's own
adherence (60 % to 100 %): about 3.4 readings a patient a day. Up to ``--restart-patients``
more patients are monitored too (devices, bindings, ``patient_metric_last``, open alerts),
with readings of the last ``RECENT_DAYS`` days only: the population a restart loads.

Readings are loaded with binary COPY, one day at a time, by ``WORKERS`` lanes (day ``d`` goes
to lane ``d % WORKERS``): the database generates the day's rows (``COPY (SELECT ...) TO
STDOUT``) and the lane pipes them, through a
bounded queue, into ``COPY readings FROM STDIN`` on a second connection, so memory stays
bounded and no row is built in Python (a Python generator managed about 13,000 rows/s on
this shared machine). Everything else is set-based SQL. Every draw is ``hashint8`` of the
patient, the day and a salt, so a build is the same on every machine (``--seed`` is
recorded, not drawn from). Measured times fall between 12:00 and 23:00 UTC, the same local
day in the patients' US time zones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from _common import BenchError

RECENT_DAYS = 2  # days of readings of the patients past --patients
WORKERS = 2
TEAM = "year"
NURSE = "year.nurse"
ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
_COLUMNS = [
    "measured_at",
    "device_id",
    "metric",
    "patient_id",
    "v1",
    "v2",
    "v3",
    "received_at",
    "stored_at",
    "original",
    "interpretation",
]


def patient_id(i: int) -> str:
    """Patient number ``i`` (1-based)."""
    return f"y{i:06d}"


@dataclass(frozen=True, slots=True)
class Shape:
    """What to build: patients with a year, all monitored patients, days, end, seed."""

    patients: int
    monitored: int
    days: int
    end: datetime  # midnight UTC after the last day
    seed: int

    @property
    def first_day(self) -> date:
        return (self.end - timedelta(days=self.days)).date()

    def key(self) -> dict[str, Any]:
        """What identifies a built dataset (``--dataset`` reuses one only when it matches)."""
        return {
            "patients": self.patients,
            "monitored": self.monitored,
            "days": self.days,
            "end": self.end.isoformat(),
            "seed": self.seed,
        }


def _u(key: str, salt: int) -> str:
    """SQL for a uniform draw in [0, 1) for the bigint ``key`` and ``salt``."""
    return f"((hashint8(({key}) * 1000 + {salt}) & 2147483647) / 2147483648.0)"


def _n(key: str, salt: int) -> str:
    """SQL for a draw of about the standard normal (three uniforms: mean 0, sd 1)."""
    return f"(({_u(key, salt)} + {_u(key, salt + 1)} + {_u(key, salt + 2)} - 1.5) * 2)"


# A patient's own levels and adherence: draws keyed by the patient number i.
_PATIENT = f"""SELECT i, 'y' || lpad(i::text, 6, '0') AS pid,
       0.6 + 0.4 * {_u("i", 1)} AS adherence,
       134 + 14 * {_n("i", 2)} AS sys, 82 + 8 * {_n("i", 5)} AS dia, 72 + 8 * {_n("i", 8)} AS hr,
       greatest(40, least(200, 84 + 17 * {_n("i", 11)})) AS wt, 93 + 5.5 * {_u("i", 14)} AS ox,
       greatest(70, least(300, 140 + 25 * {_n("i", 15)})) AS glu
  FROM generate_series(1, $1::int) i"""

# Whether patient i measured on day $3 (days since the first): the whole day's slots or none.
_MEASURED = f"{_u('p.i::bigint * 4000 + $3::int', 20)} < p.adherence"

# Day $3 (0 = the first), starting at $2 (its 12:00 UTC), of patients 1..$1: the readings'
# columns in the table's types, for binary COPY.
_DAY = f"""WITH p AS ({_PATIENT})
SELECT x.t AS measured_at, x.device_id, s.metric::rpm_metric AS metric, p.pid AS patient_id,
       -- the slots (rpm/storage/reading_values.py): systolic, diastolic, pulse; weight;
       -- spo2, pulse; glucose
       (CASE s.metric
          WHEN 'blood_pressure' THEN round(p.sys + 9 * x.n1)
          WHEN 'weight' THEN round((p.wt + 0.4 * x.n1)::numeric, 1)
          WHEN 'spo2' THEN least(100, round(p.ox + 1.2 * x.n1))
          ELSE round(p.glu + 22 * x.n1) END)::float8 AS v1,
       (CASE s.metric
          WHEN 'blood_pressure' THEN least(round(p.dia + 6 * x.n2), round(p.sys + 9 * x.n1) - 20)
          WHEN 'spo2' THEN round(p.hr + 5 * x.n3) END)::float8 AS v2,
       (CASE WHEN s.metric = 'blood_pressure' THEN round(p.hr + 5 * x.n3) END)::float8 AS v3,
       x.t AS received_at, x.t AS stored_at, NULL::jsonb AS original, 'N'::text AS interpretation
  FROM p
 CROSS JOIN (VALUES (0, 'bp', 'blood_pressure', 0, NULL::int), (1, 'bp', 'blood_pressure', 32400, NULL),
                    (2, 'sc', 'weight', 600, NULL), (3, 'ox', 'spo2', 3600, 1),
                    (4, 'gl', 'glucose', 1800, 0)) AS s(slot, suffix, metric, off, parity)
 CROSS JOIN LATERAL (
       SELECT p.pid || '-' || s.suffix AS device_id,
              $2::timestamptz + (s.off + floor(5400 * {_u("k", 30)})::int) * interval '1 second' AS t,
              {_n("k", 31)} AS n1, {_n("k", 34)} AS n2, {_n("k", 37)} AS n3
         FROM (SELECT (p.i::bigint * 4000 + $3::int) * 8 + s.slot AS k) kk) x
 WHERE {_MEASURED} AND (s.parity IS NULL OR p.i % 2 = s.parity)
 ORDER BY x.t"""  # noqa: E501

# Days with readings (as the ingest unit of work keeps them): the same draws as _DAY.
# $1 patients, $2 first day, $3 days, $4 monitored, $5 first recent day (0-based)
_DAYS = f"""INSERT INTO patient_days (patient_id, day, readings, metrics)
SELECT p.pid, $2::date + d, 4,
       CASE WHEN p.i % 2 = 1 THEN '{{blood_pressure,spo2,weight}}'
            ELSE '{{blood_pressure,glucose,weight}}' END::text[]
  FROM ({_PATIENT.replace("$1::int", "$4::int")}) p
 CROSS JOIN generate_series(0, $3::int - 1) d
 WHERE (p.i <= $1::int OR d >= $5::int)
   AND {_MEASURED.replace("$3::int", "d")}"""


async def _load_day(src: Any, dst: Any, shape: Shape, day: int) -> None:
    """One day through a pipe: COPY (the day's rows) TO STDOUT on ``src``, into COPY
    readings FROM STDIN on ``dst`` (binary; a bounded queue between the two)."""
    recent = day >= shape.days - RECENT_DAYS
    n = shape.monitored if recent else shape.patients
    d = shape.first_day + timedelta(days=day)
    midday = datetime(d.year, d.month, d.day, 12, tzinfo=UTC)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=32)

    async def sink(chunk: bytes) -> None:
        await queue.put(bytes(chunk))

    async def rows() -> Any:
        while (chunk := await queue.get()) is not None:
            yield chunk

    async def produce() -> None:
        try:
            await src.copy_from_query(_DAY, n, midday, day, output=sink, format="binary")
        finally:
            await queue.put(None)

    await asyncio.gather(
        produce(),
        dst.copy_to_table("readings", source=rows(), columns=_COLUMNS, format="binary"),
    )


async def _lane(dsn: str, shape: Shape, part: int, parts: int) -> None:
    import asyncpg

    src, dst = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await dst.execute("SET synchronous_commit = off")  # set-up only
        for day in range(part, shape.days, parts):
            await _load_day(src, dst, shape, day)
    finally:
        await src.close()
        await dst.close()


# --- set-based SQL --------------------------------------------------------------------------

# $1 monitored, $2 first day, $3 patients with a year
_PATIENTS = f"""INSERT INTO patients (id, display_name, timezone, programs, care_team,
                                      monitoring_started_on, created_at)
SELECT 'y' || lpad(i::text, 6, '0'), 'Patient ' || i,
       (ARRAY{list(ZONES)!r})[1 + i % {len(ZONES)}],
       CASE WHEN i % 2 = 1 THEN '{{hypertension,heart_failure}}'
            ELSE '{{hypertension,diabetes}}' END::text[],
       '{TEAM}', $2::date, $2::date - 1
  FROM generate_series(1, $1::int) i"""

# $1 monitored, $2 first day; i is 1-based, the SLOTS' parity 0-based (i - 1)
_DEVICES = """INSERT INTO devices (id, kind, vendor, last_seen_at, created_at)
SELECT 'y' || lpad(i::text, 6, '0') || '-' || d.suffix, d.kind, 'bench', $3::timestamptz,
       $2::date - 1
  FROM generate_series(1, $1::int) i
 CROSS JOIN (VALUES ('bp', 'bp_cuff', NULL), ('sc', 'scale', NULL),
                    ('ox', 'pulse_oximeter', 0), ('gl', 'glucometer', 1)) AS d(suffix, kind, parity)
 WHERE d.parity IS NULL OR (i - 1) % 2 = d.parity"""

_BINDINGS = """INSERT INTO device_bindings (device_id, patient_id, during)
SELECT id, split_part(id, '-', 1), tstzrange($1::date - 1, NULL) FROM devices
 WHERE vendor = 'bench'"""

# The newest reading per patient and metric, over every reading (as the unit of work keeps
# it): a patient who missed a metric for the last days still has it, and the patient page
# (which finds a patient's metrics here) shows it.
_LAST = """INSERT INTO patient_metric_last (patient_id, metric, measured_at)
SELECT patient_id, metric, max(measured_at) FROM readings
 GROUP BY 1, 2
ON CONFLICT (patient_id, metric) DO UPDATE SET measured_at = excluded.measured_at"""

# Open episodes (the queue): one patient in twenty, a third acknowledged; armed rules.
# Triggers are off during the build, so group_key is given.
# $1 monitored, $2 end
_OPEN = """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation, evidence,
                               opened_at, updated_at, last_fired_at, program, acknowledged_at,
                               group_key)
SELECT 'y' || lpad(i::text, 6, '0'), 'htn.stage2_persistent',
       (ARRAY['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'])[1 + (i / 20) % 4],
       CASE WHEN i % 3 = 0 THEN 'acknowledged' ELSE 'open' END,
       'Stage 2 hypertension, persistent', 'benchmark', '{}',
       $2::timestamptz - ((i * 7919) % 4320) * interval '1 minute',
       $2::timestamptz - ((i * 7919) % 4320) * interval '1 minute',
       $2::timestamptz - ((i * 7919) % 4320) * interval '1 minute', 'hypertension',
       CASE WHEN i % 3 = 0 THEN $2::timestamptz END, 'bp.high'
  FROM generate_series(1, $1::int) i WHERE i % 20 = 7"""

# A year of resolved episodes of the patients with a year: six each.
# $1 patients, $2 first day, $3 days
_RESOLVED = """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation,
                               evidence, opened_at, updated_at, last_fired_at, program,
                               resolved_at, resolved_by, condition_cleared_at, group_key)
SELECT 'y' || lpad(i::text, 6, '0'), 'htn.systolic_trend', 'MEDIUM', 'resolved',
       'Systolic trend', 'benchmark', '{}', t, t + interval '1 day', t, 'hypertension',
       t + interval '1 day', 'year.nurse', t + interval '1 day', 'bp.high'
  FROM generate_series(1, $1::int) i CROSS JOIN generate_series(1, 6) k
 CROSS JOIN LATERAL (SELECT $2::date + ((i * 31 + k * 53) % ($3::int - 2)) + time '15:00'
                            AS t) x"""

# This month's and the report month's time entries: 0-4 each, a third interactive.
# $1 patients, $2 report month's first day
_TIME = """INSERT INTO time_entries (patient_id, staff_id, started_at, duration_s, activity,
                                     source)
SELECT 'y' || lpad(i::text, 6, '0'), 'year.nurse',
       $2::date + ((i * 13 + k * 7) % 28) + time '15:00',
       (3 + (i * k) % 13) * 60,
       CASE WHEN (i + k) % 3 = 0 THEN 'interactive_phone' ELSE 'data_review' END, 'manual'
  FROM generate_series(1, $1::int) i CROSS JOIN generate_series(1, 4) k
 WHERE k <= i % 5"""


async def populate(conn: Any, shape: Shape, report_month: date, password: str) -> None:
    """Everyone but the readings: patients, devices, bindings, the nurse and the team."""
    from rpm.auth import hash_password
    from rpm.storage import rule_programs, staff_auth
    from rpm.storage import staff as staff_store

    await rule_programs.seed_builtin(conn)
    await conn.execute(
        "INSERT INTO care_teams (id, title) VALUES ($1, 'Year team') ON CONFLICT DO NOTHING",
        TEAM,
    )
    await staff_auth.add_staff(
        conn,
        staff_id=NURSE,
        display_name="Year Nurse",
        role="nurse",
        password_hash=await asyncio.to_thread(hash_password, password),
        phone=None,
        replace=True,
    )
    await staff_store.add_member(conn, TEAM, NURSE)
    first = shape.first_day
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # ids hold by design
        await conn.execute(_PATIENTS, shape.monitored, first)
        await conn.execute(_DEVICES, shape.monitored, first, shape.end)
        await conn.execute(_BINDINGS, first)
        await conn.execute(_OPEN, shape.monitored, shape.end)
        await conn.execute(_RESOLVED, shape.patients, first, shape.days)
        await conn.execute(_TIME, shape.patients, report_month)


async def reset_password(conn: Any, password: str) -> None:
    """A reused dataset: the nurse's password of this run."""
    from rpm.auth import hash_password

    await conn.execute(
        "UPDATE staff SET password_hash = $2 WHERE id = $1",
        NURSE,
        await asyncio.to_thread(hash_password, password),
    )


async def load_readings(
    dsn: str, conn: Any, shape: Shape, say: Callable[[str], None]
) -> dict[str, float]:
    """Readings of every day by ``WORKERS`` lanes of COPY, then patient_days."""
    t0 = time.perf_counter()
    await asyncio.gather(*(_lane(dsn, shape, k, WORKERS) for k in range(WORKERS)))
    seconds = time.perf_counter() - t0
    loaded = int(await conn.fetchval("SELECT count(*) FROM readings"))
    say(f"COPY: {loaded:,} readings in {seconds:,.0f} s ({loaded / seconds:,.0f}/s)")
    t1 = time.perf_counter()
    await conn.execute(
        _DAYS,
        shape.patients,
        shape.first_day,
        shape.days,
        shape.monitored,
        shape.days - RECENT_DAYS,
    )
    say(f"patient_days: {time.perf_counter() - t1:,.0f} s")
    return {"readings": loaded, "load_s": seconds}


async def finish(conn: Any, shape: Shape, say: Callable[[str], None]) -> float:
    """After the COPY: patient_metric_last, then VACUUM ANALYZE (the steady state)."""
    t0 = time.perf_counter()
    await conn.execute(_LAST)
    await conn.execute("VACUUM ANALYZE")
    seconds = time.perf_counter() - t0
    say(f"patient_metric_last, VACUUM ANALYZE: {seconds:,.0f} s")
    return seconds


async def pack_closed(dsn: str, end: datetime, say: Callable[[str], None]) -> tuple[int, float]:
    """The lifecycle scheduler's packing job with its clock at ``end``: the readings partitions
    (chunks) closed for its ``pack_after`` get their indexes rebuilt, as the passes of a
    server running through those months would have done; how many, and seconds taken."""
    from rpm.storage.pool import create_pool
    from rpm.workers.lifecycle import LifecycleConfig, LifecycleScheduler

    pool = await create_pool(dsn, size=1)
    try:
        sched = LifecycleScheduler(pool, LifecycleConfig(pack_per_pass=1_000))
        t0 = time.perf_counter()
        packed = await sched.pack(end)
        seconds = time.perf_counter() - t0
    finally:
        await pool.close()
    if packed is None:
        raise BenchError("another process holds the lifecycle lock")
    say(f"packed {len(packed)} closed partitions/chunks: {seconds:,.0f} s")
    return len(packed), seconds
