"""Composite early-warning score (NEWS2-style) from whichever parameters are measured.

Spec: ``scored`` (each a metric, component and scoring bands), ``score_tiers``
(conditions on ``total``, the summed points, or ``single``, the highest points of
one parameter), params ``freshness_hours`` (a parameter's latest value counts if
measured no longer ago than this) and ``min_parameters`` (a ``total`` counts only
with this many parameters available). Evaluated on every reading of a scored
metric; the other parameters come from the patient's latest readings.

A ``single`` condition needs no other parameter: NEWS2 (RCP 2017) calls for an
urgent response to any one parameter scoring 3, whatever the others, so one SpO2
reading of 89% on scale 1 fires on its own while a total of 3 from it would not.

Home devices do not report consciousness (ACVPU) or supplemental oxygen, so the
score is partial; the explanation says how many parameters it used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rpm.domain import Metric

from ..kernels import score_bands
from ..spec import COMPARATORS, RuleSpec, Source
from .base import (
    F64,
    HOUR,
    Facts,
    Outcome,
    Window,
    amount,
    base_evidence,
    label,
    short_source,
    when,
)

PSEUDO = ("total", "single")


@dataclass(frozen=True, slots=True)
class _Bands:
    """A rule's scoring bands as the compiled loop takes them: per parameter, per band,
    ``[low, high)`` and points; padding bands match nothing."""

    low: F64  # (P, N)
    high: F64  # (P, N)
    points: F64  # (P, N)


# id(rule) -> (the rule, kept so its id is not reused; its bands)
_BANDS: dict[int, tuple[RuleSpec, _Bands]] = {}


def _bands(rule: RuleSpec) -> _Bands:
    held = _BANDS.get(id(rule))
    if held is None:
        if len(_BANDS) >= 1024:  # versions of the programs come and go: stay bounded
            _BANDS.clear()
        width = max(len(s.bands) for s in rule.scored)
        shape = (len(rule.scored), width)
        low, high, points = np.full(shape, np.inf), np.full(shape, -np.inf), np.zeros(shape)
        for i, s in enumerate(rule.scored):
            for j, band in enumerate(s.bands):
                low[i, j] = -np.inf if band.low is None else band.low
                high[i, j] = np.inf if band.high is None else band.high
                points[i, j] = band.points
        held = _BANDS[id(rule)] = (rule, _Bands(low, high, points))
    return held[1]


def _source(w: Window, src: Source, fresh: float) -> tuple[F64, F64]:
    """(value, time) of a source for each reading: its own or the patient's latest."""
    if src.metric is w.metric:
        return w.value(src.component), w.ts
    return w.latest_of(src.metric, src.component, fresh)


class Composite:
    name = "composite"
    required_params = frozenset({"freshness_hours", "min_parameters"})

    def check(self, rule: RuleSpec) -> list[str]:
        from rpm.domain import METRICS

        problems = []
        if not rule.scored or not rule.score_tiers:
            problems.append("a composite rule needs scored parameters and score_tiers")
        if not rule.params.get("freshness_hours", 0) > 0:
            problems.append("freshness_hours must be positive")
        for s in rule.scored:
            for src in s.sources:
                if METRICS[src.metric].component(src.component) is None:
                    problems.append(f"{src.metric.value} has no component {src.component!r}")
        for tier in rule.score_tiers:
            for cond in tier.any:
                if cond.component not in PSEUDO:
                    problems.append(f"score tiers test 'total' or 'single', not {cond.component!r}")
        return problems

    def lookback_s(self, rule: RuleSpec) -> float:
        return rule.p("freshness_hours") * HOUR

    def watched(self, rule: RuleSpec) -> frozenset[Metric]:
        return frozenset(src.metric for s in rule.scored for src in s.sources)

    def varying(self, rule: RuleSpec) -> frozenset[str]:
        params = {c.param for t in rule.score_tiers for c in t.any}
        return frozenset({"min_parameters", *params})

    def evaluate(self, rule: RuleSpec, w: Window) -> Outcome:
        n = len(w)
        fresh = rule.p("freshness_hours") * HOUR
        values = np.empty((len(rule.scored), n))
        for i, s in enumerate(rule.scored):
            first, *others = s.sources
            v, t = _source(w, first, fresh)
            values[i] = v  # the first source's value where it has one
            if others:  # the freshest value counts
                at = np.where(np.isnan(v), -np.inf, t)
                for src in others:
                    v, t = _source(w, src, fresh)
                    newer = ~np.isnan(v) & (np.isnan(values[i]) | (t > at))
                    values[i] = np.where(newer, v, values[i])
                    at = np.where(newer, t, at)
        bands = _bands(rule)
        points = np.empty_like(values)
        total, single, available = np.empty(n), np.empty(n), np.empty(n)
        score_bands(values, bands.low, bands.high, bands.points, points, total, single, available)
        # An aggregate needs min_parameters; one parameter's own points need only itself.
        gate = {"total": available >= w.p(rule, "min_parameters"), "single": available >= 1}
        severity = np.zeros(n, np.int8)
        for tier in rule.score_tiers:
            hit = np.zeros(n, np.bool_)
            for cond in tier.any:
                score = total if cond.component == "total" else single
                met = COMPARATORS[cond.op](score, w.p(rule, cond.param))  # type: ignore[arg-type]
                hit |= gate[cond.component] & met
            severity = np.where(hit & (severity < tier.severity), np.int8(tier.severity), severity)
        detail: dict[str, np.ndarray] = {"total": total, "single": single, "available": available}
        for i in range(len(rule.scored)):
            detail[f"p{i}"] = values[i]
            detail[f"p{i}.points"] = points[i]
        return Outcome(severity.astype(np.int8), severity == 0, detail)

    def explain(self, rule: RuleSpec, facts: Facts) -> tuple[str, dict[str, object]]:
        d = facts.detail
        parts, top = [], []
        scored = {}
        for i, s in enumerate(rule.scored):
            key = f"p{i}"
            if not np.isnan(d[key + ".points"]):
                src = s.sources[0]
                points = int(d[key + ".points"])
                shown = amount(src.metric, src.component, d[key])
                parts.append(f"{label(src.component)} {shown} ({points})")
                scored[src.component] = {"value": d[key], "points": points}
                if points == int(d["single"]):
                    top.append(f"{label(src.component)} {shown}")
        text = (
            f"{rule.title}: score {int(d['total'])} from {int(d['available'])} of "
            f"{len(rule.scored)} parameters at {when(facts.measured_at)}: {', '.join(parts)}; "
            f"{'; '.join(_reasons(rule, facts, top))} ({short_source(rule.source)})."
        )
        evidence = {
            **base_evidence(rule, facts),
            "total": int(d["total"]),
            "single": int(d["single"]),
            "parameters": scored,
        }
        return text, evidence


def _reasons(rule: RuleSpec, facts: Facts, top: list[str]) -> list[str]:
    """Why the score fired at its severity: the total, or one parameter on its own."""
    d = facts.detail
    out = []
    for tier in rule.score_tiers:
        if tier.severity != facts.severity:
            continue
        for cond in tier.any:
            limit = rule.p(cond.param)
            if cond.component == "total":
                if d["available"] >= rule.p("min_parameters") and COMPARATORS[cond.op](
                    d["total"], limit
                ):
                    out.append(f"total {int(d['total'])} (limit {limit:g})")
            elif COMPARATORS[cond.op](d["single"], limit):
                out.append(
                    f"{' and '.join(top)} {'score' if len(top) > 1 else 'scores'} "
                    f"{int(d['single'])} on its own (single-parameter limit {limit:g})"
                )
    return list(dict.fromkeys(out)) or [f"highest single parameter {int(d['single'])}"]


KIND = Composite()
