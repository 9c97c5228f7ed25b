"""Alert policy: rules propose candidates, the policy decides what happens. Pure.

One open episode per patient and rule: a candidate for a rule that already has an
open (or acknowledged) episode escalates it when more severe, otherwise it is
recorded as a recurrence. Only a new episode notifies the patient by SMS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rules.candidate import AlertCandidate
from rules.spec import Severity

from .lifecycle import Action, AlertState, next_state


@dataclass(frozen=True, slots=True)
class Episode:
    """An alert episode that is not resolved."""

    alert_id: int
    patient_id: str
    rule_id: str
    severity: Severity
    state: AlertState


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    candidate: AlertCandidate
    episode: Episode | None
    new_state: AlertState
    notify_patient: bool


EpisodeKey = tuple[str, str]


def decide(
    candidates: Iterable[AlertCandidate], episodes: Mapping[EpisodeKey, Episode]
) -> list[Decision]:
    """Decide, in order, what each candidate does to the episodes of its patient and rule.

    Candidates of one batch for the same patient and rule fold into one episode.
    """
    current: dict[EpisodeKey, Episode | None] = dict(episodes)
    pending_open: set[EpisodeKey] = set()
    decisions: list[Decision] = []
    for cand in candidates:
        key = (cand.patient_id, cand.rule_id)
        episode = current.get(key)
        if episode is None and key not in pending_open:
            decisions.append(Decision(Action.OPEN, cand, None, next_state(None, Action.OPEN), True))
            pending_open.add(key)
            continue
        if episode is None:
            # A second candidate in the same batch as the one that opens the episode.
            decisions.append(Decision(Action.RECUR, cand, None, AlertState.OPEN, False))
            continue
        action = Action.ESCALATE if cand.severity > episode.severity else Action.RECUR
        new_state = next_state(episode.state, action)
        decisions.append(Decision(action, cand, episode, new_state, False))
        if action is Action.ESCALATE:
            current[key] = Episode(
                episode.alert_id, episode.patient_id, episode.rule_id, cand.severity, new_state
            )
    return decisions
