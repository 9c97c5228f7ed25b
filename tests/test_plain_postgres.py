"""The same schema and unit of work on plain PostgreSQL (what a machine without the
TimescaleDB extension runs), whatever this machine has installed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rpm.domain import RawMessage
from rpm.pipeline import IngestPipeline
from rpm.storage import registry
from rpm.storage.migrate import migrate
from rpm.storage.pool import connect, create_pool
from rpm.validation import ClockPolicy
from simulators.localservices import LocalServices


async def test_migrations_and_ingest_on_plain_postgresql(tmp_path: Path) -> None:
    local = LocalServices(tmp_path / "plain", timescaledb=False, log=lambda line: None)
    endpoints = local.start()
    try:
        assert endpoints.timescaledb is False
        conn = await connect(endpoints.database_url)
        try:
            applied = await migrate(conn)
            assert applied[0] == "0001_core"
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
                )
                == 0
            )
            assert await conn.fetchval("SELECT bool_and(NOT timescale) FROM schema_migrations")
            now = datetime.now(UTC).replace(microsecond=0)
            await registry.upsert_patient(
                conn, patient_id="p", display_name="x", phone=None, sms_consent=False
            )
            await registry.enroll_device(
                conn,
                device_id="cuff",
                kind="bp_cuff",
                patient_id="p",
                since=now - timedelta(days=1),
            )
        finally:
            await conn.close()
        pool = await create_pool(endpoints.database_url, size=2)
        try:
            payload = json.dumps(
                {
                    "metric": "blood_pressure",
                    "measured_at": now.isoformat(),
                    "values": {"systolic": 195, "diastolic": 100},
                }
            ).encode()
            raw = RawMessage(
                "mqtt", "canonical", "cuff", payload, now, "rpm/v1/devices/cuff/readings"
            )
            result = await IngestPipeline(pool, ClockPolicy(), rules_refresh_s=0).process(
                [raw, raw]
            )
            assert (result.stored, result.duplicates, len(result.alerts_opened)) == (1, 1, 1)
        finally:
            await pool.close()
    finally:
        local.stop()
