"""The campaign planner: every ``interval`` seconds, each live campaign's segment and trigger
are evaluated in SQL, and an SMS outbox row is written for each patient picked, once per
occurrence (``rpm.storage.campaigns.plan``). The SMS worker then sends them through the same
gate as alert messages: consent, opt-out, quiet hours, the daily cap (alerts first) and no
program message during an open high or critical episode.

A pass is incremental (rpm.engagement.planning): it evaluates only the patients of the time
zones whose local day changed or whose trigger time came since the campaign's last pass, and
the patients whose data changed (the change log) or for whom an instant of their own passed.
The first pass, a new version of the campaign or its segment, a long gap and the periodic
reconciliation evaluate everyone. Each campaign's last pass is stored in the transaction that
plans it, so a restart or another process carries on from it.

A pass takes an advisory lock, so two processes never plan at once (and the outbox's dedupe
keys would make a second plan of the same occurrence a no-op anyway). Each campaign plans in
its own transaction with a statement timeout, so one slow campaign delays no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from rpm.engagement import planning
from rpm.engagement.planning import Full, PlanKey, PlannerState, Scope
from rpm.engagement.segments import SegmentSpec
from rpm.storage import campaigns as campaign_store
from rpm.storage import planning as planning_store
from rpm.storage import segments as segment_store
from rpm.storage.campaigns import CampaignVersion, PlanScope
from rpm.storage.pool import DATABASE_UNAVAILABLE, Conn
from rpm.storage.segments import SegmentVersion

log = logging.getLogger(__name__)

PLANNER_LOCK = 0x52504D43  # "RPMC"
# A pass naming fewer patients than this (and no whole zone) plans on one connection: the
# second's transaction and statement cost more than its half of the work saves.
PARTS_FROM = 2_000


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class PlannerPass:
    """What one pass planned, per campaign (and which campaigns had no segment)."""

    planned: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ran: bool = True  # False: another process held the lock
    full: dict[str, str] = field(default_factory=dict)  # evaluated in full, and why
    looked_at: dict[str, int] = field(default_factory=dict)  # incremental: patients named
    parts: dict[str, int] = field(default_factory=dict)  # planned on more than 1 connection


class CampaignPlanner:
    def __init__(
        self,
        pool: asyncpg.Pool,
        daily_cap: int,
        *,
        clock: Callable[[], datetime] = _utcnow,
        timeout_s: float = 30.0,
        reconcile_s: float = planning.RECONCILE_S,
        full_after_s: float = planning.FULL_AFTER_S,
        connections: int = 2,
    ) -> None:
        self._pool = pool
        self._daily_cap = daily_cap
        self._timeout_s = timeout_s
        self._timeout_ms = max(1, int(timeout_s * 1000))
        self._reconcile_s = reconcile_s
        self._full_after_s = full_after_s
        self._connections = max(1, connections)
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
        live = []
        for c in await campaign_store.current_campaigns(conn):
            if not c.live:
                continue
            live.append(c.name)
            segment = segments.get(c.spec.segment)
            if segment is None:
                result.skipped[c.name] = f"segment {c.spec.segment} does not exist"
                continue
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL statement_timeout = {self._timeout_ms}")
                    result.planned[c.name] = await self._plan(conn, c, segment, at, result)
            except asyncpg.QueryCanceledError:
                result.skipped[c.name] = f"planning took longer than {self._timeout_s:g} s"
                continue
        await planning_store.prune(conn, live, at - timedelta(seconds=self._full_after_s))

    async def _plan(
        self,
        conn: Conn,
        c: CampaignVersion,
        segment: SegmentVersion,
        at: datetime,
        result: PlannerPass,
    ) -> int:
        """Plan one campaign at ``at``, over everyone or over what changed since its last
        pass, and store this pass as its last (in the caller's transaction)."""
        watermark = await planning_store.watermark(conn)  # before anything is read
        key = PlanKey(c.version, segment.name, segment.version, self._daily_cap)
        last = await planning_store.state(conn, c.name)
        mode = planning.plan_mode(
            last, key, at, reconcile_s=self._reconcile_s, full_after_s=self._full_after_s
        )
        if isinstance(mode, Full):
            result.full[c.name] = mode.reason
            n = await campaign_store.plan(conn, c, segment.spec, at, self._daily_cap)
            full_at = at
        else:
            assert last is not None
            scope = await self._scope(conn, c, segment, mode.since, mode.watermark, at)
            result.looked_at[c.name] = len(scope.patients)
            n = 0
            if not scope.empty:
                n = await self._plan_parts(conn, c, segment.spec, at, scope, result)
            full_at = last.full_at
        await planning_store.save_state(conn, c.name, PlannerState(key, at, watermark, full_at))
        return n

    async def _plan_parts(
        self,
        conn: Conn,
        c: CampaignVersion,
        segment: SegmentSpec,
        at: datetime,
        scope: PlanScope,
        result: PlannerPass,
    ) -> int:
        """Plan ``scope`` in parts (disjoint sets of patients) side by side: the first on
        ``conn``, in the caller's transaction, each other on a connection of its own, in a
        transaction committed before the caller's (which stores the pass). Whatever fails
        rolls every part back that has not committed, and a committed part without the
        caller's commit is planned again as one (the dedupe keys make it a no-op) by the next
        pass, which starts from the previous state."""
        parts = self._connections
        pool = self._pool
        free = pool.get_idle_size() + pool.get_max_size() - pool.get_size()
        small = not scope.zones and len(scope.patients) < PARTS_FROM
        # Never wait for a connection another worker uses; a few patients are not worth it.
        if parts == 1 or small or free < parts - 1:
            return await campaign_store.plan(conn, c, segment, at, self._daily_cap, scope=scope)
        result.parts[c.name] = parts
        scopes = [dataclasses.replace(scope, part=k, parts=parts) for k in range(parts)]
        async with contextlib.AsyncExitStack() as stack:
            others: list[Conn] = []
            for _ in range(parts - 1):
                other = await stack.enter_async_context(self._pool.acquire())
                await stack.enter_async_context(other.transaction())
                await other.execute(f"SET LOCAL statement_timeout = {self._timeout_ms}")
                others.append(other)
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(
                            campaign_store.plan(on, c, segment, at, self._daily_cap, scope=part)
                        )
                        for on, part in zip([conn, *others], scopes, strict=True)
                    ]
            except BaseExceptionGroup as failed:  # the first error, as one connection gives
                raise failed.exceptions[0] from None
            return sum(t.result() for t in tasks)

    async def _scope(
        self,
        conn: Conn,
        c: CampaignVersion,
        segment: SegmentVersion,
        since: datetime,
        watermark: int,
        at: datetime,
    ) -> PlanScope:
        """The zones to evaluate whole and the other patients to look at."""
        zones: dict[Scope, list[str]] = {s: [] for s in Scope}
        for zone, prev_local, now_local in await planning_store.zone_clocks(conn, since, at):
            zones[planning.zone_scope(c.spec.trigger, prev_local, now_local)].append(zone)
        patients = await planning_store.changed_patients(
            conn,
            c.name,
            watermark,
            since,
            at,
            planning.crossings(c.spec, segment.spec.where),
        )
        return PlanScope(tuple(zones[Scope.ALL]), tuple(patients), tuple(zones[Scope.CHANGED]))
