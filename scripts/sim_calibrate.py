"""Calibration of the virtual patients against the built-in rules, and build_plan's speed.

Prints a table, then one line with a JSON object of the figures.

    .venv/bin/python scripts/sim_calibrate.py [--patients 2000] [--days 5] [--seed 7]

1. Speed: build_plan for 2,000 patients x 3 days (default scenarios, 1% malformed, 1%
   duplicates), best of three.
2. Calibration: a plan of --patients over a day of warm-up plus --days, every default scenario
   at a share of 0.3 (onsets mapped after the warm-up), through the real decoders, validation,
   rule engine and alert policy (rpm.backtest.replay): detection and delay per scenario, the
   alerts of patients without a scenario, per patient-day, and per rule that confirms before
   paging: first readings held, not confirmed, alerts avoided, delay added (median, p95 min).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from simulators.cohort import WARM_UP_DAYS, after_warm_up
from simulators.offline import replay, score
from simulators.scenarios import default_scenarios
from simulators.traffic import SimConfig, build_plan

START = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--days", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    speed_cfg = SimConfig(2000, START, START + timedelta(days=3), seed=args.seed)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        plan = build_plan(speed_cfg)
        times.append(time.perf_counter() - t)
    outcomes = Counter(s.expect for s in plan.sends)
    print(f"build_plan 2000 patients x 3 days: {min(times):.2f} s (best of 3), "
          f"{len(plan.sends)} sends {dict(outcomes)}")  # fmt: skip

    cfg = SimConfig(
        args.patients,
        START - timedelta(days=WARM_UP_DAYS),
        START + timedelta(days=args.days),
        seed=args.seed,
        scenarios=after_warm_up(default_scenarios(), args.days, share=0.3),
    )
    t = time.perf_counter()
    plan = build_plan(cfg)
    burden = replay(plan, START)
    result = score(plan, burden)
    replay_s = time.perf_counter() - t

    print(f"\ncalibration: {args.patients} patients, {args.days:g} days after 1 day of warm-up "
          f"({replay_s:.1f} s)\n")  # fmt: skip
    print(f"{'scenario':<20} {'patients':>8} {'caught':>7} {'share':>6} {'median delay h':>15}")
    detection = {}
    for name, n in result.cases.items():
        caught = result.caught[name]
        delays = result.delays_h.get(name, ())
        median = statistics.median(delays) if delays else None
        shown = f"{median:.1f}" if median is not None else "-"
        print(f"{name:<20} {n:>8} {caught:>7} {caught / n:>6.2f} {shown:>15}")
        detection[name] = {
            "patients": n,
            "caught": caught,
            "median_delay_h": round(median, 2) if median is not None else None,
        }
    values, missing = result.quiet_per_patient_day
    print(f"\nquiet patients: {result.quiet_patients}; alerts per quiet patient-day: "
          f"{values:.4f} on values, {missing:.4f} missing-data (missed days)")  # fmt: skip
    for rule, n in sorted(result.quiet_alerts.items(), key=lambda kv: -kv[1]):
        print(f"  {rule:<28} {n:>5}")
    print(f"scenario patients alerted by a value rule of theirs before onset: {result.early}")
    confirm = {r.rule_id: r.confirm.as_json() for r in burden.per_rule.values() if r.confirm}
    print("\nconfirm before paging: held, not confirmed, avoided, delay added median/p95 min")
    for rule, c in sorted(confirm.items()):
        delays = " / ".join("-" if v is None else f"{v:.1f}"
                            for v in (c["delay_median_min"], c["delay_p95_min"]))  # fmt: skip
        print(f"  {rule:<28} {c['held']:>5} {c['not_confirmed']:>5} {c['avoided']:>5} {delays}")
    figures = {
        "build_plan_2000x3d_s": round(min(times), 3),
        "sends_2000x3d": len(build_plan(speed_cfg).sends),
        "patients": args.patients,
        "days": args.days,
        "detection": detection,
        "quiet_patients": result.quiet_patients,
        "quiet_value_alerts_per_patient_day": round(values, 5),
        "quiet_missing_alerts_per_patient_day": round(missing, 5),
        "quiet_alerts_by_rule": dict(result.quiet_alerts),
        "early_value_alerts": result.early,
        "confirm": confirm,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
