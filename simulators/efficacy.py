"""Every alert of a run, expected (a scenario or a label explains it) or non-actionable. Pure.

``classify`` takes a plan (its scenarios' ground truth and its patients' labels), the stored
readings and the alerts a replay opened over them, and gives each alert a ``Verdict``:

* ``scenario``: the patient's event had begun and the rule is one the event detects or
  causes (``SCENARIO_ALSO``: a crisis also keeps stage-2 readings coming);
* ``label``: a missing-data alert after a true gap in that device's readings at least the
  rule's ``after_hours`` long (the label that made the gap is named: unplugged device,
  weekend skipper, a missed day), or a value alert a label of the patient expects
  (``simulators.labels``);
* ``non_actionable``: anything else: a value alert on a patient whose true physiology is
  quiet (measurement noise, day-to-day variation), a value rule firing before the event
  began, a missing-data alert without a true gap. A nurse would call these noise.

``misses`` lists the events no rule caught, with whether they left a reading to catch them
by (``observed``); ``simulators.cohort`` runs and tallies cohorts.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from rpm.domain import AcceptedReading
from rules.programs import RuleBook
from simulators.labels import LABELS, MISSING_RULES, PatientLabels
from simulators.patients import DEVICE_METRICS
from simulators.scenarios import KINDS, GroundTruth
from simulators.traffic import Plan

Class = Literal["scenario", "label", "non_actionable"]
HOUR_S = 3600.0

# Scenario kind -> rules its event also causes, beyond the ``detected_by`` that count as
# detecting it: alerts of these after the onset are expected, not noise.
SCENARIO_ALSO: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        # Pressure above 180 is also stage 2 and a rise; SBP >= 220 scores a red NEWS2 point.
        "hypertensive_crisis": frozenset(
            {
                "bp.hypertensive_crisis",
                "htn.stage2_persistent",
                "htn.systolic_trend",
                "news2.partial",
            }
        ),
        "hf_decompensation": frozenset(
            {"hf.weight_gain_24h", "hf.weight_gain_7d", "hf.weight_trend"}
        ),
        # Falling SpO2 and a rising pulse and temperature score on NEWS2 too.
        "copd_exacerbation": frozenset(
            {
                "copd.spo2_below_target",
                "copd.spo2_critical",
                "copd.spo2_below_baseline",
                "news2.partial",
            }
        ),
        "hypoglycaemia": frozenset({"dm.glucose_low"}),
        "device_silent": frozenset(),  # the silenced device's missing-data rule, below
        "stopped_measuring": frozenset(),  # every device's missing-data rule, below
    }
)


class AlertLike(Protocol):
    """What classification reads of an alert episode (``rpm.backtest`` ``Alert`` has it;
    ``rpm simulate`` builds ``Seen`` from the alerts it reads back)."""

    @property
    def patient_id(self) -> str: ...
    @property
    def rule_id(self) -> str: ...
    @property
    def opened_at(self) -> datetime: ...  # simulated time
    @property
    def escalations(self) -> int: ...
    @property
    def recurrences(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Seen:
    """An alert episode as a run read it back, in simulated time."""

    patient_id: str
    rule_id: str
    opened_at: datetime
    escalations: int = 0
    recurrences: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """One alert, classified, with what explains it."""

    patient_id: str
    rule_id: str
    at: datetime
    cls: Class
    cause: str  # the scenario or label name; "" when non-actionable
    why: str
    values: Mapping[str, float] | None = None  # the reading behind a value alert


class Readings:
    """Stored readings by patient and metric, in measured-time order."""

    def __init__(self, readings: Iterable[AcceptedReading]) -> None:
        self._times: dict[tuple[str, str], list[float]] = {}
        self._values: dict[tuple[str, str], list[Mapping[str, float]]] = {}
        rows = sorted(readings, key=lambda a: a.reading.measured_at)
        for a in rows:
            key = (a.patient_id, a.reading.metric.value)
            self._times.setdefault(key, []).append(a.reading.measured_at.timestamp())
            self._values.setdefault(key, []).append(dict(a.reading.values))

    def last_before(
        self, patient_id: str, metric: str, t: float
    ) -> tuple[float, Mapping[str, float]] | None:
        """The latest reading of ``metric`` measured at or before ``t``."""
        times = self._times.get((patient_id, metric), [])
        i = bisect.bisect_right(times, t)
        if i == 0:
            return None
        return times[i - 1], self._values[(patient_id, metric)][i - 1]

    def at(self, patient_id: str, metric: str, t: float) -> tuple[str, Mapping[str, float] | None]:
        """The reading behind a value alert opened at ``t`` (its metric and values): of
        ``metric`` when one was measured then, else of any metric (a composite score, an
        episode another rule of its group opened), else the latest of ``metric`` before."""
        found = self.last_before(patient_id, metric, t)
        if found is not None and found[0] == t:
            return metric, found[1]
        for key, times in self._times.items():
            if key[0] == patient_id:
                i = bisect.bisect_right(times, t)
                if i and times[i - 1] == t:
                    return key[1], self._values[key][i - 1]
        return metric, found[1] if found is not None else None


@functools.cache
def _builtin() -> RuleBook:
    return RuleBook.builtin()


def _missing_device(rule_id: str) -> str | None:
    found = MISSING_RULES.get(rule_id)
    return found[0] if found else None


def _scenario(truth: Sequence[GroundTruth], a: AlertLike, held: timedelta) -> GroundTruth | None:
    """The event of the patient that explains ``a``: begun by the time the episode opened,
    or begun while an episode of the same clinical event was open (``held``: how long the
    nurse keeps it) and folded into it: it escalated (a recurrence at the same severity may
    be the noise that opened it), as ``simulators.offline.score`` counts a detection."""
    rule_id, at = a.rule_id, a.opened_at
    folded = a.escalations > 0
    for t in truth:
        if at < t.began_at and not (folded and at + held > t.began_at):
            continue
        if rule_id in t.detected_by or rule_id in SCENARIO_ALSO.get(t.kind, frozenset()):
            return t
        device = _missing_device(rule_id)
        if device is not None and t.kind in ("device_silent", "stopped_measuring"):
            return t  # its silenced devices' rules (detected_by names the main one)
    return None


def _gap_label(who: PatientLabels, device: str, since: float, until: float, zone: str) -> str:
    """The label that explains a gap in a device's readings from ``since`` to ``until``."""
    u = who.unplugged
    if u is not None and u[0] == device and u[1] < until and u[2] > since:
        return "device_unplugged"
    if "weekend_skipper" in who.labels:
        tz = ZoneInfo(zone)
        t = since
        while t < until:
            if datetime.fromtimestamp(t, tz).weekday() >= 5:
                return "weekend_skipper"
            t += HOUR_S * 6
    return "skips_days"


def _explain(rule_id: str, metric: str, who: PatientLabels) -> str:
    p = who.person
    quiet = {
        "blood_pressure": f"true awake mean {p.sbp:.0f}/{p.dbp:.0f} mm Hg: the reading is "
        "measurement noise, day-to-day variation, the morning surge or the nocturnal dip",
        "weight": f"no fluid change simulated (weight {p.weight:.1f} kg, day-to-day SD "
        "0.25 kg): two ordinary days in a row",
        "spo2": f"true baseline SpO2 {p.spo2:.1f}%: a transient desaturation or oximeter noise",
        "glucose": f"true fasting glucose {p.glucose:.0f} mg/dL: meal peak or meter noise",
        "body_temperature": f"true temperature {p.temp:.1f} C: thermometer noise",
    }
    return quiet.get(metric, "no simulated cause")


def classify(
    plan: Plan,
    alerts: Sequence[AlertLike],
    readings: Readings,
    book: RuleBook | None = None,
    held: timedelta = timedelta(hours=24),
) -> list[Verdict]:
    """Each alert of ``alerts`` (a replay over ``plan``'s stored readings), classified.
    ``held``: how long an episode stays open (the backtest's ``resolve_after``)."""
    book = book or _builtin()
    truth: dict[str, list[GroundTruth]] = {}
    for t in plan.truth:
        truth.setdefault(t.patient_id, []).append(t)
    zones = {p.patient_id: p.timezone for p in plan.patients}
    plan_start = plan.config.start.timestamp()
    out = []
    for a in alerts:
        pid, rule_id, at = a.patient_id, a.rule_id, a.opened_at
        who = plan.labels.get(pid)
        event = _scenario(truth.get(pid, ()), a, held)
        if event is not None:
            why = f"{event.kind} began {event.began_at:%Y-%m-%d %H:%M} UTC"
            out.append(Verdict(pid, rule_id, at, "scenario", event.scenario, why))
            continue
        programs = (who.program,) if who is not None and who.program != "general" else ()
        spec = book.rule(rule_id, programs)
        metric = spec.metric.value if spec is not None else ""
        device = _missing_device(rule_id)
        now = at.timestamp()
        if device is not None:
            metric = DEVICE_METRICS[device][0]
            after_h = MISSING_RULES[rule_id][1]
            last = readings.last_before(pid, metric, now)
            since = last[0] if last else plan_start
            gap_h = (now - since) / HOUR_S
            if who is not None and gap_h >= after_h:
                cause = _gap_label(who, device, since, now, zones.get(pid, "UTC"))
                why = f"no {metric} reading for {gap_h:.0f} h (the rule waits {after_h:g} h)"
                out.append(Verdict(pid, rule_id, at, "label", cause, why))
            else:
                why = f"a {metric} reading came {gap_h:.0f} h before (the rule waits {after_h:g} h)"
                out.append(Verdict(pid, rule_id, at, "non_actionable", "", why))
            continue
        metric, values = readings.at(pid, metric, now)
        explaining = who.expects(rule_id) if who is not None else ()
        if explaining:
            name = explaining[0]
            cadence = next(e.cadence for e in LABELS[name].expects if e.rule_id == rule_id)
            out.append(Verdict(pid, rule_id, at, "label", name, cadence, values))
            continue
        why = _explain(rule_id, metric, who) if who is not None else "patient without labels"
        early = [x for x in truth.get(pid, ()) if rule_id in x.detected_by]
        if early:
            why = f"before the {early[0].kind} began ({early[0].began_at:%Y-%m-%d %H:%M}); " + why
        out.append(Verdict(pid, rule_id, at, "non_actionable", "", why, values))
    return out


# --- events that left nothing to detect ----------------------------------------------------


# Scenario kind -> how long after the onset its change shows in the readings (None: to the
# end of the plan), in hours; for the kinds with a parameter, the parameter's name.
_SHOWS_FOR: Mapping[str, float | str | None] = MappingProxyType(
    {
        "hypertensive_crisis": "duration_hours",
        "hypoglycaemia": 100 / 60,  # back to normal 100 min after the onset (scenarios.py)
        "hf_decompensation": None,
        "copd_exacerbation": None,
    }
)


def observed(plan: Plan, truth: GroundTruth, readings: Readings) -> bool:
    """Whether the event left any reading to detect it by: a reading of the device it changes
    while the change lasts (a silent device or stopped patient always does: the silence)."""
    shows = _SHOWS_FOR.get(truth.kind, "silence")
    if shows == "silence":
        return True
    spec = next(s for s in plan.config.scenarios or () if s.name == truth.scenario)
    device = KINDS[truth.kind].device
    assert device is not None
    hours = spec.param(shows) if isinstance(shows, str) else shows
    since = truth.began_at.timestamp()
    until = plan.config.end.timestamp() if hours is None else since + hours * HOUR_S
    found = readings.last_before(truth.patient_id, DEVICE_METRICS[device][0], until)
    return found is not None and found[0] >= since


def misses(
    plan: Plan, verdicts: Sequence[Verdict], readings: Readings
) -> list[tuple[GroundTruth, bool]]:
    """The events no ``detected_by`` alert opened for after they began, and whether each
    left a reading to detect it by (``observed``)."""
    out = []
    for t in plan.truth:
        # Caught as ``simulators.offline.score`` counts it: opened after the onset, or an
        # episode open at the onset that the event escalated (classified ``scenario``).
        if not any(
            v.patient_id == t.patient_id
            and v.rule_id in t.detected_by
            and (v.at >= t.began_at or v.cls == "scenario")
            for v in verdicts
        ):
            out.append((t, observed(plan, t, readings)))
    return out
