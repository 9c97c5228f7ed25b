"""The worker that pushes Observations to an EHR: outbox channel ``fhir`` → transaction Bundles.

The ingest unit of work writes one outbox item per batch that stored new readings
(``rpm.pipeline.fhir_push_item``: the readings' primary keys), in the batch's transaction. Per
item the worker loads those readings, maps them (``rpm.fhir.mapping``, the stored uid and
interpretation; the subject by the patient's identifier at the EHR, e.g. its MRN, when
enrolment gave one, else by our id), and posts them in transaction Bundles of at most
``bundle_max_entries`` Observations, ``concurrency`` Bundles in flight.

**Exactly once at the EHR.** Sending is at least once: an item is marked delivered only after
every Bundle of it was answered, so a timeout, a crash or a lost answer sends it again. Each
entry is a conditional create on the Observation's identifier (``ifNoneExist``), so the EHR
stores a repeat as nothing new (it answers 200 with the existing resource instead of 201).

**Refusals.** A 4xx about content (400, 409, 412, 413, 422, and 404 with an OperationOutcome:
HAPI's answer to a ``Patient?identifier=`` it cannot resolve) refuses the whole transaction,
which is not an outage. The worker at once resends parts of it, concurrently and without
backoff: the entries the OperationOutcome names alone (``Bundle.entry[i]``), else one part per
patient, else halves, down to single entries. Good Observations go through in the same pass;
each bad one is kept in ``fhir_push_refusals`` with the status and OperationOutcome, never
retried on its own, and listed at ``GET /api/fhir/push/failures`` until someone requeues it.
Resending is safe: every entry is a conditional create on its identifier, so a part the EHR
already took (or a whole item retried after an outage mid-isolation) stores nothing twice.

**Outages.** Network errors, timeouts, 5xx, 429 and an endpoint refusing us as a whole (401,
403, a 404 that is not an OperationOutcome, ...) retry the item with capped exponential backoff
(rpm/backoff.py) and fail it after ``max_attempts``, visibly. The first such failure also
pauses the worker (a circuit breaker): while paused it claims nothing, then probes with one
item, and only a success lets it claim batches again. So a long outage costs one request per
backoff period, not one per item, and items' attempts are spent only on real tries; once the
EHR answers, the backlog drains at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg

from rpm.backoff import Backoff
from rpm.domain.errors import BadWork, EhrRefused, EhrUnavailable
from rpm.settings import EhrSettings
from rpm.storage import fhir as fhir_store
from rpm.storage import outbox as outbox_store
from rpm.workers.loop import drain_until_stopped

from .bundles import (
    EntryResult,
    PushEntry,
    named_entries,
    outcome_summary,
    push_entries,
    split_for_isolation,
    transaction,
)
from .ehr import EhrClient

log = logging.getLogger(__name__)

CHANNEL = fhir_store.CHANNEL


class Ehr(Protocol):
    async def transaction(self, bundle: dict[str, Any]) -> list[EntryResult]: ...

    async def close(self) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PushConfig:
    """The worker's knobs: ``from_settings`` (their defaults are the settings')."""

    poll_interval_s: float
    max_attempts: int
    concurrency: int  # transactions in flight
    bundle_max_entries: int
    backoff: Backoff
    patient_identifier_system: str
    # Longer than an item can take, so a live worker never sees its own item come back.
    lease: timedelta = timedelta(minutes=10)

    @property
    def batch(self) -> int:
        """Items claimed per pass (one ingest batch each): enough to keep every slot busy."""
        return max(4, 4 * self.concurrency)

    @classmethod
    def from_settings(cls, ehr: EhrSettings, *, poll_interval_s: float) -> PushConfig:
        """``poll_interval_s``: the outbox's (``RPM_OUTBOX_POLL_INTERVAL_S``)."""
        return cls(
            poll_interval_s=poll_interval_s,
            max_attempts=ehr.max_attempts,
            concurrency=ehr.concurrency,
            bundle_max_entries=ehr.bundle_max_entries,
            backoff=ehr.backoff,
            patient_identifier_system=ehr.patient_identifier_system,
        )


@dataclass(slots=True)
class _Tally:
    """What the EHR did with one item's Observations."""

    created: int = 0
    existing: int = 0
    updated: int = 0  # entered-in-error Observations the EHR held and replaced
    bundles: int = 0
    refusals: list[fhir_store.Refusal] = field(default_factory=list)


@dataclass(slots=True)
class PushCounters:
    """Running totals since start, for benchmarks and status."""

    items: int = 0
    created: int = 0
    existing: int = 0
    refused: int = 0
    bundles: int = 0
    retries: int = 0
    failed: int = 0


def reading_keys(payload: object) -> list[fhir_store.ReadingKey]:
    """The readings an item names: ``{"readings": [[device, metric, measured_at], ...]}``."""
    rows = payload.get("readings") if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        raise BadWork("payload has no readings list")
    keys = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and all(isinstance(x, str) for x in row)):
            raise BadWork(f"not a reading key: {row!r}")
        keys.append((row[0], row[1], row[2]))
    return keys


class FhirPushWorker:
    """Claims due ``fhir`` outbox items and pushes their Observations to the EHR."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        ehr: Ehr,
        config: PushConfig,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._pool = pool
        self._ehr = ehr
        self._config = config
        self._clock = clock
        self._slots = asyncio.Semaphore(self._config.concurrency)
        self._in_flight: set[int] = set()
        self._failures = 0  # consecutive transient failures: the circuit's backoff
        self._paused_until: datetime | None = None
        self.counters = PushCounters()
        self._stopping = asyncio.Event()

    @classmethod
    def from_settings(
        cls, pool: asyncpg.Pool, ehr: EhrSettings, *, poll_interval_s: float
    ) -> FhirPushWorker:
        return cls(
            pool,
            EhrClient.from_settings(ehr),
            PushConfig.from_settings(ehr, poll_interval_s=poll_interval_s),
        )

    @property
    def paused_until(self) -> datetime | None:
        """While the EHR looks down: when the worker probes it again."""
        return self._paused_until

    async def close(self) -> None:
        await self._ehr.close()

    def request_stop(self) -> None:
        """Graceful stop: the Bundles in flight finish, nothing new is claimed."""
        self._stopping.set()

    async def run(self) -> None:
        await drain_until_stopped(self.drain_once, self._stopping, self._idle_s, log, "fhir push")

    def _idle_s(self) -> float:
        if self._paused_until is not None:
            remaining = (self._paused_until - self._clock()).total_seconds()
            if remaining > 0:
                return remaining
        return self._config.poll_interval_s

    async def drain_once(self) -> int:
        """Push the items due now (one, as a probe, after a failure); return how many."""
        now = self._clock()
        if self._paused_until is not None and now < self._paused_until:
            return 0
        limit = 1 if self._paused_until is not None else self._config.batch
        async with self._pool.acquire() as conn:
            items = await outbox_store.claim_due(conn, CHANNEL, limit, self._config.lease, now)
        mine = [i for i in items if i.id not in self._in_flight]
        self._in_flight.update(i.id for i in mine)
        try:
            outcomes = await asyncio.gather(
                *(self._deliver(i) for i in mine), return_exceptions=True
            )
        finally:
            self._in_flight.difference_update(i.id for i in mine)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(items)

    async def _deliver(self, item: outbox_store.OutboxItem) -> None:
        try:
            keys = reading_keys(item.payload)
        except BadWork as exc:
            async with self._pool.acquire() as conn:
                await outbox_store.failed(conn, item.id, f"bad push work: {exc}")
            self.counters.failed += 1
            return
        async with self._pool.acquire() as conn:
            recorded = await fhir_store.recorded_by_keys(conn, keys)
            # Read at each send: a mapping fixed after a refusal applies when it is requeued.
            identifiers = await fhir_store.ehr_identifiers(
                conn, (rec.accepted.patient_id for rec in recorded)
            )
        tally = _Tally()
        try:
            entries = push_entries(recorded, self._config.patient_identifier_system, identifiers)
            size = self._config.bundle_max_entries
            sent = await asyncio.gather(
                *(self._send(entries[i : i + size], tally) for i in range(0, len(entries), size)),
                return_exceptions=True,
            )
            for failure in sent:
                if isinstance(failure, BaseException):
                    raise failure
        except EhrUnavailable as exc:
            await self._retry(item, exc)
            return
        except Exception as exc:  # our bug: keep the item, say why, do not stop the worker
            log.exception("fhir push item %d: internal error", item.id)
            await self._retry(item, EhrUnavailable(f"internal error: {exc!r}"), trip=False)
            return
        result: dict[str, Any] = {
            "observations": len(entries),
            "created": tally.created,
            "existing": tally.existing,
            "refused": len(tally.refusals),
            "bundles": tally.bundles,
        }
        if tally.updated:  # entered-in-error Observations replaced at the EHR
            result["updated"] = tally.updated
        if len(recorded) < len(keys):
            result["missing_readings"] = len(keys) - len(recorded)
        async with self._pool.acquire() as conn, conn.transaction():
            await fhir_store.record_refusals(conn, item.id, tally.refusals)
            await outbox_store.delivered(conn, item.id, result)
        self._failures, self._paused_until = 0, None
        c = self.counters
        c.items += 1
        c.created += tally.created
        c.existing += tally.existing
        c.refused += len(tally.refusals)
        c.bundles += tally.bundles
        if tally.refusals:
            # The EHR's diagnostics may name the patient: they go to the database, not the log.
            log.warning(
                "fhir push item %d: %d of %d Observations refused by the EHR (HTTP %s); "
                "see /api/fhir/push/failures",
                item.id,
                len(tally.refusals),
                len(entries),
                ",".join(sorted({str(r.status) for r in tally.refusals})),
            )
        log.debug("fhir push item %d: %s", item.id, result)

    async def _send(self, entries: Sequence[PushEntry], tally: _Tally) -> None:
        """One transaction; when its content is refused, find the bad entries by parts."""
        refused: EhrRefused | None = None
        async with self._slots:
            try:
                results = await self._ehr.transaction(transaction(entries))
            except EhrRefused as exc:
                refused = exc
        if refused is None:
            tally.bundles += 1
            for entry, answer in zip(entries, results, strict=True):
                if answer.status == 201:
                    tally.created += 1
                elif answer.ok and entry.update:
                    tally.updated += 1
                elif answer.ok:
                    tally.existing += 1
                else:  # a server that answers per entry (not all-or-nothing)
                    tally.refusals.append(_refusal(entry, answer.status, answer.outcome))
            return
        if len(entries) == 1:
            tally.refusals.append(_refusal(entries[0], refused.status, refused.outcome))
            return
        # Isolate now, not after a backoff: the parts go at once (the slots bound them). Each
        # entry is a conditional create on its Observation identifier (ifNoneExist), so a part
        # the EHR already holds, sent again here or when the item is retried, is stored once.
        blamed = named_entries(refused.outcome, len(entries))
        patients = [e.patient_id for e in entries]
        parts = split_for_isolation(len(entries), blamed, patients)
        sent = await asyncio.gather(
            *(self._send([entries[i] for i in part], tally) for part in parts),
            return_exceptions=True,
        )
        for failure in sent:  # an outage during isolation: the item is retried as a whole
            if isinstance(failure, BaseException):
                raise failure

    async def _retry(
        self, item: outbox_store.OutboxItem, exc: EhrUnavailable, *, trip: bool = True
    ) -> None:
        now = self._clock()
        if trip:
            self._trip(exc, now)
        error = str(exc)
        if exc.outcome is not None:
            error = f"{error}: {outcome_summary(exc.outcome)}"
        async with self._pool.acquire() as conn:
            gave_up = await outbox_store.retry_or_give_up(
                conn,
                item,
                now,
                error,
                max_attempts=self._config.max_attempts,
                backoff=self._config.backoff,
                result={"status": exc.status, "outcome": exc.outcome},
            )
        if gave_up:
            self.counters.failed += 1
            log.error(
                "fhir push item %d: gave up after %d attempts: %s",
                item.id,
                item.attempts,
                exc,  # without the EHR's diagnostics, which may name the patient
            )
            return
        self.counters.retries += 1
        log.warning("fhir push item %d: attempt %d failed: %s", item.id, item.attempts, exc)

    def _trip(self, exc: EhrUnavailable, now: datetime) -> None:
        """Pause the worker: the EHR looks down (or refuses us as a whole)."""
        self._failures += 1
        backoff = self._config.backoff
        pause = backoff.seconds(self._failures)
        if exc.retry_after_s is not None:
            pause = max(pause, min(exc.retry_after_s, backoff.cap_s))
        until = now + timedelta(seconds=pause)
        if self._paused_until is None or until > self._paused_until:
            self._paused_until = until


def _refusal(entry: PushEntry, status: int, outcome: dict[str, Any] | None) -> fhir_store.Refusal:
    return fhir_store.Refusal(
        entry.observation_id, entry.reading_key, entry.patient_id, status, outcome
    )
