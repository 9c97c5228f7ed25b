"""The alert lifecycle table and the policy that turns candidates into decisions."""

from __future__ import annotations

import pytest

from alerts import Action, AlertState, Episode, InvalidTransition, decide, next_state
from rules import Engine, PatientContext, Severity
from tests.helpers import bp

CTX = {"pat-1": PatientContext("pat-1")}


def candidates(*readings):  # type: ignore[no-untyped-def]
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
