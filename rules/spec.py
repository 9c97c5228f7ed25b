"""Rule specifications: declarative data, validated, grouped into care programs.

A program is a YAML (or JSON) document; ``parse_program`` validates it into a
``ProgramSpec``. Every rule names its kind (a registered evaluator, see
``rules.kinds``), the metric it watches, the clinician-tunable ``params`` and the
``source`` its defaults come from. Kind-specific checks (required parameters,
components that exist) run at parse time, so a bad spec is refused before it can
reach the engine.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rpm.domain import METRICS, Metric
from rpm.domain.severity import Severity, SeverityField

COMPARATORS: Mapping[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Condition(_Spec):
    """``component op params[param]``, e.g. ``systolic > systolic_above``."""

    component: str
    op: Literal[">", ">=", "<", "<="]
    param: str

    @property
    def rising(self) -> bool:
        """True when larger values are worse (the condition is an upper limit)."""
        return self.op in (">", ">=")


class Tier(_Spec):
    """A severity and the conditions (any of them) that put a reading in this tier."""

    severity: SeverityField
    any: tuple[Condition, ...] = Field(min_length=1)


class Band(_Spec):
    """A scoring band: values in ``[low, high)`` score ``points`` (open ends when omitted)."""

    low: float | None = None
    high: float | None = None
    points: int = Field(ge=0, le=3)


class Source(_Spec):
    metric: Metric
    component: str


class ScoredParameter(_Spec):
    """One parameter of a composite score: where its value may come from and its bands.

    With several sources (pulse from a cuff, an oximeter or a heart-rate monitor) the
    freshest value counts.
    """

    sources: tuple[Source, ...] = Field(min_length=1)
    bands: tuple[Band, ...] = Field(min_length=1)

    @property
    def label(self) -> str:
        return self.sources[0].component.replace("_", " ")


class ConfirmSpec(_Spec):
    """Confirm before paging: a first reading in one of ``severities`` asks the patient to
    rest and measure again within ``minutes``; the nurse is paged when the repeat still meets
    the rule, or when none is measured in time (``alerts.confirm``). Never on a critical tier.
    """

    minutes: float = Field(gt=0, le=240)
    # The tiers confirmed; empty: every tier of the rule below critical.
    severities: tuple[SeverityField, ...] = ()


# Confirmation needs a verdict on each reading by its own values: the repeat reading alone
# must say whether the rule still holds.
CONFIRMABLE_KINDS = frozenset({"threshold"})
CONFIRM_PARAM = "confirm_minutes"  # a patient's override of ``confirm.minutes``


class RuleSpec(_Spec):
    """One rule of a care program.

    ``params`` are the numbers a clinician may override per patient; everything else
    is the rule's structure. Which fields a kind reads is documented with the kind.
    """

    id: str = Field(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
    kind: str
    metric: Metric
    title: str = Field(min_length=3)
    source: str = Field(min_length=10)
    advice: str = ""
    # The patient advice in other languages, by BCP 47 tag (e.g. "es"); English is ``advice``.
    advice_i18n: Mapping[str, str] = Field(default_factory=dict)
    # Resolve the alert by itself once the condition has been clear this long (None: never;
    # a nurse resolves it).
    auto_resolve_after_hours: float | None = Field(default=None, gt=0)
    severity: SeverityField | None = None
    tiers: tuple[Tier, ...] = ()
    component: str | None = None
    direction: Literal["rise", "fall"] | None = None
    params: Mapping[str, float] = Field(default_factory=dict)
    scored: tuple[ScoredParameter, ...] = ()
    score_tiers: tuple[Tier, ...] = ()
    program: str = ""
    # One episode per clinical event (docs/alerts.md, "One row per clinical event"): rules
    # of one patient with the same ``group`` share one episode (the same physiological
    # change, e.g. a week's weight gain seen by a change and a trend rule); None: the
    # rule's own id, one episode per rule.
    group: str | None = Field(default=None, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
    # A composite score (NEWS2): when another rule fires on the same reading, this rule's
    # finding joins that rule's episode (the same readings: one event).
    joins_reading: bool = False
    # Confirm before paging (``ConfirmSpec``); None: every firing pages as it comes.
    confirm: ConfirmSpec | None = None

    @model_validator(mode="after")
    def _kind_checks(self) -> RuleSpec:
        from .kinds import KINDS  # the registry imports this module

        kind = KINDS.get(self.kind)
        if kind is None:
            raise ValueError(f"unknown rule kind {self.kind!r}; known: {sorted(KINDS)}")
        missing = sorted(set(kind.required_params) - set(self.params))
        if missing:
            raise ValueError(f"{self.kind} rule {self.id} needs params {missing}")
        bad = sorted(k for k, v in self.params.items() if not math.isfinite(v))
        if bad:
            raise ValueError(f"rule {self.id}: params {bad} must be finite numbers")
        known = {c.name for c in METRICS[self.metric].components}
        for name in self.components_used():
            if name not in known:
                raise ValueError(f"{self.metric.value} has no component {name!r}")
        for param in self.params_used():
            if param not in self.params:
                raise ValueError(f"rule {self.id} refers to undefined param {param!r}")
        problems = kind.check(self) + self._confirm_problems()
        if problems:
            raise ValueError(f"rule {self.id}: " + "; ".join(problems))
        return self

    def _confirm_problems(self) -> list[str]:
        if self.confirm is None:
            return []
        if self.kind not in CONFIRMABLE_KINDS:
            return [
                f"confirm needs a rule judging each reading alone ({sorted(CONFIRMABLE_KINDS)})"
            ]
        tiers = {t.severity for t in self.tiers}
        problems = []
        if Severity.CRITICAL in self.confirm.severities:
            problems.append("a critical tier pages at once and cannot be confirmed")
        unknown = sorted(s.name.lower() for s in set(self.confirm.severities) - tiers)
        if unknown:
            problems.append(f"confirm names severities the rule has no tier of: {unknown}")
        if not self.confirmed_severities:
            problems.append("confirm: the rule has no tier below critical to confirm")
        return problems

    @property
    def confirmed_severities(self) -> frozenset[Severity]:
        """The severities whose first reading waits for a repeat (empty: none)."""
        if self.confirm is None:
            return frozenset()
        chosen = self.confirm.severities or tuple(t.severity for t in self.tiers)
        return frozenset(s for s in chosen if s < Severity.CRITICAL)

    def components_used(self) -> set[str]:
        used = {c.component for t in self.tiers for c in t.any}
        if self.component:
            used.add(self.component)
        return used

    def params_used(self) -> set[str]:
        return {c.param for t in (*self.tiers, *self.score_tiers) for c in t.any}

    @property
    def top_severity(self) -> Severity:
        levels = [t.severity for t in (*self.tiers, *self.score_tiers)]
        if self.severity is not None:
            levels.append(self.severity)
        return max(levels) if levels else Severity.LOW

    def with_overrides(self, overrides: Mapping[str, float]) -> RuleSpec:
        """The same rule with a patient's parameter overrides, validated like the original."""
        if not overrides:
            return self
        own = set(self.params) | ({CONFIRM_PARAM} if self.confirm is not None else set())
        unknown = set(overrides) - own
        if unknown:
            raise ValueError(f"rule {self.id} has no parameters {sorted(unknown)}")
        data = self.model_dump()
        params = {k: float(v) for k, v in overrides.items() if k != CONFIRM_PARAM}
        data["params"] = {**self.params, **params}
        if CONFIRM_PARAM in overrides:
            # The confirmation window, per patient, through the same override path.
            data["confirm"] = {**data["confirm"], "minutes": float(overrides[CONFIRM_PARAM])}
        return RuleSpec.model_validate(data)

    def p(self, name: str) -> float:
        return self.params[name]


# Rule fields added after programs were first stored, left out of the canonical form at
# their defaults (``ProgramSpec.canonical_json``).
_LATER_DEFAULTS: Mapping[str, object] = {"group": None, "joins_reading": False, "confirm": None}


class ProgramSpec(_Spec):
    """A care program: its rules and what they are for."""

    program: str = Field(pattern=r"^[a-z0-9_]+$")
    title: str
    description: str = ""
    # Rules of earlier programs (``general``) that this program switches off for its patients.
    disables: tuple[str, ...] = ()
    rules: tuple[RuleSpec, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> ProgramSpec:
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"program {self.program} repeats rule ids {dupes}")
        return self

    def canonical_json(self) -> bytes:
        """A stable serialisation: the stored form, and the input of ``digest``.

        The grouping fields are left out at their defaults, so a program that does not use
        them keeps the digest it had before they existed."""
        data = self.model_dump(mode="json")
        for rule in data["rules"]:
            for name, default in _LATER_DEFAULTS.items():
                if rule.get(name) == default:
                    del rule[name]
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()


def parse_program(document: Mapping[str, Any]) -> ProgramSpec:
    """Validate a program document (as loaded from YAML or JSON); raises ``ValueError``."""
    data = dict(document)
    name = data.get("program", "")
    if not isinstance(data.get("rules", []), list):
        raise ValueError("rules: a program's rules are a list")
    data["rules"] = [
        {**r, "program": name} if isinstance(r, dict) else r for r in data.get("rules", ())
    ]
    return ProgramSpec.model_validate(data)
