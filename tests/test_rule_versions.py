"""Per-patient rule-state versions: units of work on one patient are serialised across
processes, and a process whose cached state is behind rebuilds it from the database
(rpm/pipeline/freshness.py, rpm/storage/rule_versions.py; docs/architecture.md)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from device_gateways.mqtt import to_raw
from rpm.pipeline import IngestPipeline
from rpm.pipeline.freshness import Freshness
from rpm.storage import registry, rule_versions
from rpm.validation import ClockPolicy


@pytest.mark.pure
def test_a_patient_is_fresh_only_at_the_version_before_the_claim() -> None:
    f = Freshness()
    assert f.stale({"a": 1, "b": 4}) == {"a", "b"}  # never held: load from the database
    f.committed()
    assert f.stale({"a": 2, "b": 6}) == {"b"}  # b was changed elsewhere (5)
    f.committed()
    assert f.stale({"a": 3}) == set()
    f.rolled_back({"a"})  # the unit of work failed: the engine forgot a
    assert f.stale({"a": 3}) == {"a"}


async def _blocked(admin: asyncpg.Connection, pid: int) -> bool:
    return bool(
        await admin.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        )
    )


async def test_a_claim_waits_for_the_other_transaction_on_the_same_patient(db_url: str) -> None:
    first, second, admin = [await asyncpg.connect(db_url) for _ in range(3)]
    try:
        tx = first.transaction()
        await tx.start()
        assert await rule_versions.claim(first, ["p2", "p1"]) == {"p1": 1, "p2": 1}
        waiting = asyncio.create_task(rule_versions.claim(second, ["p3", "p2"]))
        pid = second.get_server_pid()
        while not await _blocked(admin, pid):
            assert not waiting.done(), "the second claim did not wait for the first"
            await asyncio.sleep(0.02)
        await tx.commit()
        assert await waiting == {"p2": 2, "p3": 1}
    finally:
        for c in (first, second, admin):
            await c.close()


def _bp(device: str, at: datetime, systolic: int, diastolic: int) -> bytes:
    doc = {
        "metric": "blood_pressure",
        "measured_at": at.isoformat(),
        "values": {"systolic": systolic, "diastolic": diastolic, "pulse": 80},
    }
    return json.dumps(doc).encode()


async def test_two_pipelines_alternating_on_one_patient_alert_as_one(
    pool: asyncpg.Pool,
) -> None:
    """Stage 2 in 3 of the last 5 (htn.stage2_persistent): readings 1 and 3 reach pipeline A,
    reading 2 pipeline B. A must see B's reading before stepping reading 3, or no alert."""
    now = datetime.now(UTC).replace(microsecond=0)
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn,
            patient_id="pat-fresh",
            display_name="Fresh Example",
            phone=None,
            sms_consent=False,
            programs=["hypertension"],
        )
        await registry.enroll_device(
            conn,
            device_id="cuff-fresh",
            kind="bp_cuff",
            patient_id="pat-fresh",
            since=now - timedelta(days=1),
        )
    a, b = (IngestPipeline(pool, ClockPolicy(), rules_refresh_s=0) for _ in range(2))
    topic = "rpm/v1/devices/cuff-fresh/readings"
    times = [now - timedelta(minutes=30 - 5 * k) for k in range(5)]
    readings = [(120, 80), (150, 95), (152, 96), (151, 94), (118, 78)]
    order = [a, a, b, a, b]  # the first normal reading loads A's state
    opened = []
    for pipeline, at, (sys_, dia) in zip(order, times, readings, strict=True):
        result = await pipeline.process([to_raw(topic, _bp("cuff-fresh", at, sys_, dia), now)])
        opened.append(len(result.alerts_opened))
    assert opened == [0, 0, 0, 1, 0]
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT rule_id, severity FROM alerts WHERE patient_id = 'pat-fresh'"
        )
        version = await conn.fetchval(
            "SELECT version FROM patient_rule_versions WHERE patient_id = 'pat-fresh'"
        )
    assert [tuple(r) for r in rows] == [("htn.stage2_persistent", "MEDIUM")]
    assert version == 5
