"""Deviation from the patient's own baseline: median and MAD over a trailing window.

Spec: ``component``, ``direction`` (rise or fall: which deviation is bad),
``severity``; params ``window_days`` (the trailing window), ``min_readings`` (the
baseline needs this many), ``min_deviation`` (in the component's unit), and
optionally ``mad_multiplier`` (the deviation must also exceed k x 1.4826 x MAD,
the robust standard deviation) and ``skip_recent_hours`` (leave the most recent
hours out of the baseline so a slow deterioration does not become its own
reference). Median and MAD are robust to the odd bad reading (Leys et al., J Exp
Soc Psychol 2013;49:764-766).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..spec import RuleSpec
from .base import (
    DAY,
    EPS,
    HOUR,
    Facts,
    Outcome,
    OwnMetric,
    Window,
    amount,
    base_evidence,
    directional_problems,
    not_positive,
    short_source,
    title_label,
)

MAD_TO_SD = 1.4826  # consistency constant for normally distributed data


class Baseline(OwnMetric):
    name = "baseline"
    required_params = frozenset({"window_days", "min_readings", "min_deviation"})

    def check(self, rule: RuleSpec) -> list[str]:
        problems = []
        problems.extend(directional_problems(rule))
        if rule.params.get("min_readings", 0) < 3:
            problems.append("min_readings must be at least 3")
        problems.extend(not_positive(rule, "window_days"))
        return problems

    def varying(self, rule: RuleSpec) -> frozenset[str]:
        return frozenset()

    def lookback_s(self, rule: RuleSpec) -> float:
        return rule.p("window_days") * DAY

    def evaluate(self, rule: RuleSpec, w: Window) -> Outcome:
        assert rule.component is not None
        assert rule.severity is not None
        n_rows = len(w)
        hist = w.history(rule.component)
        skip = rule.params.get("skip_recent_hours", 0.0) * HOUR
        inside = w.between(self.lookback_s(rule), include_self=False, skip_recent_s=skip)
        inside &= ~np.isnan(hist)
        count = inside.sum(axis=1)
        enough = count >= rule.p("min_readings")
        median = np.full(n_rows, np.nan)
        mad = np.full(n_rows, np.nan)
        if enough.any():
            # np.nanmedian takes numpy.ma's slow path for short rows. Sorting puts NaN last,
            # so a row's median is at (k-1)//2 and k//2 of its k values.
            k = count[enough][:, None]
            sub = np.sort(np.where(inside[enough], hist[enough], np.nan), axis=1)
            m = _sorted_median(sub, k)
            median[enough] = m
            mad[enough] = _sorted_median(np.sort(np.abs(sub - m[:, None]), axis=1), k)
        now = w.value(rule.component)
        with np.errstate(invalid="ignore"):
            deviation = (now - median) if rule.direction == "rise" else (median - now)
            need = np.full(n_rows, rule.p("min_deviation"))
            if "mad_multiplier" in rule.params:
                need = np.maximum(need, rule.p("mad_multiplier") * MAD_TO_SD * mad)
            fires = enough & (deviation >= need - EPS)
        severity = np.where(fires, np.int8(rule.severity), np.int8(0)).astype(np.int8)
        detail = {
            "median": median,
            "mad": mad,
            "deviation": np.nan_to_num(deviation),
            "needed": need,
            "baseline_readings": count.astype(np.float64),
        }
        return Outcome(severity, ~fires, detail)

    def explain(self, rule: RuleSpec, facts: Facts) -> tuple[str, dict[str, object]]:
        assert rule.component is not None
        d = facts.detail
        name = title_label(rule.component)
        word = "above" if rule.direction == "rise" else "below"
        now = facts.values[rule.component]
        text = (
            f"{name} {amount(rule.metric, rule.component, now)} is "
            f"{amount(rule.metric, rule.component, d['deviation'])} {word} this patient's "
            f"{rule.p('window_days'):g}-day median of "
            f"{amount(rule.metric, rule.component, d['median'])} "
            f"(MAD {amount(rule.metric, rule.component, d['mad'])}, "
            f"{int(d['baseline_readings'])} readings); limit "
            f"{amount(rule.metric, rule.component, d['needed'])} ({short_source(rule.source)})."
        )
        return text, {**base_evidence(rule, facts), **dict(d)}


def _sorted_median(s: npt.NDArray[np.float64], k: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
    """The median of the first ``k`` values of each ascending row (``k`` >= 1)."""
    lo = np.take_along_axis(s, (k - 1) // 2, axis=1)[:, 0]
    hi = np.take_along_axis(s, k // 2, axis=1)[:, 0]
    return (lo + hi) / 2


KIND = Baseline()
