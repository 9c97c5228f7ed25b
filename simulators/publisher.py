"""Publishes a virtual fleet's readings to the broker at QoS 1 (the device side)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiomqtt
import numpy as np

from .fleet import VirtualPatient, encode_canonical, reading, topic


@dataclass(slots=True)
class PublishStats:
    sent: int = 0
    malformed: int = 0


@dataclass(frozen=True, slots=True)
class BrokerLogin:
    host: str
    port: int
    username: str | None
    password: str | None


async def run_fleet(
    fleet: list[VirtualPatient],
    login: BrokerLogin,
    *,
    sim_start: datetime,
    sim_end: datetime,
    wall_seconds: float,
    measurements_per_day: int = 2,
    malformed_share: float = 0.01,
    stats: PublishStats | None = None,
    seed: int = 11,
) -> PublishStats:
    """Replay ``sim_start..sim_end`` of measurements in ``wall_seconds`` of wall time."""
    stats = stats or PublishStats()
    rng = np.random.default_rng(seed)
    days = (sim_end - sim_start).total_seconds() / 86400
    events: list[tuple[datetime, int, int]] = []
    for pi, p in enumerate(fleet):
        per_device = max(1, round(days * measurements_per_day))
        for di in range(len(p.devices)):
            offsets = np.sort(rng.uniform(0, (sim_end - sim_start).total_seconds(), per_device))
            events.extend((sim_start + timedelta(seconds=float(o)), pi, di) for o in offsets)
        if p.event_at is not None and sim_start <= p.event_at < sim_end:
            # Make sure the event is measured: one reading of every device just after it.
            for di in range(len(p.devices)):
                events.append((p.event_at + timedelta(minutes=1 + di), pi, di))
    events.sort()
    speed = (sim_end - sim_start).total_seconds() / max(wall_seconds, 0.001)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with aiomqtt.Client(
        login.host, login.port, username=login.username, password=login.password
    ) as client:
        for when, pi, di in events:
            due = t0 + (when - sim_start).total_seconds() / speed
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            patient = fleet[pi]
            device = patient.devices[di]
            if rng.random() < malformed_share:
                payload = b'{"metric": "blood_pressure", "values": '  # truncated JSON
                stats.malformed += 1
            else:
                payload = encode_canonical(reading(patient, device, when, rng))
            await client.publish(topic(device.device_id), payload, qos=1)
            stats.sent += 1
    return stats
