"""The traffic plan: virtual patients, their devices, and every payload they send. Pure.

``build_plan(SimConfig)`` draws patients per care program, simulates their physiology,
adherence, device quirks and scenarios, and returns each payload as a ``Send`` with what the
gateway must do with it (store, quarantine with a reason, or recognise as a duplicate), plus
the ground truth of every scenario. Deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Literal

import numpy as np
import numpy.typing as npt

from device_gateways.decoders import DECODERS
from rpm.domain import Metric, Reading
from simulators.adherence import (
    RANDOM_REMEASURE,
    SECOND_READING,
    alarming,
    draw_adherence,
    local_midnights,
    sessions,
)
from simulators.labels import (
    LabelSpec,
    PatientLabels,
    draw_labels,
    label_person,
    measuring_days,
    unplugged_at,
)
from simulators.patients import PROGRAM_DEVICES, draw_programs, identity
from simulators.physiology import DAY_S, F64, Days, Person, displayed, draw_person, measure
from simulators.quirks import (
    CANNOT_CARRY,
    MALFORMED,
    draw_battery,
    draw_skew,
    factory_clock,
    implausible,
    payload,
    stored_keys,
)
from simulators.scenarios import KINDS, GroundTruth, ScenarioSpec, default_scenarios, silenced

Transport = Literal["mqtt", "http"]
Expect = Literal["stored", "quarantined", "duplicate"]


@dataclass(frozen=True, slots=True)
class SimDevice:
    """A virtual device: its id on the topic or in the vendor payload, kind and format."""

    device_id: str
    kind: str
    payload_format: str
    transport: Transport


@dataclass(frozen=True, slots=True)
class SimPatient:
    """A fictional patient (name and NANP 555-01xx phone are fiction) with devices."""

    patient_id: str
    display_name: str
    phone: str
    timezone: str
    language: str
    programs: tuple[str, ...]
    devices: tuple[SimDevice, ...]


@dataclass(frozen=True, slots=True)
class Send:
    """One payload exactly as it goes on the wire, with the outcome the gateway must reach.

    ``readings``/``keys`` are what the gateway decodes from the payload (a pulse some formats
    carry apart counts as its own heart-rate reading): stored for ``stored``, already stored
    for ``duplicate``, refused by validation for ``quarantined`` with ``implausible_value``
    or ``stale_timestamp``; none for ``malformed`` (nothing decodes). A bad send comes
    shortly before the good send of the same session, so nothing measured is lost.
    """

    at: datetime
    device_id: str
    transport: Transport
    payload_format: str
    payload: bytes
    expect: Expect
    readings: int
    keys: tuple[tuple[str, datetime], ...]
    reason: str | None = None
    battery: float | None = None  # the battery % the payload reports, when its format has one


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate: how many patients, over which span, with which scenarios and noise."""

    patients: int
    start: datetime
    end: datetime
    seed: int = 7
    scenarios: tuple[ScenarioSpec, ...] | None = None
    malformed_share: float = 0.01
    duplicate_share: float = 0.01
    http_share: float = 0.25
    formats: tuple[str, ...] = ()
    # Before every patient id (and so every device id, vendor ids in payloads included):
    # runs against a shared deployment enrol a fleet of their own (rpm simulate --external).
    id_prefix: str = ""
    # Background labels (simulators.labels) beyond skips_days, which every patient carries.
    labels: tuple[LabelSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """Patients, their sends sorted by time, and the ground truth of every scenario."""

    config: SimConfig
    patients: tuple[SimPatient, ...]
    sends: tuple[Send, ...]
    truth: tuple[GroundTruth, ...]
    labels: Mapping[str, PatientLabels] = field(default_factory=dict)  # by patient id


# Device kind -> the metric of its readings (its components come from the signal model).
_METRIC: Mapping[str, Metric] = MappingProxyType(
    {
        "bp_cuff": Metric.BLOOD_PRESSURE,
        "pulse_oximeter": Metric.SPO2,
        "scale": Metric.WEIGHT,
        "glucometer": Metric.GLUCOSE,
        "thermometer": Metric.BODY_TEMPERATURE,
    }
)
# Seconds from the last reading of a session to its upload: a device publishing over MQTT
# (cellular or phone gateway), or a vendor cloud forwarding its webhook (simulator's choice).
_DELAY_S: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"mqtt": (1.0, 20.0), "http": (30.0, 600.0)}
)
_RESEND_S = (2.0, 300.0)  # an identical re-send after a lost acknowledgement
_BAD_LEAD_S = 45.0  # a bad attempt comes this long before the good reading that follows it
_FAULTS_STREAM = 0xFA17  # the fleet-wide random stream that picks bad and repeated sessions


@dataclass(frozen=True, slots=True)
class _Session:
    """A measuring session's good payload, and what a fault made of it would need."""

    device: SimDevice
    send: Send
    first: Reading  # a malformed attempt is made from the session's first reading
    started: float  # true start of the session (epoch s)


def build_plan(cfg: SimConfig) -> Plan:
    """The whole traffic of ``cfg``: deterministic for ``cfg.seed``."""
    _check(cfg)
    specs = list(cfg.scenarios) if cfg.scenarios is not None else default_scenarios()
    formats = cfg.formats or tuple(DECODERS)
    rng = np.random.default_rng(cfg.seed)
    programs = draw_programs(cfg.patients, rng)
    events = _assign(specs, programs, cfg, rng)
    patients: list[SimPatient] = []
    sessions_: list[_Session] = []
    truth: list[GroundTruth] = []
    labels: dict[str, PatientLabels] = {}
    for i, program in enumerate(programs):
        event = events.get(i)
        patient, patient_sessions, labelled = _patient(i, program, event, cfg, formats)
        patients.append(patient)
        labels[patient.patient_id] = labelled
        sessions_.extend(patient_sessions)
        if event is not None:
            spec, onset = event
            truth.append(
                GroundTruth(
                    patient.patient_id,
                    spec.name,
                    spec.kind,
                    datetime.fromtimestamp(onset, UTC),
                    frozenset(spec.detected_by),
                )
            )
    sends = [x.send for x in sessions_] + _faults(sessions_, cfg)
    sends.sort(key=lambda s: (s.at, s.device_id, s.expect))
    return Plan(cfg, tuple(patients), tuple(sends), tuple(truth), labels)


def _faults(sessions_: list[_Session], cfg: SimConfig) -> list[Send]:
    """Malformed attempts and repeated payloads for shares of the sessions.

    Each share is an exact count over the whole fleet's sessions (rounded, and at least one
    when the share is above zero and there is a session), picked from one stream of the
    seed, and the bad ones take the kinds of ``MALFORMED`` in turn (the first is truncated
    JSON): a plan with a malformed share always holds a malformed payload, whatever its span.
    """
    rng = np.random.default_rng([cfg.seed, _FAULTS_STREAM])
    out: list[Send] = []
    for turn, i in enumerate(_pick(len(sessions_), cfg.malformed_share, rng)):
        x = sessions_[int(i)]
        out.append(_bad_send(x.device, x.first, turn % len(MALFORMED), x.started, rng))
    t1 = cfg.end.timestamp()
    for i in _pick(len(sessions_), cfg.duplicate_share, rng):
        good = sessions_[int(i)].send
        at_s = good.at.timestamp() + float(rng.uniform(*_RESEND_S))
        if at_s < t1:
            out.append(replace(good, at=_utc(at_s), expect="duplicate"))
    return out


def _pick(n: int, share: float, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """``round(share * n)`` distinct indices below ``n``, at least one when share > 0."""
    k = min(n, max(round(share * n), 1 if share > 0 else 0))
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def _check(cfg: SimConfig) -> None:
    if cfg.start.tzinfo is None or cfg.end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if cfg.end <= cfg.start:
        raise ValueError("end must be after start")
    if cfg.patients < 0:
        raise ValueError("patients cannot be negative")
    for name in ("malformed_share", "duplicate_share", "http_share"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    unknown = [f for f in cfg.formats if f not in DECODERS]
    if unknown:
        raise ValueError(f"unknown formats {unknown}; the gateway decodes {sorted(DECODERS)}")
    names = [s.name for s in cfg.scenarios or ()]
    if len(set(names)) != len(names):
        raise ValueError(f"scenario names must be unique (ground truth names them): {names}")


def _assign(
    specs: list[ScenarioSpec], programs: list[str], cfg: SimConfig, rng: np.random.Generator
) -> dict[int, tuple[ScenarioSpec, float]]:
    """Patient index -> (scenario, onset in epoch s); one scenario per patient at most."""
    t0, t1 = cfg.start.timestamp(), cfg.end.timestamp()
    events: dict[int, tuple[ScenarioSpec, float]] = {}
    for spec in specs:
        members = [i for i, p in enumerate(programs) if p == spec.program]
        free = [i for i in members if i not in events]
        k = min(len(free), round(spec.share * len(members)))
        if k == 0:
            continue
        for i in rng.choice(free, size=k, replace=False):
            low, high = spec.onset
            onset = t0 + float(rng.uniform(low, high)) * (t1 - t0)
            events[int(i)] = (spec, float(np.floor(onset)))
    return events


def _devices(
    pid: str, program: str, cfg: SimConfig, formats: tuple[str, ...], rng: np.random.Generator
) -> tuple[SimDevice, ...]:
    devices = []
    for kind in PROGRAM_DEVICES[program]:
        metric = _METRIC[kind]
        carriers = [f for f in formats if metric not in CANNOT_CARRY.get(f, frozenset())]
        # Over MQTT devices speak canonical JSON (device_gateways.mqtt decodes nothing else).
        mqtt_ok = "canonical" in formats
        if carriers and (not mqtt_ok or rng.random() < cfg.http_share):
            fmt = carriers[int(rng.integers(len(carriers)))]
            devices.append(SimDevice(f"{pid}-{kind}", kind, fmt, "http"))
        elif mqtt_ok:
            devices.append(SimDevice(f"{pid}-{kind}", kind, "canonical", "mqtt"))
        else:
            raise ValueError(f"no format in {formats} can carry {metric.value}")
    return tuple(devices)


def _patient(
    i: int,
    program: str,
    event: tuple[ScenarioSpec, float] | None,
    cfg: SimConfig,
    formats: tuple[str, ...],
) -> tuple[SimPatient, list[_Session], PatientLabels]:
    # Each patient draws from its own stream: its traffic does not depend on the others'.
    rng = np.random.default_rng([cfg.seed, i])
    pid = f"{cfg.id_prefix}p{i:05d}"
    name, phone, zone, language = identity(i, rng)
    span = (cfg.start.timestamp(), cfg.end.timestamp())
    names, unplugged = draw_labels(cfg.seed, i, program, cfg.labels, span)
    person = label_person(draw_person(program, rng), names, cfg.seed, i)
    devices = _devices(pid, program, cfg, formats, rng)
    patient = SimPatient(
        pid, name, phone, zone, language, () if program == "general" else (program,), devices
    )
    midnights, offsets = local_midnights(cfg.start, cfg.end, zone)
    days = Days.draw(len(midnights), rng)
    measuring = rng.random(len(midnights)) < draw_adherence(rng)
    measuring = measuring_days(names, midnights, zone, measuring)
    found: list[_Session] = []
    for device in devices:
        made = _device_sessions(
            device, person, event, midnights, offsets, measuring, days, cfg, rng
        )
        found.extend(x for x in made if not unplugged_at(unplugged, device.kind, x.started))
    return patient, found, PatientLabels(pid, program, tuple(names), person, unplugged)


def _values(
    kind: str,
    person: Person,
    t: F64,
    day: npt.NDArray[np.intp],
    offsets: F64,
    days: Days,
    event: tuple[ScenarioSpec, float] | None,
    rng: np.random.Generator,
) -> dict[str, F64]:
    values = measure(kind, person, t, offsets[day], day.astype(np.float64), days, rng)
    if event is not None:
        spec, onset = event
        values = KINDS[spec.kind].trajectory(spec, onset, kind, t, values)
    return displayed(values)


def _session_times(
    device: SimDevice,
    event: tuple[ScenarioSpec, float] | None,
    midnights: F64,
    measuring: npt.NDArray[np.bool_],
    cfg: SimConfig,
    rng: np.random.Generator,
) -> tuple[F64, npt.NDArray[np.intp]]:
    """Session start times (epoch s) inside the span, and their local day index."""
    t, day = sessions(device.kind, midnights, measuring, rng)
    if event is not None:
        spec, onset = event
        kind = KINDS[spec.kind]
        if kind.check_device == device.kind and kind.checks:
            checks = onset + np.array(kind.checks) * 60.0 + rng.uniform(-120, 120, len(kind.checks))
            check_days = np.searchsorted(midnights, checks, side="right") - 1
            t = np.concatenate([t, checks])
            day = np.concatenate([day, np.clip(check_days, 0, len(midnights) - 1)])
        if device.kind in silenced(spec):
            keep = t < onset
            t, day = t[keep], day[keep]
    inside = (t >= cfg.start.timestamp()) & (t < cfg.end.timestamp())
    order = np.argsort(t[inside], kind="stable")
    return t[inside][order], day[inside][order]


def _device_sessions(
    device: SimDevice,
    person: Person,
    event: tuple[ScenarioSpec, float] | None,
    midnights: F64,
    offsets: F64,
    measuring: npt.NDArray[np.bool_],
    days: Days,
    cfg: SimConfig,
    rng: np.random.Generator,
) -> list[_Session]:
    kind = device.kind
    start, day = _session_times(device, event, midnights, measuring, cfg, rng)
    n = len(start)
    if n == 0:
        return []
    first = _values(kind, person, start, day, offsets, days, event, rng)
    # Extra readings of a session: the ESH's second reading, and re-measurement bursts after
    # an alarming first reading (or, now and then, for no reason).
    second = (rng.random(n) < SECOND_READING[kind]).astype(np.intp)
    bursts = np.where(
        alarming(first), rng.integers(1, 3, n), (rng.random(n) < RANDOM_REMEASURE).astype(np.intp)
    )
    extras = second + bursts
    of = np.repeat(np.arange(n), extras)
    position = np.arange(len(of)) - np.repeat(np.cumsum(extras) - extras, extras) + 1
    t_extra = start[of] + position * 90.0 + rng.uniform(0.0, 60.0, len(of))
    more = _values(kind, person, t_extra, day[of], offsets, days, event, rng)
    session = np.concatenate([np.arange(n), of])
    t_all = np.concatenate([start, t_extra])
    order = np.lexsort((t_all, session))
    session, t_all = session[order], t_all[order]
    values = {c: np.concatenate([first[c], more[c]])[order] for c in first}
    bounds = np.searchsorted(session, np.arange(n + 1))

    skew = draw_skew(rng)
    battery0, drain = draw_battery(rng)
    delays = rng.uniform(*_DELAY_S[device.transport], n)
    t0, t1 = cfg.start.timestamp(), cfg.end.timestamp()
    http = device.transport == "http"
    fmt = device.payload_format
    metric = _METRIC[kind]
    components = list(values)
    seen: set[float] = set()
    found: list[_Session] = []
    # Python lists: the loop below reads one element at a time.
    clock = np.floor(t_all + skew).tolist()  # the device's clock, whole seconds
    true_t = t_all.tolist()
    rows = list(zip(*(values[c].tolist() for c in components), strict=True))
    delay_s = delays.tolist()
    for s in range(n):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        readings = []
        for j in range(lo, hi):
            measured = clock[j]
            # One reading per device and second (its identity); none stamped before the
            # span, when devices are bound to their patients.
            if measured in seen or measured < t0:
                continue
            seen.add(measured)
            when = datetime.fromtimestamp(measured, UTC)
            vals = dict(zip(components, rows[j], strict=True))
            readings.append(Reading(device.device_id, metric, vals, when, when))
        if not readings:
            continue
        newest = max(r.measured_at.timestamp() for r in readings)
        at_s = max(true_t[hi - 1] + delay_s[s], newest + 1.0)
        if at_s >= t1:
            continue
        battery = None
        if fmt == "canonical":
            battery = float(round(max(battery0 - drain * (true_t[lo] - t0) / DAY_S, 1.0)))
        body = payload(fmt, http, readings, device.device_id, battery)
        keys = tuple(stored_keys(fmt, readings))
        good = Send(
            _utc(at_s), device.device_id, device.transport, fmt, body, "stored", len(keys), keys,
            battery=battery,
        )  # fmt: skip
        found.append(_Session(device, good, readings[0], true_t[lo]))
    return found


def _bad_send(
    device: SimDevice, reading: Reading, pick: int, true_t: float, rng: np.random.Generator
) -> Send:
    """A failed attempt shortly before ``reading``: one of ``MALFORMED`` the format allows."""
    http = device.transport == "http"
    fmt = device.payload_format
    lead = timedelta(seconds=_BAD_LEAD_S)
    base = Reading(
        reading.device_id,
        reading.metric,
        dict(reading.values),
        reading.measured_at - lead,
        reading.received_at - lead,
    )
    names = list(MALFORMED)
    for step in range(len(names)):
        name = names[(pick + step) % len(names)]
        bad = MALFORMED[name]
        body = bad.make(fmt, http, base, device.device_id)
        if body is not None:
            break
    assert body is not None  # truncation works for every format
    keys: tuple[tuple[str, datetime], ...] = ()
    if bad.decodes:
        sent = implausible(base) if name == "implausible_value" else factory_clock(base)
        keys = tuple(stored_keys(fmt, [sent]))
    at_s = max(
        true_t - _BAD_LEAD_S + float(rng.uniform(1.0, 20.0)), base.measured_at.timestamp() + 1
    )
    return Send(
        _utc(at_s), device.device_id, device.transport, fmt, body, "quarantined", len(keys), keys,
        reason=bad.reason,
    )  # fmt: skip


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(round(epoch_s, 3), UTC)
