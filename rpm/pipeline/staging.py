"""Batches decoded and validated ahead of their unit of work (``IngestPipeline.stage``).

The MQTT gateway stages the next batch while the one before it commits, so that batch's
decoding runs while PostgreSQL executes the other's statements. ``process`` of the same
sequence object then starts from this work; a retry, or a batch not staged, prepares inside
its transaction as before. The devices are read a batch earlier than they would be: a binding
made in between counts from the next batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rpm.domain import RawMessage

from .results import Prepared

STAGED_AT_MOST = 2  # batches kept for their unit of work; older ones were never processed


class StagedBatches:
    """Prepared batches by identity: the very sequence object staged, not an equal one."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Sequence[RawMessage], datetime, Prepared]] = {}

    def put(self, batch: Sequence[RawMessage], now: datetime, prepared: Prepared) -> None:
        while len(self._by_id) >= STAGED_AT_MOST:
            del self._by_id[next(iter(self._by_id))]  # its session was lost before its commit
        # Holding the batch keeps it alive, so no other object can have its id meanwhile.
        self._by_id[id(batch)] = (batch, now, prepared)

    def take(self, batch: Sequence[RawMessage]) -> tuple[datetime, Prepared] | None:
        """The time it was prepared at and what it became; None when not staged."""
        staged = self._by_id.pop(id(batch), None)
        return None if staged is None else (staged[1], staged[2])
