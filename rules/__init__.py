"""Clinical rules: specs as data, pure evaluators, and the engine step."""

from .candidate import AlertCandidate
from .engine import EngineState, PatientContext, step
from .programs import PROGRAMS, rules_for
from .spec import RuleSpec, Severity

__all__ = [
    "PROGRAMS",
    "AlertCandidate",
    "EngineState",
    "PatientContext",
    "RuleSpec",
    "Severity",
    "rules_for",
    "step",
]
