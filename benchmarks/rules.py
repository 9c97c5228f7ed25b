"""Rule engine benchmark: ``rules.Engine.step`` alone, with a fleet's state in memory.

    uv run python benchmarks/rules.py            # 100,000 patients, 1,000,000 readings
    uv run python benchmarks/rules.py --quick    # 10,000 patients, 50,000 readings
    uv run python benchmarks/rules.py --seconds 10 --batch 2000   # cap the step time

No broker, no database: one core. A fleet (``_rule_fleet.py``) is loaded with 14 days of
history through ``engine.load``; its stream, in arrival order (``--late`` arrive 1-36 h
late), is cut into micro-batches of ``--batch`` reading objects built before the clock; only
``engine.step`` is timed, with the garbage collector as under ``rpm serve``. Memory per
patient: ``engine.nbytes()`` plus ``sys.getsizeof`` of the engine's Python-side state; RSS
growth over the warm-up as a cross-check. Loading the compiled loops (``rules/kernels/``,
numba's cache) is shown apart. ``--profile FILE`` runs the steps under cProfile.
``--with-thresholds`` times what the ingest unit of work runs instead: ``engine.thresholds``
(threshold rules once per reading, the interpretation) then ``engine.step`` reusing them.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the ``rules`` package: keep its own folder behind the project
# root on sys.path, so ``import rules`` finds the package and ``_common`` is still found.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p not in ("", _HERE)] + [_HERE]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import _report  # noqa: E402
import numpy as np  # noqa: E402
from _common import fmt_ms, fmt_rate, machine_busy_seconds, percentile, rss_mib  # noqa: E402
from _report import GcClock, finish, ok, progress, tables  # noqa: E402
from _rule_fleet import (  # noqa: E402
    DEVICES,
    HISTORY_DAYS,
    HOUR,
    START,
    Fleet,
    Schedule,
    batch_contexts,
    build_batches,
    history_rows,
    late_in_order,
    make_fleet,
    make_schedule,
)

from rpm.domain import AcceptedReading  # noqa: E402
from rules.engine import Engine, PatientContext  # noqa: E402
from rules.programs import RuleBook  # noqa: E402

TARGET_RATE = 200_000.0  # readings/s on one core (the issue)
say = progress("rules")


# --- memory --------------------------------------------------------------------------------------


def python_side_bytes(engine: Engine) -> int:
    """sys.getsizeof over the engine's per-patient dicts and sets and what they hold.

    Reads the engine's private containers (a benchmark may): the patient -> number map,
    free numbers and each buffer's free list (the number -> row maps and the armed rules
    are numpy arrays, counted in ``engine.nbytes()``). Every object counts once.
    """
    seen: set[int] = set()
    total = 0

    def add(obj: object) -> None:
        nonlocal total
        if id(obj) not in seen:
            seen.add(id(obj))
            total += sys.getsizeof(obj)

    def walk(obj: object) -> None:
        add(obj)
        if isinstance(obj, dict):
            for k, v in obj.items():
                add(k)
                walk(v)
        elif isinstance(obj, set | list | tuple):
            for x in obj:
                add(x)

    walk(getattr(engine, "_numbers", {}))
    walk(getattr(engine, "_free_numbers", []))
    for buf in getattr(engine, "_buffers", {}).values():
        walk(getattr(buf, "_free", []))
    return total


def buffer_rows(engine: Engine) -> tuple[list[tuple[str, str, str]], int]:
    """A table row per metric buffer, and the bytes of the rows patients use."""
    rows, used = [], 0
    for metric, buf in getattr(engine, "_buffers", {}).items():
        allocated = buf.times.shape[0]
        used += buf.nbytes * len(buf) // max(allocated, 1)
        rows.append(
            (
                f"  {metric.value}",
                f"{buf.nbytes / 2**20:,.1f} MiB",
                f"{len(buf):,} patients in {allocated:,} rows x {buf.capacity} readings",
            )
        )
    return rows, used


@dataclass(slots=True)
class Warm:
    load_s: float  # engine.load only
    build_s: float  # building the history tuples
    rss_growth_mib: float
    buffer_bytes: int
    plans: int
    plans_s: float
    kernels_s: float = 0.0  # Engine(): the compiled loops loaded from numba's cache


def warm_up(engine: Engine, fleet: Fleet, history: Schedule, chunk: int) -> Warm:
    """Load the history a chunk of patients at a time, then compile every plan."""
    gc.collect()
    rss0 = rss_mib(os.getpid()) or math.nan
    load_s = build_s = 0.0
    n = len(fleet.ids)
    bounds = np.searchsorted(history.patient, np.arange(0, n + chunk, chunk))
    for c, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        t0 = time.perf_counter()
        rows = list(history_rows(fleet, history.take(np.arange(lo, hi))))
        t1 = time.perf_counter()
        engine.load(fleet.ids[c * chunk : (c + 1) * chunk], rows)
        t2 = time.perf_counter()
        build_s += t1 - t0
        load_s += t2 - t1
        del rows
    gc.collect()
    rss1 = rss_mib(os.getpid()) or math.nan
    t0 = time.perf_counter()
    for ctx in fleet.contexts.values():
        engine.plan(ctx)
    plans_s = time.perf_counter() - t0
    plans = len({ctx.key for ctx in fleet.contexts.values()})
    return Warm(load_s, build_s, rss1 - rss0, engine.nbytes(), plans, plans_s)


@dataclass(slots=True)
class Steps:
    step_ms: list[float]
    readings: int
    seconds: float  # total step time
    cpu: float  # this process's CPU seconds meanwhile
    others: float  # other processes' CPU seconds meanwhile
    gc: GcClock
    candidates: Counter[str]
    clears: int


def run_steps(
    engine: Engine,
    batches: Sequence[Sequence[AcceptedReading]],
    contexts: Sequence[dict[str, PatientContext]],
    seconds: float | None,
    profiler: cProfile.Profile | None,
    with_thresholds: bool = False,
) -> Steps:
    """The timed part: engine.step per batch, with the garbage collector as under `rpm serve`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    clock = GcClock()
    out = Steps([], 0, 0.0, 0.0, 0.0, clock, Counter(), 0)
    cpu0, busy0 = time.process_time(), machine_busy_seconds()
    try:
        for part, context in zip(batches, contexts, strict=True):
            if profiler is not None:
                profiler.enable()
            t0 = time.perf_counter()
            if with_thresholds:
                result = engine.step(part, context, engine.thresholds(part, context))
            else:
                result = engine.step(part, context)
            dt = time.perf_counter() - t0
            if profiler is not None:
                profiler.disable()
            out.seconds += dt
            out.step_ms.append(dt * 1000)
            out.readings += len(part)
            out.candidates.update(c.rule_id for c in result.candidates)
            out.clears += len(result.clears)
            if seconds and out.seconds >= seconds:
                break
    finally:
        out.cpu = time.process_time() - cpu0
        out.others = machine_busy_seconds() - busy0 - out.cpu
        clock.stop()
        gc.unfreeze()
    return out


def run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    rng = np.random.default_rng(args.seed)
    n = args.patients
    started = time.perf_counter()
    engine = Engine(RuleBook.builtin())  # loads (or compiles) the compiled loops
    kernels_s = time.perf_counter() - started
    probe = make_fleet(min(n, 20_000), np.random.default_rng(args.seed + 1), 0.0, 1.0)
    per_patient_day = sum(float((probe.per_day[k] * probe.adherence).sum()) for k in DEVICES)
    stream_days = args.readings / (per_patient_day / len(probe.ids) * n) * 1.05 + 0.1
    fleet = make_fleet(n, rng, args.episodes, stream_days)
    t0 = time.perf_counter()
    schedule = make_schedule(fleet, rng, stream_days, args.late)
    in_history = schedule.arrived < START
    history = schedule.take(np.flatnonzero(in_history))
    history = history.take(np.lexsort((history.measured, history.patient)))
    stream = schedule.take(np.flatnonzero(~in_history))
    del schedule
    stream = stream.take(np.argsort(stream.arrived, kind="stable")[: args.readings])
    say(
        f"{n:,} patients, {len(history.patient):,} history readings, "
        f"{len(stream.patient):,} to stream ({time.perf_counter() - t0:.1f} s to generate)"
    )
    warm = warm_up(engine, fleet, history, args.load_chunk)
    warm.kernels_s = kernels_s
    say(
        f"warm: engine.load {warm.load_s:.1f} s (+ {warm.build_s:.1f} s building rows); "
        f"{warm.plans} distinct plans compiled in {warm.plans_s:.2f} s"
    )
    t0 = time.perf_counter()
    batches = build_batches(fleet, stream, args.batch)
    late = late_in_order(history, stream)
    say(f"{len(batches):,} batches built in {time.perf_counter() - t0:.1f} s; stepping")
    profiler = cProfile.Profile() if args.profile else None
    contexts = batch_contexts(fleet, batches)
    steps = run_steps(engine, batches, contexts, args.seconds, profiler, args.with_thresholds)
    if profiler is not None:
        profiler.dump_stats(args.profile)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue(), file=sys.stderr)
    return report(args, engine, fleet, len(history.patient), stream, late, warm, steps)


def report(
    args: argparse.Namespace,
    engine: Engine,
    fleet: Fleet,
    history: int,
    stream: Schedule,
    late: np.ndarray,
    warm: Warm,
    steps: Steps,
) -> tuple[str, dict[str, Any]]:
    """The readable table and the JSON result."""
    n, stepped = len(fleet.ids), steps.readings
    python_bytes = python_side_bytes(engine)
    buffer_bytes = engine.nbytes()
    per_buffer, used_bytes = buffer_rows(engine)
    known = engine.patients
    rate = stepped / steps.seconds
    ordered = sorted(steps.step_ms)
    p50, p99, worst = percentile(ordered, 50), percentile(ordered, 99), ordered[-1]
    fired = sum(steps.candidates.values())
    per_1000 = 1000 * fired / stepped
    bytes_per_patient = (buffer_bytes + python_bytes) / known
    rss_per_patient = warm.rss_growth_mib * 2**20 / n
    late_stepped = int(late[:stepped].sum())
    simulated_h = (stream.arrived[stepped - 1] - START) / HOUR
    mix = Counter("+".join(p) for p in fleet.programs)
    kinds = Counter(r.kind for p in engine.book.programs.values() for r in p.rules)
    devices = {k: int((v > 0).sum()) for k, v in fleet.per_day.items()}
    cpu_model, revision = _report.cpu_model(), _report.revision("rules")
    sections = {
        "Environment": [
            ("CPU", cpu_model, f"{os.cpu_count()} CPUs; the engine uses one"),
            ("Python / numpy", f"{platform.python_version()} / {np.__version__}", ""),
            ("load average", f"{os.getloadavg()[0]:.2f}", f"revision {revision}"),
        ],
        "Fleet": [
            ("patients", f"{n:,}", ", ".join(f"{k} {v:,}" for k, v in mix.most_common(4))),
            ("rules", f"{sum(kinds.values())}", ", ".join(f"{k} {v}" for k, v in kinds.items())),
            ("devices", f"{sum(devices.values()):,}", f"{fleet.overridden:,} overridden"),
            ("distinct plans", f"{warm.plans}", f"compiled in {warm.plans_s:.2f} s, not timed"),
            ("episodes", f"{int((fleet.episode >= 0).sum()):,}", f"seed {args.seed}"),
        ],
        f"Warm state: {HISTORY_DAYS} days of history": [
            ("compiled loops", f"{warm.kernels_s:.1f} s", "Engine(): from numba's cache"),
            ("history readings", f"{history:,}", f"{history / n:.1f} per patient"),
            ("engine.load", f"{warm.load_s:.1f} s", fmt_rate(history / warm.load_s)),
        ],
        "Memory per patient": [
            (
                "engine.nbytes",
                f"{buffer_bytes / known:,.0f} B",
                f"used {used_bytes / known:,.0f} B",
            ),
            *per_buffer,
            ("Python-side state", f"{python_bytes / known:,.0f} B", "sys.getsizeof"),
            ("total", f"{bytes_per_patient:,.0f} B", "bytes_per_patient"),
            ("RSS growth", f"{rss_per_patient:,.0f} B", "cross-check"),
        ],
        f"Stream: micro-batches of {args.batch:,}": [
            ("readings stepped", f"{stepped:,}", f"{len(ordered):,} batches, {simulated_h:.0f} h"),
            ("late", f"{late_stepped:,}", f"{100 * late_stepped / stepped:.2f}%"),
            ("engine.step", fmt_rate(rate), f">= {TARGET_RATE:,.0f}/s: {ok(rate >= TARGET_RATE)}"),
            (
                "step time",
                f"{steps.seconds:.2f} s",
                f"CPU {steps.cpu:.2f} s; GC {steps.gc.seconds:.2f} s; others {steps.others:.1f} s",
            ),
            ("readings per CPU second", fmt_rate(stepped / steps.cpu), ""),
            ("batch step p50 / p99 / max", fmt_ms(p50), f"{fmt_ms(p99)} / {fmt_ms(worst)}"),
            ("candidates", f"{fired:,}", f"{per_1000:.1f} per 1,000; {steps.clears:,} clears"),
        ],
    }
    notes = [f"PROFILED with cProfile: {args.profile}"] if args.profile is not None else []
    table = tables(sections, notes)
    result = {
        "readings_per_s": round(rate, 1),
        "patients": known,
        "bytes_per_patient": round(bytes_per_patient),
        "batch_step_p99_ms": round(p99, 3),
        "batch_step_p50_ms": round(p50, 3),
        "batch_step_max_ms": round(worst, 3),
        "buffer_bytes_per_patient": round(buffer_bytes / known),
        "buffer_bytes_used_per_patient": round(used_bytes / known),
        "python_bytes_per_patient": round(python_bytes / known),
        "rss_bytes_per_patient": round(rss_per_patient),
        "readings": stepped,
        "batch": args.batch,
        "batches": len(ordered),
        "step_s": round(steps.seconds, 3),
        "readings_per_cpu_s": round(stepped / steps.cpu, 1),
        "with_thresholds": args.with_thresholds,
        "cpu_share_of_one_core": round(steps.cpu / steps.seconds, 3),
        "other_cpu_s": round(steps.others, 2),
        "gc_s": round(steps.gc.seconds, 3),
        "candidates": fired,
        "candidates_per_1000": round(per_1000, 2),
        "clears": steps.clears,
        "late_readings": late_stepped,
        "history_readings": history,
        "warmup_load_s": round(warm.load_s, 2),
        "kernels_load_s": round(warm.kernels_s, 2),
        "distinct_plans": warm.plans,
        "overridden_patients": fleet.overridden,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "revision": revision,
        "seed": args.seed,
        "quick": args.quick,
        "profiled": args.profile is not None,
        "targets_met": {"readings_per_s": rate >= TARGET_RATE},
    }
    return table, result


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--patients", type=int, default=None, help="fleet size (100,000)")
    p.add_argument("--batch", type=int, default=1000, help="readings per engine.step")
    p.add_argument("--readings", type=int, default=None, help="readings to stream (1,000,000)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this much step time")
    p.add_argument("--quick", action="store_true", help="10,000 patients, 50,000 readings")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--late", type=float, default=0.01, help="share arriving 1-36 h late")
    p.add_argument("--episodes", type=float, default=0.03, help="share of patients with one")
    p.add_argument("--load-chunk", type=int, default=1000, help="patients per engine.load")
    p.add_argument("--profile", type=Path, default=None, help="cProfile the steps into FILE")
    p.add_argument(
        "--with-thresholds",
        action="store_true",
        help="engine.thresholds before each step, as the ingest unit of work",
    )
    args = p.parse_args(argv)
    if args.patients is None:
        args.patients = 10_000 if args.quick else 100_000
    if args.readings is None:
        args.readings = 50_000 if args.quick else 1_000_000
    if min(args.patients, args.batch, args.readings, args.load_chunk) < 1:
        p.error("--patients, --batch, --readings and --load-chunk must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return finish(*run(args))


if __name__ == "__main__":
    raise SystemExit(main())
