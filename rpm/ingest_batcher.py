"""Concurrent webhook requests share units of work, as MQTT messages do.

Each request submits its message and waits for what became of *that* message; one drain
task collects what has arrived for up to ``max_wait_s`` or ``max_messages`` messages,
whichever first, runs one unit of work over them and answers every sender from the
batch's per-message accounting. A sender hears its outcome only after the commit (so an
acknowledged webhook is durable); when the unit of work fails, every sender of the batch
hears that error and may retry (retries are idempotent). At most ``max_queued`` messages
wait; past that ``submit`` refuses at once, so memory stays bounded under overload.

The drain task runs only while messages wait: nothing to start or stop with the server,
and a graceful shutdown (which waits for requests in flight) drains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from rpm.domain.errors import BatcherFull

from .domain import RawMessage
from .pipeline import BatchResult, MessageResult

log = logging.getLogger(__name__)

UnitOfWork = Callable[[Sequence[RawMessage]], Awaitable[BatchResult]]


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """Whichever comes first closes a batch; ``max_queued`` bounds the waiting messages."""

    max_messages: int
    max_wait_s: float
    max_queued: int

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_queued < 1 or self.max_wait_s < 0:
            raise ValueError(f"impossible batch limits: {self}")


@dataclass(slots=True)
class BatcherCounters:
    """Running totals: units of work run, messages they took, submissions refused (full)."""

    batches: int = 0
    messages: int = 0
    refused: int = 0


_Waiting = tuple[RawMessage, asyncio.Future[MessageResult]]


class IngestBatcher:
    """Coalesces messages submitted concurrently into shared units of work."""

    def __init__(self, run: UnitOfWork, limits: BatchLimits) -> None:
        """``run`` fills ``BatchResult.per_message``: ``pipeline.process(b, itemized=True)``."""
        self._run = run
        self._limits = limits
        self._waiting: deque[_Waiting] = deque()
        self._arrived = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None
        self._refusal_logged = -1e9
        self.counters = BatcherCounters()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def submit(self, raw: RawMessage) -> MessageResult:
        """What the unit of work did with ``raw``, once committed.

        Raises ``BatcherFull`` at once when too many messages wait, and whatever the unit
        of work raised (``StorageError``: nothing of the batch was committed).
        """
        if len(self._waiting) >= self._limits.max_queued:
            self.counters.refused += 1
            now = time.monotonic()
            if now - self._refusal_logged >= 1.0:  # one line a second, not one per request
                self._refusal_logged = now
                log.warning(
                    "webhook queue full (%d waiting): refusing; %d refused so far",
                    len(self._waiting),
                    self.counters.refused,
                )
            raise BatcherFull(f"{len(self._waiting)} webhook messages wait for storage")
        outcome: asyncio.Future[MessageResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((raw, outcome))
        self._arrived.set()
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain(), name="webhook-batches")
        # A cancelled request cancels its future; its message may still be committed, and the
        # sender's retry then finds it a duplicate.
        return await outcome

    async def _drain(self) -> None:
        try:
            while self._waiting:
                await self._fill()
                n = min(len(self._waiting), self._limits.max_messages)
                batch = [self._waiting.popleft() for _ in range(n)]
                await self._commit(batch)
        finally:
            self._drain_task = None

    async def _fill(self) -> None:
        """Let the batch fill for at most ``max_wait_s``, unless it is full already."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._limits.max_wait_s
        while len(self._waiting) < self._limits.max_messages:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    async def _commit(self, batch: list[_Waiting]) -> None:
        try:
            result = await self._run([raw for raw, _ in batch])
            if len(result.per_message) != len(batch):
                raise RuntimeError("the unit of work did not account for each message")
        except Exception as exc:  # every sender of the batch hears it (StorageError: retry)
            for _, outcome in batch:
                if not outcome.done():
                    outcome.set_exception(exc)
            return
        self.counters.batches += 1
        self.counters.messages += len(batch)
        for (_, outcome), mine in zip(batch, result.per_message, strict=True):
            if not outcome.done():
                outcome.set_result(mine)
