"""The streaming rule engine: per-patient state in memory, evaluated per micro-batch.

``Engine.step(readings, contexts)`` appends the batch to per-metric ring buffers
(``rules.buffers``) and evaluates every rule of each patient's programs for the new
readings, vectorised: readings of one metric whose patients share a rule set are
evaluated together by each kind's evaluator (numpy and the compiled loops of
``rules.kernels``). The engine numbers the patients it holds: a buffer row, and which
rules are armed, are found by number with numpy. No I/O here: the ingest unit of
work loads a patient's history into the engine on a cache miss (``load``) and calls
``forget`` for the patients of a batch whose transaction failed, so memory never
holds a reading the database does not.

Order: every reading is evaluated at its own measured time against the history up
to that time, so the batch order does not matter. A late reading (older than the
newest one already held) is evaluated at its time; the held readings after it that
its rule windows reach are re-evaluated with it, and fire only where the late reading
made the difference. Only a patient's newest reading can show that a condition is
over (``clears``), so a late normal reading never clears an alert.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from operator import attrgetter

import numpy as np

from rpm.domain import AcceptedReading, AlertCandidate, Metric

from . import kernels
from .buffers import DEFAULT_CAPACITY, F64, MetricBuffer, Rows
from .interpretation import Thresholds
from .interpretation import evaluate as evaluate_thresholds
from .kinds import KINDS, Outcome, Window
from .kinds.base import Store
from .kinds.missing import Silence
from .late import reevaluate_after_late
from .latest import latest, rows_in_of
from .plan import PatientContext, Plan, Planner, by_plan, compile_plan, differ
from .programs import RuleBook
from .proposal import missing_candidates, propose
from .results import Clear, StepResult
from .shared import Shared
from .spec import RuleSpec

__all__ = ["Clear", "Engine", "PatientContext", "Plan", "StepResult", "compile_plan"]

log = logging.getLogger(__name__)


_PATIENT = attrgetter("patient_id")
_READING = attrgetter("reading")
_MEASURED = attrgetter("measured_at")
_KEY = attrgetter("key")
_TIMESTAMP = datetime.timestamp
_METRIC = attrgetter("metric")
_NO_CONTEXT = PatientContext("").key  # the plan key of a patient without programs
_MINUS_ONE = itertools.repeat(-1)
_NONE = itertools.repeat(None)


@dataclass(slots=True)
class _Group:
    """The readings of one metric in a batch."""

    patients: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    values: list[list[float]] = field(default_factory=list)
    readings: list[AcceptedReading] = field(default_factory=list)
    numbers: Rows = field(default_factory=lambda: np.zeros(0, np.intp))  # the patients'


class Engine:
    """Per-patient rule state and the evaluation of micro-batches against it."""

    def __init__(
        self, book: RuleBook | None = None, capacity: Mapping[Metric, int] | None = None
    ) -> None:
        self._capacity = {**DEFAULT_CAPACITY, **(capacity or {})}
        self._buffers: dict[Metric, MetricBuffer] = {}
        # patient -> its number: its row in ``_armed`` and its place in every buffer's row_at
        self._numbers: dict[str, int] = {}
        self._free_numbers: list[int] = []
        # rules fired and not yet clear: [patient number, rule's column] (columns by rule id)
        self._armed = np.zeros((64, 8), np.bool_)
        self._columns: dict[str, int] = {}
        # by number: the patient's state is held (loaded, or begun by a reading); a patient
        # numbered only because a missing-data rule armed is not, and is loaded on a reading
        self._held = np.zeros(64, np.bool_)
        self._planner = Planner(book or RuleBook.builtin())
        kernels.warm_up()

    # --- rule book ---------------------------------------------------------------

    @property
    def book(self) -> RuleBook:
        return self._planner.book

    def use_book(self, book: RuleBook) -> None:
        """Switch to a new version of the programs; patients' plans are recompiled lazily."""
        self._planner = Planner(book)

    @property
    def capacity(self) -> Mapping[Metric, int]:
        """Ring-buffer capacity per metric (what ``load`` keeps of each patient's history)."""
        return self._capacity

    def lookback_s(self) -> float:
        """How far back any rule reads: what ``load`` needs of a patient's history."""
        return self._planner.lookback_s

    def plan(self, context: PatientContext) -> Plan:
        return self._planner.plan(context)

    # --- state -------------------------------------------------------------------

    def knows(self, patient_id: str) -> bool:
        number = self._numbers.get(patient_id)
        return number is not None and bool(self._held[number])

    def unknown(self, patient_ids: Iterable[str]) -> set[str]:
        return {p for p in patient_ids if not self.knows(p)}

    def _number(self, patient_id: str) -> int:
        """The patient's number, given on first sight (the patient is then known)."""
        number = self._numbers.get(patient_id)
        if number is None:
            if self._free_numbers:
                number = self._free_numbers.pop()
            else:
                number = len(self._numbers)
                if number >= self._armed.shape[0]:
                    self._armed = np.concatenate([self._armed, np.zeros_like(self._armed)])
                    self._held = np.concatenate([self._held, np.zeros_like(self._held)])
            self._numbers[patient_id] = number
        return number

    def _numbers_of(self, patient_ids: Sequence[str]) -> Rows:
        """The patients' numbers (a patient may repeat), given on first sight."""
        numbers = self._numbers
        found = np.fromiter(map(numbers.get, patient_ids, _MINUS_ONE), np.intp, len(patient_ids))
        if (found < 0).any():
            for i in np.flatnonzero(found < 0).tolist():
                found[i] = self._number(patient_ids[i])
        return found

    def load(
        self,
        patient_ids: Iterable[str],
        history: Iterable[tuple[str, Metric, datetime, Mapping[str, float]]],
        armed: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Rebuild patients' state from stored readings and their unresolved alerts.

        Patients already known are skipped: another unit of work loaded them while this
        one waited for the database, and loading twice would hold readings twice.
        """
        fresh = self.unknown(set(patient_ids))
        for pid in fresh:
            number = self._number(pid)  # first: numbering may grow the arrays
            self._held[number] = True
        groups: dict[Metric, _Group] = {}
        for pid, metric, at, values in history:
            if pid not in fresh:
                continue
            g = groups.setdefault(metric, _Group())
            g.patients.append(pid)
            g.times.append(at.timestamp())
            g.values.append(self._row_values(metric, values))
        for metric, g in groups.items():
            buf = self._buffer(metric)
            numbers = np.fromiter(map(self._numbers.__getitem__, g.patients), np.intp)
            buf.append(buf.rows(numbers), np.array(g.times), np.array(g.values))
        for pid, rule_id in armed:
            if pid in fresh:
                self.arm(pid, rule_id)

    def forget(self, patient_ids: Iterable[str]) -> None:
        """Drop patients' state (it is rebuilt from the database on their next reading)."""
        ids = set(patient_ids)
        numbers = [n for n in map(self._numbers.pop, ids, _NONE) if n is not None]
        self._armed[numbers] = False
        self._held[numbers] = False
        for buf in self._buffers.values():
            buf.release(numbers)
        self._free_numbers += numbers

    def _column(self, rule_id: str) -> int:
        column = self._columns.get(rule_id)
        if column is None:
            column = self._columns[rule_id] = len(self._columns)
            if column >= self._armed.shape[1]:
                self._armed = np.concatenate([self._armed, np.zeros_like(self._armed)], axis=1)
        return column

    def arm(self, patient_id: str, rule_id: str) -> None:
        """The rule fired for the patient: a reading showing it is over clears it."""
        number, column = self._number(patient_id), self._column(rule_id)  # may grow it
        self._armed[number, column] = True

    def disarm(self, patient_id: str, rule_id: str) -> None:
        number = self._numbers.get(patient_id)
        if number is not None:
            column = self._column(rule_id)  # first: a new column grows the array
            self._armed[number, column] = False

    def armed(self, patient_id: str) -> set[str]:
        """The patient's rules fired and not yet clear."""
        number = self._numbers.get(patient_id)
        if number is None:
            return set()
        return {r for r, c in self._columns.items() if self._armed[number, c]}

    @property
    def patients(self) -> int:
        """Patients whose state is held."""
        return int(self._held.sum())

    def nbytes(self) -> int:
        """Bytes held in numpy arrays: the ring buffers (the bulk of the state), their
        number -> row maps and the armed rules."""
        arrays = self._armed.nbytes + self._held.nbytes
        return sum(b.nbytes for b in self._buffers.values()) + arrays

    def _buffer(self, metric: Metric) -> MetricBuffer:
        buf = self._buffers.get(metric)
        if buf is None:
            buf = self._buffers[metric] = MetricBuffer(metric, self._capacity[metric])
        return buf

    def _row_values(self, metric: Metric, values: Mapping[str, float]) -> list[float]:
        nan = math.nan
        return [values.get(c, nan) for c in self._buffer(metric).components]

    # --- interpretation -------------------------------------------------------------

    def thresholds(
        self, readings: Sequence[AcceptedReading], contexts: Mapping[str, PatientContext]
    ) -> Thresholds:
        """The readings' threshold rules, evaluated once, without state
        (``rules.interpretation``): their interpretations for the insert, and the
        outcomes ``step`` reuses."""
        patients = list(map(_PATIENT, readings))
        plans, plan_no = self._plans_of(patients, contexts)
        return evaluate_thresholds(readings, plans, plan_no, self._buffer, self._planner.shared)

    # --- the missing-data timer ----------------------------------------------------

    def missing(
        self, context: PatientContext, silence_of: Callable[[Metric], Silence], now: datetime
    ) -> list[AlertCandidate]:
        """Candidates of a patient's missing-data rules at ``now`` (no reading: no uid)."""
        out = missing_candidates(self.plan(context), context.patient_id, silence_of, now)
        for candidate in out:
            self.arm(context.patient_id, candidate.rule_id)
        return out

    # --- evaluation --------------------------------------------------------------

    def step(
        self,
        readings: Sequence[AcceptedReading],
        contexts: Mapping[str, PatientContext],
        thresholds: Thresholds | None = None,
    ) -> StepResult:
        """Add a batch of new readings and evaluate the rules they trigger; threshold rules
        already evaluated for them (``thresholds``, before the insert) are not again."""
        result = StepResult()
        n = len(readings)
        if not n:
            return result
        # map() over attrgetters: the per-reading work runs in C, not in bytecode
        got = list(map(_READING, readings))
        patients = list(map(_PATIENT, readings))
        numbers = self._numbers_of(patients)
        self._held[numbers] = True
        ts_all = np.fromiter(map(_TIMESTAMP, map(_MEASURED, got)), np.float64, n)
        # each reading's metric by identity (hashing an enum member is a Python call)
        metric_ids = np.fromiter(map(id, map(_METRIC, got)), np.int64, n)
        if (metric_ids == metric_ids[0]).all():
            parts = [np.arange(n)]
        else:
            order = np.argsort(metric_ids, kind="stable")
            parts = np.split(order, np.flatnonzero(np.diff(metric_ids[order])) + 1)
            parts.sort(key=lambda part: int(part[0]))  # metrics in order of first arrival

        plans, plan_no = self._plans_of(patients, contexts)
        staged = []
        for part in parts:
            metric = got[int(part[0])].metric
            whole = len(part) == n
            sel = part.tolist()
            g = _Group(
                patients if whole else list(map(patients.__getitem__, sel)),
                readings=list(readings) if whole else list(map(readings.__getitem__, sel)),
                numbers=numbers if whole else numbers[part],
            )
            buf = self._buffer(metric)
            rows = buf.rows(g.numbers)
            ts = ts_all if whole else ts_all[part]
            current = buf.values_of(got if whole else list(map(got.__getitem__, sel)))
            before, newest = buf.append(rows, ts, current)
            staged.append((metric, g, buf, rows, ts, current, before, newest, plan_no[part]))

        for metric, g, buf, rows, ts, current, before, newest, plan_of in staged:
            # Plans share their rule objects (an overridden rule is the only new one): each
            # distinct rule is evaluated once, for every reading whose plan holds it.
            by_rule: dict[int, tuple[RuleSpec, list[Rows]]] = {}
            for plan, idx in by_plan(plan_of, plans):
                for rule in plan.by_metric.get(metric, ()):
                    same = by_rule.get(id(rule))
                    if same is None:
                        by_rule[id(rule)] = (rule, [idx])
                    else:
                        same[1].append(idx)
            evaluated = [(rule, np.concatenate(idx)) for rule, idx in by_rule.values()]
            self._evaluate(evaluated, metric, g, buf, rows, ts, current, newest, result, thresholds)
            late = np.flatnonzero(ts < before)
            if len(late):
                result.candidates += reevaluate_after_late(
                    late,
                    metric,
                    g.patients,
                    g.numbers,
                    g.readings,
                    buf,
                    rows,
                    ts,
                    list(map(plans.__getitem__, plan_of.tolist())),
                    self._window,
                    self.arm,
                )
        return result

    def _plans_of(
        self, patients: list[str], contexts: Mapping[str, PatientContext]
    ) -> tuple[list[Plan], Rows]:
        """The batch's distinct plans, and each reading's place among them.

        Readings are grouped by their plan key (interned: equal keys are one object, so
        a key's identity stands for it); plans are looked up, or compiled, once per key.
        """
        try:
            keys = list(map(_KEY, map(contexts.get, patients)))
        except AttributeError:  # a patient without context: the default plan
            keys = [c.key if c is not None else _NO_CONTEXT for c in map(contexts.get, patients)]
        ids = np.fromiter(map(id, keys), np.int64, len(keys))
        _, first, plan_no = np.unique(ids, return_index=True, return_inverse=True)
        plans = []
        for i in first.tolist():
            plan = self._planner.plans.get(keys[i])
            if plan is None:
                pid = patients[i]
                plan = self.plan(contexts.get(pid) or PatientContext(pid))
            plans.append(plan)
        return plans, plan_no

    def _window(
        self,
        metric: Metric,
        buf: MetricBuffer,
        rows: Rows,
        ts: F64,
        current: F64,
        rows_in: Callable[[MetricBuffer], Rows],
    ) -> Window:
        """The readings' window; ``rows_in`` gives their patients' rows in another buffer."""

        def latest_of(other: Metric, component: str, fresh: float) -> tuple[F64, F64]:
            return latest(self._buffers.get(other), rows_in, ts, component, fresh)

        def gather() -> Store:
            return buf.times, buf.values, rows

        return Window(metric, ts, current, gather, buf.index, latest_of)

    def _evaluate(
        self,
        by_rule: Iterable[tuple[RuleSpec, Rows]],
        metric: Metric,
        g: _Group,
        buf: MetricBuffer,
        rows: Rows,
        ts: F64,
        current: F64,
        newest: np.ndarray,
        result: StepResult,
        thresholds: Thresholds | None = None,
    ) -> None:
        n = len(ts)
        shared = Shared(self._buffers, buf, rows, ts, rows_in_of(g.numbers))
        full: Window | None = None
        pids_all = g.patients
        # One evaluation per rule and the rules overriding it (their parameters per reading)
        units: dict[int, tuple[RuleSpec, list[tuple[RuleSpec, Rows]]]] = {}
        shared_of = self._planner.shared.get
        for rule, idx in by_rule:
            base = shared_of(id(rule), (rule, rule))[1]
            units.setdefault(id(base), (base, []))[1].append((rule, idx))
        # id(rule) -> its outcome and each reading's place in it (None: the reading's own)
        evaluated: dict[int, tuple[Outcome, Rows | None]] = {}
        for base, members in units.values():
            if thresholds is not None and base.kind == "threshold":  # before the insert
                held = thresholds.outcome(members, g.readings)
                if held is not None:
                    evaluated.update((id(rule), (held, None)) for rule, _ in members)
                    continue
            idx = members[0][1] if len(members) == 1 else np.concatenate([m[1] for m in members])
            # A rule most of the group has is evaluated on the group's one window and its
            # results kept for its own readings; a rarer one gets a window of its readings.
            where: Rows | None = None
            if 2 * len(idx) >= n:
                if full is None:
                    full = shared.window(metric, current)
                w, m = full, n
            else:
                w = shared.part(metric, current, idx)
                where, m = np.full(n, -1, np.intp), len(idx)
                where[idx] = np.arange(m)
            params: dict[str, F64] = {}
            for rule, ridx in members:
                if rule is base:
                    continue
                for name in differ(base, rule):
                    each = params.get(name)
                    if each is None:
                        each = params[name] = np.full(m, base.p(name))
                    each[ridx if where is None else where[ridx]] = rule.p(name)
            if params:
                w = replace(w, params=params)
            out = KINDS[base.kind].evaluate(base, w)
            for rule, _ in members:
                evaluated[id(rule)] = (out, where)

        # Candidates and clears rule by rule, each rule's readings in the order they had
        # when every rule was evaluated on its own window (ascending on the shared one).
        everyone = np.arange(n)
        for rule, idx in by_rule:
            out, where = evaluated[id(rule)]
            if len(idx) == n and where is None:  # every reading: the outcome as it is
                sel = at = everyone
                levels = out.severity
            else:
                sel = np.sort(idx) if 2 * len(idx) >= n else idx
                at = sel if where is None else where[sel]
                levels = out.severity[at]
            hit = np.flatnonzero(levels)
            if len(hit):
                for j, i, level in zip(
                    at[hit].tolist(), sel[hit].tolist(), levels[hit].tolist(), strict=True
                ):
                    a = g.readings[i]
                    result.candidates.append(
                        propose(rule, level, out.detail, j, a.reading, a.patient_id)
                    )
                    self.arm(a.patient_id, rule.id)
            # Armed now (an older reading of this batch may have armed what its newest one
            # clears), shown over by this reading, and its patient's newest of the metric.
            column = self._column(rule.id)
            if at is everyone:
                clear = out.clear & newest & self._armed[g.numbers, column]
            else:
                clear = out.clear[at] & newest[sel] & self._armed[g.numbers[sel], column]
            if not clear.any():
                continue
            rule_id = rule.id
            for i in sel[clear].tolist():
                number = int(g.numbers[i])
                if self._armed[number, column] and self._newest_of_all(rule, number, float(ts[i])):
                    self._armed[number, column] = False
                    result.clears.append(
                        Clear(pids_all[i], rule_id, g.readings[i].reading.measured_at)
                    )

    def _newest_of_all(self, rule: RuleSpec, number: int, t: float) -> bool:
        """No reading of any metric the rule watches is newer than ``t`` (a composite's
        newest blood pressure does not show the score is over while a newer SpO2 holds it)."""
        for metric in self._planner.watched(rule):
            buf = self._buffers.get(metric)
            row = -1 if buf is None else buf.row_of(number)
            if buf is not None and row >= 0 and buf.newest_of(row) > t:
                return False
        return True
