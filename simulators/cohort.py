"""Cohort runs for efficacy figures: a plan per seed through the backtest path, its alerts
classified (``simulators.efficacy``), tallied, merged across seeds. Pure.

``benchmarks/efficacy.py`` runs it over many seeds; ``scripts/sim_calibrate.py`` shares
``after_warm_up``.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rpm.backtest.burden import MONTH_DAYS
from simulators.efficacy import Readings, Verdict, classify, misses
from simulators.labels import LABELS, LabelSpec, default_labels
from simulators.offline import Score, replay, score, stored_readings
from simulators.scenarios import GroundTruth, ScenarioSpec, default_scenarios
from simulators.traffic import Plan, SimConfig, build_plan

# --- a cohort run ---------------------------------------------------------------------------

WARM_UP_DAYS = 1.0  # the backtest's timer watches a patient from their first reading


def after_warm_up(
    specs: Iterable[ScenarioSpec], days: float, share: float | None = None
) -> tuple[ScenarioSpec, ...]:
    """Scenarios with their onset windows mapped onto the span after the warm-up day (and
    their share replaced, when given)."""
    span = WARM_UP_DAYS + days

    def later(f: float) -> float:
        return (WARM_UP_DAYS + f * days) / span

    out = []
    for s in specs:
        update: dict[str, Any] = {"onset": (later(s.onset[0]), later(s.onset[1]))}
        if share is not None:
            update["share"] = share
        out.append(s.model_copy(update=update))
    return tuple(out)


def efficacy_scenarios() -> list[ScenarioSpec]:
    """The default scenarios and a slower heart-failure decompensation: 0.35 kg a day, about
    5 lb in a week, up to 4 kg, inside the weekly gains Chaudhry SI et al. (Circulation
    2007;116:1549-54) saw before admissions (the default case gains 1 kg a day)."""
    slow = ScenarioSpec(
        name="hf_slow_gain",
        kind="hf_decompensation",
        program="heart_failure",
        share=0.1,
        onset=(0.1, 0.6),
        params={"gain_kg_per_day": 0.35, "max_gain_kg": 4.0},
        detected_by=("hf.weight_gain_24h", "hf.weight_gain_7d", "hf.weight_trend"),
    )
    return [*default_scenarios(), slow]


def cohort_config(
    patients: int,
    days: float,
    seed: int,
    start: datetime,
    scenarios: Iterable[ScenarioSpec] | None = None,
    labels: tuple[LabelSpec, ...] | None = None,
) -> SimConfig:
    """A plan of ``patients`` over a warm-up day and ``days`` counted from ``start``."""
    return SimConfig(
        patients,
        start - timedelta(days=WARM_UP_DAYS),
        start + timedelta(days=days),
        seed=seed,
        scenarios=after_warm_up(efficacy_scenarios() if scenarios is None else scenarios, days),
        labels=default_labels() if labels is None else labels,
    )


def run_cohort(cfg: SimConfig, count_from: datetime) -> tuple[Plan, list[Verdict], dict[str, Any]]:
    """Build the plan, replay it through the real decoders, validation, rule engine and
    alert policy (``simulators.offline``), classify every alert, and tally the run."""
    plan = build_plan(cfg)
    stored = stored_readings(plan)
    burden = replay(plan, count_from, stored)
    index = Readings(stored)
    verdicts = classify(plan, burden.alerts, index)
    days = (cfg.end - count_from).total_seconds() / 86_400
    missed = misses(plan, verdicts, index)
    return plan, verdicts, tally(plan, verdicts, score(plan, burden), days, missed)


# --- figures of a run, and of many ----------------------------------------------------------


def tally(
    plan: Plan,
    verdicts: Sequence[Verdict],
    result: Score,
    days: float,
    missed: Sequence[tuple[GroundTruth, bool]] = (),
) -> dict[str, Any]:
    """One run's figures, JSON-ready: detection per scenario (``simulators.offline.score``),
    alerts by class, non-actionable ones by rule with an example, label alerts against the
    cadence each label states, and each missed event with whether it was observable."""
    non = [v for v in verdicts if v.cls == "non_actionable"]
    examples: dict[str, dict[str, Any]] = {}
    for v in sorted(non, key=lambda v: (v.at, v.patient_id)):
        examples.setdefault(v.rule_id, _example(v))
    carriers = Counter(name for who in plan.labels.values() for name in who.labels)
    by_label = Counter(f"{v.cause}|{v.rule_id}" for v in verdicts if v.cls == "label")
    return {
        "patients": len(plan.patients),
        "patient_months": len(plan.patients) * days / MONTH_DAYS,
        "days": days,
        "cases": dict(result.cases),
        "caught": dict(result.caught),
        "delays_h": {k: list(v) for k, v in result.delays_h.items()},
        "alerts": len(verdicts),
        "by_class": dict(Counter(v.cls for v in verdicts)),
        "nonactionable_by_rule": dict(Counter(v.rule_id for v in non)),
        "examples": examples,
        "label_carriers": dict(carriers),
        "label_alerts": dict(by_label),
        "unobserved": dict(Counter(t.scenario for t, seen in missed if not seen)),
        "missed": [
            {
                "scenario": t.scenario,
                "patient_id": t.patient_id,
                "began_at": t.began_at.isoformat(),
                "observed": seen,
                "labels": list(plan.labels[t.patient_id].labels),
            }
            for t, seen in missed
        ],
    }


def _example(v: Verdict) -> dict[str, Any]:
    return {
        "patient_id": v.patient_id,
        "at": v.at.astimezone(UTC).isoformat(),
        "values": dict(v.values) if v.values else None,
        "why": v.why,
    }


def merge(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Figures of several runs (seeds) as one: counts summed, delays pooled, first examples."""
    out: dict[str, Any] = {"runs": len(runs)}
    for key in ("patients", "patient_months", "alerts"):
        out[key] = sum(r[key] for r in runs)
    for key in ("cases", "caught", "by_class", "nonactionable_by_rule", "label_carriers",
                "label_alerts", "unobserved"):  # fmt: skip
        total: Counter[str] = Counter()
        for r in runs:
            total.update(r[key])
        out[key] = dict(total)
    out["delays_h"] = {}
    out["examples"] = {}
    out["missed"] = [m for r in runs for m in r["missed"]]
    for r in runs:
        for k, v in r["delays_h"].items():
            out["delays_h"].setdefault(k, []).extend(v)
        for k, v in r["examples"].items():
            out["examples"].setdefault(k, v)
    out["days"] = runs[0]["days"] if runs else 0.0
    return out


def figures(merged: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of merged runs: per scenario sensitivity and median delay, the
    lowest sensitivity, the median delay over all detections, non-actionable alerts per
    patient-month, and each label's alerts per carrier-month against its stated cadence."""
    scenarios = {}
    for name, n in sorted(merged["cases"].items()):
        caught = merged["caught"].get(name, 0)
        delays = merged["delays_h"].get(name, [])
        seen = n - merged["unobserved"].get(name, 0)
        scenarios[name] = {
            "patients": n,
            "caught": caught,
            "sensitivity": round(caught / n, 4) if n else None,
            "observed": seen,
            "sensitivity_observed": round(caught / seen, 4) if seen else None,
            "detection_delay_median_h": round(statistics.median(delays), 2) if delays else None,
        }
    pooled = [d for v in merged["delays_h"].values() for d in v]
    non = merged["by_class"].get("non_actionable", 0)
    months = merged["patient_months"] or 1.0
    month_of = months / max(merged["patients"], 1)  # months per patient
    labels = {}
    for key, n in sorted(merged["label_alerts"].items()):
        name, rule_id = key.split("|")
        carriers = merged["label_carriers"].get(name, 0)
        stated = next(e.per_30d for e in LABELS[name].expects if e.rule_id == rule_id)
        per = n / (carriers * month_of) if carriers else None
        labels[key] = {
            "alerts": n,
            "per_carrier_month": round(per, 3) if per is not None else None,
            "stated_at_most_per_30d": stated,
        }
    sens = [s["sensitivity"] for s in scenarios.values() if s["sensitivity"] is not None]
    seen = [s["sensitivity_observed"] for s in scenarios.values()
            if s["sensitivity_observed"] is not None]  # fmt: skip
    return {
        "patients": merged["patients"] // max(merged["runs"], 1),
        "seeds": merged["runs"],
        "days": merged["days"],
        "sensitivity_min": min(sens) if sens else None,
        "sensitivity_min_observed": min(seen) if seen else None,
        "detection_delay_median_h": round(statistics.median(pooled), 2) if pooled else None,
        "nonactionable_per_patient_month": round(non / months, 4),
        "alerts_per_patient_month": round(merged["alerts"] / months, 3),
        "by_class": merged["by_class"],
        "nonactionable_by_rule": dict(
            sorted(merged["nonactionable_by_rule"].items(), key=lambda kv: -kv[1])
        ),
        "scenarios": scenarios,
        "labels": labels,
    }
