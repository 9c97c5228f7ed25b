"""Scenarios with ground truth: which patients deteriorate, how, and when it truly began.

A ``ScenarioSpec`` describes one case (from ``default_scenarios()`` or a YAML file a clinical
team writes); the plan builder applies it to a share of a program's patients and records a
``GroundTruth`` per affected patient. Pure, except ``load_scenarios`` reading its file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydantic

SCENARIO_KINDS = (
    "hf_decompensation",
    "hypertensive_crisis",
    "copd_exacerbation",
    "hypoglycaemia",
    "device_silent",
    "stopped_measuring",
)


class ScenarioSpec(pydantic.BaseModel):
    """One case: a kind of deterioration applied to a share of a program's patients."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: str
    program: str
    share: float
    onset: tuple[float, float]
    params: dict[str, float] = {}
    detected_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """When a patient's event truly began, and which rules count as detecting it."""

    patient_id: str
    scenario: str
    kind: str
    began_at: datetime
    detected_by: frozenset[str]


def default_scenarios() -> list[ScenarioSpec]:
    """One scenario per kind, in the programs that watch for it."""
    raise NotImplementedError


def load_scenarios(path: Path) -> list[ScenarioSpec]:
    """Scenarios from a YAML file; errors name the file, the item and the field."""
    raise NotImplementedError
