"""The ingest unit of work against a real PostgreSQL: store, dedupe, alert, outbox, quarantine."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from rpm.domain import RawMessage
from rpm.pipeline import IngestPipeline
from rpm.storage import registry
from rpm.validation import ClockPolicy

NOW = datetime.now(UTC).replace(microsecond=0)


def msg(device: str, payload: object) -> RawMessage:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return RawMessage("mqtt", "canonical", device, body, NOW, f"rpm/v1/devices/{device}/readings")


def bp(sys_: int, dia: int, minutes_ago: int = 0) -> dict[str, object]:
    at = (NOW - timedelta(minutes=minutes_ago)).isoformat()
    return {
        "metric": "blood_pressure",
        "measured_at": at,
        "values": {"systolic": sys_, "diastolic": dia},
    }


@pytest.fixture
async def enrolled(pool: asyncpg.Pool) -> IngestPipeline:
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn,
            patient_id="pat-1",
            display_name="Ada Example",
            phone="+15550100001",
            sms_consent=True,
            programs=["hypertension"],
        )
        await registry.enroll_device(
            conn,
            device_id="cuff-1",
            kind="bp_cuff",
            patient_id="pat-1",
            since=NOW - timedelta(days=1),
        )
    return IngestPipeline(pool, ClockPolicy(), rules_refresh_s=0)


async def test_readings_are_stored_once_and_a_crisis_opens_one_alert(
    pool: asyncpg.Pool, enrolled: IngestPipeline
) -> None:
    first = await enrolled.process([msg("cuff-1", [bp(130, 80, 10), bp(190, 100, 5)])])
    assert (first.stored, first.duplicates, first.quarantined) == (2, 0, 0)
    assert len(first.alerts_opened) == 1

    # Redelivery of the same message: nothing new stored, nothing evaluated again.
    again = await enrolled.process([msg("cuff-1", [bp(130, 80, 10), bp(190, 100, 5)])])
    assert (again.stored, again.duplicates, again.alerts_opened) == (0, 2, [])

    # A second crisis reading joins the open episode instead of opening another.
    later = await enrolled.process([msg("cuff-1", bp(200, 110, 1))])
    assert later.stored == 1
    assert later.alerts_opened == []

    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM readings") == 3
        alerts = await conn.fetch("SELECT * FROM alerts")
        assert len(alerts) == 1
        assert alerts[0]["occurrences"] == 2
        assert alerts[0]["state"] == "open"
        assert "190/100 mmHg" in alerts[0]["explanation"]
        outbox = await conn.fetch("SELECT channel, payload FROM outbox")
        assert [o["channel"] for o in outbox] == ["sms"]
        assert outbox[0]["payload"]["patient_id"] == "pat-1"
        assert "+1555" not in json.dumps(
            outbox[0]["payload"]
        )  # the number is looked up at send time
        events = await conn.fetch("SELECT action, actor, to_state FROM alert_events")
        assert [tuple(e) for e in events] == [("open", "system:rules", "open")]


async def test_bad_input_is_quarantined_with_reason_and_raw_bytes(
    pool: asyncpg.Pool, enrolled: IngestPipeline
) -> None:
    batch = [
        msg("cuff-1", b'{"metric": "blood_pressure", '),
        msg("stranger-9", bp(120, 80)),
        msg("cuff-1", bp(400, 80)),
        msg("cuff-1", bp(125, 82)),
    ]
    result = await enrolled.process(batch)
    assert result.stored == 1
    assert result.quarantine_reasons == {
        "malformed": 1,
        "unknown_device": 1,
        "implausible_value": 1,
    }
    # The same bad payload again is counted, not stored twice.
    await enrolled.process(batch[:1])
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT reason, device_id, payload, seen_count FROM quarantine ORDER BY id"
        )
    assert [(r["reason"], r["device_id"]) for r in rows] == [
        ("malformed", "cuff-1"),
        ("unknown_device", "stranger-9"),
        ("implausible_value", "cuff-1"),
    ]
    assert bytes(rows[0]["payload"]) == b'{"metric": "blood_pressure", '
    assert rows[0]["seen_count"] == 2


async def test_device_status_is_recorded(pool: asyncpg.Pool, enrolled: IngestPipeline) -> None:
    await enrolled.process(
        [msg("cuff-1", {**bp(120, 80), "device": {"battery": 42, "signal": -71}})]
    )
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT battery, signal, last_seen_at FROM devices WHERE id = 'cuff-1'"
        )
    assert (row["battery"], row["signal"]) == (42, -71)
    assert row["last_seen_at"] == NOW


async def test_readings_hypertable_when_timescaledb_is_installed(
    pool: asyncpg.Pool, services
) -> None:  # type: ignore[no-untyped-def]
    if not services.timescaledb:
        pytest.skip(
            "TimescaleDB extension is not installed in this PostgreSQL: "
            "the plain-PostgreSQL path is in use"
        )
    async with pool.acquire() as conn:
        n = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'readings'"
        )
    assert n == 1


async def test_a_decoder_bug_quarantines_the_payload_instead_of_failing_the_batch(
    pool: asyncpg.Pool, enrolled: IngestPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rpm.pipeline.prepare
    from device_gateways.decoders import DECODERS

    def broken(raw: RawMessage) -> object:
        raise KeyError("a bug")

    monkeypatch.setattr(rpm.pipeline.prepare, "DECODERS", {**DECODERS, "canonical": broken})
    result = await enrolled.process([msg("cuff-1", bp(120, 80))])
    assert result.quarantine_reasons == {"decoder_error": 1}
    async with pool.acquire() as conn:
        detail = await conn.fetchval("SELECT detail FROM quarantine WHERE reason = 'decoder_error'")
    assert detail == "KeyError in the canonical decoder"
