"""The alert lifecycle table and the policy that turns candidates into decisions, snoozes
included."""

from __future__ import annotations

from datetime import timedelta

import pytest

from alerts import Action, AlertState, Episode, decide, next_state
from alerts.policy import EpisodeKey, Snooze, SnoozeCaps
from rpm.domain import AlertCandidate, Metric, Severity
from rpm.domain.errors import InvalidTransition, SnoozeTooLong
from rules.engine import Engine, PatientContext
from tests.helpers import T0, AcceptedReading, bp, single

pytestmark = pytest.mark.pure

CTX = {"pat-1": PatientContext("pat-1")}


def candidates(*readings: AcceptedReading) -> list[AlertCandidate]:
    return Engine().step(list(readings), CTX).candidates


def test_first_candidate_opens_an_episode_and_notifies_the_patient() -> None:
    [d] = decide(candidates(bp(190, 100)), {})
    assert d.action is Action.OPEN
    assert d.new_state is AlertState.OPEN
    assert d.notify_patient


def test_candidates_of_one_batch_fold_into_one_episode() -> None:
    ds = decide(candidates(bp(190, 100), bp(200, 100, device="dev-2")), {})
    assert [d.action for d in ds] == [Action.OPEN, Action.RECUR]
    assert [d.notify_patient for d in ds] == [True, False]


def test_a_candidate_for_an_open_episode_recurs_without_notifying() -> None:
    ep = Episode(7, "pat-1", "bp.hypertensive_crisis", Severity.CRITICAL, AlertState.ACKNOWLEDGED)
    [d] = decide(candidates(bp(190, 100)), {("pat-1", "bp.hypertensive_crisis"): ep})
    assert d.action is Action.RECUR
    assert d.new_state is AlertState.ACKNOWLEDGED
    assert not d.notify_patient


def test_a_more_severe_candidate_escalates_and_reopens_an_acknowledged_episode() -> None:
    ep = Episode(7, "pat-1", "bp.hypertensive_crisis", Severity.HIGH, AlertState.ACKNOWLEDGED)
    [d] = decide(candidates(bp(190, 100)), {("pat-1", "bp.hypertensive_crisis"): ep})
    assert d.action is Action.ESCALATE
    assert d.new_state is AlertState.OPEN


@pytest.mark.parametrize(
    ("state", "action", "after"),
    [
        (AlertState.OPEN, Action.ACKNOWLEDGE, AlertState.ACKNOWLEDGED),
        (AlertState.OPEN, Action.RESOLVE, AlertState.RESOLVED),
        (AlertState.ACKNOWLEDGED, Action.RESOLVE, AlertState.RESOLVED),
    ],
)
def test_allowed_transitions(state: AlertState, action: Action, after: AlertState) -> None:
    assert next_state(state, action) is after


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (AlertState.RESOLVED, Action.ACKNOWLEDGE),
        (AlertState.RESOLVED, Action.RESOLVE),
        (AlertState.ACKNOWLEDGED, Action.ACKNOWLEDGE),
        (None, Action.RESOLVE),
    ],
)
def test_forbidden_transitions_raise(state: AlertState | None, action: Action) -> None:
    with pytest.raises(InvalidTransition):
        next_state(state, action)


# --- snoozes: per patient and rule, up to a severity; a worse candidate breaks through --

DM = {"pat-1": PatientContext("pat-1", ("diabetes",))}
HIGH_GLUCOSE = ("pat-1", "dm.glucose_high")
LOW_GLUCOSE = ("pat-1", "dm.glucose_low")
UNTIL = T0 + timedelta(hours=2)


def glucose(*values: float) -> list[AlertCandidate]:
    readings = [
        single(Metric.GLUCOSE, "glucose", v, at=T0 + timedelta(minutes=i))
        for i, v in enumerate(values)
    ]
    return Engine().step(readings, DM).candidates


def snoozed(rule_id: str, up_to: Severity) -> dict[EpisodeKey, Snooze]:
    return {("pat-1", rule_id): Snooze("pat-1", rule_id, UNTIL, up_to, "nurse-kim")}


def test_a_snoozed_kind_opens_silently_and_says_why() -> None:
    [d] = decide(glucose(300), {}, snoozed("dm.glucose_high", Severity.MEDIUM))
    assert d.action is Action.OPEN
    assert not d.notify_patient
    assert not d.start_escalation
    assert d.suppressed is not None
    assert "snoozed until" in d.suppressed
    assert "nurse-kim" in d.suppressed


def test_snoozing_high_glucose_leaves_low_glucose_alerting() -> None:
    ds = decide(glucose(300, 60), {}, snoozed("dm.glucose_high", Severity.MEDIUM))
    by_rule = {d.candidate.rule_id: d for d in ds}
    assert set(by_rule) == {"dm.glucose_high", "dm.glucose_low"}
    assert not by_rule["dm.glucose_high"].notify_patient
    low = by_rule["dm.glucose_low"]
    assert low.action is Action.OPEN
    assert low.notify_patient
    assert low.start_escalation
    assert low.suppressed is None


def test_a_more_severe_candidate_breaks_through_a_silent_episode() -> None:
    silent = Episode(9, "pat-1", "dm.glucose_high", Severity.MEDIUM, AlertState.OPEN, silenced=True)
    [d] = decide(glucose(450), {HIGH_GLUCOSE: silent}, snoozed("dm.glucose_high", Severity.MEDIUM))
    assert d.action is Action.ESCALATE
    assert d.candidate.severity is Severity.HIGH
    # The patient was never told about this episode: breaking through tells them now.
    assert d.notify_patient
    assert d.start_escalation
    assert d.suppressed is None


def test_breaking_through_in_the_batch_that_opened_silently() -> None:
    ds = decide(glucose(300, 450), {}, snoozed("dm.glucose_high", Severity.MEDIUM))
    assert [d.action for d in ds] == [Action.OPEN, Action.ESCALATE]
    assert [d.notify_patient for d in ds] == [False, True]
    assert [d.start_escalation for d in ds] == [False, True]
    assert ds[1].episode is None  # written by the same batch


def test_a_silent_episode_goes_live_on_the_first_candidate_after_the_snooze() -> None:
    silent = Episode(9, "pat-1", "dm.glucose_high", Severity.MEDIUM, AlertState.OPEN, silenced=True)
    [still] = decide(
        glucose(300), {HIGH_GLUCOSE: silent}, snoozed("dm.glucose_high", Severity.HIGH)
    )
    assert still.action is Action.RECUR
    assert not still.notify_patient
    assert not still.start_escalation
    live, again = decide(glucose(300, 310), {HIGH_GLUCOSE: silent}, {})
    assert live.action is Action.RECUR
    assert live.notify_patient
    assert live.start_escalation
    assert not again.notify_patient  # once
    assert not again.start_escalation


def test_a_snoozed_escalation_reopens_but_starts_no_escalation() -> None:
    acked = Episode(9, "pat-1", "dm.glucose_low", Severity.HIGH, AlertState.ACKNOWLEDGED)
    [d] = decide(glucose(50), {LOW_GLUCOSE: acked}, snoozed("dm.glucose_low", Severity.CRITICAL))
    assert d.action is Action.ESCALATE
    assert d.new_state is AlertState.OPEN
    assert not d.start_escalation
    assert d.suppressed is not None


def test_without_a_snooze_an_escalation_re_times_the_timer_and_a_recurrence_does_not() -> None:
    ep = Episode(7, "pat-1", "bp.hypertensive_crisis", Severity.HIGH, AlertState.OPEN)
    [d] = decide(candidates(bp(190, 100)), {("pat-1", "bp.hypertensive_crisis"): ep})
    assert d.start_escalation
    assert not d.notify_patient
    ep = Episode(7, "pat-1", "bp.hypertensive_crisis", Severity.CRITICAL, AlertState.OPEN)
    [d] = decide(candidates(bp(190, 100)), {("pat-1", "bp.hypertensive_crisis"): ep})
    assert not d.start_escalation


def test_snooze_caps_by_severity() -> None:
    caps = SnoozeCaps()
    caps.check(Severity.CRITICAL, timedelta(minutes=30))
    with pytest.raises(SnoozeTooLong, match="at most 30 min"):
        caps.check(Severity.CRITICAL, timedelta(minutes=31))
    caps.check(Severity.HIGH, timedelta(hours=4))
    with pytest.raises(SnoozeTooLong):
        caps.check(Severity.HIGH, timedelta(hours=4, seconds=1))
    caps.check(Severity.LOW, timedelta(hours=24))
    with pytest.raises(SnoozeTooLong):
        caps.check(Severity.MEDIUM, timedelta(hours=25))
    tighter = SnoozeCaps(
        {s: timedelta(minutes=15 if s is Severity.CRITICAL else 60) for s in Severity}
    )
    with pytest.raises(SnoozeTooLong):
        tighter.check(Severity.CRITICAL, timedelta(minutes=16))
