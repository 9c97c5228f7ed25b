"""The streaming engine: state across batches, late readings, clears, restarts, buffers."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
import pytest

from rpm.domain import AcceptedReading, Metric, Reading
from rules.buffers import MetricBuffer
from rules.engine import Engine, PatientContext, StepResult
from rules.kinds.missing import Silence
from rules.programs import RuleBook
from tests.helpers import T0, single
from tests.helpers import bp as bp_reading

pytestmark = pytest.mark.pure

BOOK = RuleBook.builtin()
HF_HTN = {"pat-1": PatientContext("pat-1", ("heart_failure", "hypertension"))}
CRISIS = "bp.hypertensive_crisis"
GAIN_24H = "hf.weight_gain_24h"


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def bp(sys_: float, dia: float, hours: float = 0, patient: str = "pat-1") -> AcceptedReading:
    values = {"systolic": sys_, "diastolic": dia}
    return AcceptedReading(
        Reading("cuff-1", Metric.BLOOD_PRESSURE, values, at(hours), at(hours)), patient
    )


def kg(weight: float, hours: float = 0, patient: str = "pat-1") -> AcceptedReading:
    reading = Reading("scale-1", Metric.WEIGHT, {"weight": weight}, at(hours), at(hours))
    return AcceptedReading(reading, patient)


def one(metric: Metric, component: str, value: float, hours: float = 0) -> AcceptedReading:
    return AcceptedReading(
        Reading("dev-1", metric, {component: value}, at(hours), at(hours)), "pat-1"
    )


def fired(result: StepResult, rule_id: str | None = None) -> list[tuple[str, datetime]]:
    return sorted(
        (c.rule_id, c.measured_at)
        for c in result.candidates
        if rule_id is None or c.rule_id == rule_id
    )


def cleared(result: StepResult) -> list[tuple[str, datetime]]:
    return sorted((c.rule_id, c.measured_at) for c in result.clears)


# --- state across batches ------------------------------------------------------------


def test_state_carries_across_batches() -> None:
    engine = Engine(BOOK)
    assert fired(engine.step([bp(150, 95, 0)], HF_HTN)) == []
    assert fired(engine.step([bp(150, 95, 1)], HF_HTN)) == []
    assert fired(engine.step([bp(150, 95, 2)], HF_HTN)) == [("htn.stage2_persistent", at(2))]
    assert fired(engine.step([kg(81.0, 3)], HF_HTN)) == []
    assert fired(engine.step([kg(82.0, 20)], HF_HTN)) == [(GAIN_24H, at(20))]


def test_one_batch_and_one_reading_per_batch_fire_the_same() -> None:
    readings = [kg(81.0, 0), bp(150, 95, 1), kg(81.5, 10), bp(150, 95, 12), kg(82.0, 20)]
    readings += [bp(191, 95, 22)]
    streamed = Engine(BOOK)
    one_by_one = sorted(f for r in readings for f in fired(streamed.step([r], HF_HTN)))
    for order in (readings, readings[::-1]):
        assert fired(Engine(BOOK).step(order, HF_HTN)) == one_by_one
    assert one_by_one == [
        (CRISIS, at(22)),
        (GAIN_24H, at(20)),
        ("htn.stage2_persistent", at(22)),
    ]


def test_patients_of_one_batch_get_their_own_programs() -> None:
    contexts = {**HF_HTN, "pat-2": PatientContext("pat-2")}
    engine = Engine(BOOK)
    engine.step([kg(81.0, 0), kg(81.0, 0, "pat-2")], contexts)
    result = engine.step([kg(82.0, 20), kg(82.0, 20, "pat-2")], contexts)
    assert {(c.patient_id, c.rule_id) for c in result.candidates} == {("pat-1", GAIN_24H)}


def test_a_patient_without_a_context_gets_the_general_program() -> None:
    result = Engine(BOOK).step([bp(185, 90, 0, "pat-9"), bp(85, 60, 1, "pat-9")], {})
    # htn.low_bp is not a general rule; NEWS2 (RCP 2017) scores systolic <= 90 with 3, a
    # single red score that alerts on its own.
    assert fired(result) == [(CRISIS, at(0)), ("news2.partial", at(1))]


def test_a_new_program_version_applies_to_the_next_batch() -> None:
    engine = Engine(BOOK)
    assert fired(engine.step([bp(175, 90, 0)], {})) == []
    general = BOOK.programs["general"]
    stricter = [
        r.with_overrides({"systolic_above": 170}) if r.id == CRISIS else r for r in general.rules
    ]
    engine.use_book(RuleBook({"general": general.model_copy(update={"rules": tuple(stricter)})}))
    assert fired(engine.step([bp(175, 90, 1)], {})) == [(CRISIS, at(1))]


def test_a_composite_sees_other_metrics_of_the_same_batch_in_any_order() -> None:
    spo2 = one(Metric.SPO2, "spo2", 91, 0)  # NEWS2 scale 1: 3 points
    rate = one(Metric.RESPIRATORY_RATE, "respiratory_rate", 16, -1)  # 0 points
    for batch in ([spo2, rate], [rate, spo2]):
        result = Engine(BOOK).step(batch, {})
        assert fired(result, "news2.partial") == [("news2.partial", at(0))]


# --- late and out-of-order readings ----------------------------------------------------


def test_a_late_reading_is_evaluated_at_its_own_time() -> None:
    engine = Engine(BOOK)
    engine.step([kg(81.0, -30)], HF_HTN)
    assert fired(engine.step([kg(80.0, 0)], HF_HTN)) == [("hf.over_diuresis", at(0))]
    # 82.0 at -10 h is a gain on 81.0 at -30 h; against the newest (80.0) it would be a loss.
    result = engine.step([kg(82.0, -10)], HF_HTN)
    assert fired(result) == [(GAIN_24H, at(-10))]
    [cand] = result.candidates
    assert "81.0 kg → 82.0 kg" in cand.explanation
    assert "Re-evaluated" not in cand.explanation


def test_a_late_abnormal_reading_fires_at_its_time() -> None:
    engine = Engine(BOOK)
    engine.step([bp(120, 80, 0)], HF_HTN)
    result = engine.step([bp(190, 100, -1)], HF_HTN)
    assert fired(result) == [(CRISIS, at(-1))]
    assert result.candidates[0].evidence["reading_uid"] == str(bp(190, 100, -1).reading.uid)


def test_a_late_normal_reading_never_clears_while_a_newer_one_is_abnormal() -> None:
    engine = Engine(BOOK)
    assert fired(engine.step([bp(190, 100, 0)], HF_HTN)) == [(CRISIS, at(0))]
    assert cleared(engine.step([bp(120, 80, -1)], HF_HTN)) == []
    assert cleared(engine.step([bp(120, 80, -2), bp(118, 78, -0.5)], HF_HTN)) == []
    # The same in one batch: the normal reading is the older one.
    result = Engine(BOOK).step([bp(190, 100, 0), bp(120, 80, -1)], HF_HTN)
    assert fired(result) == [(CRISIS, at(0))]
    assert cleared(result) == []


def test_the_newest_normal_reading_clears_once() -> None:
    engine = Engine(BOOK)
    engine.step([bp(190, 100, 0)], {})
    assert cleared(engine.step([bp(178, 100, 1)], {})) == []  # inside the hysteresis
    assert cleared(engine.step([bp(120, 80, 2)], {})) == [(CRISIS, at(2))]
    assert cleared(engine.step([bp(118, 80, 3)], {})) == []
    engine.step([bp(185, 90, 4)], {})
    assert cleared(engine.step([bp(120, 80, 5)], {})) == [(CRISIS, at(5))]


def test_a_batch_with_an_abnormal_then_a_newer_normal_reading_fires_and_clears() -> None:
    for batch in ([bp(190, 100, 0), bp(120, 80, 1)], [bp(120, 80, 1), bp(190, 100, 0)]):
        result = Engine(BOOK).step(batch, HF_HTN)
        assert fired(result) == [(CRISIS, at(0))]
        assert cleared(result) == [(CRISIS, at(1))]


def test_a_late_abnormal_reading_is_cleared_by_the_next_newest_normal_one() -> None:
    engine = Engine(BOOK)
    engine.step([bp(120, 80, 0)], {})
    assert fired(engine.step([bp(190, 100, -1)], {})) == [(CRISIS, at(-1))]
    assert cleared(engine.step([bp(121, 80, 1)], {})) == [(CRISIS, at(1))]


def spo2(value: float, hours: float) -> AcceptedReading:
    return one(Metric.SPO2, "spo2", value, hours)


def rate(value: float, hours: float) -> AcceptedReading:
    return one(Metric.RESPIRATORY_RATE, "respiratory_rate", value, hours)


def test_a_score_is_cleared_only_by_the_newest_reading_of_all_its_metrics() -> None:
    engine = Engine(BOOK)
    result = engine.step([rate(16, -1), spo2(91, 0)], {})  # NEWS2 scale 1: 3 points
    assert fired(result) == [("news2.partial", at(0))]
    # A blood pressure older than the SpO2 that holds the score does not show it is over.
    assert cleared(engine.step([bp(120, 80, -2)], {})) == []
    assert cleared(engine.step([bp(120, 80, -0.5)], {})) == []
    assert cleared(engine.step([spo2(97, 1)], {})) == [("news2.partial", at(1))]


@pytest.mark.xfail(
    strict=True,
    reason="a late reading of one metric does not re-evaluate a score held at a newer reading "
    "of another metric (only readings of the same metric are re-evaluated)",
)
def test_a_late_reading_of_another_metric_completes_a_score() -> None:
    engine = Engine(BOOK)
    temperature = one(Metric.BODY_TEMPERATURE, "temperature", 38.5, -2)  # NEWS2: 1 point
    assert fired(engine.step([temperature, spo2(92, 0)], {})) == []  # 1 + 2: no score
    # Respiration 22 scores 2: a total of 5 at the SpO2 reading (RCP 2017: urgent response).
    assert fired(engine.step([rate(22, -1)], {})) == [("news2.partial", at(0))]


def test_the_missing_data_timer_arms_what_the_next_reading_clears() -> None:
    engine = Engine(BOOK)
    context = HF_HTN["pat-1"]
    now = at(100)

    def silence(metric: Metric) -> Silence:
        last = at(0) if metric is Metric.WEIGHT else at(99)
        return Silence("pat-1", last, at(-1000), at(99.5))

    [cand] = engine.missing(context, silence, now)
    assert (cand.rule_id, cand.reading_uid, cand.measured_at) == ("hf.weight_missing", None, now)
    assert "the patient has stopped measuring" in cand.explanation
    assert cleared(engine.step([kg(80.0, 101)], HF_HTN)) == [("hf.weight_missing", at(101))]


def test_a_patient_the_timer_armed_still_has_its_history_loaded() -> None:
    """The timer arms patients the engine holds no readings of; they stay unknown, so the
    ingest path still loads their history on their next reading."""
    engine = Engine(BOOK)

    def silence(metric: Metric) -> Silence:
        return Silence("pat-1", at(0), at(-1000), at(99.5))

    assert engine.missing(HF_HTN["pat-1"], silence, at(100))
    assert not engine.knows("pat-1")
    assert engine.unknown(["pat-1"]) == {"pat-1"}
    assert engine.armed("pat-1") == {"hf.weight_missing", "htn.bp_missing"}
    history = [("pat-1", Metric.WEIGHT, at(h), {"weight": 80.0}) for h in (-24.0, 0.0)]
    engine.load(["pat-1"], history)
    assert engine.knows("pat-1")
    # the loaded weights count: +1.2 kg since yesterday fires, and the weighing clears
    result = engine.step([kg(81.2, 20)], HF_HTN)
    assert ("hf.weight_gain_24h", at(20)) in fired(result)
    assert ("hf.weight_missing", at(20)) in cleared(result)


def test_only_rules_that_fired_are_cleared() -> None:
    engine = Engine(BOOK)
    engine.step([bp(190, 100, 0)], HF_HTN)
    result = engine.step([bp(120, 80, 1), kg(80.0, 1)], HF_HTN)
    assert cleared(result) == [(CRISIS, at(1))]


def test_a_late_low_weight_makes_a_held_gain_fire_and_says_so() -> None:
    engine = Engine(BOOK)
    assert fired(engine.step([kg(82.2, 0)], HF_HTN)) == []
    late = kg(81.0, -20)
    result = engine.step([late], HF_HTN)
    assert fired(result) == [(GAIN_24H, at(0))]
    [cand] = result.candidates
    assert cand.explanation.startswith("Weight up 1.2 kg (2.6 lb) in 20 h: 81.0 kg → 82.2 kg")
    assert cand.explanation.endswith("Re-evaluated after a late reading from 2026-11-22 12:00 UTC.")
    assert cand.evidence["late_reading_at"] == late.reading.measured_at.isoformat()
    assert cand.reading_uid == late.reading.uid
    assert cand.evidence["values"] == {"weight": 82.2}


def test_a_late_reading_does_not_re_fire_what_already_fired() -> None:
    engine = Engine(BOOK)
    engine.step([kg(81.0, -22)], HF_HTN)
    assert fired(engine.step([kg(82.2, 0)], HF_HTN)) == [(GAIN_24H, at(0))]
    assert fired(engine.step([kg(81.1, -20)], HF_HTN)) == []


def test_a_late_reading_outside_every_window_changes_nothing() -> None:
    engine = Engine(BOOK)
    engine.step([kg(82.2, 0)], HF_HTN)
    assert fired(engine.step([kg(81.0, -27)], HF_HTN)) == []  # the 24 h rule's window is 26 h


def test_two_late_readings_of_one_batch_that_each_tip_a_held_reading_fire_it_once() -> None:
    engine = Engine(BOOK)
    engine.step([kg(82.2, 0)], HF_HTN)
    result = engine.step([kg(81.0, -20), kg(81.1, -10)], HF_HTN)
    assert fired(result) == [(GAIN_24H, at(0))]
    assert "Re-evaluated after a late reading" in result.candidates[0].explanation


def test_a_late_breaching_reading_completes_k_of_n() -> None:
    engine = Engine(BOOK)
    for r in (bp(150, 95, -4), bp(120, 80, -3), bp(150, 95, 0)):
        assert fired(engine.step([r], HF_HTN), "htn.stage2_persistent") == []
    result = engine.step([bp(150, 95, -2)], HF_HTN)
    assert fired(result, "htn.stage2_persistent") == [("htn.stage2_persistent", at(0))]
    [cand] = [c for c in result.candidates if c.rule_id == "htn.stage2_persistent"]
    assert cand.explanation.startswith(
        "Blood pressure in stage 2 on repeated readings: 3 of the last 4"
    )


# --- restart: forget and load ----------------------------------------------------------

SCENARIO: list[list[AcceptedReading]] = [
    [kg(81.0, -48), bp(150, 95, -48), bp(190, 100, -48, "pat-2")],
    [kg(81.2, -30), bp(145, 92, -30), bp(178, 100, -30, "pat-2")],
    [kg(82.2, -8), bp(150, 95, -8), bp(120, 80, -8, "pat-2")],
    [kg(80.9, -20), kg(82.0, 0), bp(200, 100, 0, "pat-2")],
    [bp(120, 80, -20), kg(81.0, 10), bp(120, 80, 10, "pat-2")],
    [kg(80.0, 9), bp(150, 95, 12), bp(150, 95, 11)],
]
CONTEXTS = {**HF_HTN, "pat-2": PatientContext("pat-2", ("hypertension",))}


Outcome = tuple[list[tuple[object, ...]], list[tuple[object, ...]]]


def outcome(result: StepResult) -> Outcome:
    candidates: list[tuple[object, ...]] = sorted(
        (c.patient_id, c.rule_id, c.severity, c.measured_at, c.explanation, c.reading_uid)
        for c in result.candidates
    )
    clears: list[tuple[object, ...]] = sorted(
        (c.patient_id, c.rule_id, c.measured_at) for c in result.clears
    )
    return candidates, clears


def stored(
    batches: Iterable[Sequence[AcceptedReading]],
) -> list[tuple[str, Metric, datetime, Mapping[str, float]]]:
    """What the database holds of these batches, as ``Engine.load`` takes it."""
    return [
        (a.patient_id, a.reading.metric, a.reading.measured_at, a.reading.values)
        for batch in batches
        for a in batch
    ]


def unresolved(results: Iterable[StepResult]) -> set[tuple[str, str]]:
    """The alerts left open: a candidate opens one, a clear resolves it."""
    open_: set[tuple[str, str]] = set()
    for result in results:
        open_ |= {(c.patient_id, c.rule_id) for c in result.candidates}
        open_ -= {(c.patient_id, c.rule_id) for c in result.clears}
    return open_


@pytest.mark.parametrize("restart_after", range(1, len(SCENARIO)))
@pytest.mark.parametrize("how", ["forget and load", "new engine"])
def test_a_rebuilt_engine_continues_like_one_that_never_stopped(
    restart_after: int, how: str
) -> None:
    continuous = Engine(BOOK)
    expected = [outcome(continuous.step(batch, CONTEXTS)) for batch in SCENARIO]
    assert any(candidates for candidates, _ in expected[restart_after:])

    engine = Engine(BOOK)
    before = [engine.step(batch, CONTEXTS) for batch in SCENARIO[:restart_after]]
    if how == "forget and load":
        engine.forget(CONTEXTS)
        assert not engine.knows("pat-1")
    else:
        engine = Engine(BOOK)
    done = SCENARIO[:restart_after]
    engine.load(CONTEXTS, stored(done), unresolved(before))
    assert engine.knows("pat-1")
    after = [outcome(engine.step(batch, CONTEXTS)) for batch in SCENARIO[restart_after:]]
    assert after == expected[restart_after:]


def test_forgotten_state_is_gone_until_it_is_loaded() -> None:
    engine = Engine(BOOK)
    engine.step([kg(81.0, 0), bp(190, 100, 0)], HF_HTN)
    engine.forget(["pat-1"])
    assert engine.unknown(["pat-1"]) == {"pat-1"}
    result = engine.step([kg(82.0, 20), bp(120, 80, 20)], HF_HTN)
    assert fired(result) == []
    assert cleared(result) == []  # the open crisis alert was forgotten too


def test_loaded_unresolved_alerts_are_cleared_by_a_normal_reading() -> None:
    engine = Engine(BOOK)
    engine.load(
        ["pat-1"],
        [("pat-1", Metric.BLOOD_PRESSURE, at(0), {"systolic": 190, "diastolic": 100})],
        [("pat-1", CRISIS)],
    )
    assert cleared(engine.step([bp(120, 80, 1)], HF_HTN)) == [(CRISIS, at(1))]


# --- ring buffers --------------------------------------------------------------------


def test_a_full_buffer_row_forgets_its_oldest_reading() -> None:
    readings = [kg(80.0, -20), kg(81.0, -15), kg(81.0, -10), kg(81.0, -5), kg(81.5, 0)]
    roomy, small = Engine(BOOK), Engine(BOOK, capacity={Metric.WEIGHT: 3})
    assert fired(roomy.step(readings, HF_HTN), GAIN_24H)[-1] == (GAIN_24H, at(0))
    assert (GAIN_24H, at(0)) not in fired(small.step(readings, HF_HTN), GAIN_24H)


def buffer(capacity: int, rows: int = 2) -> MetricBuffer:
    return MetricBuffer(Metric.WEIGHT, capacity, rows)


def numbered(*patients: str) -> npt.NDArray[np.intp]:
    """Patients as a buffer knows them: by number (``Engine`` numbers them; here a = 0)."""
    return np.array([ord(p[0]) - ord("a") for p in patients], np.intp)


def add(buf: MetricBuffer, patient: str, *times: float) -> None:
    """Readings whose value is their time, so a misaligned value shows."""
    rows = buf.rows(numbered(*[patient] * len(times)))
    ts = np.array(times, np.float64)
    buf.append(rows, ts, ts[:, None].copy())


def held(buf: MetricBuffer, patient: str) -> list[float]:
    row = buf.row_of(int(numbered(patient)[0]))
    n = int(buf.count[row])
    assert np.all(np.isinf(buf.times[row, n:]))
    assert np.array_equal(buf.times[row, :n], buf.values[row, :n, 0])
    return [float(t) for t in buf.times[row, :n]]


def test_buffer_keeps_rows_sorted_whatever_the_arrival_order() -> None:
    buf = buffer(8)
    add(buf, "a", 5, 1)
    add(buf, "b", 2)
    add(buf, "a", 3, 9, 0)
    assert held(buf, "a") == [0, 1, 3, 5, 9]
    assert held(buf, "b") == [2]
    assert list(buf.newest(buf.rows(numbered("a", "b")))) == [9, 2]


def test_a_full_buffer_row_drops_the_oldest_reading() -> None:
    buf = buffer(3)
    add(buf, "a", 1, 2, 3)
    add(buf, "a", 4)
    assert held(buf, "a") == [2, 3, 4]
    add(buf, "a", 2.5)
    assert held(buf, "a") == [2.5, 3, 4]
    add(buf, "a", 10, 0, 7)
    assert held(buf, "a") == [4, 7, 10]


def test_a_full_buffer_row_keeps_its_newest_readings_when_an_older_one_arrives() -> None:
    buf = buffer(3)
    add(buf, "a", 1, 2, 3)
    add(buf, "a", 0)
    assert held(buf, "a") == [1, 2, 3]


@pytest.mark.parametrize("order", list(itertools.permutations([1.0, 2.0, 3.0, 4.0, 5.0]))[::7])
def test_a_buffer_row_holds_the_newest_capacity_readings(order: tuple[float, ...]) -> None:
    one_batch, one_by_one = buffer(3), buffer(3)
    add(one_batch, "a", *order)
    for t in order:
        add(one_by_one, "a", t)
    assert held(one_batch, "a") == held(one_by_one, "a") == [3, 4, 5]


def test_buffer_rows_are_released_reused_and_grown() -> None:
    buf = buffer(4, rows=2)
    add(buf, "a", 1, 2)
    add(buf, "b", 3)
    add(buf, "c", 4)  # a third patient: the arrays grow
    assert len(buf) == 3
    assert buf.times.shape[0] >= 3
    assert held(buf, "a") == [1, 2]
    buf.release([0, 999])  # "a", and a number the buffer never saw
    assert buf.row_of(0) == -1
    assert len(buf) == 2
    add(buf, "d", 5)
    assert held(buf, "d") == [5]
    assert buf.newest(buf.rows(numbered("e")))[0] == -np.inf


# --- interpretation for the record (FHIR Observation.interpretation) ------------------


def test_interpretation_follows_the_threshold_tiers_and_their_direction() -> None:
    engine = Engine()
    contexts = {
        "pat-1": PatientContext("pat-1", ("hypertension", "diabetes")),
        "pat-2": PatientContext("pat-2", ()),
    }
    readings = [
        bp_reading(190, 100),  # crisis: critical tier of an upper limit
        bp_reading(85, 60, at=T0 + timedelta(minutes=1)),  # low BP: high tier of a lower limit
        bp_reading(120, 80, at=T0 + timedelta(minutes=2)),
        single(Metric.GLUCOSE, "glucose", 50),  # level 2 hypoglycaemia: critical, lower
        single(Metric.GLUCOSE, "glucose", 300, at=T0 + timedelta(minutes=3)),
        single(Metric.WEIGHT, "weight", 80),  # no threshold rule watches weight
        single(Metric.GLUCOSE, "glucose", 50, patient="pat-2"),  # not in diabetes program
    ]
    assert engine.thresholds(readings, contexts).interpretations == [
        "HH",
        "L",
        "N",
        "LL",
        "H",
        None,
        None,
    ]
    # Interpretation keeps no state: nothing was added to the engine.
    assert engine.patients == 0


def test_contexts_with_equal_programs_and_overrides_share_one_plan() -> None:
    engine = Engine(RuleBook.builtin())
    a = PatientContext("pat-a", ("hypertension",), {"htn.low_bp": {"systolic_below": 95}})
    b = PatientContext("pat-b", ("hypertension",), {"htn.low_bp": {"systolic_below": 95.0}})
    c = PatientContext("pat-c", ("hypertension",), {"htn.low_bp": {"systolic_below": 100.0}})
    assert a.key is b.key
    assert engine.plan(a) is engine.plan(b)
    assert engine.plan(c) is not engine.plan(a)
    assert PatientContext("pat-d", ("hypertension",)).key is not a.key


def test_one_batch_mixes_overridden_and_default_limits_of_one_rule() -> None:
    # Overridden parameters travel per reading (rules/kinds/base.py, Kind.varying): in one
    # batch, each patient's readings meet that patient's own limit, and say so.
    stage2 = "htn.stage2_persistent"
    contexts = {
        "pat-a": PatientContext("pat-a", ("hypertension",)),
        "pat-b": PatientContext("pat-b", ("hypertension",), {stage2: {"systolic_at_least": 150}}),
    }
    engine = Engine(BOOK)
    batch = [
        bp(sys_, 80, hours, patient)
        for hours in (0, 1, 2)
        for patient, sys_ in (("pat-a", 145), ("pat-b", 145))
    ]
    result = engine.step(batch, contexts)
    assert [(c.patient_id, c.rule_id) for c in result.candidates] == [("pat-a", stage2)]
    assert "140" in result.candidates[0].explanation

    later = [bp(155, 80, hours, "pat-b") for hours in (3, 4, 5)]
    [cand] = engine.step(later, contexts).candidates
    assert (cand.patient_id, cand.rule_id) == ("pat-b", stage2)
    assert "150" in cand.explanation
    assert "140" not in cand.explanation
