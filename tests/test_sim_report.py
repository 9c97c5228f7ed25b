"""The simulation report's maths on hand-made data: percentiles, loss, ground-truth matching."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from simulators.clock import SimClock
from simulators.efficacy import Verdict
from simulators.report import (
    Observed,
    ObservedAlert,
    SentPayload,
    build_report,
    match_truth,
    percentile,
    render,
    to_json,
)
from simulators.scenarios import GroundTruth

pytestmark = pytest.mark.pure

T0 = datetime(2026, 11, 20, tzinfo=UTC)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def alert(
    patient: str, rule: str, opened_h: float, last_h: float | None = None, wall: float = 0.0
) -> ObservedAlert:
    return ObservedAlert(patient, rule, wall, h(opened_h), h(last_h or opened_h), None)


def truth(patient: str, began_h: float, rules: set[str], scenario: str = "crisis") -> GroundTruth:
    return GroundTruth(patient, scenario, "hypertensive_crisis", h(began_h), frozenset(rules))


def test_percentiles_interpolate_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0


def test_matching_counts_detection_delay_and_false_alerts() -> None:
    cases = [
        truth("a", 10, {"bp.hypertensive_crisis"}),
        truth("b", 20, {"bp.hypertensive_crisis"}),
        truth("c", 5, {"bp.hypertensive_crisis"}),  # never detected
    ]
    alerts = [
        alert("a", "bp.hypertensive_crisis", 12),  # 2 h after onset
        alert("a", "htn.stage2_persistent", 13),  # not a detecting rule: false
        alert("b", "bp.hypertensive_crisis", 26),  # 6 h
        alert("b", "bp.hypertensive_crisis", 8),  # before onset, never recurred after: false
        alert("z", "spo2.below_88", 3),  # a patient without an event: false
    ]
    results, true_alerts, false_by_rule = match_truth(cases, alerts)
    (crisis,) = results
    assert (crisis.patients, crisis.detected) == (3, 2)
    assert sorted(crisis.delays_s) == [2 * 3600, 6 * 3600]
    assert true_alerts == 2
    assert false_by_rule == {
        "htn.stage2_persistent": 1,
        "bp.hypertensive_crisis": 1,
        "spo2.below_88": 1,
    }


def test_an_episode_open_before_onset_that_recurs_after_counts_without_a_delay() -> None:
    cases = [truth("a", 10, {"htn.stage2_persistent"}, scenario="htn")]
    alerts = [alert("a", "htn.stage2_persistent", 4, last_h=11)]
    (result,), true_alerts, false_by_rule = match_truth(cases, alerts)
    assert result.detected == 1
    assert result.delays_s == ()
    assert true_alerts == 1
    assert false_by_rule == {}


def test_report_counts_loss_quarantine_duplicates_and_latency() -> None:
    k1 = ("d1", "blood_pressure", h(1))
    k2 = ("d1", "blood_pressure", h(2))
    k3 = ("d2", "spo2", h(3))
    sent = [
        SentPayload("stored", None, 1, (k1,), 100.0, "mqtt"),
        SentPayload("stored", None, 1, (k2,), 101.0, "mqtt"),
        SentPayload("stored", None, 1, (k3,), 102.0, "http"),
        SentPayload("duplicate", None, 1, (k1,), 103.0, "mqtt"),  # a resend of k1
        SentPayload("quarantined", "malformed", 0, (), 104.0, "mqtt"),
        SentPayload("quarantined", "unknown_device", 1, (), 105.0, "http"),
        SentPayload("stored", None, 1, (("d3", "weight", h(4)),), None, "mqtt"),  # not sent
    ]
    observed = Observed(
        stored={k1: 100.05, k2: 101.2},  # k3 lost
        quarantined={"malformed": 1},
        duplicates=1,
        alerts=[
            ObservedAlert("p1", "bp.hypertensive_crisis", 101.5, h(2), h(2), k2),
        ],
    )
    cases = [truth("p1", 1.5, {"bp.hypertensive_crisis"})]
    r = build_report(sent, cases, observed)
    assert (r.sent, r.send_failures, r.readings_sent) == (6, 1, 5)
    assert (r.expected_stored, r.stored, r.lost) == (3, 2, 1)
    assert r.quarantined_expected == {"malformed": 1, "unknown_device": 1}
    assert r.quarantined == {"malformed": 1}
    assert (r.duplicates_expected, r.duplicates) == (1, 1)
    # First publish of k1 was at 100.0, not its duplicate's 103.0.
    assert r.publish_to_stored_ms.count == 2
    assert r.publish_to_stored_ms.p50 == pytest.approx((50 + 200) / 2)
    assert r.publish_to_alert_ms.p99 == pytest.approx(500)
    assert r.sensitivity == 1.0
    assert r.ppv == 1.0
    assert r.detection_delay_median_s == pytest.approx(1800)
    assert r.readings_per_s == pytest.approx(2 / 1.2)
    doc = to_json(r)
    for key in (
        "sent",
        "stored",
        "lost",
        "quarantined_expected",
        "quarantined",
        "sensitivity",
        "ppv",
        "detection_delay_median_s",
        "readings_per_s",
        "publish_to_alert_p99_ms",
    ):
        assert key in doc
    assert (doc["quarantined_expected"], doc["quarantined"], doc["lost"]) == (2, 1, 1)
    text = render(r)
    assert "unknown_device" in text
    assert "lost" in text


def test_no_truth_and_no_alerts_gives_no_ratio_rather_than_a_made_up_one() -> None:
    r = build_report([], [], Observed({}, {}, None, []))
    assert r.sensitivity is None
    assert r.ppv is None
    assert r.detection_delay_median_s is None
    assert to_json(r)["publish_to_alert_p99_ms"] is None


def test_replay_clock_never_puts_simulated_time_ahead_of_the_wall_clock() -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    end = now + timedelta(seconds=60)
    start = end - timedelta(days=3)
    clock = SimClock.replay(start, end, 60, now)
    assert clock.speed == pytest.approx(3 * 86400 / 60)
    assert clock.wall(start) == now
    assert clock.wall(end) == end
    for frac in (0.0, 0.3, 0.99, 1.0):
        sim = start + (end - start) * frac
        assert clock.wall(sim) >= sim
        assert clock.sim(clock.wall(sim)) == sim
    # Enrolment took longer than planned: the replay starts later, never earlier.
    late = SimClock.replay(start, end, 60, now + timedelta(seconds=30))
    assert late.wall(end) > end
    with pytest.raises(ValueError, match="ahead"):
        SimClock(start, now, 0.5)


def test_load_mode_paces_by_readings_and_never_sends_before_a_payloads_time() -> None:
    from simulators.runner import Pace, due_times
    from simulators.traffic import Plan, Send, SimConfig

    t0 = T0.timestamp()

    def send(at: datetime, readings: int) -> Send:
        return Send(at, "d", "mqtt", "canonical", b"{}", "stored", readings, ())

    sends = (send(h(-2), 1), send(h(-1), 3), send(h(-0.5), 1), send(h(1), 1))
    plan = Plan(SimConfig(1, h(-3), h(1)), (), sends, ())
    clock = SimClock(T0, T0, 1.0)
    due = due_times(plan, Pace(rate=2.0), clock, t0)
    # 2 readings/s: the second payload after 1 reading (0.5 s), the third after 4 (2 s);
    # the last is stamped an hour ahead, so it waits for its own time.
    assert due[:3] == [t0, t0 + 0.5, t0 + 2.0]
    assert due[3] == h(1).timestamp()


def test_the_report_shows_alerts_classified_and_non_actionable_ones_with_an_example() -> None:
    verdicts = [
        Verdict("p1", "bp.hypertensive_crisis", h(2), "scenario", "crisis", "began"),
        Verdict("p2", "hf.weight_missing", h(40), "label", "skips_days", "no weight for 37 h"),
        Verdict("p3", "hf.over_diuresis", h(9), "non_actionable", "", "noise", {"weight": 80.1}),
        Verdict("p4", "hf.over_diuresis", h(5), "non_actionable", "", "noise", {"weight": 70.0}),
        Verdict("p5", "news2.partial", h(7), "non_actionable", "", "low evening systolic"),
    ]
    r = build_report([], [], Observed({}, {}, None, []), verdicts=verdicts)
    assert r.classified == {"scenario": 1, "label": 1, "non_actionable": 3}
    count, example = r.nonactionable["hf.over_diuresis"]
    assert count == 2
    assert example.startswith("p4 at 2026-11-20 05:00 UTC {'weight': 70.0}: noise")  # earliest
    assert list(r.nonactionable) == ["hf.over_diuresis", "news2.partial"]  # most first
    doc = to_json(r)
    assert doc["alerts_by_class"] == r.classified
    assert doc["nonactionable_by_rule"] == {"hf.over_diuresis": 2, "news2.partial": 1}
    assert doc["nonactionable_examples"]["news2.partial"].startswith("p5 at")
    text = render(r)
    assert "1 scenario, 1 label / 3" in text
    assert "non-actionable: hf.over_diuresis" in text
