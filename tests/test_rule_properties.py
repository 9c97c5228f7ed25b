"""Properties of the rules and the engine, over generated readings (hypothesis).

A more extreme value never lowers a threshold's or a score's severity; the order and
batching of the same readings does not change what fires (for threshold rules in any
order, for whole programs when batches come in time order, for weight changes in any
order thanks to the re-evaluation after late readings); no input makes numpy warn (the
suite turns warnings into errors); a ring-buffer row holds the newest readings, sorted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpm.domain import METRICS, AcceptedReading, Metric, Reading, Severity
from rules.buffers import MetricBuffer
from rules.engine import Engine, PatientContext, StepResult
from rules.kinds import KINDS, Facts
from rules.kinds.missing import Silence, evaluate_missing
from rules.programs import RuleBook
from rules.spec import ProgramSpec, RuleSpec, ScoredParameter
from tests.examples import examples
from tests.helpers import T0

pytestmark = pytest.mark.pure

BOOK = RuleBook.builtin()
PROPS = settings(
    max_examples=examples(50), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ALL_RULES = [r for p in BOOK.programs.values() for r in p.rules]
THRESHOLDS = [r for r in ALL_RULES if r.kind == "threshold"]
SCORES = [r for r in ALL_RULES if r.kind == "composite"]


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def accepted(
    patient: str, metric: Metric, hours: float, values: Mapping[str, float]
) -> AcceptedReading:
    t = at(hours)
    return AcceptedReading(Reading("dev-" + patient, metric, dict(values), t, t), patient)


def one_rule_engine(rule: RuleSpec) -> tuple[Engine, dict[str, PatientContext]]:
    book = RuleBook({"p": ProgramSpec(program="p", title="P", rules=(rule,))})
    contexts = {p: PatientContext(p, ("p",)) for p in ("less", "more")}
    return Engine(book), contexts


def severity_of(result: StepResult, patient: str, rule_id: str, when: datetime) -> int:
    found = [
        int(c.severity)
        for c in result.candidates
        if c.patient_id == patient and c.rule_id == rule_id and c.measured_at == when
    ]
    return max(found, default=0)


def plausible(metric: Metric, component: str) -> st.SearchStrategy[float]:
    spec = METRICS[metric].component(component)
    assert spec is not None
    return st.floats(spec.low, spec.high, allow_nan=False).map(lambda v: round(v, 2))


# --- a more extreme value never lowers severity --------------------------------------


@PROPS
@given(data=st.data(), rule=st.sampled_from(THRESHOLDS))
def test_a_more_extreme_value_never_lowers_a_threshold_severity(
    data: st.DataObject, rule: RuleSpec
) -> None:
    components = METRICS[rule.metric].components
    base = {c.name: data.draw(plausible(rule.metric, c.name), label=c.name) for c in components}
    conditions = [c for t in rule.tiers for c in t.any]
    component = data.draw(st.sampled_from(sorted({c.component for c in conditions})))
    rising = {c.rising for c in conditions if c.component == component}
    assert len(rising) == 1, "a component limited from both sides has no 'more extreme'"
    delta = data.draw(st.floats(0, 200, allow_nan=False), label="delta")
    more = {**base, component: base[component] + (delta if rising.pop() else -delta)}

    engine, contexts = one_rule_engine(rule)
    batch = [accepted("less", rule.metric, 0, base), accepted("more", rule.metric, 0, more)]
    result = engine.step(batch, contexts)
    assert severity_of(result, "more", rule.id, T0) >= severity_of(result, "less", rule.id, T0)


def values_of(metric: Metric, component: str, value: float) -> dict[str, float]:
    """A reading's values: a systolic pressure comes with a diastolic one."""
    values = {component: value}
    if metric is Metric.BLOOD_PRESSURE:
        values.setdefault("diastolic", 80)
    return values


def zero_band(parameter: ScoredParameter) -> tuple[float, float]:
    [band] = [b for b in parameter.bands if b.points == 0]
    low = -math.inf if band.low is None else band.low
    high = math.inf if band.high is None else band.high
    return low, high


@PROPS
@given(data=st.data(), rule=st.sampled_from(SCORES))
def test_a_more_extreme_value_never_lowers_a_score_severity(
    data: st.DataObject, rule: RuleSpec
) -> None:
    chosen = data.draw(st.integers(0, len(rule.scored) - 1), label="parameter")
    others = []
    for i, parameter in enumerate(rule.scored):
        src = parameter.sources[0]
        if i == chosen or not data.draw(st.booleans(), label=f"has {src.component}"):
            continue
        value = data.draw(plausible(src.metric, src.component), label=src.component)
        others.append((src.metric, values_of(src.metric, src.component, value)))
    src = rule.scored[chosen].sources[0]
    low, high = zero_band(rule.scored[chosen])
    value = data.draw(plausible(src.metric, src.component), label="value")
    delta = data.draw(st.floats(0, 100, allow_nan=False), label="delta")
    if value >= low and (value >= high or data.draw(st.booleans(), label="up")):
        more = value + delta  # at or past the normal band's low end: up is worse
    else:
        more = value - delta

    engine, contexts = one_rule_engine(rule)
    batch = []
    for patient, v in (("less", value), ("more", more)):
        batch += [accepted(patient, m, -1, vals) for m, vals in others]
        batch.append(accepted(patient, src.metric, 0, values_of(src.metric, src.component, v)))
    result = engine.step(batch, contexts)
    assert severity_of(result, "more", rule.id, T0) >= severity_of(result, "less", rule.id, T0)


# --- order and batching --------------------------------------------------------------


def deliver(
    engine: Engine,
    readings: Sequence[AcceptedReading],
    sizes: Iterable[int],
    contexts: Mapping[str, PatientContext],
) -> list[StepResult]:
    """The readings in batches of the given sizes (the rest in one last batch)."""
    results, start = [], 0
    for size in sizes:
        results.append(engine.step(readings[start : start + size], contexts))
        start += size
    if start < len(readings):
        results.append(engine.step(readings[start:], contexts))
    return results


def fired(results: Iterable[StepResult], rules: set[str]) -> set[tuple[str, str, int, datetime]]:
    return {
        (c.patient_id, c.rule_id, int(c.severity), c.measured_at)
        for r in results
        for c in r.candidates
        if c.rule_id in rules
    }


def in_time_order(readings: Sequence[AcceptedReading]) -> list[AcceptedReading]:
    return sorted(readings, key=lambda a: a.reading.measured_at)


PATIENTS = ("pat-1", "pat-2", "pat-3")
hours = st.integers(-240, 240).map(lambda q: q / 4)  # quarter hours: ties happen


@st.composite
def threshold_readings(draw: st.DrawFn) -> list[AcceptedReading]:
    out = []
    for _ in range(draw(st.integers(1, 30))):
        patient = draw(st.sampled_from(PATIENTS))
        metric = draw(st.sampled_from([Metric.BLOOD_PRESSURE, Metric.SPO2, Metric.GLUCOSE]))
        values = {
            c.name: draw(plausible(metric, c.name))
            for c in METRICS[metric].components
            if c.required
        }
        out.append(accepted(patient, metric, draw(hours), values))
    return out


@PROPS
@given(readings=threshold_readings(), data=st.data())
def test_threshold_rules_fire_the_same_in_any_order_and_batching(
    readings: list[AcceptedReading], data: st.DataObject
) -> None:
    contexts = {p: PatientContext(p, ("hypertension", "diabetes")) for p in PATIENTS}
    rules = {r.id for r in THRESHOLDS}
    expected = fired(
        deliver(Engine(BOOK), in_time_order(readings), [1] * len(readings), contexts), rules
    )
    shuffled = data.draw(st.permutations(readings), label="order")
    sizes = data.draw(st.lists(st.integers(1, 8), max_size=10), label="batch sizes")
    assert fired(deliver(Engine(BOOK), shuffled, sizes, contexts), rules) == expected


@st.composite
def monitored_patients(draw: st.DrawFn) -> list[AcceptedReading]:
    """Weights and blood pressures of three patients over ten days, no two at one time."""
    out = []
    for patient in PATIENTS:
        n_weights = draw(st.integers(0, 10))
        n_bps = draw(st.integers(0, 10))
        minutes = draw(
            st.lists(
                st.integers(0, 10 * 24 * 60),
                min_size=n_weights + n_bps,
                max_size=n_weights + n_bps,
                unique=True,
            )
        )
        weight = round(draw(st.floats(60, 120)), 1)
        for m in minutes[:n_weights]:
            weight = round(weight + draw(st.floats(-1.5, 1.5)), 1)
            out.append(accepted(patient, Metric.WEIGHT, m / 60, {"weight": weight}))
        for m in minutes[n_weights:]:
            values = {
                "systolic": draw(st.integers(80, 200)),
                "diastolic": draw(st.integers(50, 125)),
            }
            if draw(st.booleans()):
                values["pulse"] = draw(st.integers(35, 140))
            out.append(accepted(patient, Metric.BLOOD_PRESSURE, m / 60, values))
    return out


PROGRAM_CONTEXTS = {
    "pat-1": PatientContext("pat-1", ("heart_failure",)),
    "pat-2": PatientContext("pat-2", ("hypertension",)),
    "pat-3": PatientContext("pat-3", ("heart_failure", "hypertension")),
}
PROGRAM_RULES = {r.id for r in BOOK.rules_for(("heart_failure", "hypertension"))}


def worst(results: Iterable[StepResult]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for r in results:
        for c in r.candidates:
            key = (c.patient_id, c.rule_id)
            out[key] = max(out.get(key, 0), int(c.severity))
    return out


@PROPS
@given(readings=monitored_patients(), data=st.data())
def test_programs_fire_the_same_whatever_the_order_within_time_ordered_batches(
    readings: list[AcceptedReading], data: st.DataObject
) -> None:
    ordered = in_time_order(readings)
    one_by_one = deliver(Engine(BOOK), ordered, [1] * len(ordered), PROGRAM_CONTEXTS)

    sizes = data.draw(st.lists(st.integers(1, 12), max_size=12), label="batch sizes")
    batches, start = [], 0
    for size in [*sizes, len(ordered)]:
        batch = ordered[start : start + size]
        batches.append(data.draw(st.permutations(batch), label="batch"))
        start += size
    engine = Engine(BOOK)
    shuffled = [engine.step(b, PROGRAM_CONTEXTS) for b in batches if b]

    assert worst(shuffled) == worst(one_by_one)
    assert fired(shuffled, PROGRAM_RULES) == fired(one_by_one, PROGRAM_RULES)


WEIGHT_CHANGES = {r.id for r in BOOK.rules_for(("heart_failure",)) if r.kind == "change"}


@PROPS
@given(readings=monitored_patients(), data=st.data())
def test_weight_changes_fire_the_same_in_any_order_and_batching(
    readings: list[AcceptedReading], data: st.DataObject
) -> None:
    """Late readings re-evaluate the held ones they reach, so nothing is missed."""
    weights = [a for a in readings if a.reading.metric is Metric.WEIGHT]
    ordered = in_time_order(weights)
    expected = deliver(Engine(BOOK), ordered, [1] * len(ordered), PROGRAM_CONTEXTS)
    shuffled = data.draw(st.permutations(weights), label="order")
    sizes = data.draw(st.lists(st.integers(1, 6), max_size=12), label="batch sizes")
    got = deliver(Engine(BOOK), shuffled, sizes, PROGRAM_CONTEXTS)
    strip = {(p, r, t) for p, r, _, t in fired(got, WEIGHT_CHANGES)}
    assert strip == {(p, r, t) for p, r, _, t in fired(expected, WEIGHT_CHANGES)}


# --- no warnings ---------------------------------------------------------------------


@st.composite
def any_readings(draw: st.DrawFn) -> list[AcceptedReading]:
    out = []
    constant = draw(st.booleans())
    for _ in range(draw(st.integers(1, 60))):
        metric = draw(st.sampled_from(list(Metric)))
        components = METRICS[metric].components
        present = [c for c in components if c.required or draw(st.booleans())]
        values = {
            c.name: (c.low + c.high) / 2 if constant else draw(plausible(metric, c.name))
            for c in present
        }
        patient = draw(st.sampled_from(PATIENTS))
        out.append(accepted(patient, metric, draw(st.integers(-20 * 24, 20 * 24)) / 2, values))
    return out


ALL_PROGRAMS = {
    "pat-1": PatientContext("pat-1", ("heart_failure", "hypertension", "diabetes")),
    "pat-2": PatientContext("pat-2", ("copd",)),
    "pat-3": PatientContext("pat-3", ()),
}


@PROPS
@given(readings=any_readings(), data=st.data(), small=st.booleans())
def test_no_input_makes_the_engine_warn(
    readings: list[AcceptedReading], data: st.DataObject, small: bool
) -> None:
    capacity = {m: 4 for m in Metric} if small else None
    engine = Engine(BOOK, capacity=capacity)
    sizes = data.draw(st.lists(st.integers(1, 20), max_size=6), label="batch sizes")
    for result in deliver(engine, readings, sizes, ALL_PROGRAMS):
        for candidate in result.candidates:
            assert candidate.explanation
            assert candidate.severity in Severity
        assert all(c.rule_id for c in result.clears)


@PROPS
@given(readings=any_readings(), data=st.data())
def test_a_clear_comes_from_the_newest_reading_of_every_metric_the_rule_watches(
    readings: list[AcceptedReading], data: st.DataObject
) -> None:
    engine = Engine(BOOK)
    shuffled = data.draw(st.permutations(readings), label="order")
    sizes = data.draw(st.lists(st.integers(1, 10), max_size=8), label="batch sizes")
    newest: dict[tuple[str, Metric], datetime] = {}
    start = 0
    for size in [*sizes, len(shuffled)]:
        batch = shuffled[start : start + size]
        start += size
        for a in batch:
            key = (a.patient_id, a.reading.metric)
            newest[key] = max(newest.get(key, a.reading.measured_at), a.reading.measured_at)
        result = engine.step(batch, ALL_PROGRAMS)
        for c in result.clears:
            rule = BOOK.rule(c.rule_id, ALL_PROGRAMS[c.patient_id].programs)
            assert rule is not None
            for metric in KINDS[rule.kind].watched(rule):
                assert newest.get((c.patient_id, metric), c.measured_at) <= c.measured_at


MISSING = [r for r in ALL_RULES if r.kind == "missing"]


@PROPS
@given(
    rule=st.sampled_from(MISSING),
    last=st.none() | st.floats(0, 2000),
    seen=st.none() | st.floats(0, 2000),
)
def test_missing_data_never_warns_and_explains_every_alert(
    rule: RuleSpec, last: float | None, seen: float | None
) -> None:
    now = at(0)
    silence = Silence(
        "pat-1",
        None if last is None else now - timedelta(hours=last),
        now - timedelta(days=90),
        None if seen is None else now - timedelta(hours=seen),
    )
    facts = evaluate_missing(rule, silence, now)
    silent = last if last is not None else 90 * 24
    assert (facts is not None) == (silent >= rule.p("after_hours"))
    if facts is not None:
        text, _ = KINDS["missing"].explain(rule, Facts(now, {}, facts, int(rule.top_severity)))
        assert text.startswith("No ")


# --- ring buffers --------------------------------------------------------------------


@settings(max_examples=examples(100), deadline=None)
@given(
    capacity=st.integers(1, 6),
    batches=st.lists(
        st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 30)), max_size=10), max_size=8
    ),
)
def test_a_buffer_row_holds_its_newest_readings_sorted(
    capacity: int, batches: list[list[tuple[str, int]]]
) -> None:
    buf = MetricBuffer(Metric.WEIGHT, capacity, rows=1)
    seen: dict[str, list[float]] = {}
    for batch in batches:
        if not batch:
            continue
        patients = [p for p, _ in batch]
        ts = np.array([float(t) for _, t in batch])
        numbers = np.array([ord(p) - ord("a") for p in patients], np.intp)  # a = 0
        buf.append(buf.rows(numbers), ts, ts[:, None].copy())
        for p, t in batch:
            seen.setdefault(p, []).append(float(t))
        for p, times in seen.items():
            row = buf.row_of(ord(p) - ord("a"))
            n = int(buf.count[row])
            assert list(buf.times[row, :n]) == sorted(times)[-capacity:]
            assert np.array_equal(buf.values[row, :n, 0], buf.times[row, :n])
            assert np.all(np.isinf(buf.times[row, n:]))
