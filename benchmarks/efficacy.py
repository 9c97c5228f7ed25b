"""Clinical efficacy on virtual cohorts: per-scenario sensitivity and detection delay, and the
non-actionable alerts per patient-month, over many seeds.

Each seed builds a plan (``simulators.traffic``: --patients over a warm-up day and --days,
the default scenarios at their default shares, the default background labels of
``simulators.labels``), sends every payload through the real decoders and validation and
replays the stored readings through the rule engine and alert policy (``rpm.backtest``, the
code the live pipeline runs), then classifies every alert (``simulators.efficacy``). Seeds
run in --jobs processes. Prints tables, then one JSON line.

    .venv/bin/python benchmarks/efficacy.py            # 1,000 patients x 30 days x 10 seeds
    .venv/bin/python benchmarks/efficacy.py --quick    # 300 patients x 30 days x 2 seeds
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/rules.py is named like the ``rules`` package: put the project before this folder.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if p not in ("", str(_HERE))]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

from simulators.cohort import cohort_config, figures, merge, run_cohort  # noqa: E402
from simulators.labels import LABELS  # noqa: E402

START = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)


def one_seed(job: tuple[int, float, int]) -> dict[str, Any]:
    patients, days, seed = job
    t = time.perf_counter()
    _, _, tallied = run_cohort(cohort_config(patients, days, seed, START), START)
    tallied["seconds"] = time.perf_counter() - t
    return tallied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="300 patients, 2 seeds")
    args = parser.parse_args()
    if args.quick:
        args.patients, args.seeds = 300, 2
    jobs = [(args.patients, args.days, args.first_seed + k) for k in range(args.seeds)]
    load = os.getloadavg()
    t = time.perf_counter()
    runs = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for run in pool.map(one_seed, jobs):
            runs.append(run)
            print(f"seed {len(runs)}/{len(jobs)} done: {run['seconds']:.0f} s", file=sys.stderr)
    wall = time.perf_counter() - t
    merged = merge(runs)
    seconds = [r["seconds"] for r in runs]
    f = figures(merged)
    print(
        f"{args.patients} patients x {args.days:g} days (after a warm-up day) x {args.seeds} "
        f"seeds, {args.jobs} processes: {wall:.0f} s wall "
        f"(per seed {min(seconds):.0f}-{max(seconds):.0f} s); "
        f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}\n"
    )
    print(
        f"{'scenario':<20} {'patients':>8} {'caught':>7} {'sensitivity':>11} "
        f"{'observed':>8} {'sens. observed':>14} {'delay h':>8}"
    )
    for name, s in f["scenarios"].items():
        delay = s["detection_delay_median_h"]
        observed = s["sensitivity_observed"]
        print(
            f"{name:<20} {s['patients']:>8} {s['caught']:>7} {s['sensitivity']:>11.3f} "
            f"{s['observed']:>8} {'-' if observed is None else f'{observed:.3f}':>14} "
            f"{'-' if delay is None else f'{delay:.1f}':>8}"
        )
    print("\nmissed events (observed: a reading of the changed device while the change lasted):")
    for m in merged["missed"]:
        print(
            f"  {m['scenario']:<18} {m['patient_id']} began {m['began_at']} "
            f"observed={m['observed']} labels={','.join(m['labels'])}"
        )
    classes = f["by_class"]
    print(
        f"\nalerts: {merged['alerts']} ({f['alerts_per_patient_month']:.2f} per patient-month): "
        f"scenario {classes.get('scenario', 0)}, label {classes.get('label', 0)}, "
        f"non-actionable {classes.get('non_actionable', 0)} "
        f"({f['nonactionable_per_patient_month']:.3f} per patient-month)"
    )
    print("\nnon-actionable alerts by rule, with the first example:")
    for rule, n in f["nonactionable_by_rule"].items():
        ex = merged["examples"][rule]
        print(f"  {rule:<26} {n:>6}  e.g. {ex['patient_id']} at {ex['at']}: {ex['values']}")
        print(f"  {'':<26} {'':>6}  {ex['why']}")
    print("\nlabel alerts: per carrier-month (the most the label states per 30 days)")
    for key, v in f["labels"].items():
        name, rule = key.split("|")
        print(
            f"  {name:<24} {rule:<26} {v['alerts']:>6} "
            f"{v['per_carrier_month']:>7.2f} ({v['stated_at_most_per_30d']:g})"
        )
    carriers = merged["label_carriers"]
    print("  carriers: " + ", ".join(f"{k} {carriers.get(k, 0)}" for k in LABELS))
    f["wall_s"] = round(wall, 1)
    f["load_average_start"] = round(load[0], 2)
    f["mode"] = "quick" if args.quick else "full"
    print(json.dumps(f))


if __name__ == "__main__":
    main()
