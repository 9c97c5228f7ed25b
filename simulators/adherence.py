"""When virtual patients measure: usual local times, missed days, re-measurement bursts. Pure.

A patient measures on most days at habitual local times per device; some days nothing at
all (the patient-level miss), some slots skipped; an abnormal-looking first reading makes
the patient measure again within minutes, and now and then a patient re-measures anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from simulators.physiology import F64


@dataclass(frozen=True, slots=True)
class Slot:
    """A habitual measuring time: local hour, its spread, and how often it is used."""

    hour: float
    sd_minutes: float
    used: float  # probability the slot is used on a day the patient measures at all


# Device kind -> habitual slots. Blood pressure morning and evening, as home monitoring
# protocols ask (Stergiou GS et al. ESH practice guidelines, J Hypertens 2021;39:1293-1302);
# weight once after waking and voiding (Heidenreich PA et al. 2022 AHA/ACC/HFSA guideline,
# self-care); fasting glucose before breakfast and sometimes two hours after dinner (ADA
# Standards of Care 2024, section 7). Probabilities and spreads are the simulator's choice.
SLOTS: Mapping[str, tuple[Slot, ...]] = MappingProxyType(
    {
        "bp_cuff": (Slot(7.25, 35, 0.95), Slot(20.0, 50, 0.6)),
        "scale": (Slot(7.0, 30, 0.97),),
        "pulse_oximeter": (Slot(8.0, 40, 0.95), Slot(19.5, 50, 0.7)),
        "glucometer": (Slot(7.0, 25, 0.95), Slot(20.5, 30, 0.4)),
        "thermometer": (Slot(8.25, 40, 0.6),),
    }
)

# Device kind -> (share of sessions with a second reading a minute later). ESH: two readings
# one minute apart at each home session; not everybody does.
SECOND_READING: Mapping[str, float] = MappingProxyType(
    {"bp_cuff": 0.6, "scale": 0.0, "pulse_oximeter": 0.1, "glucometer": 0.0, "thermometer": 0.0}
)

# Component -> (low, high): a first reading outside makes the patient measure again (patient
# advice in the programs says "rest and measure again"). Values between stay single.
ALARMING: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "systolic": (95.0, 160.0),
        "spo2": (90.0, 101.0),
        "glucose": (70.0, 250.0),
        "temperature": (35.5, 38.0),
    }
)
RANDOM_REMEASURE = 0.04  # a re-measurement without a reason (simulator's choice)
# Share of days a patient measures at all: Beta(a, b), mean ~0.95. RPM adherence varies
# widely; the simulator keeps quiet patients adherent enough that missing-data rules are rare.
_ADHERENCE_BETA = (20.0, 1.0)


def draw_adherence(rng: np.random.Generator) -> float:
    """A patient's share of days with any measurement."""
    return float(rng.beta(*_ADHERENCE_BETA))


def local_midnights(start: datetime, end: datetime, zone: str) -> tuple[F64, F64]:
    """Epoch seconds of each local midnight from the day of ``start`` to ``end``, and the UTC
    offset (s) of each such day; DST is taken at midnight, which is close enough here."""
    tz = ZoneInfo(zone)
    day = start.astimezone(tz).date()
    last = end.astimezone(tz).date()
    midnights, offsets = [], []
    while day <= last:
        m = datetime(day.year, day.month, day.day, tzinfo=tz)
        midnights.append(m.timestamp())
        offset = m.utcoffset()
        offsets.append(offset.total_seconds() if offset is not None else 0.0)
        day += timedelta(days=1)
    return np.array(midnights), np.array(offsets)


def sessions(
    kind: str, midnights: F64, measuring_days: npt.NDArray[np.bool_], rng: np.random.Generator
) -> tuple[F64, npt.NDArray[np.intp]]:
    """Start times (epoch s) of a device's sessions, and the day index of each."""
    times: list[F64] = []
    days: list[npt.NDArray[np.intp]] = []
    n = len(midnights)
    for slot in SLOTS[kind]:
        used = measuring_days & (rng.random(n) < slot.used)
        jitter = rng.normal(0.0, slot.sd_minutes * 60.0, n)
        t = midnights + slot.hour * 3600.0 + np.clip(jitter, -3 * 3600.0, 3 * 3600.0)
        times.append(t[used])
        days.append(np.flatnonzero(used))
    t_all = np.concatenate(times)
    order = np.argsort(t_all, kind="stable")
    return t_all[order], np.concatenate(days)[order]


def alarming(values: Mapping[str, F64]) -> npt.NDArray[np.bool_]:
    """Readings a patient would not believe without measuring again."""
    out = np.zeros(len(next(iter(values.values()))), np.bool_)
    for component, (low, high) in ALARMING.items():
        v = values.get(component)
        if v is not None:
            out |= (v < low) | (v > high)
    return out
