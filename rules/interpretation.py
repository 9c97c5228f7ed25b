"""A batch's threshold rules, evaluated once per reading before the insert: each reading's
interpretation (HL7 v3 ObservationInterpretation: ``HH``, ``H``, ``N``, ``L``, ``LL``),
stored with it, and the outcomes the rule step reuses instead of evaluating them again.

Threshold rules read only the reading's own values (no history: ``lookback_s`` is 0), so
their outcome is the same before the reading joins its patient's state as in the step.
The unit of work evaluates them here for every accepted reading, inserts the readings with
their interpretation, then steps the engine on the ones that were new (duplicates
skipped) with these outcomes (``Engine.step(..., thresholds)``). Nothing here changes
the engine's state: a failed transaction leaves nothing behind.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter

import numpy as np

from rpm.domain import AcceptedReading, Metric, Severity

from .buffers import F64, MetricBuffer, Rows
from .kinds import Outcome, Window
from .kinds.base import I8, Bools, given
from .kinds.threshold import KIND as THRESHOLD
from .plan import Plan, by_plan, differ
from .spec import RuleSpec

_READING = attrgetter("reading")
_METRIC = attrgetter("metric")
# codes by number: 0 N, then (upper, critical?) and (lower, critical?)
_CODES = np.array([None, "N", "H", "HH", "L", "LL"], dtype=object)
_N, _H, _HH, _L, _LL = 1, 2, 3, 4, 5
_CRITICAL = int(Severity.CRITICAL)
_RULES = 1 << 16  # more threshold rules than a plan holds for one metric
_MINUS = itertools.repeat(-1)  # ``places.get``'s default, as map()'s second iterable

# id(rule) -> (the rule, kept so its id is not reused; severity, clear, first condition met
# per place in the batch)
_Held = dict[int, tuple[RuleSpec, I8, Bools, Rows]]


def _no_latest(metric: Metric, component: str, fresh: float) -> tuple[F64, F64]:
    raise AssertionError("threshold rules read no other metric")


@dataclass(slots=True)
class Thresholds:
    """The threshold rules' outcomes for a batch's readings (by their place in it)."""

    interpretations: list[str | None]
    places: dict[int, int]  # id(reading) -> its place in the batch
    # id(rule) -> (the rule, kept so its id is not reused; severity, clear per place)
    outcomes: dict[int, tuple[RuleSpec, I8, Bools]]

    # the readings of the group ``outcome`` was last asked about, and their places
    _group: Sequence[AcceptedReading] | None = field(default=None, repr=False)
    _places: Rows | None = field(default=None, repr=False)

    def outcome(
        self, members: Sequence[tuple[RuleSpec, Rows]], readings: Sequence[AcceptedReading]
    ) -> Outcome | None:
        """The outcome the step would compute for a rule and its overridden versions
        (``members``: each with its readings' positions in the group ``readings``), by
        position in the group; None if a rule or a reading was not evaluated here."""
        if self._group is not readings:  # held, so not another list at the same address
            got = np.fromiter(map(self.places.get, map(id, readings), _MINUS), np.intp)
            self._group, self._places = readings, None if (got < 0).any() else got
        places = self._places
        if places is None:
            return None
        n = len(readings)
        severity, clear = np.zeros(n, np.int8), np.zeros(n, np.bool_)
        for rule, idx in members:
            held = self.outcomes.get(id(rule))
            if held is None:
                return None
            severity[idx] = held[1][places[idx]]
            clear[idx] = held[2][places[idx]]
        return Outcome(severity, clear)


def evaluate(
    readings: Sequence[AcceptedReading],
    plans: Sequence[Plan],
    plan_no: Rows,
    buffer_of: Callable[[Metric], MetricBuffer],
    base_of: Mapping[int, tuple[RuleSpec, RuleSpec]],
) -> Thresholds:
    """Evaluate each reading's threshold rules (those of ``plans[plan_no[i]]``), each
    distinct rule once for all its readings, overridden versions with it (``base_of``:
    id(rule) -> (rule, the rule it overrides), as the step groups them).

    Interpretation: ``HH``/``LL`` for a critical tier, ``H``/``L`` for another tier (by the
    direction of the first condition met in the highest tier of the first rule, in the
    plan's order, to reach it), ``N`` when threshold rules looked and none fired, None
    when no threshold rule watches the metric."""
    n = len(readings)
    places = dict(zip(map(id, readings), range(n), strict=True))
    codes = np.zeros(n, np.int8)
    # per place: the best (severity, earliest rule in the plan) so far, as one number
    best = np.zeros(n, np.int64)
    watched = np.zeros(n, np.bool_)  # some threshold rule watches the reading's metric
    outcomes: _Held = {}
    got = list(map(_READING, readings))
    metric_ids = np.fromiter(map(id, map(_METRIC, got)), np.int64, n)
    order = np.argsort(metric_ids, kind="stable")
    parts = np.split(order, np.flatnonzero(np.diff(metric_ids[order])) + 1) if n else []
    for part in parts:
        metric = got[int(part[0])].metric
        # id(rule) -> (rule, its readings by chunk (positions in ``part``), the rule's
        # place among its plan's threshold rules of the metric, per chunk)
        by_rule: dict[int, tuple[RuleSpec, list[Rows], list[int]]] = {}
        for plan, idx in by_plan(plan_no[part], plans):
            rules = [r for r in plan.by_metric.get(metric, ()) if r.kind == THRESHOLD.name]
            for k, rule in enumerate(rules):
                held = by_rule.get(id(rule))
                if held is None:
                    by_rule[id(rule)] = (rule, [idx], [k])
                else:
                    held[1].append(idx)
                    held[2].append(k)
        if not by_rule:
            continue
        buf = buffer_of(metric)
        current = buf.values_of(list(map(got.__getitem__, part.tolist())))
        units: dict[int, tuple[RuleSpec, list[tuple[RuleSpec, Rows]]]] = {}
        joined = []
        for rule, chunks, ranks in by_rule.values():
            base = base_of.get(id(rule), (rule, rule))[1]
            idx = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
            units.setdefault(id(base), (base, []))[1].append((rule, idx))
            joined.append((rule, base, idx, chunks, ranks))
        for base, members in units.values():
            _evaluate_unit(base, members, metric, part, current, buf, n, outcomes)
        for rule, base, idx, chunks, ranks in joined:
            at = part[idx]
            watched[at] = True
            _, severity, _, first = outcomes[id(rule)]
            fired = np.flatnonzero(severity[at])
            if not len(fired):
                continue
            rank = np.repeat(np.array(ranks, np.int64), [len(c) for c in chunks])[fired]
            at = at[fired]
            sev = severity[at].astype(np.int64)
            # a higher severity wins; among equal ones, the rule earlier in the plan
            key = sev * _RULES - rank
            better = key > best[at]
            if not better.any():
                continue
            up = THRESHOLD.rising(base)[first[at]]
            critical = sev >= _CRITICAL
            this = np.where(up, np.where(critical, _HH, _H), np.where(critical, _LL, _L))
            codes[at[better]] = this[better]
            best[at[better]] = key[better]
    codes[watched & (codes == 0)] = _N
    return Thresholds(
        _CODES[codes].tolist(),
        places,
        {k: (rule, severity, clear) for k, (rule, severity, clear, _) in outcomes.items()},
    )


def _evaluate_unit(
    base: RuleSpec,
    members: list[tuple[RuleSpec, Rows]],
    metric: Metric,
    part: Rows,
    current: F64,
    buf: MetricBuffer,
    n: int,
    outcomes: _Held,
) -> None:
    """One evaluation of a rule for its readings (positions in ``part``, whose values are
    ``current``) and its overridden versions' (their parameters per reading); each
    member's outcome kept by place in the batch (``n`` readings)."""
    idx = members[0][1] if len(members) == 1 else np.concatenate([m[1] for m in members])
    m = len(idx)
    values = current[idx]
    w = Window(
        metric,
        np.zeros(m),
        values,
        given(np.zeros((m, 0)), np.zeros((m, 0, values.shape[1]))),
        buf.index,
        _no_latest,
    )
    params: dict[str, F64] = {}
    start = 0
    for rule, ridx in members:
        end = start + len(ridx)
        if rule is not base:
            for name in differ(base, rule):
                each = params.get(name)
                if each is None:
                    each = params[name] = np.full(m, base.p(name))
                each[start:end] = rule.p(name)
        start = end
    if params:
        w = replace(w, params=params)
    out, first = THRESHOLD.evaluate_at(base, w)
    start = 0
    for rule, ridx in members:
        end = start + len(ridx)
        at = part[ridx]
        severity, clear = np.zeros(n, np.int8), np.zeros(n, np.bool_)
        where = np.full(n, -1, np.intp)
        severity[at], clear[at], where[at] = (
            out.severity[start:end],
            out.clear[start:end],
            first[start:end],
        )
        outcomes[id(rule)] = (rule, severity, clear, where)
        start = end
