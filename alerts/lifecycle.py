"""The alert lifecycle: every allowed transition, in one table.

An alert episode is ``open`` (needs a nurse), ``acknowledged`` (a nurse is on it) or
``resolved``. ``TRANSITIONS`` lists every (state, action) pair that is allowed and the
state it leads to; ``ACTIONS`` says who may take each action and whether it needs a note.
Every transition except a recurrence is written to ``alert_events`` with who and when.

- ``open``: a rule fired and no episode of that patient and its group is unresolved.
- ``recur``: the rule fired again; counted on the episode, not audited one by one.
- ``join``: another rule of the episode's group (or one that fired on the same reading)
  fired: added to the episode's contributions, audited; the state does not change.
- ``late_evidence``: a reading measured before the episode was resolved (or, more severe,
  before it was acknowledged) arrived afterwards: recorded on the episode, audited, the
  state unchanged; nobody is notified and no escalation starts.
- ``evidence_entered_in_error``: a reading that is evidence of the episode was marked
  entered-in-error, and other evidence remains (or the episode is resolved): recorded on the
  episode, audited, the state unchanged (``alerts.retraction``).
- ``withdraw``: every reading that was evidence of an unresolved episode was marked
  entered-in-error: the system resolves it, saying so (``alerts.retraction``).
- ``escalate``: the rule fired more severely; re-opens an acknowledged episode.
- ``escalate_tier``: nobody acknowledged in time; the next on-call tier was sent an SMS.
- ``nobody_on_call``: an escalation was due and nobody could be reached; tried again later.
- ``renotify``: acknowledged, but the rule kept firing for ``RPM_RENOTIFY_AFTER_MIN``
  after the acknowledgement: back to open for the nurse's attention, escalation restarts.
- ``acknowledge``: a nurse is on it; escalation stops.
- ``resolve``: a nurse closes the episode, with a note saying what was done.
- ``auto_resolve``: the rule's condition has been clear for its ``auto_resolve_after_hours``.
- ``assign``: a staff member owns the episode (state unchanged).
- ``snooze`` / ``unsnooze``: quiet this patient's alerts of this rule for a while, up to the
  severity of this episode (state unchanged; see ``alerts.policy``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from rpm.domain.errors import InvalidTransition, NoteRequired


class AlertState(enum.StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Action(enum.StrEnum):
    OPEN = "open"
    ESCALATE = "escalate"
    RECUR = "recur"
    JOIN = "join"
    LATE_EVIDENCE = "late_evidence"
    EVIDENCE_ENTERED_IN_ERROR = "evidence_entered_in_error"
    WITHDRAW = "withdraw"
    ESCALATE_TIER = "escalate_tier"
    NOBODY_ON_CALL = "nobody_on_call"
    RENOTIFY = "renotify"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"
    AUTO_RESOLVE = "auto_resolve"
    ASSIGN = "assign"
    SNOOZE = "snooze"
    UNSNOOZE = "unsnooze"


class Actor(enum.StrEnum):
    """Who may take an action: the system (rules, timers) or a staff member."""

    SYSTEM = "system"
    STAFF = "staff"


@dataclass(frozen=True, slots=True)
class ActionRule:
    by: Actor
    note_required: bool = False


_OPEN, _ACK, _RESOLVED = AlertState.OPEN, AlertState.ACKNOWLEDGED, AlertState.RESOLVED

# (state before, action) -> state after. ``None`` stands for "no episode yet".
TRANSITIONS: Mapping[tuple[AlertState | None, Action], AlertState] = MappingProxyType(
    {
        (None, Action.OPEN): _OPEN,
        (_OPEN, Action.ESCALATE): _OPEN,
        # A worse value while acknowledged re-opens the alert for the nurse's attention.
        (_ACK, Action.ESCALATE): _OPEN,
        (_OPEN, Action.RECUR): _OPEN,
        (_ACK, Action.RECUR): _ACK,
        (_OPEN, Action.JOIN): _OPEN,
        (_ACK, Action.JOIN): _ACK,
        # Measured before the resolution (or the acknowledgement) it arrived after.
        (_OPEN, Action.LATE_EVIDENCE): _OPEN,
        (_ACK, Action.LATE_EVIDENCE): _ACK,
        (_RESOLVED, Action.LATE_EVIDENCE): _RESOLVED,
        # A reading the episode cites was marked entered-in-error (alerts.retraction).
        (_OPEN, Action.EVIDENCE_ENTERED_IN_ERROR): _OPEN,
        (_ACK, Action.EVIDENCE_ENTERED_IN_ERROR): _ACK,
        (_RESOLVED, Action.EVIDENCE_ENTERED_IN_ERROR): _RESOLVED,
        (_OPEN, Action.WITHDRAW): _RESOLVED,
        (_ACK, Action.WITHDRAW): _RESOLVED,
        (_OPEN, Action.ESCALATE_TIER): _OPEN,
        (_OPEN, Action.NOBODY_ON_CALL): _OPEN,
        (_ACK, Action.RENOTIFY): _OPEN,
        (_OPEN, Action.ACKNOWLEDGE): _ACK,
        (_OPEN, Action.RESOLVE): _RESOLVED,
        (_ACK, Action.RESOLVE): _RESOLVED,
        (_OPEN, Action.AUTO_RESOLVE): _RESOLVED,
        (_ACK, Action.AUTO_RESOLVE): _RESOLVED,
        (_OPEN, Action.ASSIGN): _OPEN,
        (_ACK, Action.ASSIGN): _ACK,
        (_OPEN, Action.SNOOZE): _OPEN,
        (_ACK, Action.SNOOZE): _ACK,
        (_OPEN, Action.UNSNOOZE): _OPEN,
        (_ACK, Action.UNSNOOZE): _ACK,
    }
)

ACTIONS: Mapping[Action, ActionRule] = MappingProxyType(
    {
        Action.OPEN: ActionRule(Actor.SYSTEM),
        Action.ESCALATE: ActionRule(Actor.SYSTEM),
        Action.RECUR: ActionRule(Actor.SYSTEM),
        Action.JOIN: ActionRule(Actor.SYSTEM),
        Action.LATE_EVIDENCE: ActionRule(Actor.SYSTEM),
        Action.EVIDENCE_ENTERED_IN_ERROR: ActionRule(Actor.SYSTEM),
        Action.WITHDRAW: ActionRule(Actor.SYSTEM),
        Action.ESCALATE_TIER: ActionRule(Actor.SYSTEM),
        Action.NOBODY_ON_CALL: ActionRule(Actor.SYSTEM),
        Action.RENOTIFY: ActionRule(Actor.SYSTEM),
        Action.AUTO_RESOLVE: ActionRule(Actor.SYSTEM),
        Action.ACKNOWLEDGE: ActionRule(Actor.STAFF),
        # What was done for the patient belongs in the record: a nurse resolves with a note.
        Action.RESOLVE: ActionRule(Actor.STAFF, note_required=True),
        Action.ASSIGN: ActionRule(Actor.STAFF),
        Action.SNOOZE: ActionRule(Actor.STAFF),
        Action.UNSNOOZE: ActionRule(Actor.STAFF),
    }
)


def next_state(state: AlertState | None, action: Action) -> AlertState:
    """The state after ``action``, or ``InvalidTransition``."""
    try:
        return TRANSITIONS[(state, action)]
    except KeyError:
        before = state.value if state else "no episode"
        raise InvalidTransition(f"cannot {action.value} an alert that is {before}") from None


def staff_transition(state: AlertState, action: Action, note: str | None) -> AlertState:
    """A staff member's action: allowed from ``state``, by staff, with its note if required."""
    rule = ACTIONS[action]
    if rule.by is not Actor.STAFF:
        raise InvalidTransition(f"{action.value} is done by the system, not by staff")
    if rule.note_required and not (note and note.strip()):
        raise NoteRequired(f"{action.value} needs a note saying what was done")
    return next_state(state, action)
