"""A reading's components in its row: the typed slots v1, v2, v3 (migration 0041).

Slot i holds the metric's i-th component in ``rpm.domain.METRICS`` order, as
``rpm_component_name(metric, i)`` names it in SQL (tests/test_lifecycle.py checks they agree).
Slot 1 is every metric's required component; a missing optional component is NULL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from rpm.domain import METRICS

SLOTS: Mapping[str, tuple[str, ...]] = {
    m.value: tuple(c.name for c in spec.components) for m, spec in METRICS.items()
}

_SHAPES = {m: (names, frozenset(names)) for m, names in SLOTS.items()}


def values_of(metric: str, v1: float, v2: float | None, v3: float | None) -> dict[str, float]:
    """The components of a row's slots, by name (NULL slots left out)."""
    names = SLOTS[metric]
    out = {names[0]: v1}
    if v2 is not None:
        out[names[1]] = v2
    if v3 is not None:
        out[names[2]] = v3
    return out


class Row(Protocol):
    """A fetched row (an asyncpg Record, a dict): its columns by name."""

    def __getitem__(self, key: str, /) -> Any: ...


def row_values(row: Row) -> dict[str, float]:
    """The components of a fetched row that has ``metric``, ``v1``, ``v2`` and ``v3``."""
    return values_of(row["metric"], row["v1"], row["v2"], row["v3"])


def slots_of(metric: str, values: Mapping[str, float]) -> tuple[float, float | None, float | None]:
    """The slots of a reading's components; a component the metric does not have is an error
    (validation refuses it before: nothing is dropped here). On the ingest path: a few
    dictionary lookups a reading."""
    names, allowed = _SHAPES[metric]
    if not allowed.issuperset(values):
        raise ValueError(f"components {sorted(set(values) - allowed)} are not of {metric}")
    first = values.get(names[0])
    if first is None:
        raise ValueError(f"{metric} needs its component {names[0]}")
    n = len(names)
    return (
        first,
        values.get(names[1]) if n > 1 else None,
        values.get(names[2]) if n > 2 else None,
    )


def present_sql(component: str, table: str = "") -> str:
    """SQL true of a row holding ``component`` (a constant name) in any of its slots."""
    t = f"{table}." if table else ""
    return (
        "("
        + " OR ".join(
            f"(rpm_component_name({t}metric, {i}) = '{component}' AND {t}v{i} IS NOT NULL)"
            for i in (1, 2, 3)
        )
        + ")"
    )
