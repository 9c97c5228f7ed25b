"""Alerts: lifecycle, policy, delivery channels and workers."""

from .lifecycle import Action, AlertState, next_state
from .policy import Decision, Episode, Snooze, SnoozeCaps, decide

__all__ = [
    "Action",
    "AlertState",
    "Decision",
    "Episode",
    "Snooze",
    "SnoozeCaps",
    "decide",
    "next_state",
]
