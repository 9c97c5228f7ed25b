"""Restart at scale (docs/operations.md, "Restart"): a fresh process loads the rule state of
the patients of a batch with one query for all of them, and the missing-data timer walks
the monitored population in slices, so a batch of readings never waits for the whole pass.

Statements are counted with asyncpg's query loggers on the pool's two connections; the
clock is pinned.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from rpm.domain import RawMessage
from rpm.pipeline import IngestPipeline
from rpm.storage import rule_programs, rule_state, rule_versions
from rpm.storage.pool import create_pool
from rpm.validation import ClockPolicy

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PATIENTS = 600
QUIET = 10  # every tenth patient's last blood pressure: 5 days ago (htn.bp_missing: 72 h)

# Patients with a cuff bound for 30 days, two blood pressures a day for 14 days (the quiet
# ones stop 5 days ago), patient_metric_last as ingest keeps it, and an armed episode for
# one patient in twenty. $1 patients, $2 now, $3 quiet.
_POPULATION = [
    """INSERT INTO patients (id, display_name, programs)
       SELECT 'r' || lpad(i::text, 4, '0'), 'Patient', ARRAY['hypertension']
         FROM generate_series(1, $1::int) i WHERE $2::timestamptz IS NOT NULL AND $3 > 0""",
    """INSERT INTO devices (id, kind)
       SELECT 'r' || lpad(i::text, 4, '0') || '-bp', 'bp_cuff'
         FROM generate_series(1, $1::int) i WHERE $2::timestamptz IS NOT NULL AND $3 > 0""",
    """INSERT INTO device_bindings (device_id, patient_id, during)
       SELECT 'r' || lpad(i::text, 4, '0') || '-bp', 'r' || lpad(i::text, 4, '0'),
              tstzrange($2::timestamptz - interval '30 days', NULL)
         FROM generate_series(1, $1::int) i WHERE $3 > 0""",
    """INSERT INTO readings (measured_at, device_id, metric, patient_id, v1, v2, received_at)
       SELECT t, d, 'blood_pressure', p, 128, 80, t
         FROM generate_series(1, $1::int) i
        CROSS JOIN generate_series(1, 28) k
        CROSS JOIN LATERAL (SELECT 'r' || lpad(i::text, 4, '0') AS p,
                                   'r' || lpad(i::text, 4, '0') || '-bp' AS d,
                                   $2::timestamptz - k * interval '12 hours'
                                   - CASE WHEN i % $3 = 0 THEN interval '5 days'
                                          ELSE interval '0' END AS t) x""",
    """INSERT INTO patient_metric_last (patient_id, metric, measured_at)
       SELECT patient_id, metric, max(measured_at) FROM readings
        WHERE $1::int > 0 AND $2::timestamptz IS NOT NULL AND $3 > 0 GROUP BY 1, 2""",
    """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation, evidence,
                           opened_at, group_key)
       SELECT 'r' || lpad(i::text, 4, '0'), 'htn.stage2_persistent', 'HIGH', 'open', 'Stage 2',
              'e', '{}', $2::timestamptz - interval '1 day', 'bp.high'
         FROM generate_series(1, $1::int) i WHERE i % 20 = 7 AND $3 > 0""",
]


class Statements:
    """The SQL each connection of a pool sent (asyncpg query loggers)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.seen = asyncio.Event()
        self.watch_for = "\x00"

    def __call__(self, record: object) -> None:
        query = str(getattr(record, "query", ""))
        self.sent.append(query)
        if self.watch_for in query:
            self.seen.set()

    def count(self, fragment: str) -> int:
        return sum(fragment in q for q in self.sent)


@pytest.fixture
async def counted(db_url: str) -> AsyncIterator[tuple[asyncpg.Pool, Statements]]:
    """A pool of two connections whose statements are recorded; the population built."""
    pool = await create_pool(db_url, size=2)
    statements = Statements()
    try:
        async with pool.acquire() as a, pool.acquire() as b:
            await rule_programs.seed_builtin(a)
            for sql in _POPULATION:
                await a.execute(sql, PATIENTS, NOW, QUIET)
            await a.execute("ANALYZE")
            a.add_query_logger(statements)
            b.add_query_logger(statements)
        yield pool, statements
    finally:
        await pool.close()


def _pipeline(pool: asyncpg.Pool) -> IngestPipeline:
    return IngestPipeline(pool, ClockPolicy(), now=lambda: NOW, rules_refresh_s=0)


def _reading(i: int) -> RawMessage:
    device = f"r{i:04d}-bp"
    body = json.dumps(
        {
            "metric": "blood_pressure",
            "measured_at": NOW.isoformat(),
            "values": {"systolic": 126, "diastolic": 78},
        }
    ).encode()
    return RawMessage("mqtt", "canonical", device, body, NOW, f"rpm/v1/devices/{device}/readings")


HISTORY = "row_number() OVER (PARTITION BY r.patient_id"  # rule_state.history
ARMED = "jsonb_array_elements(a.contributions)"  # rule_state.armed
WATCHED = "SELECT DISTINCT patient_id FROM device_bindings"  # rule_state.watched


async def test_a_restarted_process_loads_a_batchs_patients_with_one_query(
    counted: tuple[asyncpg.Pool, Statements],
) -> None:
    pool, statements = counted
    pipeline = _pipeline(pool)  # a fresh process: an engine that knows nobody
    everyone = {f"r{i:04d}" for i in range(1, PATIENTS + 1)}
    assert pipeline.engine.unknown(everyone) == everyone
    result = await pipeline.process([_reading(i) for i in range(1, PATIENTS + 1)])
    assert result.stored == PATIENTS
    assert pipeline.engine.unknown(everyone) == set()
    # One statement of history and one of armed rules for the 600 patients, not 600 each.
    assert statements.count(HISTORY) == 1
    assert statements.count(ARMED) == 1
    # The loaded state is the stored one: the armed episodes were armed again, so their
    # patients' normal readings mark them cleared (only an armed rule clears).
    async with pool.acquire() as conn:
        cleared = await conn.fetch(
            "SELECT patient_id, condition_cleared_at FROM alerts ORDER BY patient_id"
        )
    assert [r["patient_id"] for r in cleared] == [
        f"r{i:04d}" for i in range(1, PATIENTS + 1) if i % 20 == 7
    ]
    assert {r["condition_cleared_at"] for r in cleared} == {NOW}


async def test_the_missing_data_pass_walks_the_population_in_slices(
    counted: tuple[asyncpg.Pool, Statements],
) -> None:
    pool, statements = counted
    result = await _pipeline(pool).check_missing(slice_size=100)
    # Six slices of 100 patients (the last one full: one more look finds nobody left).
    assert statements.count(WATCHED) == PATIENTS // 100 + 1
    # Every quiet patient's missing-data alert, once, whichever slice held them.
    async with pool.acquire() as conn:
        opened = await conn.fetch(
            "SELECT patient_id FROM alerts WHERE rule_id = 'htn.bp_missing' ORDER BY patient_id"
        )
    assert [r["patient_id"] for r in opened] == [
        f"r{i:04d}" for i in range(QUIET, PATIENTS + 1, QUIET)
    ]
    assert len(result.alerts_opened) == PATIENTS // QUIET
    again = await _pipeline(pool).check_missing(slice_size=100)
    assert again.alerts_opened == []


async def test_a_batch_waits_for_one_slice_of_the_missing_data_pass_not_all(
    counted: tuple[asyncpg.Pool, Statements],
) -> None:
    pool, statements = counted
    pipeline = _pipeline(pool)
    statements.watch_for = WATCHED
    passing = asyncio.create_task(pipeline.check_missing(slice_size=1))  # 600 slices
    await statements.seen.wait()  # the pass has begun
    result = await pipeline.process([_reading(1)])
    # The unit of work ran between two slices (its lock is first come, first served).
    assert result.stored == 1
    assert not passing.done()
    await passing
    assert statements.count(WATCHED) == PATIENTS + 1


async def test_watched_slices_cover_every_monitored_patient_once(
    counted: tuple[asyncpg.Pool, Statements],
) -> None:
    pool, _ = counted
    seen: list[str] = []
    async with pool.acquire() as conn:
        # A patient whose only device is retired is no one's to watch, and ends no slice early.
        await conn.execute("UPDATE devices SET retired_at = $1 WHERE id = 'r0003-bp'", NOW)
        after: str | None = ""
        while after is not None:
            found, after = await rule_state.watched(conn, after, 7)
            seen += [w.patient_id for w in found]
        everyone, _ = await rule_state.watched(conn)
    expected = [f"r{i:04d}" for i in range(1, PATIENTS + 1) if i != 3]
    assert seen == expected
    assert [w.patient_id for w in everyone] == expected


async def test_the_missing_data_pass_waits_for_a_unit_of_work_holding_the_patient(
    counted: tuple[asyncpg.Pool, Statements], db_url: str
) -> None:
    """Another process's unit of work on a quiet patient (its claim held until commit) makes
    the pass's slice wait for it, as a batch of that patient would: the two never decide on
    the same patient's episodes at once (docs/architecture.md, "Several gateways")."""
    pool, _ = counted
    other = await asyncpg.connect(db_url)
    try:
        async with other.transaction():
            await rule_versions.claim(other, ["r0010"])  # a quiet patient's unit of work
            passing = asyncio.create_task(_pipeline(pool).check_missing(slice_size=1000))
            while not await other.fetchval(  # the pass's slice waits for our claim
                """SELECT count(*) FROM pg_stat_activity
                    WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"""
            ):
                assert not passing.done(), passing  # it must wait, not decide without us
                await asyncio.sleep(0.01)
            assert not passing.done()
        result = await passing  # our commit let it go on
    finally:
        await other.close()
    assert len(result.alerts_opened) == PATIENTS // QUIET
    async with pool.acquire() as conn:
        opened = await conn.fetchval(
            """SELECT count(*) FROM alerts
                WHERE patient_id = 'r0010' AND rule_id = 'htn.bp_missing'"""
        )
    assert opened == 1
