"""A patient's rules, compiled: which rules each metric's readings trigger."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rpm.domain import Metric

from .buffers import Rows
from .kinds import KINDS
from .spec import RuleSpec


@dataclass(frozen=True, slots=True)
class PatientContext:
    """The rule-relevant facts of a patient: programs and per-rule parameter overrides."""

    patient_id: str
    programs: tuple[str, ...] = ()
    overrides: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # What the plan depends on, computed once: the engine looks it up per reading. An
    # interned string: its hash is cached and equal keys are one object, so the lookup
    # neither hashes a nested tuple nor compares one.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key: tuple[object, ...] = (self.programs,)
        if self.overrides:
            # float(v) + 0.0: equal numbers have one repr (140 and 140.0, -0.0 and 0.0)
            frozen = tuple(
                sorted(
                    (r, tuple(sorted((k, float(v) + 0.0) for k, v in p.items())))
                    for r, p in self.overrides.items()
                )
            )
            key = (self.programs, frozen)
        object.__setattr__(self, "key", sys.intern(repr(key)))


@dataclass(frozen=True, slots=True)
class Plan:
    """A patient's rules, compiled: per metric, the rules its readings trigger."""

    rules: tuple[RuleSpec, ...]
    by_metric: Mapping[Metric, tuple[RuleSpec, ...]]


def compile_plan(rules: Iterable[RuleSpec]) -> Plan:
    rules = tuple(rules)
    by_metric: dict[Metric, list[RuleSpec]] = {}
    for rule in rules:
        for metric in KINDS[rule.kind].watched(rule):
            by_metric.setdefault(metric, []).append(rule)
    return Plan(rules, {m: tuple(r) for m, r in by_metric.items()})


def by_plan(plan_no: Rows, plans: Sequence[Plan]) -> list[tuple[Plan, Rows]]:
    """The readings of each plan (positions ascending), plans in order of first reading;
    ``plan_no`` is each reading's place in ``plans``."""
    if not len(plan_no):
        return []
    # a stable sort keeps each plan's positions ascending; no np.unique (its inverse and
    # first-index passes cost more than the grouping itself at a few hundred readings)
    order = np.argsort(plan_no, kind="stable")
    s = plan_no[order]
    parts = np.split(order, np.flatnonzero(s[1:] != s[:-1]) + 1)
    parts.sort(key=lambda part: int(part[0]))
    return [(plans[int(plan_no[part[0]])], part) for part in parts]
