"""The rule benchmark's fleet (``rules.py``): patients with a mix of care programs and the
devices they use at home-measurement rates, adherence and time zones; a few parameter
overrides and episodes (crisis, fluid gain, COPD exacerbation, hypoglycaemia); every reading
as columns, and the stream cut into micro-batches of reading objects."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from rpm.domain import METRICS, AcceptedReading, Metric, Reading
from rules.engine import PatientContext

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


def history_rows(
    fleet: Fleet, s: Schedule
) -> Iterator[tuple[str, Metric, datetime, dict[str, float]]]:
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
