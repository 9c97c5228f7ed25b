"""Clinical rules: specs as data, pure vectorised evaluators, and the streaming engine."""

from .candidate import AlertCandidate
from .engine import Clear, Engine, PatientContext, StepResult
from .programs import RuleBook
from .spec import RuleSpec, Severity

__all__ = [
    "AlertCandidate",
    "Clear",
    "Engine",
    "PatientContext",
    "RuleBook",
    "RuleSpec",
    "Severity",
    "StepResult",
]
