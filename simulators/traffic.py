"""The traffic plan: virtual patients, their devices, and every payload they send. Pure.

``build_plan(SimConfig)`` draws patients per care program, simulates their physiology,
adherence, device quirks and scenarios, and returns each payload as a ``Send`` with what the
gateway must do with it (store, quarantine with a reason, or recognise as a duplicate), plus
the ground truth of every scenario. Deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from simulators.scenarios import GroundTruth, ScenarioSpec

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
    """One payload exactly as it goes on the wire, with the outcome the gateway must reach."""

    at: datetime
    device_id: str
    transport: Transport
    payload_format: str
    payload: bytes
    expect: Expect
    readings: int
    keys: tuple[tuple[str, datetime], ...]
    reason: str | None = None


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


@dataclass(frozen=True, slots=True)
class Plan:
    """Patients, their sends sorted by time, and the ground truth of every scenario."""

    config: SimConfig
    patients: tuple[SimPatient, ...]
    sends: tuple[Send, ...]
    truth: tuple[GroundTruth, ...]


def build_plan(cfg: SimConfig) -> Plan:
    """The whole traffic of ``cfg``: deterministic for ``cfg.seed``."""
    raise NotImplementedError
