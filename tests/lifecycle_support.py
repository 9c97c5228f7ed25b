"""Helpers of the lifecycle and rollup tests: empty databases (on the plain PostgreSQL of the
``plain_services`` fixture, or the session's), databases migrated up to a version, seeded
readings and the raw aggregate the rollups must equal."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from itertools import count

import asyncpg
import orjson

from rpm.domain import METRICS, AcceptedReading, Metric, Reading
from rpm.local_endpoints import ServiceEndpoints
from rpm.storage.corrections import Correction
from rpm.storage.migrate import migrate
from rpm.storage.rollups import Bucket, Summary
from tests.conftest import with_database

T0 = datetime(2025, 3, 1, tzinfo=UTC)
_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)
_names = count()


async def empty_database(services: ServiceEndpoints) -> AsyncIterator[str]:
    """A new empty database on ``services``' PostgreSQL, dropped after."""
    name = f"lifecycle_{os.getpid()}_{next(_names)}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield with_database(services.database_url, name)
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


async def migrate_to(conn: asyncpg.Connection, last: int) -> None:
    """Apply the shipped migrations up to ``last``, as a database of that age has them."""
    await migrate(conn, up_to=last)


def _jsonb_rows(readings: list[AcceptedReading]) -> list[tuple[object, ...]]:
    """(measured, device, metric, patient, components as jsonb text, received): the readings
    as the schemas before 0041 stored them."""
    return [
        (
            a.reading.measured_at,
            a.reading.device_id,
            a.reading.metric.value,
            a.patient_id,
            orjson.dumps(dict(a.reading.values)).decode(),
            a.reading.received_at,
        )
        for a in readings
    ]


async def insert_with_uid(conn: asyncpg.Connection, readings: list[AcceptedReading]) -> None:
    """Store readings as the schema before 0039 did, with their uid (0003's UUIDv5)."""
    await conn.executemany(
        """INSERT INTO readings (measured_at, device_id, metric, patient_id, uid, components,
                                 received_at)
           VALUES ($1, $2, $3, $4, rpm_reading_uid($2, $3, $1), $5::jsonb, $6)""",
        _jsonb_rows(readings),
    )


async def insert_as_0040(conn: asyncpg.Connection, readings: list[AcceptedReading]) -> None:
    """Store readings as the schema before 0041 did: jsonb components, a text metric."""
    await conn.executemany(
        """INSERT INTO readings (measured_at, device_id, metric, patient_id, components,
                                 received_at, interpretation)
           VALUES ($1, $2, $3, $4, $5::jsonb, $6, 'N')""",
        _jsonb_rows(readings),
    )


async def add_patients(conn: asyncpg.Connection, ids: Iterable[str]) -> None:
    """Patients, each with the cuff and the scale ``seeded_readings`` reads from, bound since
    2000 (readings are attributed through bindings, and a patient's are found through them:
    migration 0041)."""
    ids = list(ids)
    await conn.executemany(
        "INSERT INTO patients (id, display_name) VALUES ($1, 'test')", [(i,) for i in ids]
    )
    devices = [(f"{p}-{kind}", kind, p) for p in ids for kind in ("cuff", "scale")]
    await conn.executemany(
        "INSERT INTO devices (id, kind) VALUES ($1, $2)", [(d, k) for d, k, _ in devices]
    )
    await conn.executemany(
        """INSERT INTO device_bindings (device_id, patient_id, during)
           VALUES ($1, $2, tstzrange('2000-01-01', NULL))""",
        [(d, p) for d, _, p in devices],
    )


def seeded_readings(
    seed: int, patients: list[str], days: int, per_day: int
) -> list[AcceptedReading]:
    """Blood pressure (pulse on half of them) and weight for each patient, ``per_day`` a day
    from T0, at seeded minutes; values seeded too."""
    rng = random.Random(seed)
    out = []
    for p in patients:
        for day in range(days):
            for k in range(per_day):
                at = T0 + timedelta(days=day, hours=k * (24 // per_day), minutes=rng.randrange(60))
                bp: dict[str, float] = {
                    "systolic": rng.randrange(95, 190) + 0.5 * rng.randrange(2),
                    "diastolic": float(rng.randrange(55, 110)),
                }
                if rng.random() < 0.5:
                    bp["pulse"] = float(rng.randrange(50, 120))
                out.append(_accepted(p, f"{p}-cuff", Metric.BLOOD_PRESSURE, bp, at))
                weight = {"weight": round(rng.uniform(60, 120), 1)}
                out.append(_accepted(p, f"{p}-scale", Metric.WEIGHT, weight, at))
    return out


def _accepted(
    patient: str, device: str, metric: Metric, values: dict[str, float], at: datetime
) -> AcceptedReading:
    return AcceptedReading(Reading(device, metric, values, at, at + timedelta(seconds=5)), patient)


def correction_of(a: AcceptedReading) -> Correction:
    r = a.reading
    return Correction(
        r.device_id,
        r.metric.value,
        r.measured_at,
        a.patient_id,
        "entered-in-error",
        "staff",
        "staff:test",
        "wrong cuff",
    )


def raw_buckets(
    readings: Iterable[AcceptedReading],
    patient: str,
    metric: Metric,
    grain: timedelta,
    start: datetime,
    end: datetime,
) -> list[Bucket]:
    """The aggregate the rollups must equal, computed here from the readings themselves."""
    groups: dict[datetime, list[AcceptedReading]] = {}
    for a in readings:
        r = a.reading
        if a.patient_id != patient or r.metric is not metric:
            continue
        b = _ORIGIN + ((r.measured_at - _ORIGIN) // grain) * grain
        if start <= b < end:
            groups.setdefault(b, []).append(a)
    out = []
    for b in sorted(groups):
        parts = {}
        for c in METRICS[metric].components:
            vals = [a.reading.values[c.name] for a in groups[b] if c.name in a.reading.values]
            if vals:
                parts[c.name] = Summary(len(vals), min(vals), max(vals), sum(vals) / len(vals))
        out.append(Bucket(b, len(groups[b]), parts))
    return out


def same(got: list[Bucket], want: list[Bucket]) -> bool:
    """Equal, the means within float rounding (sums are added in another order)."""
    if [(b.start, b.count, set(b.components)) for b in got] != [
        (b.start, b.count, set(b.components)) for b in want
    ]:
        return False
    for g, w in zip(got, want, strict=True):
        for name, s in w.components.items():
            t = g.components[name]
            if (t.count, t.min, t.max) != (s.count, s.min, s.max) or abs(t.mean - s.mean) > 1e-9:
                return False
    return True
