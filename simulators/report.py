"""The simulation report: what was sent, what the server made of it, against the plan. Pure.

``build_report`` takes the plan's expectations and ground truth plus what a run observed
(publish times, stored readings, quarantine counts, alerts) and computes loss, quarantine
and duplicate accounting, sensitivity / positive predictive value / detection delay per
scenario (delay in simulated time), throughput and latency percentiles.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from simulators.efficacy import Verdict
from simulators.scenarios import GroundTruth

# A stored reading's identity as the database keeps it: (stored device id, metric, measured).
Key = tuple[str, str, datetime]


@dataclass(frozen=True, slots=True)
class SentPayload:
    """One payload as sent: its expectation, its readings' keys and the wall time of publish."""

    expect: str
    reason: str | None
    readings: int
    keys: tuple[Key, ...]
    published_at: float | None  # epoch seconds; None when it could not be sent
    transport: str


@dataclass(frozen=True, slots=True)
class ObservedAlert:
    """An alert row: who, which rule, when opened (wall) and in simulated time."""

    patient_id: str
    rule_id: str
    opened_at: float  # epoch seconds, wall clock
    sim_opened: datetime  # the simulated moment it opened
    sim_last: datetime  # the simulated moment of its latest occurrence
    trigger: Key | None  # the reading that opened it (None for missing-data alerts)
    rules: tuple[str, ...] = ()  # every rule of the clinical event (``rule_id`` leads)


@dataclass(frozen=True, slots=True)
class ObservedConfirmation:
    """A confirmation before paging (``alert_confirmations``): its rule, how it ended (or
    ``pending``), the first reading's measured time and the end's (simulated times)."""

    rule_id: str
    state: str
    measured_at: datetime
    closed_at: datetime | None


@dataclass(frozen=True, slots=True)
class ConfirmFigures:
    """Per rule: first readings held, alerts avoided (not confirmed: nobody paged), and the
    detection delay the wait added to the pages (first reading to page, minutes)."""

    held: int
    avoided: int
    delay_median_min: float | None
    delay_p95_min: float | None


def confirm_figures(seen: Iterable[ObservedConfirmation]) -> dict[str, ConfirmFigures]:
    by_rule: dict[str, list[ObservedConfirmation]] = {}
    for c in seen:
        by_rule.setdefault(c.rule_id, []).append(c)
    out = {}
    for rule_id, cs in sorted(by_rule.items()):
        delays = [
            (c.closed_at - c.measured_at).total_seconds() / 60
            for c in cs
            if c.closed_at is not None and c.state in ("confirmed", "no_repeat", "superseded")
        ]
        out[rule_id] = ConfirmFigures(
            held=len(cs),
            avoided=sum(c.state == "not_confirmed" for c in cs),
            delay_median_min=statistics.median(delays) if delays else None,
            delay_p95_min=percentile(delays, 95),
        )
    return out


@dataclass(frozen=True, slots=True)
class Observed:
    """What the server did with a run's traffic, read back from its database."""

    stored: Mapping[Key, float]  # stored_at (epoch seconds) per stored reading
    quarantined: Mapping[str, int]  # reason -> payloads refused for it
    duplicates: int | None  # readings recognised as duplicates (None when unknown)
    alerts: Sequence[ObservedAlert]
    confirmations: Sequence[ObservedConfirmation] = ()


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    scenario: str
    kind: str
    patients: int
    detected: int
    delays_s: tuple[float, ...]  # simulated seconds, alert opened minus began_at

    @property
    def sensitivity(self) -> float | None:
        return self.detected / self.patients if self.patients else None


@dataclass(frozen=True, slots=True)
class Percentiles:
    count: int
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class Report:
    sent: int
    readings_sent: int
    send_failures: int
    stored: int
    expected_stored: int
    lost: int
    unexpected_stored: int
    quarantined_expected: Mapping[str, int]
    quarantined: Mapping[str, int]
    duplicates_expected: int
    duplicates: int | None
    alerts: int
    true_alerts: int
    false_alerts_by_rule: Mapping[str, int]
    scenarios: tuple[ScenarioResult, ...]
    wall_seconds: float
    readings_per_s: float
    publish_to_stored_ms: Percentiles
    publish_to_alert_ms: Percentiles
    notes: tuple[str, ...] = field(default=())
    confirmations: Mapping[str, ConfirmFigures] = field(default_factory=dict)
    # Every alert classified (simulators.efficacy): alerts per class (scenario, label,
    # non_actionable), and the non-actionable ones per rule with their first example.
    classified: Mapping[str, int] = field(default_factory=dict)
    nonactionable: Mapping[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def sensitivity(self) -> float | None:
        total = sum(s.patients for s in self.scenarios)
        return sum(s.detected for s in self.scenarios) / total if total else None

    @property
    def ppv(self) -> float | None:
        return self.true_alerts / self.alerts if self.alerts else None

    @property
    def detection_delay_median_s(self) -> float | None:
        delays = [d for s in self.scenarios for d in s.delays_s]
        return statistics.median(delays) if delays else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def percentiles(values: Sequence[float]) -> Percentiles:
    return Percentiles(
        len(values), percentile(values, 50), percentile(values, 95), percentile(values, 99)
    )


def first_publish(sent: Iterable[SentPayload]) -> dict[Key, float]:
    """The wall time each reading was first published (a duplicate's resend does not count)."""
    out: dict[Key, float] = {}
    for s in sent:
        if s.published_at is None:
            continue
        for k in s.keys:
            if k not in out or s.published_at < out[k]:
                out[k] = s.published_at
    return out


def _relevant(alert: ObservedAlert, truth: GroundTruth) -> bool:
    """The alert speaks to this truth: same patient, a detecting rule, active after onset."""
    return (
        alert.patient_id == truth.patient_id
        and not truth.detected_by.isdisjoint((alert.rule_id, *alert.rules))
        and alert.sim_last >= truth.began_at
    )


def match_truth(
    truth: Sequence[GroundTruth], alerts: Sequence[ObservedAlert]
) -> tuple[tuple[ScenarioResult, ...], int, dict[str, int]]:
    """Per-scenario detection, the number of true alerts and false alerts per rule.

    A patient's event is detected when an alert of one of its ``detected_by`` rules is
    active at or after ``began_at`` (an episode opened earlier and still recurring counts,
    as a nurse would already see it; its delay is unknown and left out). The delay is the
    earliest such alert opened at or after ``began_at``, in simulated time. An alert is true
    when it speaks to some event of its patient; every other alert is false.
    """
    by_scenario: dict[str, list[GroundTruth]] = {}
    for t in truth:
        by_scenario.setdefault(t.scenario, []).append(t)
    results = []
    for name, cases in by_scenario.items():
        detected = 0
        delays: list[float] = []
        for t in cases:
            hits = [a for a in alerts if _relevant(a, t)]
            if not hits:
                continue
            detected += 1
            opened_after = [a.sim_opened for a in hits if a.sim_opened >= t.began_at]
            if opened_after:
                delays.append((min(opened_after) - t.began_at).total_seconds())
        results.append(ScenarioResult(name, cases[0].kind, len(cases), detected, tuple(delays)))
    true_alerts = 0
    false_by_rule: Counter[str] = Counter()
    for a in alerts:
        if any(_relevant(a, t) for t in truth):
            true_alerts += 1
        else:
            false_by_rule[a.rule_id] += 1
    return tuple(results), true_alerts, dict(false_by_rule)


def build_report(
    sent: Sequence[SentPayload],
    truth: Sequence[GroundTruth],
    observed: Observed,
    *,
    notes: Sequence[str] = (),
    verdicts: Sequence[Verdict] = (),
) -> Report:
    """Compare a run's traffic and ground truth with what the server stored and alerted;
    ``verdicts``: the alerts classified (``simulators.efficacy.classify``)."""
    published = [s for s in sent if s.published_at is not None]
    expected: set[Key] = {k for s in published if s.expect == "stored" for k in s.keys}
    refused: set[Key] = {k for s in published if s.expect == "quarantined" for k in s.keys}
    stored_keys = set(observed.stored)
    first = first_publish(published)
    to_stored = [(observed.stored[k] - first[k]) * 1000 for k in expected if k in observed.stored]
    to_alert = [
        (a.opened_at - first[a.trigger]) * 1000
        for a in observed.alerts
        if a.trigger is not None and a.trigger in first
    ]
    scenarios, true_alerts, false_by_rule = match_truth(truth, observed.alerts)
    quarantined_expected = Counter(
        s.reason or "unknown" for s in published if s.expect == "quarantined"
    )
    begin = min((s.published_at for s in published if s.published_at is not None), default=0.0)
    ours = [observed.stored[k] for k in expected if k in observed.stored]
    finish = max(ours, default=begin)
    wall = max(finish - begin, 0.0)
    return Report(
        sent=len(published),
        readings_sent=sum(s.readings for s in published),
        send_failures=len(sent) - len(published),
        stored=len(stored_keys),
        expected_stored=len(expected),
        lost=len(expected - stored_keys),
        unexpected_stored=len(stored_keys & (refused - expected)),
        quarantined_expected=dict(quarantined_expected),
        quarantined=dict(observed.quarantined),
        duplicates_expected=sum(s.readings for s in published if s.expect == "duplicate"),
        duplicates=observed.duplicates,
        alerts=len(observed.alerts),
        true_alerts=true_alerts,
        false_alerts_by_rule=false_by_rule,
        scenarios=scenarios,
        wall_seconds=wall,
        readings_per_s=len(ours) / wall if wall > 0 else 0.0,
        publish_to_stored_ms=percentiles(to_stored),
        publish_to_alert_ms=percentiles(to_alert),
        notes=tuple(notes),
        confirmations=confirm_figures(observed.confirmations),
        classified=dict(Counter(v.cls for v in verdicts)),
        nonactionable=nonactionable(verdicts),
    )


def nonactionable(verdicts: Sequence[Verdict]) -> dict[str, tuple[int, str]]:
    """Non-actionable alerts per rule, most first, each with its earliest example."""
    non = sorted((v for v in verdicts if v.cls == "non_actionable"), key=lambda v: v.at)
    counts = Counter(v.rule_id for v in non)
    first: dict[str, Verdict] = {}
    for v in non:
        first.setdefault(v.rule_id, v)
    return {
        rule: (
            n,
            f"{first[rule].patient_id} at {first[rule].at:%Y-%m-%d %H:%M} UTC "
            f"{dict(first[rule].values or {})}: {first[rule].why}",
        )
        for rule, n in counts.most_common()
    }


def to_json(r: Report) -> dict[str, Any]:
    """The report as a JSON-ready dict; the issue's keys are at the top level."""
    return {
        "sent": r.sent,
        "readings_sent": r.readings_sent,
        "send_failures": r.send_failures,
        "stored": r.stored,
        "expected_stored": r.expected_stored,
        "lost": r.lost,
        "unexpected_stored": r.unexpected_stored,
        "quarantined_expected": sum(r.quarantined_expected.values()),
        "quarantined": sum(r.quarantined.values()),
        "quarantined_expected_by_reason": dict(r.quarantined_expected),
        "quarantined_by_reason": dict(r.quarantined),
        "duplicates_expected": r.duplicates_expected,
        "duplicates": r.duplicates,
        "alerts": r.alerts,
        "true_alerts": r.true_alerts,
        "false_alerts_by_rule": dict(r.false_alerts_by_rule),
        "sensitivity": r.sensitivity,
        "ppv": r.ppv,
        "detection_delay_median_s": r.detection_delay_median_s,
        "scenarios": [
            {
                "scenario": s.scenario,
                "kind": s.kind,
                "patients": s.patients,
                "detected": s.detected,
                "sensitivity": s.sensitivity,
                "detection_delay_median_s": statistics.median(s.delays_s) if s.delays_s else None,
            }
            for s in r.scenarios
        ],
        "wall_seconds": r.wall_seconds,
        "readings_per_s": r.readings_per_s,
        "publish_to_stored_p50_ms": r.publish_to_stored_ms.p50,
        "publish_to_stored_p95_ms": r.publish_to_stored_ms.p95,
        "publish_to_stored_p99_ms": r.publish_to_stored_ms.p99,
        "publish_to_alert_p50_ms": r.publish_to_alert_ms.p50,
        "publish_to_alert_p95_ms": r.publish_to_alert_ms.p95,
        "publish_to_alert_p99_ms": r.publish_to_alert_ms.p99,
        "confirmation_by_rule": {
            rule_id: {
                "held": f.held,
                "avoided": f.avoided,
                "delay_median_min": f.delay_median_min,
                "delay_p95_min": f.delay_p95_min,
            }
            for rule_id, f in r.confirmations.items()
        },
        "alerts_by_class": dict(r.classified),
        "nonactionable_by_rule": {k: n for k, (n, _) in r.nonactionable.items()},
        "nonactionable_examples": {k: ex for k, (_, ex) in r.nonactionable.items()},
        "notes": list(r.notes),
    }


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f} h"


def render(r: Report) -> str:
    """A readable table of the report."""
    rows: list[tuple[str, str]] = [
        ("payloads sent", f"{r.sent:,} ({r.readings_sent:,} readings)"),
        ("send failures", f"{r.send_failures:,}"),
        ("readings stored", f"{r.stored:,} of {r.expected_stored:,} expected"),
        ("lost", f"{r.lost:,}"),
        ("stored though expected refused", f"{r.unexpected_stored:,}"),
    ]
    reasons = sorted(set(r.quarantined_expected) | set(r.quarantined))
    total_q = f"{sum(r.quarantined.values()):,} of {sum(r.quarantined_expected.values()):,}"
    rows.append(("quarantined (actual of expected)", total_q))
    for reason in reasons:
        got, want = r.quarantined.get(reason, 0), r.quarantined_expected.get(reason, 0)
        rows.append((f"  {reason}", f"{got:,} of {want:,}"))
    dup = "unknown" if r.duplicates is None else f"{r.duplicates:,}"
    rows.append(("duplicates (actual of expected)", f"{dup} of {r.duplicates_expected:,}"))
    rows.append(("alerts opened", f"{r.alerts:,} ({r.true_alerts:,} match ground truth)"))
    if r.classified:
        c = r.classified
        rows.append(
            (
                "  expected / non-actionable",
                f"{c.get('scenario', 0):,} scenario, {c.get('label', 0):,} label / "
                f"{c.get('non_actionable', 0):,}",
            )
        )
        for rule, (n, example) in r.nonactionable.items():
            rows.append((f"  non-actionable: {rule}", f"{n:,}, e.g. {example}"))
    else:
        for rule, n in sorted(r.false_alerts_by_rule.items(), key=lambda x: -x[1]):
            rows.append((f"  not in ground truth: {rule}", f"{n:,}"))
    rows.append(("sensitivity", _num(r.sensitivity, "{:.1%}")))
    rows.append(("positive predictive value", _num(r.ppv, "{:.1%}")))
    rows.append(("detection delay, median (simulated)", _hours(r.detection_delay_median_s)))
    for s in r.scenarios:
        median = statistics.median(s.delays_s) if s.delays_s else None
        rows.append(
            (f"  {s.scenario} ({s.kind})", f"{s.detected}/{s.patients}, median {_hours(median)}")
        )
    for rule_id, f in r.confirmations.items():
        rows.append(
            (
                f"  confirm before paging: {rule_id}",
                f"{f.held} held, {f.avoided} alerts avoided, delay added median "
                f"{_num(f.delay_median_min, '{:.1f}')} / p95 {_num(f.delay_p95_min, '{:.1f}')} min",
            )
        )
    rows.append(("throughput", f"{r.readings_per_s:,.0f} readings/s over {r.wall_seconds:.1f} s"))
    for name, p in (
        ("publish -> stored", r.publish_to_stored_ms),
        ("publish -> alert", r.publish_to_alert_ms),
    ):
        rows.append(
            (
                f"{name} p50/p95/p99",
                f"{_num(p.p50)} / {_num(p.p95)} / {_num(p.p99)} ms (n={p.count:,})",
            )
        )
    width = max(len(a) for a, _ in rows)
    lines = ["rpm simulate report", "=" * (width + 30)]
    lines += [f"{a:<{width}}  {b}" for a, b in rows]
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)
