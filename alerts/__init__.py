"""Alerts: lifecycle, policy, delivery channels and workers."""

from .lifecycle import Action, AlertState, InvalidTransition, next_state
from .policy import Decision, Episode, decide

__all__ = [
    "Action",
    "AlertState",
    "Decision",
    "Episode",
    "InvalidTransition",
    "decide",
    "next_state",
]
