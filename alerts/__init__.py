"""Alerts: lifecycle, policy, delivery channels and workers."""

from .lifecycle import Action, AlertState, InvalidTransition, NoteRequired, next_state
from .policy import Decision, Episode, Snooze, SnoozeCaps, SnoozeTooLong, decide

__all__ = [
    "Action",
    "AlertState",
    "Decision",
    "Episode",
    "InvalidTransition",
    "NoteRequired",
    "Snooze",
    "SnoozeCaps",
    "SnoozeTooLong",
    "decide",
    "next_state",
]
