"""Rule specifications: declarative data, one per clinical rule, grouped into care programs."""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from rpm.domain import Metric


class Severity(enum.IntEnum):
    """Alert severity; higher is more urgent. Stored by name."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4


COMPARATORS: Mapping[str, Callable[[float, float], bool]] = MappingProxyType(
    {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
)


@dataclass(frozen=True, slots=True)
class Condition:
    """``component op params[param]``, e.g. systolic > systolic_above."""

    component: str
    op: str
    param: str

    def __post_init__(self) -> None:
        if self.op not in COMPARATORS:
            raise ValueError(f"unknown comparator {self.op!r}")


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule of a care program. ``params`` are the clinician-tunable numbers.

    A threshold rule fires when any of its conditions holds.
    """

    id: str
    kind: str
    program: str
    metric: Metric
    title: str
    severity: Severity
    params: Mapping[str, float]
    source: str
    conditions: tuple[Condition, ...] = ()
    advice: str = ""

    def with_overrides(self, overrides: Mapping[str, float]) -> RuleSpec:
        """The same rule with a patient's parameter overrides applied (unknown names refused)."""
        unknown = set(overrides) - set(self.params)
        if unknown:
            raise ValueError(f"rule {self.id} has no parameters {sorted(unknown)}")
        if not overrides:
            return self
        merged = {**self.params, **overrides}
        return RuleSpec(
            self.id,
            self.kind,
            self.program,
            self.metric,
            self.title,
            self.severity,
            MappingProxyType(merged),
            self.source,
            self.conditions,
            self.advice,
        )


@dataclass(frozen=True, slots=True)
class Program:
    id: str
    title: str
    rules: tuple[RuleSpec, ...] = field(default_factory=tuple)
