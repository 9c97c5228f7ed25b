"""Packing closed readings partitions (docs/data-lifecycle.md): the lifecycle scheduler
rebuilds the indexes of a partition (plain PostgreSQL) or an uncompressed chunk
(TimescaleDB) once its range has been over for ``pack_after``, once, and leaves the open
ones, the default partition and compressed chunks alone; readings and their lookups are the
same after. Clocks are pinned."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from rpm.local_endpoints import ServiceEndpoints
from rpm.storage import lifecycle
from rpm.storage.migrate import migrate
from rpm.storage.pool import create_pool
from rpm.storage.readings import by_uid, insert_new
from rpm.workers.lifecycle import LifecycleConfig, LifecycleScheduler
from tests.lifecycle_support import T0, add_patients, empty_database, seeded_readings

NO_TIMESCALE = "TimescaleDB is not installed here: the session's PostgreSQL is plain"
MARCH, APRIL = "public.readings_p2025_03", "public.readings_p2025_04"
_ALL = "SELECT * FROM readings ORDER BY device_id, metric, measured_at"


async def _index_files(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    """The table's indexes by name, with the file each is stored in (a rebuild changes it)."""
    rows = await conn.fetch(
        """SELECT indexrelid::regclass::text AS name, pg_relation_filenode(indexrelid) AS f
             FROM pg_index WHERE indrelid = $1::regclass""",
        table,
    )
    return {r["name"]: r["f"] for r in rows}


async def _healthy(conn: asyncpg.Connection) -> None:
    """Every index of readings valid, every partition's primary key attached to the
    parent's (the rebuilt index took the old one's place)."""
    assert not await conn.fetchval(
        """SELECT count(*) FROM pg_index i JOIN pg_inherits h ON h.inhrelid = i.indrelid
            WHERE h.inhparent = 'readings'::regclass AND NOT i.indisvalid"""
    )
    parts = await conn.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings'::regclass"
    )
    attached = await conn.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings_pkey'::regclass"
    )
    assert attached == parts


async def test_plain_closed_months_are_packed_once(plain_services: ServiceEndpoints) -> None:
    """March is packed once April is three days old, April is not yet, readings_default
    never; a second pass does nothing; readings, duplicate checks and lookups by uid are
    the same after; April is packed once it has closed; retention forgets the dropped."""
    async for url in empty_database(plain_services):
        conn = await asyncpg.connect(url)
        pool = await create_pool(url, size=2)
        try:
            await migrate(conn)
            own = lifecycle.Flavour(timescale=False, partman=False)
            await lifecycle.maintain_partitions(conn, T0, own)  # March 2025 on
            await add_patients(conn, ["p1", "p2"])  # their devices too: lookups by uid
            stored = seeded_readings(21, ["p1", "p2"], days=45, per_day=3)  # to mid-April
            assert len(await insert_new(conn, stored)) == len(stored)
            before = [dict(r) for r in await conn.fetch(_ALL)]
            tables = (MARCH, APRIL, "readings_default")
            files = {t: await _index_files(conn, t) for t in tables}
            assert all(files.values())

            sched = LifecycleScheduler(pool)  # the defaults: 3 days after the month's end
            assert (await sched.tick(T0 + timedelta(days=33))).packed == []  # 2 days into April
            now = T0 + timedelta(days=45)
            first = await sched.tick(now)
            assert first.packed == [MARCH]
            after = {t: await _index_files(conn, t) for t in tables}
            assert after[MARCH].keys() == files[MARCH].keys()
            assert not set(after[MARCH].values()) & set(files[MARCH].values())
            assert after[APRIL] == files[APRIL]
            assert after["readings_default"] == files["readings_default"]
            assert (await sched.tick(now)).packed == []
            assert {t: await _index_files(conn, t) for t in tables} == after
            fill = await conn.fetchval(
                "SELECT reloptions FROM pg_class WHERE oid = 'readings_p2025_03_pkey'::regclass"
            )
            assert fill == ["fillfactor=100"]  # kept by the rebuild: leaves filled whole
            packed = await conn.fetch("SELECT name, packed_at FROM reading_partitions_packed")
            assert [tuple(r) for r in packed] == [(MARCH, now)]

            await _healthy(conn)
            assert [dict(r) for r in await conn.fetch(_ALL)] == before
            assert await insert_new(conn, stored) == []  # the rebuilt key still refuses them
            for a in [a for a in stored if a.reading.device_id.endswith("cuff")][::17]:
                found = await by_uid(conn, str(a.reading.uid))
                assert found is not None
                assert found.accepted.reading.measured_at == a.reading.measured_at

            # April closes; a failed rebuild's leftover (an invalid ``_ccnew`` index, as a
            # cancelled REINDEX CONCURRENTLY leaves) is dropped before the rebuild.
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(
                    "CREATE UNIQUE INDEX CONCURRENTLY readings_p2025_04_pkey_ccnew"
                    " ON readings_p2025_04 (metric)"
                )
            assert "readings_p2025_04_pkey_ccnew" in await _index_files(conn, APRIL)
            may = T0 + timedelta(days=64)
            assert (await sched.tick(may)).packed == [APRIL]
            assert (await _index_files(conn, APRIL)).keys() == files[APRIL].keys()
            await _healthy(conn)
            assert [dict(r) for r in await conn.fetch(_ALL)] == before

            # Packing off here: the partitions the migration made around today are closed too.
            keep = LifecycleConfig(retention=timedelta(days=400), pack_per_pass=0)
            dropping = LifecycleScheduler(pool, keep)
            assert (await dropping.tick(T0 + timedelta(days=432))).dropped == ["readings_p2025_03"]
            left = await conn.fetch("SELECT name FROM reading_partitions_packed")
            assert [r["name"] for r in left] == [APRIL]

            # The scheduler's session lock outlives the transactions REINDEX CONCURRENTLY
            # commits inside itself: no other pass can start while a pack runs.
            assert await lifecycle.try_lock(conn)
            await lifecycle.pack(conn, APRIL, may, timedelta(minutes=1))
            assert await conn.fetchval(
                """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                      AND pid = pg_backend_pid() AND objid = $1""",
                lifecycle.LOCK_KEY,
            )
            assert not (await sched.tick(may)).ran
            await lifecycle.unlock(conn)
        finally:
            await pool.close()
            await conn.close()


async def test_a_rebuild_blocked_by_an_older_transaction_is_left_to_a_later_pass(
    plain_services: ServiceEndpoints, caplog: pytest.LogCaptureFixture
) -> None:
    """REINDEX CONCURRENTLY waits for older transactions: while one stays open the rebuild
    gives up after ``pack_wait`` (the pass's other jobs done, the scheduler's lock free
    again), and the pass after it ends drops the half-made index and packs the month."""
    async for url in empty_database(plain_services):
        conn = await asyncpg.connect(url)
        blocker = await asyncpg.connect(url)
        pool = await create_pool(url, size=2)
        try:
            await migrate(conn)
            await lifecycle.maintain_partitions(conn, T0, lifecycle.Flavour(False, False))
            await add_patients(conn, ["p1"])
            stored = seeded_readings(23, ["p1"], days=40, per_day=2)
            await insert_new(conn, stored)
            files = await _index_files(conn, MARCH)
            await blocker.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await blocker.fetchval("SELECT count(*) FROM readings")  # holds its snapshot

            config = LifecycleConfig(pack_wait=timedelta(milliseconds=200))
            sched = LifecycleScheduler(pool, config)
            now = T0 + timedelta(days=40)
            blocked = await sched.tick(now)  # cannot finish while the snapshot is held
            assert blocked.ran
            assert blocked.packed == []
            assert blocked.rollup_rows > 0  # the jobs before it ran
            assert f"packing {MARCH} failed: LockNotAvailableError" in caplog.text
            assert any(n.endswith("_ccnew") for n in await _index_files(conn, MARCH))
            assert await lifecycle.try_lock(conn)  # the pass let go of the lock
            await lifecycle.unlock(conn)

            await blocker.execute("ROLLBACK")
            assert (await sched.tick(now)).packed == [MARCH]
            after = await _index_files(conn, MARCH)
            assert after.keys() == files.keys()
            assert not set(after.values()) & set(files.values())
            await _healthy(conn)
            assert await conn.fetchval("SELECT count(*) FROM readings") == len(stored)
        finally:
            await pool.close()
            await blocker.close()
            await conn.close()


async def test_timescale_closed_uncompressed_chunks_are_packed_once(pool: asyncpg.Pool) -> None:
    """Uncompressed chunks closed for three days are packed, a few a pass, each once; the
    compressed ones and the open ones are not; readings and duplicate checks are the same."""
    async with pool.acquire() as conn:
        if not (await lifecycle.flavour(conn)).timescale:
            pytest.skip(NO_TIMESCALE)
        await add_patients(conn, ["p1", "p2"])
        stored = seeded_readings(22, ["p1", "p2"], days=40, per_day=3)
        await insert_new(conn, stored)
        before = [dict(r) for r in await conn.fetch(_ALL)]
        chunks = await conn.fetch(
            """SELECT format('%I.%I', chunk_schema, chunk_name) AS name, range_end
                 FROM timescaledb_information.chunks WHERE hypertable_name = 'readings'
                ORDER BY range_end"""
        )
        files = {c["name"]: await _index_files(conn, c["name"]) for c in chunks}
    now = T0 + timedelta(days=30)
    config = LifecycleConfig(compress_after=timedelta(days=21), pack_per_pass=2)
    sched = LifecycleScheduler(pool, config)
    passes = [await sched.tick(now) for _ in range(len(chunks) + 1)]
    async with pool.acquire() as conn:
        compressed = {
            r["name"]
            for r in await conn.fetch(
                """SELECT format('%I.%I', chunk_schema, chunk_name) AS name
                     FROM timescaledb_information.chunks
                    WHERE hypertable_name = 'readings' AND is_compressed"""
            )
        }
        closed = [c["name"] for c in chunks if c["range_end"] <= now - timedelta(days=3)]
        due = [c for c in closed if c not in compressed]
        assert compressed
        assert len(due) > 2  # more than a pass's worth
        assert len(closed) < len(chunks)  # an open chunk
        assert [len(p.packed) for p in passes][:2] == [2, min(2, len(due) - 2)]
        assert [n for p in passes for n in p.packed] == due
        for c in chunks:
            name = c["name"]
            if name in compressed:
                continue
            now_files = await _index_files(conn, name)
            if name in due:
                assert now_files.keys() == files[name].keys()
                assert not set(now_files.values()) & set(files[name].values())
            else:
                assert now_files == files[name]
        assert [dict(r) for r in await conn.fetch(_ALL)] == before
        assert await insert_new(conn, stored) == []

    # Packed chunks compress (and the packed records of existing chunks stay) as any other.
    later = LifecycleConfig(compress_after=timedelta(days=3))
    assert (await LifecycleScheduler(pool, later).tick(now)).chunks_compressed == len(due)
    async with pool.acquire() as conn:
        assert [dict(r) for r in await conn.fetch(_ALL)] == before
        assert await insert_new(conn, stored) == []
        assert await conn.fetchval("SELECT count(*) FROM reading_partitions_packed") == len(due)
