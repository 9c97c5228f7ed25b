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
from dataclasses import dataclass, replace
from operator import attrgetter

import numpy as np

from rpm.domain import AcceptedReading, Metric, Reading, Severity

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

    def places_of(self, readings: Sequence[AcceptedReading]) -> Rows | None:
        """The readings' places in the batch; None if one of them was not in it."""
        got = np.fromiter(map(self.places.get, map(id, readings), _MINUS), np.intp, len(readings))
        return None if len(got) and got.min() < 0 else got

    def outcome(
        self, members: Sequence[tuple[RuleSpec, Rows]], places: Rows, n: int
    ) -> Outcome | None:
        """The outcome the step would compute for a rule and its overridden versions
        (``members``: each with its readings' positions in a group of ``n``, whose places
        in the batch are ``places``), by position; None if one was not evaluated here."""
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
    outcomes: _Held = {}
    got = list(map(_READING, readings))
    by_metric: dict[Metric, list[int]] = {}
    for i, metric in enumerate(map(_METRIC, got)):
        by_metric.setdefault(metric, []).append(i)
    for metric, where in by_metric.items():
        part = np.array(where, np.intp)
        groups = []
        by_rule: dict[int, tuple[RuleSpec, list[Rows]]] = {}
        for plan, idx in by_plan(plan_no[part], plans):
            rules = [r for r in plan.by_metric.get(metric, ()) if r.kind == THRESHOLD.name]
            if not rules:
                continue
            groups.append((rules, part[idx]))
            for rule in rules:
                by_rule.setdefault(id(rule), (rule, []))[1].append(part[idx])
        if not by_rule:
            continue
        buf = buffer_of(metric)
        units: dict[int, tuple[RuleSpec, list[tuple[RuleSpec, Rows]]]] = {}
        for rule, chunks in by_rule.values():
            base = base_of.get(id(rule), (rule, rule))[1]
            units.setdefault(id(base), (base, []))[1].append((rule, np.concatenate(chunks)))
        rising: dict[int, Bools] = {}
        for base, members in units.values():
            _evaluate_unit(base, members, metric, got, buf, n, outcomes, rising)
        for rules, at in groups:
            worst = np.zeros(len(at), np.int8)
            code = np.full(len(at), _N, np.int8)
            for rule in rules:
                _, severity, _, first = outcomes[id(rule)]
                sev, cond = severity[at], first[at]
                better = sev > worst
                if not better.any():
                    continue
                up = rising[id(rule)][np.maximum(cond, 0)]
                critical = sev >= _CRITICAL
                this = np.where(up, np.where(critical, _HH, _H), np.where(critical, _LL, _L))
                code[better] = this[better]
                worst[better] = sev[better]
            codes[at] = code
    return Thresholds(
        _CODES[codes].tolist(),
        places,
        {k: (rule, severity, clear) for k, (rule, severity, clear, _) in outcomes.items()},
    )


def _evaluate_unit(
    base: RuleSpec,
    members: list[tuple[RuleSpec, Rows]],
    metric: Metric,
    got: list[Reading],
    buf: MetricBuffer,
    n: int,
    outcomes: _Held,
    rising: dict[int, Bools],
) -> None:
    """One evaluation of a rule for its readings and its overridden versions' (their
    parameters per reading); each member's outcome kept by place in the batch."""
    idx = members[0][1] if len(members) == 1 else np.concatenate([m[1] for m in members])
    m = len(idx)
    current = buf.values_of(list(map(got.__getitem__, idx.tolist())))
    w = Window(
        metric,
        np.zeros(m),
        current,
        given(np.zeros((m, 0)), np.zeros((m, 0, current.shape[1]))),
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
    up = THRESHOLD.rising(base)
    start = 0
    for rule, ridx in members:
        end = start + len(ridx)
        severity, clear = np.zeros(n, np.int8), np.zeros(n, np.bool_)
        at = np.full(n, -1, np.intp)
        severity[ridx], clear[ridx], at[ridx] = (
            out.severity[start:end],
            out.clear[start:end],
            first[start:end],
        )
        outcomes[id(rule)] = (rule, severity, clear, at)
        rising[id(rule)] = up
        start = end
