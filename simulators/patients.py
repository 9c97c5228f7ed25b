"""Who the virtual patients are: care programs, devices, fictional names, phones, time zones.

Pure tables and a draw; the physiology lives in ``simulators.physiology``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

# Program (a rule program of rules/programs/*.yaml) -> share of the cohort. "general" are
# patients enrolled in no program: they get the general rules only.
PROGRAM_MIX: Mapping[str, float] = MappingProxyType(
    {
        "hypertension": 0.35,
        "heart_failure": 0.2,
        "copd": 0.15,
        "diabetes": 0.2,
        "general": 0.1,
    }
)

# Program -> the devices its patients are given, the main one first (the one a
# "device_silent" scenario silences). Each program's rules watch these devices' metrics.
PROGRAM_DEVICES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "hypertension": ("bp_cuff",),
        "heart_failure": ("scale", "bp_cuff"),
        "copd": ("pulse_oximeter", "thermometer"),
        "diabetes": ("glucometer", "bp_cuff"),
        "general": ("bp_cuff", "pulse_oximeter"),
    }
)

# Device kind -> the metrics it measures (rpm.domain.Metric values).
DEVICE_METRICS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "bp_cuff": ("blood_pressure",),
        "scale": ("weight",),
        "pulse_oximeter": ("spo2",),
        "glucometer": ("glucose",),
        "thermometer": ("body_temperature",),
    }
)

# (IANA zone, area codes in it, share of Spanish speakers). Phones are +1 AAA 555 01xx:
# 555-0100 to 555-0199 are reserved for fiction in every area code (NANPA).
_ZONES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("America/New_York", ("212", "718", "617", "305", "404", "215", "202", "313", "704"), 0.15),
    ("America/Chicago", ("312", "773", "713", "214", "612", "504", "314", "210"), 0.2),
    ("America/Denver", ("303", "801", "505"), 0.15),
    ("America/Phoenix", ("602", "520"), 0.25),
    ("America/Los_Angeles", ("213", "415", "206", "619", "503", "702"), 0.25),
    ("America/Puerto_Rico", ("787", "939"), 0.9),
)
_ZONE_WEIGHTS = np.array([0.4, 0.25, 0.06, 0.04, 0.2, 0.05])
_AREAS = tuple((zone, area, es) for zone, areas, es in _ZONES for area in areas)

_FIRST = (
    "Ada", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonah",
    "Kiri", "Luis", "Maya", "Nadia", "Omar", "Pilar", "Quinn", "Rosa", "Sam", "Tomas",
)  # fmt: skip
_LAST = (
    "Alder", "Birch", "Cedar", "Dune", "Elm", "Fern", "Grove", "Heath", "Iris", "Juniper",
    "Kestrel", "Linden", "Moss", "North", "Oak", "Pine", "Quarry", "Reed", "Sorrel", "Thorn",
)  # fmt: skip


def draw_programs(n: int, rng: np.random.Generator) -> list[str]:
    """The program of each of ``n`` patients, in the shares of ``PROGRAM_MIX``."""
    names = list(PROGRAM_MIX)
    weights = np.array([PROGRAM_MIX[p] for p in names])
    return [names[i] for i in rng.choice(len(names), size=n, p=weights / weights.sum())]


def identity(i: int, rng: np.random.Generator) -> tuple[str, str, str, str]:
    """(display name, phone, time zone, language) of patient number ``i``; all fictional.

    Phones are unique for the first 3,000 patients (30 area codes x 100 fiction numbers).
    """
    name = f"{_FIRST[i % len(_FIRST)]} {_LAST[(i // len(_FIRST)) % len(_LAST)]}"
    zone_index = int(rng.choice(len(_ZONES), p=_ZONE_WEIGHTS))
    zone, _, es_share = _ZONES[zone_index]
    area = _AREAS[(i // 100) % len(_AREAS)][1]
    language = "es" if rng.random() < es_share else "en"
    return name, f"+1{area}55501{i % 100:02d}", zone, language
