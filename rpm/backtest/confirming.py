"""Confirm before paging in the backtest: the production gate (``alerts.confirm``) between
the engine and the policy, with its waiting confirmations kept across replay windows, and
the figures per rule: first readings held, alerts avoided, detection delay added. Pure."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from alerts.confirm import Closing, Measured, Outcome, Pending, expire, gate, no_repeat
from alerts.policy import EpisodeKey, Grouping
from rpm.domain import AcceptedReading, AlertCandidate
from rpm.pipeline.confirming import rules_of
from rules.engine import PatientContext
from rules.programs import RuleBook

from .burden import ConfirmStats


@dataclass(slots=True)
class _Tally:
    held: set[tuple[EpisodeKey, datetime]] = field(default_factory=set)  # first readings
    not_confirmed: int = 0
    delays: list[float] = field(default_factory=list)  # minutes from first reading to page


def _p95(values: Sequence[float]) -> float:
    """The nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class ConfirmGate:
    """The gate as production runs it, over a replay's windows in time order."""

    def __init__(self, book: RuleBook, grouping: Grouping, start: datetime | None) -> None:
        self._book = book
        self._grouping = grouping
        self.start = start  # the period's start (readings before it only warm up)
        confirming = [r for p in book.programs.values() for r in p.rules if r.confirm]
        self.active = bool(confirming)
        self._metrics = {r.metric.value for r in confirming}
        self._window = max(
            (timedelta(minutes=r.confirm.minutes) for r in confirming if r.confirm),
            default=timedelta(0),
        )
        self._pending: dict[EpisodeKey, Pending] = {}
        self._recent: list[Measured] = []
        self._tally: dict[str, _Tally] = {}

    def step(
        self,
        batch: Sequence[AcceptedReading],
        candidates: list[AlertCandidate],
        contexts: Mapping[str, PatientContext],
        unresolved: Iterable[EpisodeKey],
        now: datetime,
    ) -> list[AlertCandidate]:
        """The candidates the policy sees after the gate, for one window ending at ``now``."""
        if not self.active:
            return candidates
        # Readings a window can still reach (patient windows are per-patient overrides:
        # keep a day, bounded by the readings of the confirmed metrics).
        keep = now - max(self._window * 2, timedelta(hours=24))
        self._recent = [m for m in self._recent if m.measured_at > keep]
        self._recent.extend(
            Measured(a.patient_id, r.metric.value, r.measured_at, r.uid, r.values)
            for a in batch
            if (r := a.reading).metric.value in self._metrics
        )
        out = gate(
            candidates,
            self._recent,
            self._pending,
            unresolved,
            rules_of(self._book, contexts),
            {a.reading.uid: a.reading.values for a in batch},
            self._grouping,
        )
        for p in out.opened:
            self._pending[p.key] = p
            self._held(p)
        self._close(out.closed)
        passed = list(out.candidates)
        for k in expire(list(self._pending.values()), now):
            passed.append(no_repeat(k.pending))
            self._close([k])
        return passed

    def _held(self, p: Pending) -> _Tally | None:
        if self.start is not None and p.measured_at < self.start:
            return None  # the warm-up: not counted
        tally = self._tally.setdefault(p.candidate.rule_id, _Tally())
        tally.held.add((p.key, p.measured_at))
        return tally

    def _close(self, closings: Iterable[Closing]) -> None:
        for k in closings:
            p = k.pending
            if self._pending.get(p.key) is p:
                del self._pending[p.key]
            tally = self._held(p)
            if tally is None:
                continue
            if k.outcome is Outcome.NOT_CONFIRMED:
                tally.not_confirmed += 1
            else:
                tally.delays.append((k.at - p.measured_at) / timedelta(minutes=1))

    def stats(self) -> dict[str, ConfirmStats]:
        """Per rule: first readings held, not confirmed, delay added (median, p95 minutes)."""
        return {
            rule_id: ConfirmStats(
                held=len(t.held),
                not_confirmed=t.not_confirmed,
                delay_median_min=statistics.median(t.delays) if t.delays else None,
                delay_p95_min=_p95(t.delays) if t.delays else None,
            )
            for rule_id, t in sorted(self._tally.items())
        }
