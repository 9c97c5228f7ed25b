"""What ``benchmarks/engagement.py`` measured, and how it is shown: the figures of the
segments and of the day, the readable table and the JSON object of the last line."""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import _engagement_checks as checks
from _report import cpu_model, ok, tables

TARGET_SEGMENT_EVAL_S = 2.0
TARGET_PLANNED_PER_S = 10_000.0
MUST_BE_ZERO = (
    "cap_violations",
    "quiet_hour_violations",
    "consent_violations",
    "crisis_violations",
    "wrong_language",
    "unknown_recipients",
    "unknown_bodies",
)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


@dataclass(slots=True)
class SegmentFigures:
    sizes: dict[str, int]
    runs_s: list[float]
    members_s: dict[str, float]
    others_cpu_s: float = 0.0  # other processes' CPU meanwhile: the noise

    @property
    def eval_s(self) -> float:
        return statistics.median(self.runs_s)


@dataclass(slots=True)
class Day:
    """What the day's passes and drains did."""

    planned: dict[str, int] = field(default_factory=dict)  # committed passes only
    plan_s: dict[str, float] = field(default_factory=dict)  # per campaign, every pass
    busiest: dict[str, tuple[int, float]] = field(default_factory=dict)  # largest pass
    passes_s: list[float] = field(default_factory=list)
    timeouts: int = 0
    urgent: list[tuple[float, int]] = field(default_factory=list)  # (waited s, sent before it)
    drain_s: float = 0.0
    drain_cpu_s: float = 0.0  # this process: worker, twilio client and stand-in
    handled: int = 0
    sent: list[checks.Sent] = field(default_factory=list)
    arrived: int = 0
    pg_plan_cpu_s: float = 0.0
    pg_drain_cpu_s: float = 0.0
    pg_cpu_s: float = 0.0  # the whole day, arrivals included
    own_cpu_s: float = 0.0
    others_cpu_s: float = 0.0  # everything else on the machine: the noise

    @property
    def planner_s(self) -> float:
        return sum(self.passes_s)

    @property
    def planned_total(self) -> int:
        return sum(self.planned.values())


def report(
    args: argparse.Namespace,
    info: dict[str, str],
    rows: dict[str, int],
    build_s: float,
    seg: SegmentFigures,
    day: Day,
    found: dict[str, int],
    twice: dict[str, tuple[int, str]],
    outcome: dict[str, dict[str, int]],
    campaigns: Sequence[str],
    daily_cap: int,
) -> tuple[str, dict[str, Any]]:
    """The table and the JSON object of a run."""
    planned = day.planned_total
    planned_per_s = planned / day.planner_s if day.planner_s else 0.0
    sent = len(day.sent)
    sent_per_s = sent / day.drain_s if day.drain_s else 0.0
    passes = sorted(day.passes_s)
    worst_wait, worst_behind = max(day.urgent, default=(math.nan, 0))
    median_wait = statistics.median(w for w, _ in day.urgent) if day.urgent else math.nan
    members = sorted(seg.members_s.values())
    waiting = sum(n for o in outcome.values() for k, n in o.items() if k.startswith("waiting"))
    planner_rows = []
    for name in campaigns:
        n, took = day.busiest.get(name, (0, 0.0))
        busiest = f"busiest pass {n:,} in {ms(took)}" if n else "planned nothing"
        planner_rows.append(
            (
                f"  {name}",
                f"{day.planned.get(name, 0):,}",
                f"{day.plan_s.get(name, 0.0):.1f} s over {len(day.passes_s)} passes; {busiest}",
            )
        )
    outcome_rows = []
    for name in campaigns:
        parts = ", ".join(f"{k} {v:,}" for k, v in outcome.get(name, {}).items())
        outcome_rows.append((f"  {name}", f"{sum(outcome.get(name, {}).values()):,}", parts))
    sections = {
        f"Population ({args.patients:,} patients, built in {build_s:.0f} s, not timed)": [
            (k, f"{v:,}", "") for k, v in rows.items()
        ],
        f"Segments ({len(seg.sizes)}, whole population, at 00:00 UTC)": [
            (
                "segment_sizes, one statement",
                f"{seg.eval_s:.2f} s",
                f"median of {len(seg.runs_s)} ({', '.join(f'{s:.2f}' for s in seg.runs_s)}); "
                f"target <= {TARGET_SEGMENT_EVAL_S:g} s: {ok(seg.eval_s <= TARGET_SEGMENT_EVAL_S)}",
            ),
            (
                "segment_members, first page",
                f"{ms(statistics.median(members))}",
                f"median of the {len(members)}, slowest {ms(members[-1])}",
            ),
            ("other processes' CPU meanwhile", f"{seg.others_cpu_s:.1f} s", "the noise"),
            *((f"  {k}", f"{v:,}", "members") for k, v in seg.sizes.items()),
        ],
        f"Planner ({len(day.passes_s)} hourly passes of CampaignPlanner.tick)": [
            (
                "planned",
                f"{planned_per_s:,.0f}/s",
                f"{planned:,} messages in {day.planner_s:.1f} s; target >= "
                f"{TARGET_PLANNED_PER_S:,.0f}/s: {ok(planned_per_s >= TARGET_PLANNED_PER_S)}",
            ),
            (
                "pass",
                f"{statistics.median(passes):.2f} s",
                f"median; fastest {passes[0]:.2f} s, slowest {passes[-1]:.2f} s; "
                f"cancelled {day.timeouts}",
            ),
            ("PostgreSQL CPU in passes", f"{day.pg_plan_cpu_s:.1f} s", ""),
            *planner_rows,
        ],
        "Drain (SmsOutboxWorker -> Twilio stand-in, after each pass)": [
            (
                "sent",
                f"{sent_per_s:,.0f}/s",
                f"{sent:,} accepted in {day.drain_s:.1f} s; {day.handled:,} items handled "
                f"({day.handled / day.drain_s if day.drain_s else 0:,.0f}/s)",
            ),
            (
                "CPU",
                f"{day.drain_cpu_s:.1f} s",
                f"this process (worker, twilio client, stand-in); PostgreSQL "
                f"{day.pg_drain_cpu_s:.1f} s",
            ),
            (
                "urgent alert SMS queued after a pass",
                f"{worst_wait:.1f} s",
                f"the longest wait of {len(day.urgent)}, behind "
                f"{worst_behind:,} campaign messages; median {median_wait:.2f} s",
            ),
            ("still waiting at 23:00", f"{waiting:,}", "in the outbox (quiet hours end later)"),
            *outcome_rows,
        ],
        "Checks (each must be 0)": [(k, f"{found[k]:,}", ok(found[k] == 0)) for k in MUST_BE_ZERO]
        + [
            ("most messages in a local day", f"{found['most_in_a_day']}", f"cap {daily_cap}"),
            ("patient-days at the cap", f"{found['days_at_cap']:,}", "with a campaign message"),
        ],
        "Findings (not targets)": [
            (
                "one campaign twice in a local day",
                f"{found['duplicates']:,}",
                "; ".join(f"{k} {n:,} (e.g. {e})" for k, (n, e) in twice.items()),
            ),
            (
                "day's message sent on a later day",
                f"{found['sent_on_a_later_day']:,}",
                "occurrence a local day, sent on another (deferred by quiet hours)",
            ),
        ],
    }
    notes = [
        f"{cpu_model()}, {os.cpu_count()} CPUs; PostgreSQL {info['postgres']}, TimescaleDB "
        f"{info['timescaledb']}; {info['durability']}; revision {info['revision']}",
        f"CPU during the day: PostgreSQL {day.pg_cpu_s:.1f} s, this process "
        f"{day.own_cpu_s:.1f} s, other processes {day.others_cpu_s:.1f} s; "
        f"readings arriving during the day: {day.arrived:,} (not timed)",
    ]
    result: dict[str, Any] = {
        "patients": args.patients,
        "segment_eval_s": round(seg.eval_s, 3),
        "segment_eval_runs_s": [round(s, 3) for s in seg.runs_s],
        "segment_members_page_ms": round(statistics.median(members) * 1000, 1),
        "segment_members_page_max_ms": round(members[-1] * 1000, 1),
        "segment_other_cpu_s": round(seg.others_cpu_s, 1),
        "segments": seg.sizes,
        "planned": planned,
        "planned_per_s": round(planned_per_s, 1),
        "planner_s": round(day.planner_s, 2),
        "planner_pass_p50_s": round(statistics.median(passes), 3),
        "planner_pass_max_s": round(passes[-1], 3),
        "planner_passes_cancelled": day.timeouts,
        "planned_by_campaign": day.planned,
        "plan_s_by_campaign": {k: round(v, 2) for k, v in day.plan_s.items()},
        "sent": sent,
        "sent_per_s": round(sent_per_s, 1),
        "drain_s": round(day.drain_s, 2),
        "items_handled": day.handled,
        "urgent_sms_wait_max_s": round(worst_wait, 2),
        "urgent_sms_wait_p50_s": round(median_wait, 2),
        "urgent_sms_behind_max": worst_behind,
        "urgent_sms_sent": len(day.urgent),
        "waiting": waiting,
        "outcomes": outcome,
        **{k: found[k] for k in MUST_BE_ZERO},
        "duplicates": found["duplicates"],
        "sent_on_a_later_day": found["sent_on_a_later_day"],
        "most_in_a_day": found["most_in_a_day"],
        "daily_cap": daily_cap,
        "build_s": round(build_s, 1),
        "rows": rows,
        "postgres_cpu_planner_s": round(day.pg_plan_cpu_s, 1),
        "postgres_cpu_drain_s": round(day.pg_drain_cpu_s, 1),
        "drain_cpu_s": round(day.drain_cpu_s, 1),
        "postgres_cpu_day_s": round(day.pg_cpu_s, 1),
        "other_cpu_s": round(day.others_cpu_s, 1),
        "timescaledb": info["timescaledb"] != "off",
        "cpu_count": os.cpu_count(),
        "targets_met": {
            "segment_eval_s": seg.eval_s <= TARGET_SEGMENT_EVAL_S,
            "planned_per_s": planned_per_s >= TARGET_PLANNED_PER_S,
            "violations": all(found[k] == 0 for k in MUST_BE_ZERO),
        },
    }
    return tables(sections, notes), result
