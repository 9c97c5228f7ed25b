"""Ground truth for a patient's background: labels, and the alerts each one explains. Pure.

A scenario (``simulators.scenarios``) is an event with an onset; a label is what a patient
*is* or *does* all along: uncontrolled stage-2 hypertension, chronic hypoxaemia in COPD,
skipping weekends, a scale left unplugged for a few days, missing a day now and then. Each
label states which alerts (rule ids) it is expected to cause and at what cadence, so that an
alert of a run is either expected (from a scenario or a label) or non-actionable
(``simulators.efficacy`` classifies them).

Labels are drawn from their own random stream per patient (``draw_labels``), so adding them
to a plan leaves every other draw of the plan as it was. Every patient carries ``skips_days``
(the personal adherence of ``simulators.adherence``); the others come from ``LabelSpec``s
(``default_labels()``), applied to a share of the patients of their programs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from simulators.patients import PROGRAM_DEVICES
from simulators.physiology import DAY_S, F64, Person

_LABEL_STREAM = 0x1AB3  # the per-patient stream labels draw from (apart from the plan's)

# Missing-data rule id -> (the device whose silence it reports, its after_hours). Mirrors
# rules/programs/*.yaml; tests/test_sim_labels.py checks it against the rule book.
MISSING_RULES: Mapping[str, tuple[str, float]] = MappingProxyType(
    {
        "hf.weight_missing": ("scale", 36.0),
        "copd.spo2_missing": ("pulse_oximeter", 48.0),
        "dm.glucose_missing": ("glucometer", 48.0),
        "htn.bp_missing": ("bp_cuff", 72.0),
    }
)
# Rules that re-alert while a condition lasts: the backtest's nurse resolves an episode a
# day after it opened (rpm.backtest Options.resolve_after), so a lasting condition can open
# an episode a day. The cadences below are stated against that.
DAILY = 31.0


@dataclass(frozen=True, slots=True)
class Expect:
    """A rule a label is expected to fire, how often, and why."""

    rule_id: str
    cadence: str  # in words, for the report and docs
    per_30d: float  # the most episodes in 30 days the label accounts for


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """A background label: who gets it, what it changes, which alerts it explains."""

    name: str
    programs: tuple[str, ...]
    share: float  # of each listed program's patients
    what: str
    source: str  # the guideline behind the numbers, or "assumption: ..."
    expects: tuple[Expect, ...]


def _missing(cadence: str, per_30d: float, rules: tuple[str, ...] = ()) -> tuple[Expect, ...]:
    return tuple(Expect(r, cadence, per_30d) for r in rules or tuple(MISSING_RULES))


SKIPS_DAYS = LabelSpec(
    name="skips_days",
    programs=tuple(PROGRAM_DEVICES),
    share=1.0,
    what="misses whole days now and then (personal adherence, Beta(20, 1), mean 95%)",
    source="assumption: simulators/adherence.py (RPM adherence varies widely)",
    expects=_missing("after each run of missed days longer than the rule's after_hours", 4.0),
)

_LABELS: tuple[LabelSpec, ...] = (
    LabelSpec(
        name="htn_stage2_uncontrolled",
        programs=("hypertension",),
        share=0.15,
        what="awake home pressure in stage 2 despite treatment: mean SBP 142-160 mm Hg",
        # Stage 2 is SBP >= 140 or DBP >= 90 (Whelton PK et al. 2017 ACC/AHA guideline,
        # Hypertension 2018;71:e13-e115, section 3.1; home readings map to the same
        # category at 135/85 and above, table 11). The share and range are assumptions.
        source="Whelton PK et al. 2017 ACC/AHA guideline, section 3.1 and table 11",
        expects=(
            Expect(
                "htn.stage2_persistent",
                "daily while uncontrolled (re-alerts after each resolution)",
                DAILY,
            ),
            Expect("htn.systolic_trend", "now and then: day-to-day variation at a high level", 4.0),
            # A home reading above 180 happens on top of an awake mean of 160 (morning surge,
            # day-to-day SD 5, reading noise SD 5); it meets the crisis definition.
            Expect(
                "bp.hypertensive_crisis", "now and then: a reading above 180 on a bad morning", 4.0
            ),
        ),
    ),
    LabelSpec(
        name="copd_chronic_hypoxaemia",
        programs=("copd",),
        share=0.2,
        what="stable SpO2 at the bottom of the 88-92% target: baseline 88.5-90.5%",
        # Target 88-92% for patients at risk of hypercapnic respiratory failure (O'Driscoll
        # BR et al. BTS guideline, Thorax 2017;72:i1-i90); patients near the lower end read
        # below it with oximeter error (+/-2-3 points, ISO 80601-2-61) and exertion.
        source="O'Driscoll BR et al. BTS guideline 2017 (target 88-92%); share: assumption",
        expects=(
            Expect("copd.spo2_below_target", "daily: readings dip below 88% with noise", DAILY),
            Expect("copd.spo2_critical", "now and then: a transient desaturation below 84%", 4.0),
            Expect("news2.partial", "now and then: SpO2 and pulse points add up", 8.0),
            Expect("copd.spo2_below_baseline", "now and then", 4.0),
        ),
    ),
    LabelSpec(
        name="weekend_skipper",
        programs=tuple(PROGRAM_DEVICES),
        share=0.08,
        what="measures nothing on Saturdays and Sundays (local time)",
        source="assumption (the engagement simulator models a fifth of patients so)",
        expects=_missing(
            "weekly: Friday's last reading to Monday's first is about 60 h; "
            "72 h rules only when Friday evening is skipped too",
            5.0,
        ),
    ),
    LabelSpec(
        name="device_unplugged",
        programs=("hypertension", "heart_failure", "copd", "diabetes"),
        share=0.05,
        what="the main device (scale, cuff, oximeter, glucometer) sends nothing for 3-6 days once",
        source="assumption (a scale left unplugged, a cuff with flat batteries)",
        expects=_missing("once per stretch, then daily while it lasts", 6.0),
    ),
)


def default_labels() -> tuple[LabelSpec, ...]:
    """The labels the efficacy benchmark applies (``skips_days`` is always on)."""
    return _LABELS


LABELS: Mapping[str, LabelSpec] = MappingProxyType({s.name: s for s in (SKIPS_DAYS, *_LABELS)})


@dataclass(frozen=True, slots=True)
class PatientLabels:
    """A patient's labels, their true parameters, and any device's silent stretch."""

    patient_id: str
    program: str
    labels: tuple[str, ...]
    person: Person  # the true physiology after the labels
    unplugged: tuple[str, float, float] | None = None  # (device kind, from, to) epoch s

    def expects(self, rule_id: str) -> tuple[str, ...]:
        """Labels of this patient that explain ``rule_id``."""
        return tuple(
            name for name in self.labels if any(e.rule_id == rule_id for e in LABELS[name].expects)
        )


def draw_labels(
    seed: int,
    index: int,
    program: str,
    specs: tuple[LabelSpec, ...],
    span: tuple[float, float],
) -> tuple[list[str], tuple[str, float, float] | None]:
    """Which of ``specs`` patient ``index`` carries, and the unplugged stretch if any."""
    rng = np.random.default_rng([seed, index, _LABEL_STREAM])
    names = ["skips_days"]
    unplugged = None
    for spec in specs:
        draw = rng.random()
        if program in spec.programs and draw < spec.share:
            names.append(spec.name)
    if "device_unplugged" in names:
        t0, t1 = span
        length = float(rng.uniform(3.0, 6.0)) * DAY_S
        start = float(rng.uniform(t0 + DAY_S, max(t0 + DAY_S, t1 - length)))
        unplugged = (PROGRAM_DEVICES[program][0], start, start + length)
    return names, unplugged


def label_person(person: Person, labels: list[str], seed: int, index: int) -> Person:
    """The patient's true physiology with their labels applied."""
    rng = np.random.default_rng([seed, index, _LABEL_STREAM, 1])
    if "htn_stage2_uncontrolled" in labels:
        sbp = float(rng.uniform(142.0, 160.0))
        person = replace(person, sbp=sbp, dbp=float(np.clip(sbp * 0.6 + rng.normal(0, 4), 76, 98)))
    if "copd_chronic_hypoxaemia" in labels:
        person = replace(person, spo2=float(rng.uniform(88.5, 90.5)))
    return person


def measuring_days(
    labels: list[str], midnights: F64, zone: str, measuring: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """The days a patient measures at all, with a weekend skipper's weekends taken out."""
    if "weekend_skipper" not in labels:
        return measuring
    tz = ZoneInfo(zone)
    weekend = np.array([datetime.fromtimestamp(m, tz).weekday() >= 5 for m in midnights])
    return np.asarray(measuring & ~weekend, np.bool_)


def unplugged_at(unplugged: tuple[str, float, float] | None, kind: str, t: float) -> bool:
    """Whether a ``kind`` device is unplugged at epoch seconds ``t``."""
    return unplugged is not None and unplugged[0] == kind and unplugged[1] <= t < unplugged[2]
