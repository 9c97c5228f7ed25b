"""Migration 0041: the readings row with typed component slots and an enum metric, and no
index on patient_id (docs/data-lifecycle.md, "Bytes per reading").

An upgrade from 0040 keeps every reading (compressed chunks and continuous aggregates too,
on TimescaleDB), and the reads by patient, the rollups and the duplicate check give what
they gave before. Runs on plain PostgreSQL and on the session's database (TimescaleDB when
installed).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import pytest

from rpm.domain import METRICS, AcceptedReading, Metric
from rpm.storage import corrections, lifecycle
from rpm.storage import readings as reading_store
from rpm.storage.migrate import migrate
from rpm.storage.reading_values import SLOTS, slots_of, values_of
from tests.lifecycle_support import (
    T0,
    add_patients,
    correction_of,
    insert_as_0040,
    migrate_to,
    seeded_readings,
)
from tests.test_lifecycle import _series_match, empty_db  # noqa: F401 - a fixture

Key = tuple[str, str, datetime]


def key_of(a: AcceptedReading) -> Key:
    return (a.reading.device_id, a.reading.metric.value, a.reading.measured_at)


def test_slots_follow_the_metrics_components() -> None:
    for metric, spec in METRICS.items():
        names = tuple(c.name for c in spec.components)
        assert SLOTS[metric.value] == names
        full = {n: float(i + 1) for i, n in enumerate(names)}
        slots = slots_of(metric.value, full)
        assert values_of(metric.value, *slots) == full
    with pytest.raises(ValueError, match="not of weight"):
        slots_of("weight", {"weight": 80.0, "pulse": 60.0})
    with pytest.raises(ValueError, match="needs its component systolic"):
        slots_of("blood_pressure", {"diastolic": 80.0})
    assert values_of("spo2", 97.0, None, None) == {"spo2": 97.0}


async def test_an_upgrade_keeps_every_reading_and_the_reads(empty_db: str) -> None:  # noqa: F811
    conn = await asyncpg.connect(empty_db)
    try:
        await migrate_to(conn, 40)
        patients = ["p1", "p2"]
        await add_patients(conn, patients)
        stored = seeded_readings(11, patients, days=30, per_day=2)
        await insert_as_0040(conn, stored)
        fl = await lifecycle.flavour(conn)
        if fl.timescale:  # as a running deployment has them: old chunks compressed, rollups
            assert await lifecycle.compress_chunks(conn, T0 + timedelta(days=21)) > 0
            await lifecycle.refresh_rollups(conn, T0 + timedelta(days=40))

        assert (await migrate(conn))[0] == "0041_reading_row"

        rows = await conn.fetch(
            "SELECT device_id, metric, measured_at, v1, v2, v3, interpretation FROM readings"
        )
        got = {
            (r["device_id"], r["metric"], r["measured_at"]): values_of(
                r["metric"], r["v1"], r["v2"], r["v3"]
            )
            for r in rows
        }
        assert got == {key_of(a): dict(a.reading.values) for a in stored}
        assert {r["interpretation"] for r in rows} == {"N"}
        indexes = await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'readings' ORDER BY 1"
        )
        by_patient = [i for i in indexes if "patient_id" in i["indexdef"]]
        # Plain PostgreSQL finds a patient's readings through the devices; a hypertable keeps
        # the patient index for its uncompressed chunks (0041_reading_row.timescale.sql).
        assert len(by_patient) == (1 if fl.timescale else 0), indexes
        if fl.timescale:
            settings = await conn.fetch(
                """SELECT attname, segmentby_column_index, orderby_column_index
                     FROM timescaledb_information.compression_settings
                    WHERE hypertable_name = 'readings' ORDER BY attname"""
            )
            assert {r["attname"] for r in settings} >= {"metric", "patient_id", "device_id"}

        # The reads of a patient find them through the patient's devices.
        p1 = [a for a in stored if a.patient_id == "p1"]
        newest = await reading_store.for_patient(conn, "p1", limit=5)
        want = sorted(p1, key=lambda a: a.reading.measured_at, reverse=True)[:5]
        assert [key_of(s.accepted) for s in newest] == [key_of(a) for a in want]
        assert [s.accepted.reading.values for s in newest] == [a.reading.values for a in want]
        weights = await reading_store.for_patient(conn, "p1", metrics=["weight"], limit=3)
        assert all(s.accepted.reading.metric is Metric.WEIGHT for s in weights)
        assert len(weights) == 3

        # A correction, then the rollups equal the raw aggregate (real-time aggregation
        # answers on TimescaleDB until the scheduler refreshes the new continuous aggregates).
        wrong = p1[7]
        await corrections.record(conn, [correction_of(wrong)], T0 + timedelta(days=40))
        kept = [a for a in stored if a is not wrong]
        await _series_match(conn, kept, patients)

        # The migrated rows still stop duplicates; a new reading is stored in slots.
        assert await reading_store.insert_new(conn, stored) == []
        found = await reading_store.by_uid(conn, str(p1[0].reading.uid))
        assert found is not None
        assert found.accepted.reading.values == p1[0].reading.values
    finally:
        await conn.close()
