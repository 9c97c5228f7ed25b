"""Rule kinds: one pure, vectorised evaluator per kind, found in a registry keyed by name."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from . import baseline, change, composite, missing, persistence, threshold, trend
from .base import Facts, Kind, Outcome, Window

KINDS: Mapping[str, Kind] = MappingProxyType(
    {
        k.KIND.name: k.KIND
        for k in (threshold, persistence, change, trend, baseline, composite, missing)
    }
)

__all__ = ["KINDS", "Facts", "Kind", "Outcome", "Window"]
