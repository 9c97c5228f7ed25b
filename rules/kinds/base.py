"""What every rule kind sees and returns.

A kind evaluates one rule for B readings at once (numpy and the compiled loops of
``rules.kernels``, no Python loop per reading). Its input is a ``Window``: the
readings' own values and, for each, the patient's history of that metric as a row of a
ring buffer (times sorted, ``inf`` where empty, the reading itself included), read in
place (``Window.store``). Its output is an ``Outcome``: a severity
per reading (0 = does not fire), whether the reading shows the condition is over
(for auto-resolve), and named numbers per reading that ``explain`` turns into
plain language for the nurse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt

from rpm.domain import DISPLAY_UNITS, METRICS, Metric

from ..kernels import OP_CODES, tier_levels
from ..spec import COMPARATORS, Condition, RuleSpec, Tier

F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
I8 = npt.NDArray[np.int8]

# Derived quantities (changes, slopes, deviations) are compared with this slack so
# that a value exactly at a threshold, as a clinician writes it in decimal, counts as
# reaching it despite binary floating point (82.0 - 81.1 = 0.8999999999999915).
EPS = 1e-9

HOUR = 3600.0
DAY = 86400.0

# (value, time) of the latest reading of (metric, component) at or before each reading,
# no older than `fresh` seconds; NaN where there is none
LatestOf = Callable[[Metric, str, float], tuple[F64, F64]]


# The history of a window's readings, found on first use (a kind that reads only the
# readings' own values never pays for it): a store of times (R, C) and values (R, C, K),
# and the row of each reading in it. Kinds hand the store to their compiled loops
# (``rules.kernels``), which read the ring buffers in place.
Store = tuple[F64, F64, npt.NDArray[np.intp]]
Gather = Callable[[], Store]


def given(times: F64, values: F64) -> Gather:
    """A history already at hand: reading i's is row i of ``times`` and ``values``."""
    rows = np.arange(times.shape[0])
    return lambda: (times, values, rows)


@dataclass(slots=True)
class Window:
    """B readings of one metric, evaluated under the same rule."""

    metric: Metric
    ts: F64  # (B,) measured time, epoch seconds
    current: F64  # (B, K) the readings' own values, NaN where a component is absent
    gather: Gather
    components: Mapping[str, int]
    latest_of: LatestOf
    # per-reading values of the rule's parameters that differ between the readings
    # (patients' overrides, evaluated together with the rule's other readings)
    params: Mapping[str, F64] = field(default_factory=dict)
    _held: Store | None = field(default=None, repr=False)

    def store(self) -> Store:
        """(times, values, rows): reading i's history is row ``rows[i]`` of the store;
        times ascending within a row (bar hidden places), ``inf`` where empty."""
        if self._held is None:
            self._held = self.gather()
        return self._held

    @property
    def times(self) -> F64:
        """(B, C) history times, a copy."""
        times, _, rows = self.store()
        return times[rows]

    @property
    def values(self) -> F64:
        """(B, C, K) history values, a copy."""
        _, values, rows = self.store()
        return values[rows]

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def p(self, rule: RuleSpec, name: str) -> float | F64:
        """A parameter: one number, or one per reading where overrides make them differ."""
        each = self.params.get(name)
        return rule.p(name) if each is None else each

    def value(self, component: str) -> F64:
        return self.current[:, self.components[component]]

    def component(self, component: str) -> int:
        """A component's place in the values' last axis."""
        return self.components[component]


@dataclass(slots=True)
class Outcome:
    severity: I8  # (B,) Severity value, 0 when the rule does not fire
    clear: Bools  # (B,) the reading shows the condition is over
    detail: dict[str, F64] = field(default_factory=dict)  # numbers for the explanation

    @classmethod
    def nothing(cls, n: int) -> Outcome:
        return cls(np.zeros(n, np.int8), np.zeros(n, np.bool_))


@dataclass(frozen=True, slots=True)
class Facts:
    """One fired reading, as scalars, for ``explain``."""

    measured_at: datetime
    values: Mapping[str, float]
    detail: Mapping[str, float]
    severity: int


class Kind(Protocol):
    name: str
    required_params: frozenset[str]

    def check(self, rule: RuleSpec) -> list[str]:
        """Problems a spec of this kind has beyond missing params (empty when fine)."""
        ...

    def lookback_s(self, rule: RuleSpec) -> float:
        """How much history (seconds before a reading) the rule reads."""
        ...

    def watched(self, rule: RuleSpec) -> frozenset[Metric]:
        """Metrics whose readings trigger an evaluation of the rule."""
        ...

    def evaluate(self, rule: RuleSpec, w: Window) -> Outcome: ...

    def varying(self, rule: RuleSpec) -> frozenset[str]:
        """Params ``evaluate`` reads per reading (``Window.p``): readings whose overrides
        change only these are evaluated with the rule's other readings."""
        ...

    def explain(self, rule: RuleSpec, facts: Facts) -> tuple[str, dict[str, object]]:
        """Plain-language explanation and structured evidence for one fired reading."""
        ...


class OwnMetric:
    """Mixin of the kinds that watch only their rule's own metric."""

    def watched(self, rule: RuleSpec) -> frozenset[Metric]:
        return frozenset({rule.metric})


def condition_params(rule: RuleSpec) -> frozenset[str]:
    """The params of a rule's tier conditions (the limits ``condition_holds`` compares)."""
    return frozenset(c.param for t in rule.tiers for c in t.any)


def directional_problems(rule: RuleSpec) -> list[str]:
    """What a rule about one component moving one way (change, trend, baseline) lacks."""
    if rule.component is None or rule.direction is None or rule.severity is None:
        return [f"a {rule.kind} rule needs component, direction and severity"]
    return []


def not_positive(rule: RuleSpec, *names: str) -> list[str]:
    """Params among ``names`` that are set (or required) but not above zero."""
    return [f"{n} must be positive" for n in names if rule.params.get(n, 0) <= 0]


# --- helpers shared by kinds ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conditions:
    """Tier conditions as the compiled loops take them, one entry per condition."""

    comp: npt.NDArray[np.intp]  # the component's place in a reading's values
    op: npt.NDArray[np.int64]  # ``kernels.OP_CODES``
    level: I8  # the severity of the condition's tier
    params: tuple[str, ...]  # the param holding each limit
    toward_normal: F64  # -1 for an upper limit, +1 for a lower one (hysteresis moves them)
    limits: F64  # (1, m) the rule's own limits


# id(rule) -> (the rule, kept so its id is not reused; its conditions)
_CONDITIONS: dict[tuple[int, int], tuple[RuleSpec, Conditions]] = {}


def conditions(rule: RuleSpec, tiers: tuple[Tier, ...]) -> Conditions:
    """The conditions of ``tiers`` (a rule's own), compiled once per rule."""
    key = (id(rule), id(tiers))
    held = _CONDITIONS.get(key)
    if held is None:
        if len(_CONDITIONS) >= 4096:  # versions of the programs come and go: stay bounded
            _CONDITIONS.clear()
        from rpm.domain import METRICS

        index = {c.name: i for i, c in enumerate(METRICS[rule.metric].components)}
        pairs = [(t, c) for t in tiers for c in t.any]
        found = Conditions(
            np.array([index[c.component] for _, c in pairs], np.intp),
            np.array([OP_CODES[c.op] for _, c in pairs], np.int64),
            np.array([int(t.severity) for t, _ in pairs], np.int8),
            tuple(c.param for _, c in pairs),
            np.array([-1.0 if c.rising else 1.0 for _, c in pairs]),
            np.array([[rule.p(c.param) for _, c in pairs]], np.float64),
        )
        held = _CONDITIONS[key] = (rule, found)
    return held[1]


def limits(conds: Conditions, w: Window, shift: float = 0.0) -> F64:
    """The limits each reading is compared with: one row for all, or one per reading
    where overrides make them differ; ``shift`` moves each toward normal (hysteresis)."""
    varying = [j for j, name in enumerate(conds.params) if name in w.params] if w.params else []
    out = conds.limits
    if varying:
        out = np.repeat(out, len(w), axis=0)
        for j in varying:
            out[:, j] = w.params[conds.params[j]]
    return out + shift * conds.toward_normal if shift else out


def tier_hits(rule: RuleSpec, tiers: tuple[Tier, ...], w: Window, shift: float = 0.0) -> I8:
    """Highest tier severity met by each reading's own values (0: none).

    ``shift`` moves every limit toward normal (hysteresis): an upper limit L becomes
    L - shift, a lower limit L + shift.
    """
    conds = conditions(rule, tiers)
    return levels_met(conds, limits(conds, w, shift), w)


def levels_met(conds: Conditions, limit: F64, w: Window) -> I8:
    """Highest level of the conditions each reading's own values meet, against ``limit``
    (``limits``); 0 where none."""
    out = np.empty(len(w), np.int8)
    current = np.ascontiguousarray(w.current)  # one compiled layout
    tier_levels(current, conds.comp, conds.op, limit, conds.level, out)
    return out


def condition_holds(
    rule: RuleSpec,
    cond: Condition,
    values: F64,
    shift: float = 0.0,
    params: Mapping[str, F64] | None = None,
) -> Bools:
    """Where ``values`` ((B,) or (B, C)) meet the condition; ``params``: per-reading limits."""
    each = params.get(cond.param) if params else None
    if each is None:
        limit: float | F64 = rule.p(cond.param) + (-shift if cond.rising else shift)
    else:
        limit = each + (-shift if cond.rising else shift)
        if values.ndim == 2:
            limit = limit[:, None]
    with np.errstate(invalid="ignore"):
        return np.asarray(COMPARATORS[cond.op](values, limit), np.bool_)  # type: ignore[arg-type]


def breached(rule: RuleSpec, tiers: tuple[Tier, ...], values: Mapping[str, float]) -> list[str]:
    """The conditions a reading meets, as text, for explanations."""
    out = []
    for tier in tiers:
        for cond in tier.any:
            v = values.get(cond.component)
            limit = rule.p(cond.param)
            if v is not None and COMPARATORS[cond.op](v, limit):
                shown = amount(rule.metric, cond.component, v).split(" (")[0]
                out.append(f"{label(cond.component)} {shown} {cond.op} {limit:g}")
    return list(dict.fromkeys(out))


LABELS = {"spo2": "SpO2", "respiratory_rate": "respiratory rate", "temperature": "temperature"}


def label(component: str) -> str:
    """A component's name as a nurse reads it (``SpO2``, ``respiratory rate``)."""
    return LABELS.get(component, component.replace("_", " "))


def title_label(component: str) -> str:
    text = label(component)
    return text[0].upper() + text[1:]


def unit(metric: Metric, component: str) -> str:
    c = METRICS[metric].component(component)
    return DISPLAY_UNITS.get(c.ucum, c.ucum) if c else ""


def amount(
    metric: Metric, component: str, value: float, *, signed: bool = False, difference: bool = False
) -> str:
    """``1.2 kg (2.6 lb)``, ``181 mmHg``, ``91%``; weights also in pounds (US programs use them).

    ``difference``: the value is a difference of two readings (a change, a deviation, a
    slope). A difference of percentages is in percentage points: SpO2 90% is 4 percentage
    points below 94%, not "4% below" (which would be 3.76 points).
    """
    u = unit(metric, component)
    sign = "+" if signed else ""
    text = f"{value:{sign}.1f}" if u in ("kg", "°C") else f"{round(value, 1):{sign}g}"
    if u == "kg":
        return f"{text} kg ({abs(value) * 2.20462:.1f} lb)"
    if u == "%":
        if difference:
            return f"{text} percentage point{'' if abs(round(value, 1)) == 1 else 's'}"
        return f"{text}%"
    return f"{text} {u}".rstrip()


def span(seconds: float) -> str:
    """A duration as a nurse would say it: ``22 h``, ``3 days``, ``45 min``."""
    if seconds < 2 * HOUR:
        return f"{max(1, round(seconds / 60))} min"
    if seconds < 2 * DAY:
        return f"{round(seconds / HOUR)} h"
    return f"{seconds / DAY:.1f}".rstrip("0").rstrip(".") + " days"


def when(t: float | datetime) -> str:
    d = t if isinstance(t, datetime) else datetime.fromtimestamp(t, UTC)
    return d.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def short_source(source: str) -> str:
    head = source.split(". ")[0]
    return head if len(head) <= 60 else head[:57] + "..."


def base_evidence(rule: RuleSpec, facts: Facts) -> dict[str, object]:
    return {
        "kind": rule.kind,
        "metric": rule.metric.value,
        "values": dict(facts.values),
        "params": dict(rule.params),
        "measured_at": facts.measured_at.isoformat(),
        "source": rule.source,
    }
