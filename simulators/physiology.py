"""Signal models of virtual patients: what a device would measure at given times. Pure numpy.

Each patient draws personal parameters (``draw_person``); ``measure`` gives the values a
device reads at an array of times, from the patient's true signal (circadian rhythm, meals,
day-to-day variation) plus the device's measurement noise. Constants cite their source;
where the number is the simulator's own choice, the comment says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
DAY_S = 86_400.0

# --- blood pressure -----------------------------------------------------------------------
# Circadian shape as a fraction of the awake mean, by local hour (interpolated, cyclic).
# Nocturnal dip: a fall of 10-20% at night is the normal ("dipper") pattern (O'Brien E et al.
# Lancet 1988;2:397); the dip fraction is personal, drawn below. Morning surge: pressure rises
# steeply after waking and peaks in the early morning (Kario K et al. Circulation
# 2003;107:1401-6); the +3% peak at 08:00 is the simulator's choice within that pattern.
_BP_HOURS = np.array([0.0, 1.0, 5.0, 6.5, 8.0, 11.0, 15.0, 19.0, 22.0, 23.5, 24.0])
_BP_SHAPE_AWAKE = np.array([0.0, 0.0, 0.0, 0.015, 0.03, 0.01, 0.0, -0.01, -0.02, 0.0, 0.0])
_BP_ASLEEP = np.array([0.8, 1.0, 1.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.8])  # dip weight
# Within-visit noise of consecutive home readings (why the ESH asks for two readings one
# minute apart: Stergiou GS et al. J Hypertens 2021;39:1293-1302). SDs are the simulator's.
_SBP_NOISE, _DBP_NOISE = 5.0, 3.5
# Day-by-day variation of home pressure (Kikuya M et al. Hypertension 2008;52:1045-50 show
# it is measurable and personal); SDs here are the simulator's choice.
_SBP_DAY_SD, _DBP_DAY_SD = 5.0, 3.0

# --- heart rate ---------------------------------------------------------------------------
# Resting adult rate 60-100/min (AHA, "All About Heart Rate"); lower asleep. Noise: pulse
# from a cuff or oximeter at rest, the simulator's choice.
_HR_NIGHT_FALL, _HR_NOISE = 8.0, 3.0

# --- SpO2 ---------------------------------------------------------------------------------
# Oximeter accuracy: ISO 80601-2-61 asks for an Arms of at most 4%, FDA 510(k) guidance (2013)
# at most 3%; readings are whole percent. Noise SD 1 point is the simulator's choice.
_SPO2_NOISE = 1.0
# Transient desaturations (exertion, posture, poor perfusion) seen on a share of home
# readings; more frequent in COPD (BTS guideline, O'Driscoll BR et al. Thorax 2017;72:i1-i90,
# on desaturation in COPD). Rates and depths are the simulator's choice.
_DESAT_RATE = {"copd": 0.06, "other": 0.03}
_DESAT_DEPTH = (2.0, 4.0)

# --- weight -------------------------------------------------------------------------------
# Morning weight after voiding varies by a few tenths of a kg day to day without fluid
# retention (the stable weights of non-hospitalised patients in Chaudhry SI et al.
# Circulation 2007;116:1549-54); 0.25 kg SD is the simulator's choice. Scales show 0.1 kg.
_WEIGHT_DAY_SD, _WEIGHT_NOISE = 0.25, 0.05

# --- glucose ------------------------------------------------------------------------------
# Meals at local times; a post-prandial rise peaking about an hour after the start of the meal
# and back near fasting by 3-4 h (ADA Standards of Care 2024, section 6: post-prandial glucose
# is measured 1-2 h after the start of a meal, goal < 180 mg/dL; preprandial goal 80-130).
_MEALS_H = np.array([7.5, 12.5, 18.5])
_MEAL_PEAK_MIN = 55.0
# Meter accuracy, ISO 15197:2013: 95% of results within +/-15 mg/dL below 100 mg/dL and
# +/-15% at or above; an SD of 6% is a good meter inside that bound (simulator's choice).
_GLUCOSE_NOISE_FRACTION = 0.06
_GLUCOSE_DAY_SD = 12.0

# --- temperature --------------------------------------------------------------------------
# Mean oral temperature of adults about 36.6 C (Obermeyer Z et al. BMJ 2017;359:j5468), with
# a circadian swing of a few tenths, highest in the late afternoon (Refinetti R, Menaker M.
# Physiol Behav 1992;51:613-37). Thermometer accuracy +/-0.1 C (ASTM E1112); noise SD 0.15.
_TEMP_AMPLITUDE, _TEMP_PEAK_H, _TEMP_NOISE = 0.3, 17.0, 0.15


@dataclass(frozen=True, slots=True)
class Person:
    """Personal physiology of one patient (awake means, rhythms, body)."""

    program: str
    sbp: float  # awake mean systolic, mm Hg
    dbp: float
    dip: float  # nocturnal dip as a fraction of the awake mean
    hr: float  # resting heart rate, /min (awake)
    spo2: float  # baseline SpO2, %
    weight: float  # kg
    glucose: float  # fasting glucose, mg/dL (diabetes program only meaningful)
    meal_rise: float  # post-prandial peak rise, mg/dL
    temp: float  # mean body temperature, Cel


# Program -> (systolic mean, SD, low, high). Patients on treatment with controlled home
# pressure: the ACC/AHA 2017 home target is < 130/80 (Whelton PK et al., section 8.1.2); a
# "quiet" patient here is controlled or near it, so stage-2 readings stay the exception.
_SBP: Mapping[str, tuple[float, float, float, float]] = MappingProxyType(
    {
        "hypertension": (122.0, 6.0, 108.0, 130.0),
        "heart_failure": (118.0, 7.0, 104.0, 130.0),
        "diabetes": (122.0, 7.0, 106.0, 130.0),
        "copd": (122.0, 8.0, 106.0, 132.0),
        "general": (120.0, 7.0, 106.0, 130.0),
    }
)


def draw_person(program: str, rng: np.random.Generator) -> Person:
    """Personal parameters of a patient in ``program``."""
    mean, sd, low, high = _SBP[program]
    sbp = float(np.clip(rng.normal(mean, sd), low, high))
    copd = program == "copd"
    return Person(
        program=program,
        sbp=sbp,
        dbp=float(np.clip(sbp * 0.62 + rng.normal(0, 4), 56, 80)),
        dip=float(rng.uniform(0.08, 0.18)),
        # Resting tachycardia is common in COPD (higher rate with worse lung function).
        hr=float(np.clip(rng.normal(76 if copd else 70, 7), 56, 90)),
        # Stable COPD at home is often 90-95%; adults without lung disease 95-99% (BTS 2017).
        spo2=float(np.clip(rng.normal(93.0, 1.0), 91, 95.5) if copd else rng.uniform(96, 98.5)),
        weight=float(np.clip(rng.normal(84, 16), 48, 150)),
        glucose=float(np.clip(rng.normal(122, 12), 95, 150)),
        meal_rise=float(np.clip(rng.normal(50, 12), 25, 75)),
        temp=float(np.clip(rng.normal(36.6, 0.2), 36.1, 37.0)),
    )


def local_hour(t: F64, utc_offset_s: F64 | float) -> F64:
    """Hour of the local day (0-24) of epoch seconds ``t``."""
    return np.asarray(((t + utc_offset_s) % DAY_S) / 3600.0, np.float64)


def bp_shape(hour: F64, dip: float) -> F64:
    """Circadian factor of blood pressure: 1 + awake shape - dip while asleep."""
    awake = np.interp(hour, _BP_HOURS, _BP_SHAPE_AWAKE)
    asleep = np.interp(hour, _BP_HOURS, _BP_ASLEEP)
    return np.asarray(1.0 + awake - dip * asleep, np.float64)


def meal_curve(hour: F64) -> F64:
    """Post-prandial glucose rise as a fraction of the peak, summed over the day's meals."""
    total = np.zeros_like(hour)
    for meal in _MEALS_H:
        for day_shift in (0.0, 24.0):  # yesterday's dinner still counts after midnight
            tau = (hour + day_shift - meal) * 60.0 / _MEAL_PEAK_MIN
            rising = np.clip(tau, 0.0, None)
            total += rising**2 * np.exp(2.0 * (1.0 - rising)) * (tau >= 0)
    return total


@dataclass(frozen=True, slots=True)
class Days:
    """Per-day random effects of one patient, indexed by day since the plan's start."""

    effects: Mapping[str, F64]

    @staticmethod
    def draw(n_days: int, rng: np.random.Generator) -> Days:
        sd = {"sbp": _SBP_DAY_SD, "dbp": _DBP_DAY_SD, "weight": _WEIGHT_DAY_SD}
        sd |= {"glucose": _GLUCOSE_DAY_SD, "hr": 3.0, "temp": 0.1}
        return Days({k: rng.normal(0.0, s, n_days) for k, s in sd.items()})


Signal = Callable[[Person, F64, F64, F64, Days, np.random.Generator], dict[str, F64]]


def _bp(
    p: Person, t: F64, hour: F64, day: F64, d: Days, rng: np.random.Generator
) -> dict[str, F64]:
    idx = day.astype(np.intp)
    shape = bp_shape(hour, p.dip)
    sbp = (p.sbp + d.effects["sbp"][idx]) * shape + rng.normal(0, _SBP_NOISE, len(t))
    dbp = (p.dbp + d.effects["dbp"][idx]) * shape + rng.normal(0, _DBP_NOISE, len(t))
    return {"systolic": sbp, "diastolic": dbp, "pulse": _hr(p, hour, idx, d, rng)}


def _hr(p: Person, hour: F64, idx: npt.NDArray[np.intp], d: Days, rng: np.random.Generator) -> F64:
    asleep = np.interp(hour, _BP_HOURS, _BP_ASLEEP)
    base = p.hr + d.effects["hr"][idx] - _HR_NIGHT_FALL * asleep
    return np.asarray(base + rng.normal(0, _HR_NOISE, len(hour)), np.float64)


def _spo2(
    p: Person, t: F64, hour: F64, day: F64, d: Days, rng: np.random.Generator
) -> dict[str, F64]:
    rate = _DESAT_RATE["copd" if p.program == "copd" else "other"]
    dips = (rng.random(len(t)) < rate) * rng.uniform(*_DESAT_DEPTH, len(t))
    spo2 = p.spo2 - dips + rng.normal(0, _SPO2_NOISE, len(t))
    return {"spo2": spo2, "pulse": _hr(p, hour, day.astype(np.intp), d, rng)}


def _weight(
    p: Person, t: F64, hour: F64, day: F64, d: Days, rng: np.random.Generator
) -> dict[str, F64]:
    base = p.weight + d.effects["weight"][day.astype(np.intp)]
    return {"weight": base + rng.normal(0, _WEIGHT_NOISE, len(t))}


def _glucose(
    p: Person, t: F64, hour: F64, day: F64, d: Days, rng: np.random.Generator
) -> dict[str, F64]:
    true = p.glucose + d.effects["glucose"][day.astype(np.intp)] + p.meal_rise * meal_curve(hour)
    return {"glucose": true * (1 + rng.normal(0, _GLUCOSE_NOISE_FRACTION, len(t)))}


def _temperature(
    p: Person, t: F64, hour: F64, day: F64, d: Days, rng: np.random.Generator
) -> dict[str, F64]:
    swing = _TEMP_AMPLITUDE * np.cos(2 * np.pi * (hour - _TEMP_PEAK_H) / 24.0)
    base = p.temp + d.effects["temp"][day.astype(np.intp)] + swing
    return {"temperature": base + rng.normal(0, _TEMP_NOISE, len(t))}


# Device kind -> its signal: component name -> true value plus measurement noise.
SIGNALS: Mapping[str, Signal] = MappingProxyType(
    {
        "bp_cuff": _bp,
        "pulse_oximeter": _spo2,
        "scale": _weight,
        "glucometer": _glucose,
        "thermometer": _temperature,
    }
)

# Component -> decimals a home device shows (mm Hg, /min, % and mg/dL whole; kg and Cel 0.1).
DECIMALS: Mapping[str, int] = MappingProxyType(
    {
        "systolic": 0,
        "diastolic": 0,
        "pulse": 0,
        "spo2": 0,
        "glucose": 0,
        "weight": 1,
        "temperature": 1,
    }
)


def measure(
    kind: str,
    p: Person,
    t: F64,
    utc_offset_s: F64 | float,
    day: F64,
    days: Days,
    rng: np.random.Generator,
) -> dict[str, F64]:
    """What a ``kind`` device reads at epoch seconds ``t`` (unrounded; see ``displayed``)."""
    return SIGNALS[kind](p, t, local_hour(t, utc_offset_s), day, days, rng)


def displayed(values: Mapping[str, F64]) -> dict[str, F64]:
    """Values as the device shows them: rounded, SpO2 at most 100%, diastolic below systolic."""
    out = {k: np.round(v, DECIMALS[k]) for k, v in values.items()}
    if "spo2" in out:
        out["spo2"] = np.minimum(out["spo2"], 100.0)
    if "diastolic" in out:
        out["diastolic"] = np.minimum(out["diastolic"], out["systolic"] - 10)
    return out
