"""Virtual patients with home devices, producing canonical payloads. Pure (numpy RNG).

Physiology here is deliberately simple (issue 7 deepens it): each patient has a
personal baseline, readings scatter around it, and a scheduled event (a
hypertensive crisis or a desaturation) gives ground truth for the alerts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

DEVICE_KINDS = ("bp_cuff", "pulse_oximeter", "scale")


@dataclass(frozen=True, slots=True)
class VirtualDevice:
    device_id: str
    kind: str


@dataclass(frozen=True, slots=True)
class VirtualPatient:
    patient_id: str
    display_name: str
    phone: str
    programs: tuple[str, ...]
    devices: tuple[VirtualDevice, ...]
    systolic: float
    diastolic: float
    spo2: float
    weight: float
    event: str | None  # "crisis" | "desaturation" | None
    event_at: datetime | None


def make_fleet(
    n: int, *, start: datetime, end: datetime, event_share: float = 0.1, seed: int = 7
) -> list[VirtualPatient]:
    """``n`` patients; about ``event_share`` of them have one event between start and end."""
    rng = np.random.default_rng(seed)
    span = (end - start).total_seconds()
    fleet = []
    for i in range(n):
        pid = f"p{i:05d}"
        event: str | None = None
        event_at: datetime | None = None
        if rng.random() < event_share:
            event = "crisis" if rng.random() < 0.6 else "desaturation"
            event_at = start + timedelta(seconds=float(rng.uniform(0.3, 0.9)) * span)
        fleet.append(
            VirtualPatient(
                patient_id=pid,
                display_name=f"Demo Patient {i}",
                # 555-01xx numbers are reserved for fiction (NANP).
                phone=f"+1555010{i % 100:02d}",
                programs=("hypertension",) if i % 3 else ("copd",),
                devices=tuple(VirtualDevice(f"{pid}-{k}", k) for k in DEVICE_KINDS),
                systolic=float(rng.normal(135, 12)),
                diastolic=float(rng.normal(84, 7)),
                spo2=float(np.clip(rng.normal(95.5, 1.2), 92, 99)),
                weight=float(rng.normal(82, 15)),
                event=event,
                event_at=event_at,
            )
        )
    return fleet


def reading(
    patient: VirtualPatient, device: VirtualDevice, t: datetime, rng: np.random.Generator
) -> dict[str, object]:
    """One canonical reading of ``device`` at ``t``, with the patient's event if it is due."""
    in_event = patient.event_at is not None and t >= patient.event_at
    stamp = t.isoformat().replace("+00:00", "Z")
    battery = int(rng.integers(20, 100))
    if device.kind == "bp_cuff":
        sys_, dia = patient.systolic + rng.normal(0, 8), patient.diastolic + rng.normal(0, 5)
        if in_event and patient.event == "crisis":
            sys_, dia = float(rng.uniform(185, 210)), float(rng.uniform(115, 130))
        return {
            "metric": "blood_pressure",
            "measured_at": stamp,
            "values": {
                "systolic": round(float(sys_)),
                "diastolic": round(float(min(dia, sys_ - 20))),
                "pulse": int(rng.integers(58, 95)),
            },
            "device": {"battery": battery},
        }
    if device.kind == "pulse_oximeter":
        spo2 = patient.spo2 + rng.normal(0, 0.8)
        if in_event and patient.event == "desaturation":
            spo2 = float(rng.uniform(82, 87))
        return {
            "metric": "spo2",
            "measured_at": stamp,
            "values": {"spo2": round(float(min(spo2, 100))), "pulse": int(rng.integers(60, 100))},
            "device": {"battery": battery},
        }
    return {
        "metric": "weight",
        "measured_at": stamp,
        "values": {"weight": round(float(patient.weight + rng.normal(0, 0.3)), 1)},
        "device": {"battery": battery},
    }


def encode_canonical(item: dict[str, object]) -> bytes:
    return json.dumps(item, separators=(",", ":")).encode()


def topic(device_id: str) -> str:
    return f"rpm/v1/devices/{device_id}/readings"
