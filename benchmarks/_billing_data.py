"""The population of ``benchmarks/billing.py``, built in the database with set-based SQL
(``generate_series``; no row passes through Python): patients in five time zones and nine
care teams (``panel``: the first ``PANEL`` of them, the panel's team), days with readings
(``patient_days``, as the ingest unit of work keeps them) from 1 May to 30 June 2026, and the
care team's time entries of June.

Every draw is ``hashint8`` of the patient's number and a salt (``_engagement_data.u``), so the
population is the same on every run and on every machine. Half the patients have
``monitoring_started_on`` (1 to 30 May: their device periods end on every day of June); the
others start on their first day with readings. Adherence: half measure on 92 % of days, a
quarter on 60 %, 15 % on 25 %, 5 % on 5 %, 5 % never. Time: 0 to 4 entries in June of 3 to
15 minutes each; 30 % of entries are interactive (a phone or video call).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from _engagement_data import ZONES, u

PANEL = 10_000  # patients of the care team ``panel``
TEAMS = 8  # the other patients' teams
FIRST_DAY = "2026-05-01"
LAST_DAY = "2026-06-30"
STAFF = "bench.nurse"

_TEAMS = f"""INSERT INTO care_teams (id, title)
SELECT 'team-' || t, 'Team ' || t FROM generate_series(0, {TEAMS - 1}) t
UNION ALL SELECT 'panel', 'Panel team'
ON CONFLICT DO NOTHING"""

_STAFF = f"""INSERT INTO staff (id, display_name, role, password_hash)
VALUES ('{STAFF}', 'Bench Nurse', 'nurse', '!') ON CONFLICT DO NOTHING"""

# $1 patients
_PATIENTS = f"""INSERT INTO patients (id, display_name, timezone, programs, care_team,
                                      monitoring_started_on)
SELECT 'p' || lpad(i::text, 6, '0'), 'Patient ' || i,
       (ARRAY{list(ZONES)!r})[1 + i % {len(ZONES)}],
       ARRAY['hypertension'],
       CASE WHEN i <= {PANEL} THEN 'panel' ELSE 'team-' || (i % {TEAMS}) END,
       CASE WHEN {u("i", 21)} < 0.5 THEN date '{FIRST_DAY}' + floor({u("i", 22)} * 30)::int END
  FROM generate_series(1, $1::int) i"""

# $1 patients
_DAYS = f"""INSERT INTO patient_days (patient_id, day, readings, metrics)
SELECT 'p' || lpad(i::text, 6, '0'), d::date, 1, ARRAY['blood_pressure']
  FROM generate_series(1, $1::int) i
 CROSS JOIN LATERAL (
     SELECT CASE WHEN {u("i", 23)} < 0.50 THEN 0.92 WHEN {u("i", 23)} < 0.75 THEN 0.60
                 WHEN {u("i", 23)} < 0.90 THEN 0.25 WHEN {u("i", 23)} < 0.95 THEN 0.05
                 ELSE 0 END AS p_day) c
 CROSS JOIN generate_series(date '{FIRST_DAY}', date '{LAST_DAY}', interval '1 day') d
 WHERE {u("i * 100 + extract(doy FROM d)::int", 24)} < c.p_day"""

# $1 patients
_TIME = f"""INSERT INTO time_entries (patient_id, staff_id, started_at, duration_s, activity,
                                      source)
SELECT 'p' || lpad(i::text, 6, '0'), '{STAFF}',
       timestamptz '2026-06-01 14:00Z' + floor({u("i * 10 + k", 25)} * 29) * interval '1 day',
       (3 + floor({u("i * 10 + k", 26)} * 13))::int * 60,
       CASE WHEN {u("i * 10 + k", 27)} < 0.3 THEN 'interactive_phone' ELSE 'data_review' END,
       'manual'
  FROM generate_series(1, $1::int) i
 CROSS JOIN generate_series(1, 4) k
 WHERE k <= floor({u("i", 28)} * 5)"""

_COUNTED = ("patients", "patient_days", "time_entries")


async def build(conn: Any, patients: int, say: Callable[[str], None] = print) -> dict[str, int]:
    """The population; row counts. ``say`` hears each step's time."""
    steps = [
        ("care teams", _TEAMS, ()),
        ("staff", _STAFF, ()),
        ("patients", _PATIENTS, (patients,)),
        ("patient_days", _DAYS, (patients,)),
        ("time_entries", _TIME, (patients,)),
    ]
    async with conn.transaction():
        # Set-up only: the ids hold by construction, so the foreign keys' triggers are
        # skipped (the role is a superuser).
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("SET LOCAL work_mem = '256MB'")
        for name, sql, args in steps:
            t0 = time.perf_counter()
            await conn.execute(sql, *args)
            say(f"{name}: {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    for table in (*_COUNTED, "care_teams", "staff"):
        await conn.execute(f"VACUUM ANALYZE {table}")
    say(f"vacuum analyze: {time.perf_counter() - t0:.1f} s")
    return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in _COUNTED}
