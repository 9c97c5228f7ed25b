"""A patient's rules, compiled: which rules each metric's readings trigger, and the
planner that compiles them from the rule book and the patient's overrides."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rpm.domain import Metric

from .buffers import Rows
from .kinds import KINDS
from .programs import RuleBook
from .spec import RuleSpec

log = logging.getLogger(__name__)


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


def differ(rule: RuleSpec, other: RuleSpec) -> frozenset[str]:
    """The params whose values differ between a rule and its overridden version."""
    return frozenset(k for k, v in other.params.items() if rule.params.get(k) != v)


class Planner:
    """Patients' plans from one version of the rule book: one per distinct context, and
    one overridden rule per (rule, overrides), shared by the plans that hold it."""

    def __init__(self, book: RuleBook) -> None:
        self.book = book
        self.plans: dict[str, Plan] = {}  # by PatientContext.key
        # (rule, overrides) -> the overridden rule: plans that differ in other programs
        # share it, so its readings are evaluated together
        self._overridden: dict[tuple[int, tuple[tuple[str, float], ...]], RuleSpec] = {}
        # id(overridden rule) -> (it, the rule it overrides): evaluated with that rule's
        # readings, its parameters per reading, when the kind reads them so (``varying``)
        self.shared: dict[int, tuple[RuleSpec, RuleSpec]] = {}
        # id(rule) -> the rule (kept so its id is not reused) and the metrics it watches
        self._watched: dict[int, tuple[RuleSpec, frozenset[Metric]]] = {}
        spans = [KINDS[r.kind].lookback_s(r) for p in book.programs.values() for r in p.rules]
        self.lookback_s = max([0.0, *spans])  # how far back any rule reads

    def plan(self, context: PatientContext) -> Plan:
        key = context.key
        plan = self.plans.get(key)
        if plan is None:
            rules = []
            for rule in self.book.rules_for(context.programs):
                overrides = context.overrides.get(rule.id)
                if not overrides:
                    rules.append(rule)
                    continue
                same = (id(rule), tuple(sorted(overrides.items())))
                overridden = self._overridden.get(same)
                if overridden is None:
                    try:
                        overridden = self._overridden[same] = rule.with_overrides(overrides)
                    except ValueError as exc:
                        # The program changed under a stored override: keep the default rule.
                        log.warning("override ignored for patient=%s: %s", context.patient_id, exc)
                        overridden = rule
                    if overridden is not rule and differ(rule, overridden) <= (
                        KINDS[rule.kind].varying(rule)
                    ):
                        self.shared[id(overridden)] = (overridden, rule)
                rules.append(overridden)
            plan = self.plans[key] = compile_plan(rules)
        return plan

    def watched(self, rule: RuleSpec) -> frozenset[Metric]:
        """The metrics whose readings the rule reads."""
        watched = self._watched.get(id(rule))
        if watched is None:
            watched = self._watched[id(rule)] = (rule, KINDS[rule.kind].watched(rule))
        return watched[1]
