"""The alert timers worker: escalation to on-call staff, re-notification and auto-resolve.

The timers are columns of the alert rows (``next_escalation_at``, ``last_notified_at``,
``condition_cleared_at``), so a restart, or a second process, loses none. Each pass
(``tick``) is one transaction that first takes an advisory lock: two processes never
act on the same alert twice, and the escalation SMS is queued in the outbox in the same
transaction as the audit event that records it. What to do with each alert is decided
by the pure functions of ``alerts.escalation``; this module only feeds them and writes
their answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from alerts.escalation import (
    Do,
    EscalationConfig,
    first_due,
    next_step,
    should_auto_resolve,
    should_renotify,
    staff_sms,
)
from alerts.lifecycle import Action, AlertState
from rpm.domain import Severity
from rpm.storage import alert_timers as timer_store
from rpm.storage import alerts as alert_store
from rpm.storage import outbox as outbox_store
from rpm.storage import rule_programs as program_store
from rpm.storage import staff as staff_store
from rpm.storage.pool import DATABASE_UNAVAILABLE, Conn
from rules.programs import RuleBook

log = logging.getLogger(__name__)

# A database away, or a statement that failed (e.g. a deadlock): the next pass retries.
_PASS_FAILED: tuple[type[Exception], ...] = (*DATABASE_UNAVAILABLE, asyncpg.PostgresError)


@dataclass(slots=True)
class TickResult:
    """What one pass did (alert ids)."""

    ran: bool = True  # False: another process held the lock
    paged: list[tuple[int, int, str]] = field(default_factory=list)  # (alert, tier, staff)
    unreachable: list[int] = field(default_factory=list)
    renotified: list[int] = field(default_factory=list)
    auto_resolved: list[int] = field(default_factory=list)
    rescheduled: int = 0


class AlertTimers:
    """Runs ``tick`` every ``interval_s``; ``tick(now)`` alone is one pass (tests freeze now).

    ``book`` fixes the rules used for auto-resolve; without it the active program
    versions in the database are used (re-read when a new version is published).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: EscalationConfig | None = None,
        *,
        book: RuleBook | None = None,
        batch: int = 500,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self.config = config or EscalationConfig()
        self._fixed_book = book
        self._book = book or RuleBook.builtin()
        self._stamp: int | None = None
        self._batch = batch
        self._now = now

    async def run(self, interval_s: float) -> None:
        """A pass every ``interval_s`` (``RPM_ALERT_TIMER_INTERVAL_S``) until cancelled."""
        while True:
            try:
                await self.tick()
            except _PASS_FAILED as exc:
                # The timers are in the database: the next pass picks up where this one failed.
                log.warning("alert timers: pass failed (%s); retrying", exc.__class__.__name__)
            await asyncio.sleep(interval_s)

    async def tick(self, now: datetime | None = None) -> TickResult:
        """One pass over due escalations, re-notifications and auto-resolves."""
        now = now or self._now()
        result = TickResult()
        notes: list[dict[str, Any]] = []
        async with self._pool.acquire() as conn, conn.transaction():
            if not await timer_store.lock(conn):
                return TickResult(ran=False)
            book = await self._rule_book(conn)
            await self._auto_resolve(conn, now, book, result, notes)
            await self._renotify(conn, now, result, notes)
            await self._escalate(conn, now, result, notes)
            await alert_store.notify(conn, notes)
        for alert_id, tier, staff_id in result.paged:
            log.info("alert %s escalated to tier %d: SMS to staff %s", alert_id, tier, staff_id)
        for alert_id in result.renotified:
            log.info("alert %s re-opened: still firing after acknowledgement", alert_id)
        for alert_id in result.auto_resolved:
            log.info("alert %s auto-resolved", alert_id)
        return result

    async def _escalate(
        self, conn: Conn, now: datetime, result: TickResult, notes: list[dict[str, Any]]
    ) -> None:
        while True:
            rows = await timer_store.due(conn, now, self._batch)
            teams = {r.facts.care_team for r in rows if r.facts.care_team}
            on_call = await staff_store.on_call_for(conn, teams, now)
            sms = []
            later: dict[int, datetime | None] = {}
            for row in rows:
                a = row.facts
                step = next_step(a, on_call.get(a.care_team or "", {}), now, self.config)
                if step.do is Do.PAGE:
                    sms.append(staff_sms(a, step))
                    await timer_store.record_page(conn, a, step, now)
                    assert step.staff_id is not None
                    result.paged.append((a.alert_id, step.tier, step.staff_id))
                    notes.append(
                        alert_store.change(
                            a.alert_id, a.patient_id, Action.ESCALATE_TIER, a.state, a.severity
                        )
                    )
                elif step.do is Do.NOBODY:
                    await timer_store.record_nobody(conn, a, step, now)
                    result.unreachable.append(a.alert_id)
                    # Ids only: never the patient's name or phone, nor staff phones.
                    log.warning(
                        "alert %s: escalation to tier %d due but nobody reachable on call "
                        "(care team %s); retrying",
                        a.alert_id,
                        step.tier,
                        a.care_team,
                    )
                    if step.audit:
                        notes.append(
                            alert_store.change(
                                a.alert_id, a.patient_id, Action.NOBODY_ON_CALL, a.state, a.severity
                            )
                        )
                else:
                    later[a.alert_id] = step.next_at
            await timer_store.reschedule(conn, later)
            await outbox_store.enqueue(conn, sms)
            result.rescheduled += len(later)
            # Every alert handled above left the due set, so this ends.
            if len(rows) < self._batch:
                return

    async def _renotify(
        self, conn: Conn, now: datetime, result: TickResult, notes: list[dict[str, Any]]
    ) -> None:
        after = self.config.renotify_after
        if after is None:
            return
        escalating = [s for s in Severity if self.config.delay(s) is not None]
        minutes = int(after.total_seconds() // 60)
        for row in await timer_store.still_firing(conn, after, escalating, self._batch):
            a = row.facts
            if not should_renotify(a, now, self.config):
                continue
            note = f"still firing {minutes} min or more after acknowledgement"
            state = await timer_store.record_renotify(
                conn, a, now, first_due(a.severity, now, self.config), note
            )
            result.renotified.append(a.alert_id)
            notes.append(
                alert_store.change(a.alert_id, a.patient_id, Action.RENOTIFY, state, a.severity)
            )

    async def _auto_resolve(
        self,
        conn: Conn,
        now: datetime,
        book: RuleBook,
        result: TickResult,
        notes: list[dict[str, Any]],
    ) -> None:
        shortest: dict[str, float] = {}
        for program in book.programs.values():
            for rule in program.rules:
                hours = rule.auto_resolve_after_hours
                if hours is not None:
                    shortest[rule.id] = min(hours, shortest.get(rule.id, hours))
        for row in await timer_store.cleared(conn, now, shortest, self._batch):
            a = row.facts
            spec = book.rule(a.rule_id, row.programs)
            hours = spec.auto_resolve_after_hours if spec else None
            if not should_auto_resolve(a, hours, now):
                continue
            assert a.condition_cleared_at is not None
            note = (
                f"condition clear since {a.condition_cleared_at.isoformat(timespec='minutes')}"
                f" ({hours:g} h): resolved automatically"
            )
            if await timer_store.auto_resolve(conn, a, now, note) is None:
                continue  # changed meanwhile (fired again, or a nurse resolved it)
            result.auto_resolved.append(a.alert_id)
            notes.append(
                alert_store.change(
                    a.alert_id, a.patient_id, Action.AUTO_RESOLVE, AlertState.RESOLVED, a.severity
                )
            )

    async def _rule_book(self, conn: Conn) -> RuleBook:
        """The fixed book, or the active program versions (re-read when they change)."""
        if self._fixed_book is not None:
            return self._fixed_book
        stamp = await program_store.stamp(conn)
        if stamp != self._stamp:
            try:
                book = await program_store.active_book(conn)
            except ValueError as exc:
                log.error("alert timers keep the previous rule programs: %s", exc)
            else:
                self._stamp = stamp
                if book.programs:
                    self._book = book
        return self._book
