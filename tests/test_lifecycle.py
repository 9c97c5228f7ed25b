"""Data lifecycle (docs/data-lifecycle.md): the conversion of readings to a partitioned table
(migration 0032), the rollups (0033) equal to the raw aggregate, and the lifecycle
scheduler's jobs, on plain PostgreSQL (a cluster of its own, with pg_partman when installed)
and on the session's PostgreSQL (TimescaleDB when installed). Clocks are pinned; pg_partman
alone reads the database's clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from rpm.domain import METRICS, AcceptedReading, Metric, reading_uid
from rpm.local_endpoints import ServiceEndpoints
from rpm.storage import corrections, lifecycle, rollups
from rpm.storage.migrate import migrate
from rpm.storage.pool import create_pool
from rpm.storage.reading_values import slots_of
from rpm.storage.readings import by_uid, insert_new
from rpm.workers.lifecycle import LifecycleConfig, LifecycleScheduler
from tests.lifecycle_support import (
    T0,
    add_patients,
    correction_of,
    empty_database,
    insert_with_uid,
    migrate_to,
    raw_buckets,
    same,
    seeded_readings,
)

NO_TIMESCALE = "TimescaleDB is not installed here: the session's PostgreSQL is plain"
HOUR, DAY = timedelta(hours=1), timedelta(days=1)


@pytest.fixture(params=["plain", "session"])
async def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database on plain PostgreSQL, or on the session's (TimescaleDB if any)."""
    fixture = "plain_services" if request.param == "plain" else "services"
    async for url in empty_database(request.getfixturevalue(fixture)):
        yield url


async def _series_match(conn: asyncpg.Connection, stored: list, patients: list[str]) -> None:
    for p in patients:
        for metric in (Metric.BLOOD_PRESSURE, Metric.WEIGHT):
            for grain, width in (("day", DAY), ("hour", HOUR)):
                start, end = T0 - DAY, T0 + timedelta(days=60)
                got = await rollups.series(conn, p, metric, start, end, grain)
                want = raw_buckets(stored, p, metric, width, start, end)
                assert got, (p, metric, grain)
                assert same(got, want), (p, metric, grain)


async def test_migration_converts_stored_readings(empty_db: str) -> None:
    """Readings stored before 0032/0033 are all kept, duplicates still skip, the rollups of
    them equal the raw aggregate; on plain PostgreSQL readings is now partitioned by month."""
    conn = await asyncpg.connect(empty_db)
    try:
        await migrate_to(conn, 31)
        patients = ["p1", "p2"]
        await add_patients(conn, patients)
        stored = seeded_readings(7, patients, days=40, per_day=3)
        await insert_with_uid(conn, stored)  # as that schema stored them
        before = await conn.fetch("SELECT * FROM readings ORDER BY device_id, metric, measured_at")

        applied = await migrate(conn)
        assert applied[:2] == ["0032_readings_partitioned", "0033_reading_rollups"]
        after = await conn.fetch("SELECT * FROM readings ORDER BY device_id, metric, measured_at")

        # All kept; the uid is no longer stored (0039), the components sit in typed slots
        # (0041).
        def now_stored(r: asyncpg.Record) -> dict[str, Any]:
            row = {k: v for k, v in r.items() if k not in ("uid", "components")}
            values = orjson.loads(r["components"])  # this connection has no jsonb codec
            row.update(zip(("v1", "v2", "v3"), slots_of(r["metric"], values), strict=True))
            return row

        def key(row: dict[str, Any]) -> tuple[str, str, datetime]:
            return (row["device_id"], row["metric"], row["measured_at"])

        assert sorted((dict(r) for r in after), key=key) == sorted(map(now_stored, before), key=key)
        fl = await lifecycle.flavour(conn)
        kind = await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'readings'")
        assert kind == ("r" if fl.timescale else "p")
        if not fl.timescale:  # one partition a month from the oldest reading's
            parts = await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'readings'::regclass"
            )
            assert {"readings_p2025_03", "readings_p2025_04"} <= {r["relname"] for r in parts}
            assert await conn.fetchval("SELECT count(*) FROM readings_p2025_03") > 0

        # ON CONFLICT still recognises every stored reading; a new one is stored once.
        assert await insert_new(conn, stored) == []
        late = seeded_readings(8, ["p1"], days=1, per_day=1)[:1]
        assert await insert_new(conn, late + late) == late
        assert await insert_new(conn, late) == []

        pool = await create_pool(empty_db, size=2)
        try:
            result = await LifecycleScheduler(pool).tick(T0 + timedelta(days=45))
        finally:
            await pool.close()
        assert result.ran
        assert result.timescale is fl.timescale
        await _series_match(conn, stored + late, patients)
    finally:
        await conn.close()


async def test_plain_retention_drops_whole_months_and_keeps_rollups(
    plain_services: ServiceEndpoints,
) -> None:
    """Retention (off by default) drops the monthly partitions wholly older than the
    horizon of the pinned clock; the rollups of their readings stay."""
    async for url in empty_database(plain_services):
        conn = await asyncpg.connect(url)
        pool = await create_pool(url, size=2)
        try:
            await migrate_to(conn, 31)
            await add_patients(conn, ["p1"])
            stored = seeded_readings(3, ["p1"], days=40, per_day=2)
            await insert_with_uid(conn, stored)  # as that schema stored them
            await migrate(conn)
            march = sum(1 for a in stored if a.reading.measured_at.month == 3)
            kept = LifecycleScheduler(pool)
            assert (await kept.tick(T0 + timedelta(days=4000))).dropped == []
            days_before = await conn.fetchval("SELECT count(*) FROM readings_daily")

            now = T0 + timedelta(days=400)  # horizon 2025-04-05: March has gone by
            sched = LifecycleScheduler(pool, LifecycleConfig(retention=timedelta(days=365)))
            result = await sched.tick(now)
            assert result.dropped == ["readings_p2025_03"]
            assert await conn.fetchval("SELECT count(*) FROM readings") == len(stored) - march
            assert await conn.fetchval("SELECT count(*) FROM readings_daily") == days_before
            assert (await sched.tick(now)).dropped == []  # idempotent
        finally:
            await pool.close()
            await conn.close()


async def test_plain_partitions_are_made_ahead(plain_services: ServiceEndpoints) -> None:
    """Partition maintenance: pg_partman's run_maintenance when installed, and the
    project's own monthly partitions without it (rpm_make_reading_partitions)."""
    async for url in empty_database(plain_services):
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
            fl = await lifecycle.flavour(conn)
            assert not fl.timescale
            await lifecycle.maintain_partitions(conn, T0, fl)  # pg_partman: its own clock
            db_now = await conn.fetchval("SELECT now()")
            ahead = (db_now + timedelta(days=100)).strftime("readings_p%Y_%m")
            assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", ahead)
            own = lifecycle.Flavour(timescale=False, partman=False)
            far = T0.replace(year=2035)
            assert await lifecycle.maintain_partitions(conn, far, own) == 5  # March to July
            assert await lifecycle.maintain_partitions(conn, far, own) == 0
            assert await conn.fetchval("SELECT to_regclass('readings_p2035_07') IS NOT NULL")
        finally:
            await conn.close()


async def test_rollups_equal_raw_including_corrections(empty_db: str) -> None:
    """Before and after the scheduler's refresh, and after readings are marked entered in
    error, a series equals the raw aggregate of the readings not entered in error."""
    conn = await asyncpg.connect(empty_db)
    pool = await create_pool(empty_db, size=2)
    try:
        await migrate(conn)
        fl = await lifecycle.flavour(conn)
        patients = ["p1", "p2"]
        await add_patients(conn, patients)
        stored = seeded_readings(11, patients, days=20, per_day=4)
        await insert_new(conn, stored)
        await _series_match(conn, stored, patients)  # not rolled up yet: dirty or real-time
        sched = LifecycleScheduler(pool, LifecycleConfig(rollup_batch=7))  # many transactions
        now = T0 + timedelta(days=30)
        await sched.tick(now)
        assert await conn.fetchval("SELECT count(*) FROM reading_rollup_dirty") == 0
        await _series_match(conn, stored, patients)

        wrong = [stored[5], stored[6], stored[40]]
        await corrections.record(conn, [correction_of(a) for a in wrong], now)
        kept = [a for a in stored if a not in wrong]
        await _series_match(conn, kept, patients)  # no refresh needed

        late = seeded_readings(12, ["p1"], days=3, per_day=5)  # into materialised buckets
        await insert_new(conn, late)
        if not fl.timescale:  # the dirty log makes them count before the refresh
            await _series_match(conn, kept + late, patients)
        await sched.tick(now)
        await _series_match(conn, kept + late, patients)
    finally:
        await pool.close()
        await conn.close()


async def test_timescale_compression_and_retention(pool: asyncpg.Pool) -> None:
    """Chunks older than the setting are compressed by the scheduler (again: nothing to
    do), stored readings in them are still recognised by ON CONFLICT, and retention drops
    old chunks while the rollups keep their buckets."""
    async with pool.acquire() as conn:
        if not (await lifecycle.flavour(conn)).timescale:
            pytest.skip(NO_TIMESCALE)
        await add_patients(conn, ["p1"])
        stored = seeded_readings(5, ["p1"], days=40, per_day=3)
        await insert_new(conn, stored)
    now = T0 + timedelta(days=60)
    sched = LifecycleScheduler(pool, LifecycleConfig(compress_after=timedelta(days=14)))
    first = await sched.tick(now)
    assert first.rollups_refreshed
    assert first.chunks_compressed > 0
    assert (await sched.tick(now)).chunks_compressed == 0
    async with pool.acquire() as conn:
        compressed = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'readings' AND is_compressed"
        )
        assert compressed == first.chunks_compressed
        assert await insert_new(conn, stored) == []
        early = seeded_readings(6, ["p1"], days=1, per_day=1)[:1]
        assert await insert_new(conn, early + early) == early
        daily = await conn.fetch("SELECT bucket, n FROM readings_daily ORDER BY bucket")

    retention = LifecycleConfig(retention=timedelta(days=30))
    dropped = await LifecycleScheduler(pool, retention).tick(now)
    assert dropped.dropped
    async with pool.acquire() as conn:
        oldest = await conn.fetchval("SELECT min(measured_at) FROM readings")
        assert oldest >= now - timedelta(days=30) - timedelta(days=7)  # whole chunks only
        assert oldest > T0
        after = await conn.fetch("SELECT bucket, n FROM readings_daily ORDER BY bucket")
        assert [dict(r) for r in after] == [dict(r) for r in daily]


async def test_chunks_compressed_under_older_settings_are_recompressed(pool: asyncpg.Pool) -> None:
    """Chunks compressed before migration 0038 (0033's segments) are rewritten under the
    hypertable's settings, a few a pass, their readings and their duplicate check intact."""
    async with pool.acquire() as conn:
        if not (await lifecycle.flavour(conn)).timescale:
            pytest.skip(NO_TIMESCALE)
        await add_patients(conn, ["p1", "p2"])
        stored = seeded_readings(7, ["p1", "p2"], days=40, per_day=3)
        await insert_new(conn, stored)
        current = await _settings(conn, "readings")
        await conn.execute(  # as 0033 left them
            """ALTER TABLE readings SET (
                   timescaledb.compress_segmentby = 'patient_id, device_id, metric',
                   timescaledb.compress_orderby = 'measured_at DESC')"""
        )
    now = T0 + timedelta(days=60)
    config = LifecycleConfig(compress_after=timedelta(days=14), recompress_per_pass=2)
    compressed = (await LifecycleScheduler(pool, config).tick(now)).chunks_compressed
    assert compressed > 2  # more than one pass's worth
    async with pool.acquire() as conn:
        await conn.execute(  # what migration 0038 does
            """ALTER TABLE readings SET (
                   timescaledb.compress_segmentby = 'metric',
                   timescaledb.compress_orderby = 'patient_id, device_id, measured_at DESC')"""
        )
        assert await _settings(conn, "readings") == current  # 0038's, as migrated
        assert await _stale(conn) == compressed
    passes = [await LifecycleScheduler(pool, config).tick(now) for _ in range(compressed)]
    assert [p.chunks_recompressed for p in passes][:2] == [2, 2]
    assert sum(p.chunks_recompressed for p in passes) == compressed
    async with pool.acquire() as conn:
        assert await _stale(conn) == 0
        assert await conn.fetchval("SELECT count(*) FROM readings") == len(stored)
        assert await insert_new(conn, stored) == []  # still recognised as stored


async def _settings(conn: asyncpg.Connection, relation: str) -> tuple[object, ...]:
    row = await conn.fetchrow(
        """SELECT segmentby, orderby, orderby_desc FROM _timescaledb_catalog.compression_settings
            WHERE relid = $1::regclass""",
        relation,
    )
    assert row is not None
    return tuple(row)


async def _stale(conn: asyncpg.Connection) -> int:
    """Compressed chunks whose settings are not the hypertable's."""
    hyper = await _settings(conn, "readings")
    rows = await conn.fetch(
        """SELECT segmentby, orderby, orderby_desc FROM _timescaledb_catalog.compression_settings
            WHERE compress_relid IS NOT NULL
              AND relid IN (SELECT c FROM show_chunks('readings') c)"""
    )
    return sum(tuple(r) != hyper for r in rows)


async def test_a_second_process_skips_the_pass_in_progress(pool: asyncpg.Pool) -> None:
    """The lock is the session's: while another process holds it, a pass does nothing."""
    sched = LifecycleScheduler(pool)
    other = await pool.acquire()
    try:
        assert await lifecycle.try_lock(other)
        skipped = await sched.tick(T0)
        assert not skipped.ran
        await lifecycle.unlock(other)
    finally:
        await pool.release(other)
    assert (await sched.tick(T0)).ran


async def test_component_slots_match_the_domain(pool: asyncpg.Pool) -> None:
    """rpm_component_name (migration 0033) numbers components as rpm.domain.METRICS."""
    async with pool.acquire() as conn:
        for metric, spec in METRICS.items():
            names = [
                await conn.fetchval("SELECT rpm_component_name($1, $2)", metric.value, i)
                for i in (1, 2, 3, 4)
            ]
            assert names == [c.name for c in spec.components] + [None] * (4 - len(spec.components))


async def test_uids_become_their_readings_keys_and_references_follow(empty_db: str) -> None:
    """Migration 0039: the uid column goes; every reference to a reading (an alert's first and
    last reading, its contributions and evidence, a confirmation, a correction) now holds the
    uid made from the reading's key, and the reading is found by it."""
    conn = await asyncpg.connect(empty_db)
    try:
        await migrate_to(conn, 38)
        await add_patients(conn, ["p1"])  # and the cuff: a lookup by uid finds it by hash
        first, last = seeded_readings(3, ["p1"], days=2, per_day=1)[0::2]
        await insert_with_uid(conn, [first, last])
        old = {
            r["measured_at"]: str(r["uid"])
            for r in await conn.fetch("SELECT measured_at, uid FROM readings")
        }
        old_first, old_last = old[first.reading.measured_at], old[last.reading.measured_at]
        assert reading_uid("p1-cuff", "blood_pressure", first.reading.measured_at) != old_first
        contributions = orjson.dumps([{"rule_id": "r", "reading_uid": old_first}]).decode()
        evidence = orjson.dumps({"reading_uid": old_last, "other": "kept"}).decode()
        alert_id = await conn.fetchval(
            """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation,
                                   evidence, contributions, first_reading_uid, last_reading_uid)
               VALUES ('p1', 'r', 'HIGH', 'open', 't', 'e', $1::jsonb, $2::jsonb, $3, $4)
               RETURNING id""",
            evidence,
            contributions,
            old_first,
            old_last,
        )
        await conn.execute(
            """INSERT INTO alert_confirmations (patient_id, rule_id, group_key, severity,
                          reading_uid, measured_at, deadline, candidate, closed_reading_uid)
               VALUES ('p1', 'r', 'g', 'HIGH', $1, $2::timestamptz,
                       $2::timestamptz + interval '1 hour', $3::jsonb, $4)""",
            old_first,
            first.reading.measured_at,
            orjson.dumps({"reading_uid": old_first}).decode(),
            old_last,
        )
        # Marked entered-in-error as that schema's code did (0029, the 0003 uid).
        await conn.execute(
            """INSERT INTO reading_corrections (device_id, metric, measured_at, uid, patient_id,
                          sent_status, source, actor, reason, corrected_at)
               VALUES ($1, $2, $3, rpm_reading_uid($1, $2, $3), 'p1', 'entered-in-error',
                       'staff', 'staff:test', 'wrong cuff', $4)""",
            *reading_key(last),
            T0,
        )

        assert "0039_reading_uid_from_key" in await migrate(conn)

        new_first = str(first.reading.uid)
        new_last = str(last.reading.uid)
        columns = {r["attname"] for r in await conn.fetch(_COLUMNS_OF_READINGS)}
        assert "uid" not in columns
        a = await conn.fetchrow("SELECT * FROM alerts WHERE id = $1", alert_id)
        assert (str(a["first_reading_uid"]), str(a["last_reading_uid"])) == (new_first, new_last)
        assert orjson.loads(a["contributions"])[0]["reading_uid"] == new_first
        assert orjson.loads(a["evidence"]) == {"reading_uid": new_last, "other": "kept"}
        c = await conn.fetchrow("SELECT * FROM alert_confirmations")
        assert (str(c["reading_uid"]), str(c["closed_reading_uid"])) == (new_first, new_last)
        assert orjson.loads(c["candidate"]) == {"reading_uid": new_first}
        assert str(await conn.fetchval("SELECT uid FROM reading_corrections")) == new_last

        # Found by the new uid; the old one names nothing.
        found = await by_uid(conn, new_first)
        assert found is not None
        got = found.accepted.reading
        assert (got.device_id, got.metric, got.measured_at) == reading_key(first)
        assert await by_uid(conn, old_first) is None
        row = await corrections.for_reading(conn, new_last)
        assert row is not None
        assert row["corrected_at"] is not None
    finally:
        await conn.close()


def reading_key(a: AcceptedReading) -> tuple[str, Metric, datetime]:
    return (a.reading.device_id, a.reading.metric, a.reading.measured_at)


_COLUMNS_OF_READINGS = """SELECT attname FROM pg_attribute
                           WHERE attrelid = 'readings'::regclass AND attnum > 0
                             AND NOT attisdropped"""
