"""The alert lifecycle: every allowed transition, in one table."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class AlertState(enum.StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Action(enum.StrEnum):
    OPEN = "open"
    ESCALATE = "escalate"
    RECUR = "recur"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"


class InvalidTransition(ValueError):
    """The action is not allowed from the alert's current state."""


# (state before, action) -> state after. ``None`` stands for "no episode yet".
TRANSITIONS: Mapping[tuple[AlertState | None, Action], AlertState] = MappingProxyType(
    {
        (None, Action.OPEN): AlertState.OPEN,
        (AlertState.OPEN, Action.ESCALATE): AlertState.OPEN,
        (AlertState.OPEN, Action.RECUR): AlertState.OPEN,
        (AlertState.OPEN, Action.ACKNOWLEDGE): AlertState.ACKNOWLEDGED,
        (AlertState.OPEN, Action.RESOLVE): AlertState.RESOLVED,
        # A worse value while acknowledged re-opens the alert for the nurse's attention.
        (AlertState.ACKNOWLEDGED, Action.ESCALATE): AlertState.OPEN,
        (AlertState.ACKNOWLEDGED, Action.RECUR): AlertState.ACKNOWLEDGED,
        (AlertState.ACKNOWLEDGED, Action.RESOLVE): AlertState.RESOLVED,
    }
)


def next_state(state: AlertState | None, action: Action) -> AlertState:
    """The state after ``action``, or ``InvalidTransition``."""
    try:
        return TRANSITIONS[(state, action)]
    except KeyError:
        before = state.value if state else "no episode"
        raise InvalidTransition(f"cannot {action.value} an alert that is {before}") from None
