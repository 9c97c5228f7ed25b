"""Composite early-warning score (NEWS2-style) from whichever parameters are measured.

Spec: ``scored`` (each a metric, component and scoring bands), ``score_tiers``
(conditions on ``total``, the summed points, or ``single``, the highest points of
one parameter), params ``freshness_hours`` (a parameter's latest value counts if
measured no longer ago than this) and ``min_parameters`` (score only with this
many parameters available). Evaluated on every reading of a scored metric; the
other parameters come from the patient's latest readings.

Home devices do not report consciousness (ACVPU) or supplemental oxygen, so the
score is partial; the explanation says how many parameters it used.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from rpm.domain import Metric

from ..spec import COMPARATORS, RuleSpec, ScoredParameter, Source
from .base import F64, HOUR, Facts, Outcome, Window, amount, base_evidence, short_source, when

PSEUDO = ("total", "single")


# id(scored) -> (scored, kept so its id is not reused; its table): hashing a spec costs
# more than the table saves
_TABLES: dict[int, tuple[ScoredParameter, tuple[F64, F64] | None]] = {}


def _band_table(scored: ScoredParameter) -> tuple[F64, F64] | None:
    """Inner edges and points of contiguous bands (the usual chart), for one searchsorted;
    None when the bands leave gaps or overlap."""
    held = _TABLES.get(id(scored))
    if held is None:
        if len(_TABLES) >= 1024:  # versions of the programs come and go: stay bounded
            _TABLES.clear()
        held = _TABLES[id(scored)] = (scored, _make_band_table(scored))
    return held[1]


def _make_band_table(scored: ScoredParameter) -> tuple[F64, F64] | None:
    bands = sorted(scored.bands, key=lambda b: -math.inf if b.low is None else b.low)
    if bands[0].low is not None or bands[-1].high is not None:
        return None
    for a, b in itertools.pairwise(bands):
        if a.high is None or a.high != b.low:
            return None
    edges = np.array([b.low for b in bands[1:]], np.float64)
    return edges, np.array([float(b.points) for b in bands])


def _points(scored: ScoredParameter, value: F64) -> F64:
    """Points of each value by the parameter's bands (NaN where there is no value or band)."""
    table = _band_table(scored)
    missing = np.isnan(value)
    if table is not None:
        edges, points = table
        return np.where(missing, np.nan, points[np.searchsorted(edges, value, side="right")])
    out = np.full(value.shape, np.nan)
    for band in scored.bands:
        inside = ~missing
        if band.low is not None:
            inside &= value >= band.low
        if band.high is not None:
            inside &= value < band.high
        out = np.where(inside & np.isnan(out), float(band.points), out)
    return out


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
        total = np.zeros(n)
        single = np.zeros(n)
        available = np.zeros(n)
        detail: dict[str, np.ndarray] = {}
        for i, s in enumerate(rule.scored):
            first, *others = s.sources
            v, t = _source(w, first, fresh)
            value = np.array(v, np.float64)  # the first source's value where it has one
            at = np.where(np.isnan(v), -np.inf, t) if others else t
            for src in others:  # the freshest value counts
                v, t = _source(w, src, fresh)
                newer = ~np.isnan(v) & (np.isnan(value) | (t > at))
                value = np.where(newer, v, value)
                at = np.where(newer, t, at)
            points = _points(s, value)
            have = ~np.isnan(points)
            scored = np.where(have, points, 0.0)
            total += scored
            single = np.maximum(single, scored)
            available += have
            key = f"p{i}"
            detail[key] = value
            detail[key + ".points"] = points
        enough = available >= w.p(rule, "min_parameters")
        severity = np.zeros(n, np.int8)
        for tier in rule.score_tiers:
            hit = np.zeros(n, np.bool_)
            for cond in tier.any:
                score = total if cond.component == "total" else single
                hit |= COMPARATORS[cond.op](score, w.p(rule, cond.param))  # type: ignore[arg-type]
            severity = np.where(
                enough & hit & (severity < tier.severity), np.int8(tier.severity), severity
            )
        detail |= {"total": total, "single": single, "available": available}
        return Outcome(severity.astype(np.int8), severity == 0, detail)

    def explain(self, rule: RuleSpec, facts: Facts) -> tuple[str, dict[str, object]]:
        d = facts.detail
        parts = []
        scored = {}
        for i, s in enumerate(rule.scored):
            key = f"p{i}"
            if not np.isnan(d[key + ".points"]):
                src = s.sources[0]
                shown = amount(src.metric, src.component, d[key])
                parts.append(f"{s.label} {shown} ({int(d[key + '.points'])})")
                scored[src.component] = {"value": d[key], "points": int(d[key + ".points"])}
        text = (
            f"{rule.title}: score {int(d['total'])} from {int(d['available'])} of "
            f"{len(rule.scored)} parameters at {when(facts.measured_at)}: {', '.join(parts)}; "
            f"highest single parameter {int(d['single'])} ({short_source(rule.source)})."
        )
        evidence = {
            **base_evidence(rule, facts),
            "total": int(d["total"]),
            "single": int(d["single"]),
            "parameters": scored,
        }
        return text, evidence


KIND = Composite()
