"""The lifecycle scheduler (docs/data-lifecycle.md): rollup refresh, compression, partition
maintenance, retention and the packing of closed partitions of readings, run by the project
rather than by TimescaleDB's job scheduler, whose policy jobs fail on Debian's PostgreSQL
15.20 ("cannot drop portal while it is being set up").

Each pass (``tick``) runs on one connection holding a session advisory lock (the
continuous-aggregate refresh is a procedure and REINDEX CONCURRENTLY a command that cannot
run inside a transaction, so the lock cannot be a transaction's): a second process that
finds the lock taken skips its pass, so no job ever runs twice at once. Every job is
idempotent, so a pass cut short is simply done again by the next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from rpm.settings import LifecycleSettings
from rpm.storage import lifecycle as store
from rpm.storage.pool import DATABASE_UNAVAILABLE, Conn
from rpm.workers.loop import drain_until_stopped

log = logging.getLogger(__name__)

_PASS_FAILED: tuple[type[Exception], ...] = (*DATABASE_UNAVAILABLE, asyncpg.PostgresError)


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    compress_after: timedelta = timedelta(days=30)
    retention: timedelta | None = None  # None: readings are kept for ever
    recompress_per_pass: int = 2  # chunks compressed under older settings, rewritten a pass
    rollup_batch: int = 10_000  # dirty-log rows per rollup transaction (plain PostgreSQL)
    pack_after: timedelta = timedelta(days=3)  # after a partition's or chunk's range ends
    pack_per_pass: int = 2  # partitions or chunks whose indexes are rebuilt a pass
    pack_wait: timedelta = timedelta(minutes=1)  # longest wait for older transactions

    @classmethod
    def from_settings(cls, s: LifecycleSettings) -> LifecycleConfig:
        return cls(
            compress_after=timedelta(days=s.compress_after_days),
            retention=None if s.retention_days is None else timedelta(days=s.retention_days),
            pack_after=timedelta(days=s.pack_after_days),
        )


@dataclass(slots=True)
class PassResult:
    """What one pass did."""

    ran: bool = True  # False: another process held the lock
    timescale: bool = False
    rollup_rows: int = 0  # plain: dirty-log rows consumed (their hours rolled up again)
    rollups_refreshed: bool = False  # TimescaleDB: continuous aggregates refreshed
    chunks_compressed: int = 0
    chunks_recompressed: int = 0  # compressed under older settings (migration 0038)
    partitions_made: int = 0
    dropped: list[str] = field(default_factory=list)  # chunks or partitions (retention)
    packed: list[str] = field(default_factory=list)  # closed ones whose indexes were rebuilt


class LifecycleScheduler:
    """Runs ``tick`` every ``interval_s``; ``tick(now)`` alone is one pass (tests pin now)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: LifecycleConfig | None = None,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self.config = config or LifecycleConfig()
        self._now = now

    async def tick(self, now: datetime | None = None) -> PassResult:
        """One pass of every job, or none when another process is running one."""
        at = now or self._now()
        async with self._pool.acquire() as conn:
            if not await store.try_lock(conn):
                return PassResult(ran=False)
            try:
                return await self._jobs(conn, at)
            finally:
                await store.unlock(conn)

    async def pack(self, now: datetime) -> list[str] | None:
        """The packing job alone, under the pass lock (benchmarks/data_year.py packs a loaded
        history as past passes would have); None when another process holds the lock."""
        async with self._pool.acquire() as conn:
            if not await store.try_lock(conn):
                return None
            try:
                return await self._pack(conn, now, await store.flavour(conn))
            finally:
                await store.unlock(conn)

    async def _jobs(self, conn: Conn, now: datetime) -> PassResult:
        c = self.config
        fl = await store.flavour(conn)
        out = PassResult(timescale=fl.timescale)
        if fl.timescale:
            horizon = None if c.retention is None else now - c.retention
            await store.refresh_rollups(conn, now, horizon)
            out.rollups_refreshed = True
            out.chunks_compressed = await store.compress_chunks(conn, now - c.compress_after)
            if horizon is not None:
                out.dropped = await store.drop_chunks(conn, horizon)
            out.chunks_recompressed = await self._recompress(conn)
            out.packed = await self._pack(conn, now, fl)
            return out
        while True:
            taken = await store.refresh_plain_rollups(conn, c.rollup_batch)
            out.rollup_rows += taken
            if taken < c.rollup_batch:
                break
        out.partitions_made = await store.maintain_partitions(conn, now, fl)
        if c.retention is not None:
            out.dropped = await store.drop_partitions(conn, now - c.retention)
        out.packed = await self._pack(conn, now, fl)
        return out

    async def _recompress(self, conn: Conn) -> int:
        """Chunks compressed under older settings, a few a pass, one statement each; a failure
        is logged and left to the next pass (it does not stop the other jobs)."""
        done = 0
        for chunk in await store.stale_chunks(conn, self.config.recompress_per_pass):
            try:
                await store.recompress(conn, chunk)
            except asyncpg.PostgresError as exc:
                log.warning("recompressing a chunk failed: %s", exc.__class__.__name__)
                break
            done += 1
        return done

    async def _pack(self, conn: Conn, now: datetime, fl: store.Flavour) -> list[str]:
        """Rebuild the indexes of the partitions or uncompressed chunks closed for
        ``pack_after``, a few a pass, one at a time; last in the pass, and a failure is logged
        and left to the next pass, so it never stops the other jobs."""
        await store.forget_dropped(conn)
        c = self.config
        done: list[str] = []
        for name in await store.to_pack(conn, now - c.pack_after, c.pack_per_pass, fl):
            try:
                await store.pack(conn, name, now, c.pack_wait)
            except asyncpg.PostgresError as exc:
                # A relation's name (a month or a chunk number), no patient data.
                log.warning("packing %s failed: %s", name, exc.__class__.__name__)
                break
            done.append(name)
        return done

    async def run(self, interval_s: float, stopping: asyncio.Event | None = None) -> None:
        """Pass every ``interval_s``, the first one interval after start (start-up stays
        quick), until ``stopping`` is set; a failed pass is logged and retried at the next."""
        started = False

        async def once() -> int:
            nonlocal started
            if not started:
                started = True
                return 0
            try:
                result = await self.tick()
            except _PASS_FAILED as exc:
                log.warning("lifecycle pass failed: %s", exc.__class__.__name__)
                return 0
            if result.dropped:
                log.warning("retention dropped %d readings partitions/chunks", len(result.dropped))
            if result.packed:
                log.info("packed the indexes of %d closed partitions/chunks", len(result.packed))
            if result.chunks_recompressed:
                log.info(
                    "recompressed %d chunks under the current settings", result.chunks_recompressed
                )
            return 0  # rest a whole interval after every pass

        await drain_until_stopped(
            once, stopping or asyncio.Event(), lambda: interval_s, log, "lifecycle"
        )
