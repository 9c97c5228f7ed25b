"""Rule engine benchmark: ``rules.Engine.step`` alone, with a fleet's state in memory.

    uv run python benchmarks/rules.py            # 100,000 patients, 1,000,000 readings
    uv run python benchmarks/rules.py --quick    # 10,000 patients, 50,000 readings
    uv run python benchmarks/rules.py --seconds 10 --batch 2000   # cap the step time

No broker, no database, no I/O: what the engine costs the ingest path on one core (the
engine is single-threaded; so are numpy's element-wise work and its compiled loops,
``rules/kernels.py``, which making the ``Engine`` loads from numba's cache, or compiles
on a machine's first run: shown apart, not timed).

1. Fleet. Patients get a mix of care programs (by primary program 45% hypertension, 20%
   heart failure, 15% COPD, 20% diabetes; most heart-failure patients also have
   hypertension, some diabetics too, a few COPD patients heart failure) and the devices
   those programs use, at home-measurement rates: a blood-pressure cuff (twice a day for
   hypertension, once for heart failure), a scale (daily), a pulse oximeter with pulse
   (COPD, some heart-failure patients), a glucometer (1-4 a day) and, for a few, a
   thermometer. Each patient skips some readings (adherence 70-100%) and measures at
   their own local times across four US time zones. About 1% have a clinician's
   parameter override, so not every plan is shared.
2. Warm state. The 14 days before the stream (the engine's longest rule lookback) are
   loaded through ``engine.load`` in chunks of ``--load-chunk`` patients, as the ingest
   path loads patients on a cache miss. Only ``engine.load`` is timed as warm-up; building
   the history tuples (the database's work in production) is shown apart.
3. Stream. Readings in the order they arrive at the gateway (measured time plus a short
   delivery delay; ``--late`` of them, 1%, arrive 1-36 h late, as from a device that was
   offline), cut into micro-batches of ``--batch``. Each patient's values scatter around
   a personal baseline; ``--episodes`` of the patients (3%) have a hypertensive crisis,
   fluid gain, a COPD exacerbation or hypoglycaemia during the stream, so rules fire.
   Every reading object, and each batch's contexts (a dict of the batch's patients, as the
   ingest unit of work loads them), is built before the clock starts; only ``engine.step``
   is timed (``time.perf_counter`` around each call). The garbage collector runs as under
   ``rpm serve`` (start-up objects frozen, young generation at 50,000: ``rpm/cli.py``).

Memory per patient: the ring buffers' bytes (``engine.nbytes()``, allocated rows
included), plus the Python-side state measured with ``sys.getsizeof`` over the engine's
dicts and sets and what they hold (patient ids, row numbers, armed rules); the growth of
the process's resident memory across the warm-up is shown as a cross-check.

``--profile FILE`` runs the timed steps under cProfile (slower: not for figures), writes
the stats to FILE and prints the top entries. The last line of output is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the ``rules`` package: keep its own folder behind the project
# root on sys.path, so ``import rules`` finds the package and ``_common`` is still found.
_HERE = str(Path(__file__).resolve().parent)
_ROOT = Path(_HERE).parent
sys.path[:] = [p for p in sys.path if p not in ("", _HERE)] + [_HERE]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    fmt_ms,
    fmt_rate,
    machine_busy_seconds,
    percentile,
    render_table,
    rss_mib,
)

from rpm.domain import METRICS, AcceptedReading, Metric, Reading  # noqa: E402
from rules.engine import Engine, PatientContext  # noqa: E402
from rules.programs import RuleBook  # noqa: E402

TARGET_RATE = 200_000.0  # readings/s on one core (the issue)
HOUR = 3600.0
DAY = 86400.0
HISTORY_DAYS = 14
START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()  # the stream begins here

PROGRAMS = ("hypertension", "heart_failure", "copd", "diabetes")
PRIMARY_SHARE = (0.45, 0.20, 0.15, 0.20)
# A second program, and how often a patient of the primary one has it.
SECOND = {
    "heart_failure": ("hypertension", 0.6),
    "diabetes": ("hypertension", 0.4),
    "copd": ("heart_failure", 0.1),
}

# device kind -> metric and the local hours of its readings (the first n for n a day)
DEVICES: dict[str, tuple[Metric, tuple[float, ...]]] = {
    "bp_cuff": (Metric.BLOOD_PRESSURE, (7.5, 19.5)),
    "scale": (Metric.WEIGHT, (7.0,)),
    "oximeter": (Metric.SPO2, (8.5, 20.5, 14.0)),
    "glucometer": (Metric.GLUCOSE, (7.0, 18.0, 12.0, 22.0)),
    "thermometer": (Metric.BODY_TEMPERATURE, (9.0,)),
}
METRIC_ORDER = tuple(Metric)
COMPONENTS = {m: tuple(c.name for c in METRICS[m].components) for m in METRIC_ORDER}

# Per-patient overrides a clinician might set: (program, rule id, param, values).
OVERRIDES = (
    ("hypertension", "htn.stage2_persistent", "systolic_at_least", (130.0, 135.0, 150.0, 160.0)),
    ("hypertension", "htn.low_bp", "systolic_below", (85.0, 95.0, 100.0)),
    ("heart_failure", "hf.weight_gain_24h", "min_change", (0.7, 1.4, 1.8)),
    ("copd", "copd.spo2_below_target", "target_low", (85.0, 86.0, 90.0)),
    ("diabetes", "dm.glucose_high", "high_above", (200.0, 300.0, 350.0)),
    ("diabetes", "dm.glucose_low", "level1_below", (75.0, 80.0)),
)


def _ok(good: bool) -> str:
    return "ok" if good else "MISSED"


def _say(line: str) -> None:
    print(f"[rules] {line}", file=sys.stderr, flush=True)


# --- the fleet -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Fleet:
    ids: list[str]
    programs: list[tuple[str, ...]]
    contexts: dict[str, PatientContext]
    per_day: dict[str, np.ndarray]  # device kind -> readings a day per patient (0: no device)
    adherence: np.ndarray
    tz_hours: np.ndarray  # UTC offset west, hours
    base: dict[str, np.ndarray]  # personal baselines
    episode: np.ndarray  # primary program index of an episode, -1 for none
    episode_start: np.ndarray
    episode_end: np.ndarray
    overridden: int


def make_fleet(n: int, rng: np.random.Generator, episodes: float, stream_days: float) -> Fleet:
    primary = rng.choice(len(PROGRAMS), n, p=PRIMARY_SHARE)
    has = {p: primary == i for i, p in enumerate(PROGRAMS)}
    for first, (second, share) in SECOND.items():
        has[second] = has[second] | (has[first] & (rng.random(n) < share))
    ids = [f"p{i:06d}" for i in range(n)]
    programs = [
        (PROGRAMS[primary[i]], *(p for p in PROGRAMS if p != PROGRAMS[primary[i]] and has[p][i]))
        for i in range(n)
    ]
    htn, hf, copd, dm = (has[p] for p in PROGRAMS)
    per_day = {
        "bp_cuff": np.where(htn, 2, np.where(hf, 1, 0)),
        "scale": np.where(hf, 1, 0),
        "oximeter": np.where(
            copd, rng.integers(2, 4, n), np.where(hf & (rng.random(n) < 0.25), 1, 0)
        ),
        "glucometer": np.where(dm, rng.choice([1, 2, 3, 4], n, p=[0.2, 0.3, 0.35, 0.15]), 0),
        "thermometer": (rng.random(n) < np.where(copd, 0.15, 0.04)).astype(np.int64),
    }
    base = {
        "systolic": rng.normal(np.where(htn, 127.0, 121.0), 10.0),
        "diastolic": rng.normal(76.0, 6.0, n),
        "pulse": rng.normal(74.0, 9.0, n),
        "weight": rng.normal(np.where(hf, 92.0, 84.0), 17.0).clip(45, 200),
        "spo2": np.where(
            copd, rng.normal(93.5, 1.5, n).clip(89, 97), rng.normal(96.5, 1.0, n).clip(94, 99)
        ),
        "glucose": rng.normal(150.0, 28.0, n).clip(95, 260),
        "temperature": rng.normal(36.7, 0.2, n),
    }
    episode = np.where(rng.random(n) < episodes, primary, -1)
    episode_start = START + rng.uniform(0, max(stream_days - 1, 0.5), n) * DAY
    episode_end = episode_start + rng.uniform(1, 3, n) * DAY
    contexts: dict[str, PatientContext] = {}
    overridden = 0
    chosen = rng.random(n) < 0.01
    for i, pid in enumerate(ids):
        overrides: dict[str, dict[str, float]] = {}
        if chosen[i]:
            fits = [o for o in OVERRIDES if o[0] in programs[i]]
            if fits:
                _, rule_id, param, values = fits[int(rng.integers(len(fits)))]
                overrides[rule_id] = {param: float(rng.choice(values))}
                overridden += 1
        contexts[pid] = PatientContext(pid, programs[i], overrides)
    return Fleet(
        ids,
        programs,
        contexts,
        per_day,
        rng.uniform(0.7, 1.0, n),
        rng.choice([5.0, 6.0, 7.0, 8.0], n),
        base,
        episode,
        episode_start,
        episode_end,
        overridden,
    )


@dataclass(slots=True)
class Schedule:
    """Every reading of the fleet from START - 14 days on, as columns (one row a reading)."""

    patient: np.ndarray  # int32 index into Fleet.ids
    metric: np.ndarray  # int8 index into METRIC_ORDER
    device: np.ndarray  # int8 index into DEVICES
    measured: np.ndarray  # epoch s
    arrived: np.ndarray  # epoch s at the gateway
    values: np.ndarray  # (n, 3), NaN where the metric has no such component

    def take(self, sel: np.ndarray) -> Schedule:
        return Schedule(*(getattr(self, f)[sel] for f in Schedule.__slots__))


def make_schedule(fleet: Fleet, rng: np.random.Generator, days: float, late: float) -> Schedule:
    n = len(fleet.ids)
    cols: dict[str, list[np.ndarray]] = {"patient": [], "device": [], "measured": []}
    first_day = -HISTORY_DAYS - 1  # local days start before UTC midnight of START - 14 d
    for d, (kind, (_, hours)) in enumerate(DEVICES.items()):
        count = fleet.per_day[kind]
        for day in range(first_day, math.ceil(days) + 1):
            for slot, hour in enumerate(hours):
                who = np.flatnonzero((count > slot) & (rng.random(n) < fleet.adherence))
                at = START + day * DAY + (hour + fleet.tz_hours[who]) * HOUR
                cols["patient"].append(who.astype(np.int32))
                cols["device"].append(np.full(len(who), d, np.int8))
                cols["measured"].append(at + rng.normal(0, 0.5 * HOUR, len(who)))
    patient = np.concatenate(cols["patient"])
    device = np.concatenate(cols["device"])
    measured = np.concatenate(cols["measured"]).round(0)  # devices report whole seconds
    keep = (measured >= START - HISTORY_DAYS * DAY) & (measured < START + days * DAY)
    patient, device, measured = patient[keep], device[keep], measured[keep]
    metric_of_device = np.array([METRIC_ORDER.index(m) for m, _ in DEVICES.values()], np.int8)
    metric = metric_of_device[device]
    delay = rng.uniform(2, 60, len(measured))
    is_late = rng.random(len(measured)) < late
    delay[is_late] = rng.uniform(1 * HOUR, 36 * HOUR, int(is_late.sum()))
    values = _values(fleet, rng, patient, metric, measured)
    return Schedule(patient, metric, device, measured, measured + delay, values)


def _values(
    fleet: Fleet, rng: np.random.Generator, p: np.ndarray, metric: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """Each reading's values: the patient's baseline, scatter, and the episode if one is on."""
    out = np.full((len(p), 3), np.nan)
    b = fleet.base
    on = (t >= fleet.episode_start[p]) & (t < fleet.episode_end[p])
    ep = np.where(on, fleet.episode[p], -1)
    crisis, fluid, copd, hypo = (ep == i for i in range(len(PROGRAMS)))
    for m in METRIC_ORDER:
        sel = metric == METRIC_ORDER.index(m)
        k, q = int(sel.sum()), p[sel]
        if not k:
            continue
        if m is Metric.BLOOD_PRESSURE:
            extra = np.where(crisis[sel], rng.normal(52, 8, k), 0.0)
            out[sel, 0] = (b["systolic"][q] + rng.normal(0, 8, k) + extra).round()
            out[sel, 1] = (b["diastolic"][q] + rng.normal(0, 5, k) + extra * 0.4).round()
            out[sel, 2] = (b["pulse"][q] + rng.normal(0, 5, k)).round()
        elif m is Metric.WEIGHT:
            gain = np.where(fluid[sel], 0.8 * (t[sel] - fleet.episode_start[q]) / DAY, 0.0)
            out[sel, 0] = (b["weight"][q] + rng.normal(0, 0.3, k) + gain).round(1)
        elif m is Metric.SPO2:
            drop = np.where(copd[sel], rng.normal(5, 1.5, k), 0.0)
            out[sel, 0] = (b["spo2"][q] + rng.normal(0, 1.0, k) - drop).round().clip(70, 100)
            out[sel, 1] = (b["pulse"][q] + rng.normal(0, 5, k) + 3 * drop).round()
        elif m is Metric.GLUCOSE:
            g = b["glucose"][q] * np.exp(rng.normal(0, 0.25, k))
            low = hypo[sel] & (rng.random(k) < 0.6)
            g[low] = rng.uniform(45, 69, int(low.sum()))
            out[sel, 0] = g.round().clip(20, 600)
        elif m is Metric.BODY_TEMPERATURE:
            out[sel, 0] = (b["temperature"][q] + rng.normal(0, 0.25, k)).round(1)
    return out


def _rows(fleet: Fleet, s: Schedule) -> Iterator[tuple[str, Metric, datetime, dict[str, float]]]:
    """History rows as the database hands them to ``engine.load``."""
    ids = fleet.ids
    for p, m, t, v in zip(
        s.patient.tolist(), s.metric.tolist(), s.measured.tolist(), s.values.tolist(), strict=True
    ):
        metric = METRIC_ORDER[m]
        values = {c: x for c, x in zip(COMPONENTS[metric], v, strict=False) if x == x}
        yield ids[p], metric, datetime.fromtimestamp(t, UTC), values


def batch_contexts(
    fleet: Fleet, batches: Sequence[Sequence[AcceptedReading]]
) -> list[dict[str, PatientContext]]:
    """Each batch's contexts as the ingest unit of work hands them to ``engine.step``: a dict
    of the batch's patients only (``device_store.patient_contexts``), built before the clock."""
    ctx = fleet.contexts
    return [{a.patient_id: ctx[a.patient_id] for a in part} for part in batches]


def build_batches(fleet: Fleet, s: Schedule, batch: int) -> list[list[AcceptedReading]]:
    """The stream as the gateway hands it over: reading objects, received_at once per batch."""
    kinds = tuple(DEVICES)
    device_ids = [[f"{pid}-{k}" for k in kinds] for pid in fleet.ids]
    out: list[list[AcceptedReading]] = []
    rows = list(
        zip(
            s.patient.tolist(),
            s.metric.tolist(),
            s.device.tolist(),
            s.measured.tolist(),
            s.values.tolist(),
            strict=True,
        )
    )
    arrived = s.arrived
    for lo in range(0, len(rows), batch):
        hi = min(lo + batch, len(rows))
        received = datetime.fromtimestamp(float(arrived[hi - 1]) + 0.02, UTC)
        part = []
        for p, m, d, t, v in rows[lo:hi]:
            metric = METRIC_ORDER[m]
            values = {c: x for c, x in zip(COMPONENTS[metric], v, strict=False) if x == x}
            at = datetime.fromtimestamp(t, UTC)
            reading = Reading(device_ids[p][d], metric, values, at, received)
            part.append(AcceptedReading(reading, fleet.ids[p]))
        out.append(part)
    return out


def late_in_order(history: Schedule, stream: Schedule) -> np.ndarray:
    """Per stream reading: older than one of the same patient and metric that came before."""
    key = np.concatenate([history.patient, stream.patient]).astype(np.int64) * 8
    key += np.concatenate([history.metric, stream.metric])
    t = np.concatenate([history.measured, stream.measured]) - (START - 30 * DAY)
    order = np.lexsort((np.concatenate([history.arrived, stream.arrived]), key))
    k, tt = key[order], t[order]
    shifted = k * 1e7 + tt  # keys apart by more than any time span: one running max
    prior = np.concatenate([[-np.inf], np.maximum.accumulate(shifted)[:-1]])
    same = np.concatenate([[False], k[1:] == k[:-1]])
    late = np.empty(len(order), np.bool_)
    late[order] = same & (shifted < prior)
    return late[len(history.patient) :]


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


class GcClock:
    """Time the cyclic garbage collector spends, for the steps (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1


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
        rows = list(_rows(fleet, history.take(np.arange(lo, hi))))
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
) -> Steps:
    """The timed part: engine.step per batch, with the garbage collector as under `rpm serve`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    clock = GcClock()
    gc.callbacks.append(clock)
    out = Steps([], 0, 0.0, 0.0, 0.0, clock, Counter(), 0)
    cpu0, busy0 = time.process_time(), machine_busy_seconds()
    try:
        for part, context in zip(batches, contexts, strict=True):
            if profiler is not None:
                profiler.enable()
            t0 = time.perf_counter()
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
        gc.callbacks.remove(clock)
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
    _say(
        f"{n:,} patients, {len(history.patient):,} history readings, "
        f"{len(stream.patient):,} to stream ({time.perf_counter() - t0:.1f} s to generate)"
    )
    warm = warm_up(engine, fleet, history, args.load_chunk)
    warm.kernels_s = kernels_s
    _say(
        f"warm: engine.load {warm.load_s:.1f} s (+ {warm.build_s:.1f} s building rows); "
        f"{warm.plans} distinct plans compiled in {warm.plans_s:.2f} s"
    )
    t0 = time.perf_counter()
    batches = build_batches(fleet, stream, args.batch)
    late = late_in_order(history, stream)
    _say(f"{len(batches):,} batches built in {time.perf_counter() - t0:.1f} s; stepping")
    profiler = cProfile.Profile() if args.profile else None
    contexts = batch_contexts(fleet, batches)
    steps = run_steps(engine, batches, contexts, args.seconds, profiler)
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
    cpu_model, revision = _cpu_model(), _revision()
    sections = {
        "Environment": [
            ("CPU", cpu_model, f"{os.cpu_count()} CPUs; the engine uses one (single-threaded)"),
            ("Python / numpy", f"{platform.python_version()} / {np.__version__}", ""),
            ("load average", f"{os.getloadavg()[0]:.2f}", "at the end: other work on the machine"),
            ("working tree", revision, "rules/ as measured"),
        ],
        "Fleet": [
            ("patients", f"{n:,}", f"seed {args.seed}"),
            *((f"  {k}", f"{v:,}", f"{100 * v / n:.1f}%") for k, v in mix.most_common()),
            (
                "rules in the programs",
                f"{sum(kinds.values())}",
                ", ".join(f"{k} {v}" for k, v in kinds.most_common()),
            ),
            (
                "devices",
                f"{sum(devices.values()):,}",
                ", ".join(f"{k} {v:,}" for k, v in devices.items()),
            ),
            (
                "per-patient overrides",
                f"{fleet.overridden:,}",
                f"{warm.plans} distinct plans, compiled in {warm.plans_s:.2f} s before timing",
            ),
            (
                "episodes during the stream",
                f"{int((fleet.episode >= 0).sum()):,}",
                "crisis, fluid gain, COPD exacerbation, hypoglycaemia",
            ),
        ],
        f"Warm state: {HISTORY_DAYS} days of history": [
            (
                "compiled loops",
                f"{warm.kernels_s:.1f} s",
                "Engine(): numba's cache loaded (about 7 s to compile on a first run)",
            ),
            ("history readings", f"{history:,}", f"{history / n:.1f} per patient"),
            (
                "engine.load",
                f"{warm.load_s:.1f} s",
                f"{fmt_rate(history / warm.load_s)}, {args.load_chunk:,} patients a call",
            ),
            (
                "building the rows",
                f"{warm.build_s:.1f} s",
                "tuples with datetime and dict: not timed",
            ),
        ],
        "Memory per patient": [
            (
                "numpy arrays (engine.nbytes)",
                f"{buffer_bytes / 2**20:,.0f} MiB",
                f"{buffer_bytes / known:,.0f} B/patient "
                f"({warm.buffer_bytes / 2**20:,.0f} MiB after load)",
            ),
            *per_buffer,
            (
                "  in rows patients use",
                f"{used_bytes / 2**20:,.0f} MiB",
                f"{used_bytes / known:,.0f} B/patient; the rest is room to grow (rows double)",
            ),
            (
                "Python-side state",
                f"{python_bytes / 2**20:,.0f} MiB",
                f"{python_bytes / known:,.0f} B/patient: sys.getsizeof of dicts, sets, keys",
            ),
            ("total", f"{bytes_per_patient:,.0f} B", "per patient: bytes_per_patient"),
            (
                "RSS growth over warm-up",
                f"{warm.rss_growth_mib:,.0f} MiB",
                f"{rss_per_patient:,.0f} B/patient: cross-check, allocator slack included",
            ),
        ],
        f"Stream: micro-batches of {args.batch:,}": [
            (
                "readings stepped",
                f"{stepped:,}",
                f"{len(ordered):,} batches, {simulated_h:.0f} h of the fleet's measured time",
            ),
            (
                "late (older than one held)",
                f"{late_stepped:,}",
                f"{100 * late_stepped / stepped:.2f}%; --late {args.late:g} arrive 1-36 h late",
            ),
            (
                "engine.step throughput",
                fmt_rate(rate),
                f">= {TARGET_RATE:,.0f}/s on one core: {_ok(rate >= TARGET_RATE)}",
            ),
            (
                "step time",
                f"{steps.seconds:.2f} s",
                f"CPU {steps.cpu:.2f} s ({100 * steps.cpu / steps.seconds:.0f}% of one core); "
                f"GC {steps.gc.seconds:.2f} s in {steps.gc.collections} collections",
            ),
            (
                "readings per CPU second",
                fmt_rate(stepped / steps.cpu),
                "the engine's own CPU time: less sensitive to a busy machine",
            ),
            (
                "other processes' CPU",
                f"{steps.others:.1f} s",
                f"meanwhile, on {os.cpu_count()} CPUs: not the engine's (noise in the figures)",
            ),
            ("batch step p50", fmt_ms(p50), ""),
            ("batch step p99", fmt_ms(p99), "added latency of the rule step per batch"),
            ("batch step max", fmt_ms(worst), ""),
        ],
        "Rules": [
            (
                "candidates",
                f"{fired:,}",
                f"{per_1000:.1f} per 1,000 readings; {steps.clears:,} clears",
            ),
            *((f"  {rule}", f"{count:,}", "") for rule, count in steps.candidates.most_common(12)),
        ],
    }
    notes = [
        "Only engine.step is timed; reading objects and contexts are built before the clock.",
        "bytes_per_patient = (engine.nbytes() + Python-side state) / patients held.",
    ]
    if args.profile is not None:
        notes.append(f"PROFILED with cProfile, so slower than unprofiled: {args.profile}")
    table = "\n\n".join([*(render_table(k, v) for k, v in sections.items()), "\n".join(notes)])
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


def _revision() -> str:
    """The commit, and whether rules/ differs from it (the engine is measured as it is)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=_ROOT,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "rules"],
            capture_output=True,
            text=True,
            cwd=_ROOT,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted rules/ changes" if dirty else head


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
    table, result = run(args)
    print(table)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
