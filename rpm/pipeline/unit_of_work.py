"""The ingest unit of work: ``IngestPipeline``, one database transaction per micro-batch
(the stages: ``rpm.pipeline``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar

import asyncpg
from prometheus_client import CollectorRegistry

from alerts.confirm import expire, no_repeat
from alerts.policy import Grouping, decide, earliest_by_key
from rpm.domain import (
    AcceptedReading,
    AlertCandidate,
    Metric,
    RawMessage,
)
from rpm.domain.errors import StorageError
from rpm.metrics import IngestMetrics
from rpm.storage import alerts as alert_store
from rpm.storage import confirmations as confirm_store
from rpm.storage import corrections as correction_store
from rpm.storage import engagement as engagement_store
from rpm.storage import outbox as outbox_store
from rpm.storage import quarantine as quarantine_store
from rpm.storage import readings as reading_store
from rpm.storage import registry as device_store
from rpm.storage import rule_programs as program_store
from rpm.storage import rule_state, rule_versions
from rpm.storage.panel import PANEL_CHANNEL, patient_payloads
from rpm.storage.pool import DATABASE_UNAVAILABLE, Conn
from rpm.validation import ClockPolicy
from rules.engine import Engine, PatientContext
from rules.interpretation import Thresholds
from rules.kinds.missing import Silence
from rules.programs import RuleBook

from . import confirming
from .corrections import apply_marked
from .freshness import Freshness
from .outbox_items import fhir_push_item, follow_ups
from .prepare import prepare
from .results import BatchResult, itemize
from .staging import StagedBatches

log = logging.getLogger("rpm.pipeline")  # the name it logged under as one module

INGEST_CHANNEL = "rpm_ingest"
LAST_READING_SLACK = timedelta(minutes=15)
MISSING_LOCK = 0x52504D4D  # advisory lock key of the missing-data timer ("RPMM")
MISSING_SLICE = 2000  # patients a transaction of the missing-data timer
A = TypeVar("A")
R = TypeVar("R")


class IngestPipeline:
    """Turns batches of raw messages into durable readings, alerts and outbox work."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: ClockPolicy,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        engine: Engine | None = None,
        *,
        rules_refresh_s: float,  # RPM_RULES_REFRESH_S: how soon another process's version is used
        fhir_push: bool = False,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics or IngestMetrics(CollectorRegistry())
        self._clock = clock
        self._now = now
        self.engine = engine or Engine(RuleBook.builtin())
        self._rules_stamp: int | None = None
        self._rules_checked = -1e9
        self._rules_refresh_s = rules_refresh_s
        self._touched: set[str] = set()
        self._one_unit_at_a_time = asyncio.Lock()
        self._last_written: dict[tuple[str, str], datetime] = {}
        self._last_pending: dict[tuple[str, str], datetime] = {}
        self._fhir_push = fhir_push
        self._grouped: tuple[RuleBook, Grouping] | None = None
        self._freshness = Freshness()  # the patients' state versions the engine holds
        self._staged = StagedBatches()  # batches decoded and validated ahead (``stage``)

    async def load_rules(self, conn: Conn) -> None:
        """Use the active version of every program; cheap when nothing changed.

        A stored version that no longer validates (a kind changed under it) keeps the
        book in use, loudly: alerts must not stop because of a bad spec.
        """
        stamp = await program_store.stamp(conn)
        if stamp == self._rules_stamp:
            return
        self._rules_stamp = stamp
        try:
            book = await program_store.active_book(conn)
        except ValueError as exc:
            log.error("rule programs not reloaded, the previous ones stay in use: %s", exc)
            return
        if book.programs:
            self.engine.use_book(book)
            log.info("rule programs in use: %s", dict(book.versions))

    def rules_changed(self) -> None:
        """A program version was published: re-read the book before the next batch."""
        self._rules_checked = -1e9

    async def _refresh_rules(self, conn: Conn) -> None:
        t = time.monotonic()
        if t - self._rules_checked >= self._rules_refresh_s:
            self._rules_checked = t
            await self.load_rules(conn)

    async def stage(self, batch: Sequence[RawMessage]) -> None:
        """Decode and validate ``batch`` outside any transaction, for its unit of work
        (``rpm.pipeline.staging``); a database that is down leaves it unstaged."""
        now = self._now()
        try:
            async with self._pool.acquire() as conn:
                self._staged.put(batch, now, await prepare(conn, batch, now, self._clock))
        except DATABASE_UNAVAILABLE:
            return

    async def process(self, batch: Sequence[RawMessage], *, itemized: bool = False) -> BatchResult:
        """Run one unit of work. Raises ``StorageError`` when the database failed (retry all).

        ``itemized``: also say what became of each message (``BatchResult.per_message``, in
        the batch's order), for callers that answer each message's sender on its own; the
        messages must then be distinct objects.
        """
        started = time.perf_counter()
        try:
            result = await self._in_transaction(partial(self._process, itemized=itemized), batch)
        except DATABASE_UNAVAILABLE as exc:
            self._metrics.not_committed.inc()
            raise StorageError(f"database unavailable: {exc.__class__.__name__}") from exc
        except asyncpg.TransactionRollbackError as exc:  # serialization failure, deadlock
            self._metrics.not_committed.inc()
            raise StorageError("concurrent update; retry the batch") from exc
        except asyncpg.UniqueViolationError as exc:
            # Another process opened the same alert episode at the same moment.
            self._metrics.not_committed.inc()
            raise StorageError("concurrent alert episode; retry the batch") from exc
        transport = batch[0].transport if batch else "mqtt"
        self._metrics.batch(transport, result, time.perf_counter() - started)
        return result

    async def replay(
        self, *, ids: Sequence[int] | None = None, reason: str | None = None, limit: int = 1000
    ) -> tuple[list[int], BatchResult]:
        """Run quarantined payloads through the unit of work again (e.g. after enrollment).

        Items are marked replayed in the same transaction; whatever is still refused is
        quarantined again under its (possibly new) reason, so nothing is lost.
        """

        async def work(conn: Conn, _: None) -> tuple[list[int], BatchResult]:
            items = await quarantine_store.for_replay(conn, ids=ids, reason=reason, limit=limit)
            if not items:
                return [], BatchResult()
            await quarantine_store.mark_replayed(conn, [i for i, _ in items])
            result = await self._process(conn, [raw for _, raw in items])
            return [i for i, _ in items], result

        try:
            return await self._in_transaction(work, None)
        except DATABASE_UNAVAILABLE as exc:
            raise StorageError(f"database unavailable: {exc.__class__.__name__}") from exc

    async def _in_transaction(self, work: Callable[[Conn, A], Awaitable[R]], arg: A) -> R:
        """Run ``work`` in one transaction; on any failure the engine forgets what it touched.

        One unit of work at a time per pipeline: the engine's in-memory state (and what this
        unit touched) must not interleave with another's at an ``await`` (an MQTT batch and
        a webhook batch, or the missing-data timer, in one process)."""
        async with self._one_unit_at_a_time:
            self._touched = set()
            self._last_pending = {}
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    out = await work(conn, arg)
            except BaseException:
                self.engine.forget(self._touched)
                self._freshness.rolled_back(self._touched)
                raise
            self._freshness.committed()
            self._last_written.update(self._last_pending)
            return out

    def _last_due(self, new: Sequence[AcceptedReading]) -> dict[tuple[str, str], datetime]:
        """Newest times per (patient, metric) worth writing to ``patient_metric_last``.

        Missing-data rules count in hours, so a time is written only when it is at least
        ``LAST_READING_SLACK`` newer than the one this process last wrote: a patient
        measuring every minute costs one row update every quarter hour, not one per batch.
        """
        due = {
            key: t
            for key, t in rule_state.newest_by_metric(new).items()
            if (written := self._last_written.get(key)) is None or t >= written + LAST_READING_SLACK
        }
        self._last_pending = due
        return due

    async def _process(
        self, conn: Conn, batch: Sequence[RawMessage], itemized: bool = False
    ) -> BatchResult:
        result = BatchResult(messages=len(batch))
        await self._refresh_rules(conn)
        staged = self._staged.take(batch)
        if staged is not None:
            now, prepared = staged
        else:
            now = self._now()
            prepared = await prepare(conn, batch, now, self._clock)
        # Retractions first: a reading retracted in the same batch, or before, is stored
        # already marked; the state of patients whose readings were marked is dropped before
        # the rule step, so no buffer keeps a value entered in error (rebuilt from storage).
        corrected = await correction_store.record(conn, prepared.corrections, now)
        for outcome in corrected.outcomes:
            if outcome == "pending":
                result.retractions_pending += 1
            else:
                result.retracted += 1
        await self.corrected(conn, corrected.marked, now)
        contexts: dict[str, PatientContext] = {}
        thresholds: Thresholds | None = None
        if prepared.accepted:
            await self._claim(conn, {a.patient_id for a in prepared.accepted})
            await self._ensure_state(conn, prepared.accepted)
            contexts = await device_store.patient_contexts(
                conn, {a.patient_id for a in prepared.accepted}
            )
            # Threshold rules once per reading, pure (rules.interpretation): the insert stores
            # the interpretation, the step reuses the outcomes; state changes only in the step.
            thresholds = self.engine.thresholds(prepared.accepted, contexts)
        retracted: set[reading_store.ReadingKey] = set()
        codes = thresholds.interpretations if thresholds is not None else None
        stored = await reading_store.insert_new(conn, prepared.accepted, codes, retracted=retracted)
        result.stored = len(stored)
        result.duplicates = len(prepared.accepted) - len(stored)
        if itemized:
            result.per_message = itemize(batch, prepared, stored, corrected.outcomes)
        if self._fhir_push and stored:
            # Retracted ones too: the EHR gets them as entered-in-error, as /fhir shows them.
            await outbox_store.enqueue(conn, [fhir_push_item(stored)])
        new = (
            [a for a in stored if reading_store.key_of(a) not in retracted] if retracted else stored
        )

        if new:
            await rule_state.touch_last(conn, self._last_due(new))
            await engagement_store.touch_days(
                conn,
                [a.patient_id for a in new],
                [a.reading.measured_at for a in new],
                [a.reading.metric.value for a in new],
            )
            self._touched.update(contexts)
            self._touched.update(a.patient_id for a in new)
            step_started = time.perf_counter()
            stepped = self.engine.step(new, contexts, thresholds)
            self._metrics.rule_step_seconds.observe(time.perf_counter() - step_started)
            await self._decide(conn, stepped.candidates, result, new, contexts)
            await alert_store.mark_cleared(conn, stepped.clears)

        await quarantine_store.insert(conn, prepared.rejections)
        result.quarantined = len(prepared.rejections)
        for r in prepared.rejections:
            result.quarantine_reasons[r.reason.value] = (
                result.quarantine_reasons.get(r.reason.value, 0) + 1
            )
        await device_store.update_device_status(conn, prepared.seen)
        if result.stored or result.quarantined or corrected.marked:
            # The dashboards' news, in the statement that was sent anyway: the queue's
            # ingest event, and the panel's patients (rpm.storage.panel: the batch's ids
            # in payloads under the limit; no round trip and no NOTIFY per reading).
            panel = patient_payloads(a.patient_id for a in new)
            await conn.execute(
                "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)",
                [INGEST_CHANNEL, *(PANEL_CHANNEL for _ in panel)],
                [f'{{"stored": {result.stored}, "quarantined": {result.quarantined}}}', *panel],
            )
        return result

    async def corrected(
        self, conn: Conn, marked: Sequence[correction_store.Marked], now: datetime
    ) -> None:
        """Readings were marked entered-in-error in this transaction: apply what follows
        (``rpm.pipeline.corrections``) and drop their patients' rule state, rebuilt from
        storage without them on the next reading."""
        if not marked:
            return
        await apply_marked(conn, marked, now, fhir_push=self._fhir_push)
        patients = {m.patient_id for m in marked}
        self.engine.forget(patients)
        await self._claim(conn, patients)  # other processes reload them too
        for m in marked:
            self._last_written.pop((m.patient_id, m.metric), None)

    async def retract(
        self, corrections: Sequence[correction_store.Correction]
    ) -> correction_store.Recorded:
        """Mark stored readings entered-in-error (a staff correction), in one transaction."""

        async def work(conn: Conn, _: None) -> correction_store.Recorded:
            now = self._now()
            recorded = await correction_store.record(conn, corrections, now)
            await self.corrected(conn, recorded.marked, now)
            return recorded

        try:
            return await self._in_transaction(work, None)
        except DATABASE_UNAVAILABLE as exc:
            raise StorageError(f"database unavailable: {exc.__class__.__name__}") from exc

    async def _claim(self, conn: Conn, patients: set[str]) -> None:
        """Lock the patients until commit and bump their state versions (sorted: no
        deadlock); forget those another process changed since this one last did, so
        ``_ensure_state`` rebuilds them from the database (``rpm.pipeline.freshness``)."""
        claimed = await rule_versions.claim(conn, patients)
        self._touched.update(claimed)
        self.engine.forget(self._freshness.stale(claimed))

    async def _ensure_state(self, conn: Conn, accepted: Sequence[AcceptedReading]) -> None:
        """Load the rule state of patients the engine has not seen (before the insert, so
        the batch's own readings are not in the history)."""
        unknown = self.engine.unknown({a.patient_id for a in accepted})
        if not unknown:
            return
        self._touched.update(unknown)
        oldest = min(a.reading.measured_at for a in accepted if a.patient_id in unknown)
        since = oldest - timedelta(seconds=self.engine.lookback_s())
        history = await rule_state.history(conn, unknown, since, self.engine.capacity)
        armed = await rule_state.armed(conn, unknown)
        self.engine.load(unknown, history, armed)

    async def _decide(
        self,
        conn: Conn,
        candidates: Sequence[AlertCandidate],
        result: BatchResult,
        new: Sequence[AcceptedReading] = (),
        contexts: Mapping[str, PatientContext] | None = None,
        *,
        confirm: bool = True,
    ) -> None:
        grouping, book = self._grouping(), self.engine.book
        # Confirm before paging (alerts.confirm): first readings of confirmed rules wait
        # for their repeat; a batch's readings may decide the waiting ones.
        gated = None
        if confirm:
            gated = await confirming.run_gate(conn, book, grouping, candidates, new, contexts or {})
        candidates = gated.candidates if gated is not None else candidates
        # Measured time decides: the episodes resolved, and the snooze windows ended, after
        # the earliest candidate of each key was measured come with the unresolved ones.
        applied: list[alert_store.AppliedDecision] = []
        if candidates:
            since = earliest_by_key(candidates, grouping)
            episodes, resolved = await alert_store.episodes_since(conn, since)
            snoozes = await alert_store.snooze_windows(conn, since)
            decisions = decide(candidates, episodes, snoozes, resolved=resolved, grouping=grouping)
            applied = await alert_store.apply(conn, decisions)
            await self._follow_up(conn, applied, result)
        if gated is not None:
            alert_ids = {a.decision.episode_key: a.alert_id for a in applied}
            texts = await confirming.record(conn, gated, alert_ids)
            await outbox_store.enqueue(conn, texts, self._now())
            result.confirmations_opened += len(gated.opened)
            result.confirmations_closed += len(gated.closed)

    async def check_confirmations(self, now: datetime | None = None, limit: int = 500) -> int:
        """The confirmation timer: page the waiting confirmations whose window has ended
        with no repeat reading (rows in the database: a restart loses none). One
        transaction; ``FOR UPDATE SKIP LOCKED`` keeps two processes from paging one twice."""

        async def work(conn: Conn, _: None) -> int:
            at = now or self._now()
            due = await confirm_store.due(conn, at, limit)
            if not due:
                return 0
            closings = expire(due, at)
            result = BatchResult()
            self._touched.update(p.candidate.patient_id for p in due)
            candidates = [no_repeat(k.pending) for k in closings]
            await self._claim(conn, {c.patient_id for c in candidates})  # no racing batch
            await self._decide(conn, candidates, result, confirm=False)
            episodes = await alert_store.open_episodes(conn, {k.pending.key for k in closings})
            alert_ids = {key: e.alert_id for key, e in episodes.items()}
            await confirm_store.close_many(conn, closings, alert_ids)
            return len(closings)

        try:
            return await self._in_transaction(work, None)
        except DATABASE_UNAVAILABLE as exc:
            raise StorageError(f"database unavailable: {exc.__class__.__name__}") from exc

    def _grouping(self) -> Grouping:
        """The rule programs' episode groups (one episode per clinical event)."""
        book = self.engine.book
        if self._grouped is None or self._grouped[0] is not book:
            rules = (r for p in book.programs.values() for r in p.rules)
            self._grouped = (book, Grouping.of(rules))
        return self._grouped[1]

    async def check_missing(self, slice_size: int = MISSING_SLICE) -> BatchResult:
        """The missing-data timer: one pass over every monitored patient, ``slice_size``
        patients a transaction (the rule state's ``watched``), so a batch of readings waits
        for one slice at most, never for the whole population.

        An advisory lock, held on a connection of its own for the whole pass, keeps two
        server processes from evaluating at the same moment (a pool of one connection: one
        transaction, as the lock then has no connection of its own).
        """
        result = BatchResult()

        async def work(conn: Conn, after: str) -> str | None:
            await self._refresh_rules(conn)
            now = self._now()
            candidates = []
            found, more = await rule_state.watched(conn, after, limit)
            for w in found:
                context = PatientContext(w.patient_id, w.programs, w.overrides)

                def silence_of(metric: Metric, w: rule_state.Watched = w) -> Silence:
                    return Silence(
                        w.patient_id, w.last.get(metric.value), w.since, w.device_heard(metric)
                    )

                candidates.extend(self.engine.missing(context, silence_of, now))
            if candidates:
                # Serialised with the patients' units of work (which may open the same
                # episode) and the other processes' ones, as a batch is.
                await self._claim(conn, {c.patient_id for c in candidates})
                await self._decide(conn, candidates, result)
            return more

        async def locked(conn: Conn, _: None) -> str | None:
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", MISSING_LOCK):
                return None
            return await work(conn, "")

        try:
            if self._pool.get_max_size() < 2:
                limit = None
                await self._in_transaction(locked, None)
                return result
            limit = slice_size
            async with self._pool.acquire() as guard:
                if not await guard.fetchval("SELECT pg_try_advisory_lock($1)", MISSING_LOCK):
                    return result
                try:
                    after: str | None = ""
                    while after is not None:
                        after = await self._in_transaction(work, after)
                finally:
                    await guard.execute("SELECT pg_advisory_unlock($1)", MISSING_LOCK)
        except DATABASE_UNAVAILABLE as exc:
            raise StorageError(f"database unavailable: {exc.__class__.__name__}") from exc
        except (asyncpg.SerializationError, asyncpg.UniqueViolationError) as exc:
            # An episode changed under the slice (the alert timers run beside it): that slice
            # is rolled back and evaluated again on the next pass, as a batch is retried.
            raise StorageError("concurrent alert episode; the next pass evaluates again") from exc
        return result

    async def _follow_up(
        self,
        conn: Conn,
        applied: Sequence[alert_store.AppliedDecision],
        result: BatchResult,
    ) -> None:
        """Outbox rows and live notifications for what the policy decided."""
        out = follow_ups(applied)
        result.alerts_opened.extend(out.opened)
        result.alerts_changed.extend(out.changed)
        for a in out.reported:
            c = a.decision.candidate
            log.info(
                "alert %s %s patient=%s rule=%s severity=%s",
                a.alert_id,
                a.decision.action.value,
                c.patient_id,
                c.rule_id,
                c.severity.name,
                extra={"alert_id": a.alert_id, "patient_id": c.patient_id, "rule_id": c.rule_id},
            )
        await outbox_store.enqueue(conn, out.sms, self._now())
        await alert_store.notify(conn, out.notes)
