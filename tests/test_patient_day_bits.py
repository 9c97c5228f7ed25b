"""patient_day_bits (migration 0036) is always what patient_days says: the days with readings
the planner and segments count from it are those a count of patient_days gives.

Seeded random histories written as the code paths write patient_days (the ingest unit of
work's upsert in batches of several patients and days, days out of order, days already
counted, the recount after a correction that deletes days, a truncate), each followed by a
comparison with patient_days itself: the bitmap row of every patient, and the count of days
in (today - n, today] for every window the planner uses, from far before the first day to
after the last (where the bitmap cannot tell and the count falls back to patient_days).
"""

from __future__ import annotations

import random
from datetime import date, timedelta

import asyncpg
import pytest

from rpm.storage import registry
from rpm.storage.segments import days_in_sql

BASE = date(2026, 6, 1)
PATIENTS = [f"p-bits-{k}" for k in range(6)]
# What the bitmap keeps of a patient: the newest and oldest day, and bit k for last_day - k.
EXPECTED = """
    SELECT patient_id, max(day) AS last_day, min(day) AS first_day,
           sum(CASE WHEN x.last - day < 62 THEN 1::bigint << (x.last - day) ELSE 0 END)::bigint
               AS bits
      FROM patient_days JOIN (SELECT patient_id, max(day) AS last FROM patient_days
                               GROUP BY 1) x USING (patient_id)
     GROUP BY 1 ORDER BY 1"""
COUNTS = f"""
    SELECT p.id, t.today, n.n,
           {days_in_sql("b.bits", "b.last_day", "t.today", "n.n", "p.id")} AS from_bits,
           (SELECT count(*) FROM patient_days d WHERE d.patient_id = p.id
               AND d.day > t.today - n.n AND d.day <= t.today)::int AS counted
      FROM patients p
      LEFT JOIN patient_day_bits b ON b.patient_id = p.id
     CROSS JOIN (SELECT ($1::date + k) AS today FROM generate_series(-40, 120, 3) k) t
     CROSS JOIN (SELECT unnest(ARRAY[1, 2, 7, 30]) AS n) n
     WHERE p.id = ANY($2::text[])"""
UPSERT = """
    INSERT INTO patient_days AS d (patient_id, day, readings, metrics)
    SELECT patient_id, day, 1, ARRAY['blood_pressure'] FROM unnest($1::text[], $2::date[])
        AS r(patient_id, day)
    ON CONFLICT (patient_id, day) DO UPDATE SET readings = d.readings + 1"""


async def check(conn: asyncpg.Connection) -> None:
    kept = [tuple(r) for r in await conn.fetch("SELECT * FROM patient_day_bits ORDER BY 1")]
    assert kept == [tuple(r) for r in await conn.fetch(EXPECTED)]
    for r in await conn.fetch(COUNTS, BASE, PATIENTS):
        assert r["from_bits"] == r["counted"], dict(r)


async def test_the_bitmap_follows_every_write_of_patient_days(pool: asyncpg.Pool) -> None:
    rng = random.Random(20261204)
    async with pool.acquire() as conn:
        for p in PATIENTS:
            await registry.upsert_patient(
                conn, patient_id=p, display_name=p, phone=None, sms_consent=False
            )
        for step in range(60):
            action = rng.random()
            if action < 0.7:  # a batch of readings: several patients, days out of order
                rows = [
                    (rng.choice(PATIENTS), BASE + timedelta(days=rng.randint(-80, 90)))
                    for _ in range(rng.randint(1, 12))
                ]
                rows = list(dict.fromkeys(rows))  # one row per patient-day in a statement
                await conn.execute(UPSERT, [p for p, _ in rows], [d for _, d in rows])
            elif action < 0.95:  # a correction left some days without a valid reading
                victims = rng.sample(PATIENTS, 2)
                await conn.execute(
                    """DELETE FROM patient_days WHERE patient_id = ANY($1::text[])
                        AND (hashtext(day::text) & 3) = $2""",
                    victims,
                    step % 4,
                )
            else:
                await conn.execute("TRUNCATE patient_days")
            await check(conn)
        # A far-future day: windows ending long before it cannot be told by the bitmap.
        await conn.execute(UPSERT, [PATIENTS[0]], [BASE + timedelta(days=400)])
        await check(conn)


async def test_a_row_of_patient_days_keeps_its_day(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn, patient_id="p-fixed", display_name="p", phone=None, sms_consent=False
        )
        await conn.execute(UPSERT, ["p-fixed"], [BASE])
        await conn.execute("UPDATE patient_days SET readings = 5 WHERE patient_id = 'p-fixed'")
        with pytest.raises(asyncpg.RaiseError, match="keeps its patient and day"):
            await conn.execute("UPDATE patient_days SET day = day + 1")
