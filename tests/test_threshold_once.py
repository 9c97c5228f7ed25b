"""Threshold rules evaluated once per reading (issue 21, item 2): the interpretation stored
with a reading comes from the same evaluation the rule step reuses, and is identical to the
one computed on its own before (the reference below: ``rules.interpretation.interpret`` as
it was at cb44bb8); the step given those outcomes decides exactly as it does alone."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from types import MappingProxyType

import numpy as np
import pytest

from rpm.domain import AcceptedReading, Metric, Reading, Severity
from rules.buffers import MetricBuffer
from rules.engine import Engine, PatientContext, StepResult
from rules.kinds import Window
from rules.kinds.base import condition_holds, given
from rules.plan import Plan
from rules.programs import RuleBook, builtin_programs, parse_document
from rules.spec import RuleSpec
from tests.helpers import T0

pytestmark = pytest.mark.pure

# A program whose threshold rules mix directions in one tier and overlap another rule of
# the same metric, so the interpretation's direction and rule order are exercised. Test data,
# not clinical content.
MIXED = """
program: mixed
title: Mixed directions (test)
rules:
  - id: t.hr_band
    kind: threshold
    metric: heart_rate
    title: Heart rate out of band
    tiers:
      - severity: critical
        any: [{component: pulse, op: ">=", param: hi2}, {component: pulse, op: "<=", param: lo2}]
      - severity: medium
        any: [{component: pulse, op: "<", param: lo1}, {component: pulse, op: ">", param: hi1}]
    params: {hi2: 140, lo2: 40, hi1: 110, lo1: 50}
    source: test data, not a clinical rule
  - id: t.hr_high
    kind: threshold
    metric: heart_rate
    title: Heart rate high
    tiers:
      - severity: medium
        any: [{component: pulse, op: ">", param: hi}]
    params: {hi: 100, hysteresis: 3}
    source: test data, not a clinical rule
  - id: t.bp_mixed
    kind: threshold
    metric: blood_pressure
    title: Blood pressure, both ways
    tiers:
      - severity: high
        any:
          - {component: diastolic, op: "<", param: dia_low}
          - {component: systolic, op: ">", param: sys_high}
    params: {dia_low: 50, sys_high: 160}
    source: test data, not a clinical rule
"""

PROGRAMS = ["hypertension", "diabetes", "copd", "heart_failure", "mixed"]

# (metric, component, low, high) of the drawn values, around every limit above
RANGES = {
    Metric.BLOOD_PRESSURE: {"systolic": (70, 200), "diastolic": (35, 130)},
    Metric.GLUCOSE: {"glucose": (40, 420)},
    Metric.SPO2: {"spo2": (80, 100)},
    Metric.HEART_RATE: {"pulse": (35, 150)},
    Metric.WEIGHT: {"weight": (50, 120)},
}


def book() -> RuleBook:
    programs = builtin_programs()
    mixed = parse_document(MIXED)
    return RuleBook(MappingProxyType({**programs, mixed.program: mixed}))


def reference(
    readings: Sequence[AcceptedReading],
    plans: Sequence[Plan],
    buffer_of: Callable[[Metric], MetricBuffer],
) -> list[str | None]:
    """The interpretation as computed on its own before threshold rules ran once
    (``rules/interpretation.py`` at cb44bb8, unchanged)."""

    def no_latest(metric: Metric, component: str, fresh: float) -> tuple[object, object]:
        raise AssertionError

    out: list[str | None] = [None] * len(readings)
    groups: dict[tuple[Metric, int], tuple[tuple[RuleSpec, ...], list[int]]] = {}
    for i, (a, plan) in enumerate(zip(readings, plans, strict=True)):
        metric = a.reading.metric
        rules = tuple(r for r in plan.by_metric.get(metric, ()) if r.kind == "threshold")
        if rules:
            groups.setdefault((metric, id(plan)), (rules, []))[1].append(i)
    for (metric, _), (rules, idx) in groups.items():
        buf = buffer_of(metric)
        comps = buf.components
        current = np.array(
            [[readings[i].reading.values.get(c, math.nan) for c in comps] for i in idx]
        )
        n = len(idx)
        w = Window(
            metric,
            np.zeros(n),
            current,
            given(np.zeros((n, 0)), np.zeros((n, 0, len(comps)))),
            buf.index,
            no_latest,  # type: ignore[arg-type]
        )
        codes = np.full(n, "N", dtype=object)
        worst = np.zeros(n, np.int8)
        for rule in rules:
            for tier in rule.tiers:
                for cond in tier.any:
                    hit = condition_holds(rule, cond, w.value(cond.component))
                    better = hit & (worst < tier.severity)
                    if better.any():
                        critical = tier.severity >= Severity.CRITICAL
                        code = (
                            ("HH" if critical else "H")
                            if cond.rising
                            else ("LL" if critical else "L")
                        )
                        codes[better] = code
                        worst[better] = tier.severity
        for j, i in enumerate(idx):
            out[i] = str(codes[j])
    return out


def population(rng: random.Random, n: int) -> dict[str, PatientContext | None]:
    """Patients with random programs, some with per-patient overrides of threshold limits,
    some with no program, some with no context at all (None)."""
    rules = {r.id: r for p in book().programs.values() for r in p.rules if r.kind == "threshold"}
    out: dict[str, PatientContext | None] = {}
    for k in range(n):
        pid = f"pat-{k}"
        shape = rng.random()
        if shape < 0.1:
            out[pid] = None
        elif shape < 0.2:
            out[pid] = PatientContext(pid, ())
        else:
            programs = tuple(rng.sample(PROGRAMS, rng.randint(1, 3)))
            overrides: dict[str, dict[str, float]] = {}
            if rng.random() < 0.4:
                # a few patients share one override (one overridden rule for them all)
                for rule_id in rng.sample(sorted(rules), rng.randint(1, 3)):
                    rule = rules[rule_id]
                    name = rng.choice(sorted(p for p in rule.params if p != "hysteresis"))
                    overrides[rule_id] = {name: rule.p(name) + rng.choice([-10, -5, 5, 10])}
            out[pid] = PatientContext(pid, programs, overrides)
    return out


def draw(
    rng: random.Random, patients: Sequence[str], n: int, start: int = 0
) -> list[AcceptedReading]:
    out = []
    for k in range(n):
        metric = rng.choice(sorted(RANGES, key=lambda m: m.value))
        values: dict[str, float] = {}
        for comp, (lo, hi) in RANGES[metric].items():
            if metric is Metric.BLOOD_PRESSURE and comp == "diastolic" and rng.random() < 0.05:
                continue  # a component absent: NaN meets no condition
            # integers hit the limits exactly (``>`` vs ``>=``); some fractions near them
            values[comp] = float(rng.randint(lo, hi)) + rng.choice([0.0, 0.0, 0.5, -0.001])
        at = T0 + timedelta(minutes=start + k)
        pid = rng.choice(patients)
        device = f"dev-{pid}-{metric.value}"
        out.append(AcceptedReading(Reading(device, metric, values, at, at), pid))
    return out


def contexts_of(pop: Mapping[str, PatientContext | None]) -> dict[str, PatientContext]:
    return {p: c for p, c in pop.items() if c is not None}


@pytest.mark.parametrize("seed", range(12))
def test_the_interpretation_is_the_one_computed_on_its_own(seed: int) -> None:
    rng = random.Random(seed)
    pop = population(rng, 60)
    contexts = contexts_of(pop)
    engine = Engine(book())
    readings = draw(rng, sorted(pop), 400)
    plans = [
        engine.plan(contexts.get(a.patient_id) or PatientContext(a.patient_id)) for a in readings
    ]
    got = engine.thresholds(readings, contexts).interpretations
    want = reference(readings, plans, engine._buffer)
    assert got == want
    # every code shows up, and readings no threshold rule watches
    assert set(got) == {"N", "H", "L", "HH", "LL", None}
    assert engine.patients == 0  # no state: nothing added before the insert


def test_the_codes_cover_every_direction_and_tier() -> None:
    engine = Engine(book())
    contexts = {"p": PatientContext("p", ("mixed", "diabetes"))}

    def hr(v: float) -> AcceptedReading:
        return AcceptedReading(Reading("d", Metric.HEART_RATE, {"pulse": v}, T0, T0), "p")

    readings = [hr(140), hr(40), hr(45), hr(115), hr(105), hr(75), hr(139.5), hr(40.5)]
    got = engine.thresholds(readings, contexts).interpretations
    assert got == ["HH", "LL", "L", "H", "H", "N", "H", "L"]
    plans = [engine.plan(contexts["p"])] * len(readings)
    assert got == reference(readings, plans, engine._buffer)


def result_of(r: StepResult) -> tuple[list[object], list[object]]:
    return (
        [(c.patient_id, c.rule_id, c.severity, c.measured_at, c.explanation) for c in r.candidates],
        list(r.clears),
    )


@pytest.mark.parametrize("seed", range(8))
def test_the_step_given_the_outcomes_decides_as_it_does_alone(seed: int) -> None:
    """Batches with duplicates dropped after the outcomes were computed (the insert skips
    them), late readings, overrides and patients without programs: the same candidates and
    clears, in the same order, with the threshold outcomes reused as without them."""
    rng = random.Random(1000 + seed)
    pop = population(rng, 25)
    contexts = contexts_of(pop)
    alone, once = Engine(book()), Engine(book())
    start = 0
    for _ in range(6):
        accepted = draw(rng, sorted(pop), rng.randint(1, 150), start)
        start += 200
        if rng.random() < 0.3:  # a late reading, older than the held ones
            late = draw(rng, sorted(pop), 3, start - 2000)
            accepted += late
        new = [a for a in accepted if rng.random() > 0.1]  # duplicates: not stored
        thresholds = once.thresholds(accepted, contexts)
        want = alone.step(new, contexts)
        got = once.step(new, contexts, thresholds)
        assert result_of(got) == result_of(want)
    assert once.patients == alone.patients


def test_threshold_rules_are_not_evaluated_again_in_the_step() -> None:
    """The step uses the outcomes it is given for threshold rules: outcomes that say a
    rule fired make it fire (so the step read them, and did not evaluate the rule)."""
    engine = Engine(book())
    contexts = {"p": PatientContext("p", ("diabetes",))}
    normal = AcceptedReading(Reading("d", Metric.GLUCOSE, {"glucose": 100.0}, T0, T0), "p")
    thresholds = engine.thresholds([normal], contexts)
    assert thresholds.interpretations == ["N"]
    rule = next(r for r in engine.plan(contexts["p"]).by_metric[Metric.GLUCOSE])
    held_rule, severity, _ = thresholds.outcomes[id(rule)]
    severity[:] = int(Severity.CRITICAL)
    result = engine.step([normal], contexts, thresholds)
    assert [c.rule_id for c in result.candidates] == [held_rule.id]
    # A reading the outcomes do not hold is evaluated as before.
    other = replace(normal, patient_id="q")
    assert (
        engine.step([other], {"q": PatientContext("q", ("diabetes",))}, thresholds).candidates == []
    )
