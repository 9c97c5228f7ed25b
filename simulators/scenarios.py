"""Scenarios with ground truth: which patients deteriorate, how, and when it truly began.

A ``ScenarioSpec`` describes one case (from ``default_scenarios()`` or a YAML file a clinical
team writes); the plan builder applies it to a share of a program's patients and records a
``GroundTruth`` per affected patient. Each kind has a trajectory (how the signals of the
patient's devices change from the onset), optional extra measurements the event prompts, and
the devices it silences. Pure, except ``load_scenarios`` reading its file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pydantic
import yaml

from rpm.domain.errors import ScenarioFileError
from rules.programs import RuleBook
from simulators.patients import PROGRAM_DEVICES
from simulators.physiology import DAY_S, F64

SCENARIO_KINDS = (
    "hf_decompensation",
    "hypertensive_crisis",
    "copd_exacerbation",
    "hypoglycaemia",
    "device_silent",
    "stopped_measuring",
)
HOUR_S = 3600.0


class ScenarioSpec(pydantic.BaseModel):
    """One case: a kind of deterioration applied to a share of a program's patients."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    name: str = pydantic.Field(min_length=1, max_length=80)
    kind: str
    program: str
    share: float = pydantic.Field(ge=0.0, le=1.0)
    onset: tuple[float, float]
    params: dict[str, float] = {}
    detected_by: tuple[str, ...] = pydantic.Field(min_length=1)

    @pydantic.field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in SCENARIO_KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(SCENARIO_KINDS)}")
        return kind

    @pydantic.field_validator("program")
    @classmethod
    def _known_program(cls, program: str) -> str:
        if program not in PROGRAM_DEVICES:
            raise ValueError(f"unknown program {program!r}; known: {', '.join(PROGRAM_DEVICES)}")
        return program

    @pydantic.field_validator("onset")
    @classmethod
    def _onset_window(cls, onset: tuple[float, float]) -> tuple[float, float]:
        low, high = onset
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                "onset must be [from, to] fractions of the span with 0 <= from <= to <= 1"
            )
        return onset

    @pydantic.model_validator(mode="after")
    def _fits_kind(self) -> ScenarioSpec:
        kind = KINDS[self.kind]
        needs = kind.device
        if needs is not None and needs not in PROGRAM_DEVICES[self.program]:
            raise ValueError(
                f"kind {self.kind!r} changes the readings of a {needs}, which patients of "
                f"program {self.program!r} do not have (they have: "
                f"{', '.join(PROGRAM_DEVICES[self.program])})"
            )
        for name, value in self.params.items():
            bounds = kind.params.get(name)
            if bounds is None:
                known = ", ".join(kind.params) or "none"
                raise ValueError(f"params: {self.kind} has no parameter {name!r} (known: {known})")
            _, low, high = bounds
            if not low <= value <= high:
                raise ValueError(
                    f"params: {name} must be between {low:g} and {high:g}, not {value:g}"
                )
        rules = _rule_ids(self.program)
        unknown = [r for r in self.detected_by if r not in rules]
        if unknown:
            raise ValueError(
                f"detected_by: {', '.join(map(repr, unknown))} not among the rules of program "
                f"{self.program!r} ({', '.join(sorted(rules))})"
            )
        return self

    def param(self, name: str) -> float:
        """A parameter's value, or the kind's default."""
        return self.params.get(name, KINDS[self.kind].params[name][0])


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """When a patient's event truly began, and which rules count as detecting it."""

    patient_id: str
    scenario: str
    kind: str
    began_at: datetime
    detected_by: frozenset[str]


@functools.cache
def _rule_ids(program: str) -> frozenset[str]:
    programs = () if program == "general" else (program,)
    return frozenset(r.id for r in RuleBook.builtin().rules_for(programs))


# --- trajectories -------------------------------------------------------------------------

# (spec, onset in epoch s, device kind, times, values by component) -> values with the event.
Trajectory = Callable[["ScenarioSpec", float, str, F64, dict[str, F64]], dict[str, F64]]


def _ramp(t: F64, onset: float, ramp_s: float) -> F64:
    """0 before the onset, rising linearly to 1 over ``ramp_s``."""
    if ramp_s <= 0:
        return np.asarray(t >= onset, np.float64)
    return np.clip((t - onset) / ramp_s, 0.0, 1.0)


def _hf(spec: ScenarioSpec, onset: float, kind: str, t: F64, v: dict[str, F64]) -> dict[str, F64]:
    # Fluid retention shows as a weight gain over days before decompensation (Chaudhry SI et
    # al. Circulation 2007;116:1549-54: weights rose progressively in the week before a heart
    # failure admission; gains of more than 2 lb, 5 lb and 10 lb over that week were each
    # associated with higher odds of admission); patients are told to report a gain of more
    # than 2 kg in 3 days (McDonagh TA et al. 2021 ESC HF guidelines, Eur Heart J
    # 2021;42:3599-3726, self-care advice). Default 1 kg/day (7 kg, > 10 lb, in a week: the
    # steep end of those bands) capped at max_gain_kg is an assumption; the efficacy cohort
    # adds a slower case, 0.35 kg/day (about 5 lb a week), from the same bands
    # (simulators.cohort.efficacy_scenarios). The gain is linear from the onset: assumption.
    if kind == "scale":
        days = np.clip((t - onset) / DAY_S, 0.0, None)
        gain = np.minimum(days * spec.param("gain_kg_per_day"), spec.param("max_gain_kg"))
        v = v | {"weight": v["weight"] + gain}
    return v


def _crisis(
    spec: ScenarioSpec, onset: float, kind: str, t: F64, v: dict[str, F64]
) -> dict[str, F64]:
    # Hypertensive crisis: SBP > 180 and/or DBP > 120 mm Hg (Whelton PK et al. 2017 ACC/AHA
    # guideline, Hypertension 2018;71:e13-e115, section 11.2). Pressure climbs over hours
    # (ramp_hours) and stays up until treated (duration_hours); the rise (+68/+30 mm Hg on a
    # controlled patient's ~122/76, so about 190/106 awake), the 4 h ramp and the 48 h
    # duration are assumptions.
    if kind == "bp_cuff":
        up = _ramp(t, onset, spec.param("ramp_hours") * HOUR_S)
        up = up * (t < onset + spec.param("duration_hours") * HOUR_S)
        v = v | {
            "systolic": v["systolic"] + spec.param("systolic_rise") * up,
            "diastolic": v["diastolic"] + spec.param("diastolic_rise") * up,
        }
    return v


def _copd(spec: ScenarioSpec, onset: float, kind: str, t: F64, v: dict[str, F64]) -> dict[str, F64]:
    # At exacerbation onset home SpO2 falls and heart rate rises (Hurst JR et al. BMC Pulm
    # Med 2010;10:52; Al Rajeh AM, Hurst JR. J Clin Med 2016;5:108, a systematic review: the
    # changes are often small next to day-to-day variation, and respiratory rate and heart
    # rate move more than SpO2); fever when infective. The defaults (SpO2 -8 points, pulse
    # +15/min, +0.6 C over 12 h) are an assumption: an exacerbation severe enough to show on a
    # home oximeter, larger than the average change those studies report, so the figures of
    # this scenario say nothing about milder exacerbations (docs/clinical.md). Recovery takes
    # a median of about a week (Seemungal TA et al. AJRCCM 2000;161:1608-13); the change
    # holds to the end of the span (assumption, for spans of a few days).
    up = _ramp(t, onset, spec.param("ramp_hours") * HOUR_S)
    v = dict(v)
    if "spo2" in v:
        v["spo2"] = v["spo2"] - spec.param("spo2_drop") * up
    if "pulse" in v:
        v["pulse"] = v["pulse"] + spec.param("hr_rise") * up
    if "temperature" in v:
        v["temperature"] = v["temperature"] + spec.param("temp_rise") * up
    return v


# Hypoglycaemia as a blend toward a target course, minutes from the onset (glucose < 70,
# level 1) to the nadir, then treatment with 15 g of fast carbohydrate and recovery (the
# "15-15 rule"; ADA Standards of Care 2024, section 6: level 1 < 70, level 2 < 54 mg/dL).
# The course's minutes and the 50 mg/dL nadir are assumptions; that symptoms prompt a check
# is too (hypoglycaemia can be unaware, ADA 2024 section 6, and then no reading shows it).
_HYPO_MIN = np.array([-25.0, 0.0, 30.0, 50.0, 75.0, 100.0])
_HYPO_WEIGHT = np.array([0.0, 1.0, 1.0, 1.0, 1.0, 0.0])


def _hypo(spec: ScenarioSpec, onset: float, kind: str, t: F64, v: dict[str, F64]) -> dict[str, F64]:
    if kind != "glucometer":
        return v
    nadir = spec.param("nadir_mg_dl")
    target_course = np.array([90.0, 69.0, nadir, nadir + 12, 95.0, 110.0])
    minutes = (t - onset) / 60.0
    w = np.interp(minutes, _HYPO_MIN, _HYPO_WEIGHT, left=0.0, right=0.0)
    target = np.interp(minutes, _HYPO_MIN, target_course)
    return v | {"glucose": (1 - w) * v["glucose"] + w * target}


def _unchanged(
    spec: ScenarioSpec, onset: float, kind: str, t: F64, v: dict[str, F64]
) -> dict[str, F64]:
    return v


@dataclass(frozen=True, slots=True)
class Kind:
    """What a scenario kind does: parameters, trajectory, prompted checks, silenced devices."""

    params: Mapping[str, tuple[float, float, float]]  # name -> (default, low, high)
    trajectory: Trajectory
    device: str | None  # the device whose readings it changes (the program must have it)
    silences: str = ""  # "" nothing, "main" the program's main device, "all" every device
    checks: tuple[float, ...] = ()  # minutes after the onset the patient measures (symptoms)
    check_device: str | None = None


KINDS: Mapping[str, Kind] = MappingProxyType(
    {
        "hf_decompensation": Kind(
            {"gain_kg_per_day": (1.0, 0.1, 5.0), "max_gain_kg": (6.0, 0.5, 20.0)},
            _hf,
            "scale",
        ),
        "hypertensive_crisis": Kind(
            {
                "systolic_rise": (68.0, 20.0, 150.0),
                "diastolic_rise": (30.0, 0.0, 90.0),
                "ramp_hours": (4.0, 0.0, 72.0),
                "duration_hours": (48.0, 1.0, 720.0),
            },
            _crisis,
            "bp_cuff",
        ),
        "copd_exacerbation": Kind(
            {
                "spo2_drop": (8.0, 1.0, 25.0),
                "hr_rise": (15.0, 0.0, 60.0),
                "temp_rise": (0.6, 0.0, 3.0),
                "ramp_hours": (12.0, 0.0, 168.0),
            },
            _copd,
            "pulse_oximeter",
        ),
        # Symptoms (shakiness, sweating) prompt a check, and a re-check 15 minutes after
        # treatment (ADA 15-15 rule).
        "hypoglycaemia": Kind(
            {"nadir_mg_dl": (50.0, 20.0, 69.0)},
            _hypo,
            "glucometer",
            checks=(18.0, 35.0),
            check_device="glucometer",
        ),
        "device_silent": Kind({}, _unchanged, None, silences="main"),
        "stopped_measuring": Kind({}, _unchanged, None, silences="all"),
    }
)


def silenced(spec: ScenarioSpec) -> tuple[str, ...]:
    """Device kinds that send nothing from the onset."""
    devices = PROGRAM_DEVICES[spec.program]
    return {"": (), "main": devices[:1], "all": devices}[KINDS[spec.kind].silences]


# --- defaults and files -------------------------------------------------------------------

_DEFAULTS: tuple[dict[str, Any], ...] = (
    {
        "name": "hf_weight_gain",
        "kind": "hf_decompensation",
        "program": "heart_failure",
        "share": 0.1,
        "onset": (0.1, 0.35),
        "detected_by": ("hf.weight_gain_24h", "hf.weight_gain_7d", "hf.weight_trend"),
    },
    {
        "name": "htn_crisis",
        "kind": "hypertensive_crisis",
        "program": "hypertension",
        "share": 0.05,
        "onset": (0.1, 0.6),
        "detected_by": ("bp.hypertensive_crisis",),
    },
    {
        "name": "copd_exacerbation",
        "kind": "copd_exacerbation",
        "program": "copd",
        "share": 0.1,
        "onset": (0.1, 0.35),
        "detected_by": (
            "copd.spo2_below_target",
            "copd.spo2_critical",
            "copd.spo2_below_baseline",
            "news2.partial",
        ),
    },
    {
        "name": "hypo",
        "kind": "hypoglycaemia",
        "program": "diabetes",
        "share": 0.05,
        "onset": (0.1, 0.9),
        "detected_by": ("dm.glucose_low",),
    },
    # Missing-data rules fire after_hours (36 h for weights, 48 h for SpO2) past the last
    # reading: early onsets leave them time to fire inside a span of three days.
    {
        "name": "scale_silent",
        "kind": "device_silent",
        "program": "heart_failure",
        "share": 0.05,
        "onset": (0.05, 0.25),
        "detected_by": ("hf.weight_missing",),
    },
    {
        "name": "copd_stopped",
        "kind": "stopped_measuring",
        "program": "copd",
        "share": 0.05,
        "onset": (0.05, 0.25),
        "detected_by": ("copd.spo2_missing",),
    },
)


def default_scenarios() -> list[ScenarioSpec]:
    """One scenario per kind, in the programs that watch for it."""
    return [ScenarioSpec(**item) for item in _DEFAULTS]


def load_scenarios(path: Path) -> list[ScenarioSpec]:
    """Scenarios from a YAML file; errors name the file, the item and the field.

    The file holds a list of scenarios, or a mapping with the list under ``scenarios``.
    """
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioFileError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ScenarioFileError(f"{path}: not YAML: {exc}") from None
    items = doc.get("scenarios") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not items:
        raise ScenarioFileError(
            f"{path}: expected a non-empty list of scenarios (or 'scenarios: [...]')"
        )
    specs: list[ScenarioSpec] = []
    for index, item in enumerate(items, start=1):
        label = f"{path}: scenario {index}"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label += f" ({item['name']!r})"
        if not isinstance(item, dict):
            raise ScenarioFileError(
                f"{label}: expected a mapping of fields, not {type(item).__name__}"
            )
        try:
            specs.append(ScenarioSpec.model_validate(item))
        except pydantic.ValidationError as exc:
            raise ScenarioFileError(f"{label}: {_problems(exc)}") from None
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ScenarioFileError(f"{path}: scenario names must be unique: {', '.join(repeated)}")
    return specs


def _problems(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "scenario"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"field {where!r}: {message}")
    return "; ".join(parts)
