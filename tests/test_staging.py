"""Batches staged ahead of their unit of work (``rpm.pipeline.staging``): the unit of work of
the very batch staged starts from the staged work, any other batch (an equal copy, a retry
after the staged work was used) is prepared inside its own transaction, as before."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from rpm.domain import RawMessage
from rpm.pipeline import IngestPipeline
from rpm.pipeline.results import Prepared
from rpm.pipeline.staging import STAGED_AT_MOST, StagedBatches
from rpm.storage import registry
from rpm.validation import ClockPolicy

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _msg(device: str, systolic: int, minutes_ago: int) -> RawMessage:
    body = {
        "metric": "blood_pressure",
        "measured_at": (NOW - timedelta(minutes=minutes_ago)).isoformat(),
        "values": {"systolic": systolic, "diastolic": 80},
    }
    return RawMessage(
        "mqtt", "canonical", device, json.dumps(body).encode(), NOW, f"rpm/v1/devices/{device}/r"
    )


async def _enroll(pool: asyncpg.Pool, device: str) -> None:
    async with pool.acquire() as conn:
        await registry.enroll_device(
            conn,
            device_id=device,
            kind="bp_cuff",
            patient_id="pat-1",
            since=NOW - timedelta(days=1),
        )


async def test_the_staged_batch_commits_from_its_staged_work(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn,
            patient_id="pat-1",
            display_name="Staged Example",
            phone="+15550100009",
            sms_consent=True,
            programs=["hypertension"],
        )
    await _enroll(pool, "cuff-1")
    pipeline = IngestPipeline(pool, ClockPolicy(), now=lambda: NOW, rules_refresh_s=0)
    batch = [_msg("cuff-1", 130, 10), _msg("cuff-2", 132, 9)]

    await pipeline.stage(batch)
    await _enroll(pool, "cuff-2")  # after staging: the staged batch read the devices before
    staged = await pipeline.process(batch)
    assert (staged.stored, staged.quarantined) == (1, 1)
    assert staged.quarantine_reasons == {"unknown_device": 1}

    # The same messages in another list: prepared in the transaction, with today's devices.
    fresh = await pipeline.process(list(batch))
    assert (fresh.stored, fresh.duplicates, fresh.quarantined) == (1, 1, 0)
    # And the staged work was used once: the same list again is prepared afresh too.
    again = await pipeline.process(batch)
    assert (again.stored, again.duplicates, again.quarantined) == (0, 2, 0)

    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM readings") == 2
        assert await conn.fetchval("SELECT count(*) FROM quarantine") == 1


@pytest.mark.pure
def test_staged_batches_match_by_identity_and_keep_the_newest() -> None:
    staged = StagedBatches()
    nothing = Prepared([], [], {}, [])
    batches = [[_msg("cuff-1", 120 + i, i)] for i in range(STAGED_AT_MOST + 1)]
    for b in batches:
        staged.put(b, NOW, nothing)
    assert staged.take(list(batches[-1])) is None  # an equal list is not the batch staged
    assert staged.take(batches[0]) is None  # the oldest made room for the newest
    assert staged.take(batches[-1]) == (NOW, nothing)
    assert staged.take(batches[-1]) is None  # taken once
