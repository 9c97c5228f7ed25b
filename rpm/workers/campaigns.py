"""The campaign planner: every ``interval`` seconds, each live campaign's segment and trigger
are evaluated in SQL over the whole population, and an SMS outbox row is written for each
patient picked, once per occurrence (``rpm.storage.engagement.plan``). The SMS worker then
sends them through the same gate as alert messages: consent, opt-out, quiet hours, the daily
cap (alerts first) and no program message during an open high or critical episode.

A pass takes an advisory lock, so two processes never plan at once (and the outbox's dedupe
keys would make a second plan of the same occurrence a no-op anyway). Each campaign plans in
its own transaction with a statement timeout, so one slow campaign delays no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from rpm.storage import campaigns as campaign_store
from rpm.storage import segments as segment_store
from rpm.storage.pool import DATABASE_UNAVAILABLE, Conn

log = logging.getLogger(__name__)

PLANNER_LOCK = 0x52504D43  # "RPMC"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class PlannerPass:
    """What one pass planned, per campaign (and which campaigns had no segment)."""

    planned: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ran: bool = True  # False: another process held the lock


class CampaignPlanner:
    def __init__(
        self,
        pool: asyncpg.Pool,
        daily_cap: int,
        *,
        clock: Callable[[], datetime] = _utcnow,
        timeout_s: float = 30.0,
    ) -> None:
        self._pool = pool
        self._daily_cap = daily_cap
        self._timeout_s = timeout_s
        self._clock = clock
        self._stopping = asyncio.Event()
        self.planned = 0  # since start, for metrics

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self, interval_s: float) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except DATABASE_UNAVAILABLE as exc:
                log.warning("campaigns: database unavailable (%s)", exc.__class__.__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self._stopping.wait()

    async def tick(self, now: datetime | None = None) -> PlannerPass:
        """One pass over the live campaigns at ``now`` (the clock's when None).

        Each campaign plans in a transaction of its own, cut off after ``timeout_s``: a slow
        or failing campaign is reported and skipped, and the others still plan. A session
        advisory lock keeps a second process's pass out for the whole pass.
        """
        at = now or self._clock()
        result = PlannerPass()
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", PLANNER_LOCK):
                result.ran = False
                return result
            try:
                await self._pass(conn, at, result)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", PLANNER_LOCK)
        total = sum(result.planned.values())
        self.planned += total
        if total:
            log.info("campaigns: planned %d messages %s", total, result.planned)
        for name, why in result.skipped.items():
            log.warning("campaigns: %s not planned: %s", name, why)
        return result

    async def _pass(self, conn: Conn, at: datetime, result: PlannerPass) -> None:
        segments = {s.name: s for s in await segment_store.current_segments(conn)}
        for c in await campaign_store.current_campaigns(conn):
            if not c.live:
                continue
            segment = segments.get(c.spec.segment)
            if segment is None:
                result.skipped[c.name] = f"segment {c.spec.segment} does not exist"
                continue
            try:
                async with conn.transaction():
                    timeout_ms = max(1, int(self._timeout_s * 1000))
                    await conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                    n = await campaign_store.plan(conn, c, segment.spec, at, self._daily_cap)
            except asyncpg.QueryCanceledError:
                result.skipped[c.name] = f"planning took longer than {self._timeout_s:g} s"
                continue
            result.planned[c.name] = n
