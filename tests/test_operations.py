"""Operations: /metrics after real traffic through a real server, /healthz and /readyz as the
database, the broker and the migrations come and go, JSON log lines, and
docs/configuration.md's table of settings. (Graceful shutdown of a real ``rpm serve`` is in
tests/test_reliability.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from alerts.sms import SentSms, TwilioSms
from rpm.local_endpoints import ServiceEndpoints, settings_for_local
from rpm.logging_setup import JsonFormatter
from rpm.server import Server
from rpm.settings import ApiSettings, Settings, SmsSettings, env_name, table
from rpm.storage import outbox as outbox_store
from rpm.storage import registry
from rpm.workers.sms_config import DeliveryConfig
from rpm.workers.sms_outbox import SmsOutboxWorker
from simulators.localservices import LocalServices, free_port
from simulators.twilio_sink import TwilioSink
from tests import helpers
from tests.conftest import TWILIO_SID, TWILIO_TOKEN
from tests.helpers import eventually
from tests.test_reliability import durable_db, local  # noqa: F401 - fixtures used below
from tests.twilio_support import add_alert, add_patient, patient_payload

ROOT = Path(__file__).resolve().parents[1]
# The page holding the settings table between <!-- settings-table:start --> and :end -->.
SETTINGS_TABLE = ROOT / "docs" / "configuration.md"
PATIENT, CUFF, PHONE = "pat-ops", "cuff-ops", "+15550100077"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape by (name, sorted labels), via prometheus_client's parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(http: httpx.AsyncClient) -> tuple[str, Samples]:
    r = await http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    return r.text, parse(r.text)


def bp(systolic: int, diastolic: int, minutes_ago: int) -> dict[str, object]:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes_ago)
    return {
        "metric": "blood_pressure",
        "measured_at": at.isoformat(),
        "values": {"systolic": systolic, "diastolic": diastolic, "pulse": 80},
    }


def publish(services: ServiceEndpoints, device: str, payload: bytes) -> None:
    result = helpers.mosquitto_pub(
        services.mqtt_port,
        services.mqtt_device_username,
        services.mqtt_device_password,
        f"rpm/v1/devices/{device}/readings",
        payload,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def server_settings(server_settings: Settings) -> Settings:
    """The suite's settings, with /metrics querying the database on every scrape."""
    return server_settings.updated(operations={"metrics_cache_s": 0.0})


async def count(pool: asyncpg.Pool, sql: str) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval(sql))


async def test_metrics_count_real_traffic(
    server: Server, services: ServiceEndpoints, twilio: TwilioSink
) -> None:
    pool = server.pool
    assert pool is not None
    since = datetime.now(UTC) - timedelta(days=1)
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn,
            patient_id=PATIENT,
            display_name="Ada Example",
            phone=PHONE,
            sms_consent=True,
            programs=[],  # the general rules: the crisis rule alone
        )
        await registry.enroll_device(
            conn, device_id=CUFF, kind="bp_cuff", patient_id=PATIENT, since=since
        )
        await registry.create_integration(
            conn,
            integration_id="acme",
            name="Acme",
            auth="token",
            secret="s3",
            formats=["canonical"],
        )
        await registry.enroll_device(
            conn, device_id="acme:V1", kind="bp_cuff", patient_id=PATIENT, since=since
        )
    api = f"http://127.0.0.1:{server.settings.api.port}"
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        _, before = await scrape(http)
        assert value(before, "rpm_broker_connected") == 1

        normal = json.dumps(bp(122, 78, 3)).encode()
        publish(services, CUFF, normal)
        publish(services, CUFF, normal)  # a device retransmit: a duplicate
        publish(services, CUFF, json.dumps(bp(192, 124, 2)).encode())  # crisis: alert + SMS
        publish(services, CUFF, b"{not json")  # malformed
        publish(services, "cuff-nobody", normal)  # unknown device
        webhook = json.dumps([{"device_id": "V1", **bp(118, 76, 1)}]).encode()
        r = await http.post(
            "/ingest/canonical",
            content=webhook,
            headers={
                "X-RPM-Integration": "acme",
                "Authorization": "Bearer s3",
                "Content-Type": "application/json",
            },
        )
        assert r.status_code < 300, r.text

        async def settled() -> bool:
            return (
                len(twilio.messages) == 1
                and await count(pool, "SELECT count(*) FROM readings") == 3
                and await count(pool, "SELECT count(*) FROM quarantine") == 2
                and server.sms_worker is not None
                and server.sms_worker.sent == 1
            )

        await eventually(settled, 20)

        async def duplicate_counted() -> Samples:
            _, s = await scrape(http)
            return s if value(s, "rpm_readings_duplicate_total") > 0 else {}

        after = await eventually(duplicate_counted, 10)
        text, _ = await scrape(http)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("rpm_ingest_messages_total", transport="mqtt") == 5
    assert moved("rpm_ingest_messages_total", transport="http") == 1
    assert moved("rpm_readings_stored_total") == 3
    assert moved("rpm_readings_duplicate_total") == 1
    assert moved("rpm_readings_quarantined_total", reason="malformed") == 1
    assert moved("rpm_readings_quarantined_total", reason="unknown_device") == 1
    assert moved("rpm_readings_quarantined_total", reason="implausible_value") == 0
    assert moved("rpm_alerts_opened_total") == 1
    assert moved("rpm_ingest_batches_not_committed_total") == 0
    assert moved("rpm_ingest_batch_size_sum") == 6  # every message in some batch, once
    assert 2 <= moved("rpm_ingest_batch_size_count") <= 6
    assert moved("rpm_ingest_batch_seconds_count") == moved("rpm_ingest_batch_size_count")
    assert moved("rpm_ingest_batch_seconds_sum") > 0
    assert moved("rpm_rule_step_seconds_count") >= 1  # batches that stored something
    assert moved("rpm_sms_deliveries_total", outcome="sent") == 1
    assert moved("rpm_sms_deliveries_total", outcome="retry") == 0
    assert value(after, "rpm_alerts", state="open") == 1
    assert value(after, "rpm_alerts", state="acknowledged") == 0
    assert value(after, "rpm_outbox_depth", channel="sms") == 0
    assert value(after, "rpm_outbox_oldest_age_seconds", channel="sms") == 0
    assert value(after, "rpm_metrics_database_up") == 1
    assert value(after, "rpm_broker_connected") == 1
    assert value(after, "rpm_broker_reconnects_total") == 0
    assert value(after, "rpm_db_pool_size") >= 1
    assert 0 <= value(after, "rpm_db_pool_in_use") <= value(after, "rpm_db_pool_size")
    assert value(after, "rpm_db_pool_max") == server.settings.database.pool_size
    # Identifiers of people never appear: no patient, device or phone in any label.
    for secret in (PATIENT, CUFF, PHONE, "acme:V1"):
        assert secret not in text


async def test_outbox_depth_and_age_while_twilio_is_down(
    server: Server, twilio: TwilioSink
) -> None:
    """An SMS that cannot go out shows as depth 1 and a growing age, then drains."""
    pool = server.pool
    assert pool is not None
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO outbox (channel, dedupe_key, payload, created_at, next_attempt_at) "
            "VALUES ('sms', 'ops-test', '{}'::jsonb, now() - interval '90 seconds', "
            "now() + interval '1 hour')"
        )
    api = f"http://127.0.0.1:{server.settings.api.port}"
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        _, s = await scrape(http)
    assert value(s, "rpm_outbox_depth", channel="sms") == 1
    assert 90 <= value(s, "rpm_outbox_oldest_age_seconds", channel="sms") < 3600
    assert value(s, "rpm_outbox_depth", channel="fhir") == 0


async def test_readiness_follows_database_broker_and_migrations(
    services: ServiceEndpoints,
    durable_db: str,  # noqa: F811 - the fixture imported above
    local: LocalServices,  # noqa: F811
    twilio: TwilioSink,
) -> None:
    settings = settings_for_local(
        services,
        database={"url": SecretStr(durable_db)},
        api={"port": free_port()},
        mqtt={"client_id": f"rpm-ops-ready-{free_port()}"},
        sms={
            "account_sid": TWILIO_SID,
            "auth_token": SecretStr(TWILIO_TOKEN),
            "base_url": twilio.base_url,
        },
        operations={"metrics_cache_s": 0.0},
    )
    server = Server(settings)
    await server.start()
    api = f"http://127.0.0.1:{settings.api.port}"
    try:
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:

            async def readyz(want: int) -> dict[str, str]:
                r = await http.get("/readyz")
                return dict(r.json()["checks"]) if r.status_code == want else {}

            ok = {"database": "ok", "migrations": "ok", "twilio": "ok", "broker": "ok"}
            assert await readyz(200) == ok

            await asyncio.to_thread(local.stop_broker)
            checks = await eventually(lambda: readyz(503), 15)
            assert checks == {**ok, "broker": "not connected"}
            assert (await http.get("/healthz")).status_code == 200
            _, s = await scrape(http)
            assert value(s, "rpm_broker_connected") == 0
            await asyncio.to_thread(local.start_broker)
            assert await eventually(lambda: readyz(200), 20) == ok
            _, s = await scrape(http)
            assert value(s, "rpm_broker_reconnects_total") >= 1

            await asyncio.to_thread(local.stop_postgres)
            checks = await eventually(lambda: readyz(503), 15)
            assert checks["database"].startswith(("unavailable", "no answer")), checks
            assert checks["migrations"] == "unknown (database unavailable)"
            assert checks["broker"] == "ok"
            r = await http.get("/healthz")  # liveness does not depend on the database
            assert (r.status_code, r.json()) == (200, {"status": "ok"})
            _, s = await scrape(http)  # /metrics still answers, saying the database is away
            assert value(s, "rpm_metrics_database_up") == 0
            await asyncio.to_thread(local.start_postgres)
            assert await eventually(lambda: readyz(200), 30) == ok

            conn = await asyncpg.connect(durable_db)
            try:
                row = await conn.fetchrow(
                    "DELETE FROM schema_migrations WHERE version = "
                    "(SELECT max(version) FROM schema_migrations) RETURNING *"
                )
                assert row is not None
                checks = await readyz(503)
                assert checks == {
                    **ok,
                    "migrations": f"pending: {row['version']:04d}_{row['name']}",
                }
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, timescale) VALUES ($1, $2, $3)",
                    row["version"],
                    row["name"],
                    row["timescale"],
                )
                assert await readyz(200) == ok
            finally:
                await conn.close()
    finally:
        await server.stop()


class _StopDuringFirstSend:
    """The real Twilio client, with a stop request arriving while the first message is sent."""

    def __init__(self, inner: TwilioSms) -> None:
        self.inner = inner
        self.worker: SmsOutboxWorker | None = None

    async def send(self, to: str, body: str, *, status_callback: str | None = None) -> SentSms:
        assert self.worker is not None
        self.worker.request_stop()
        return await self.inner.send(to, body, status_callback=status_callback)


async def test_sms_worker_stop_finishes_the_message_and_hands_back_the_rest(
    pool: asyncpg.Pool, twilio: TwilioSink
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001")
        alert_id = await add_alert(conn, "p1")
        ids = []
        for k in range(3):
            payload = patient_payload("p1", alert_id, urgent=True)
            await outbox_store.enqueue(conn, [("sms", f"stop-{k}", payload)])
            ids.append(
                await conn.fetchval("SELECT id FROM outbox WHERE dedupe_key = $1", f"stop-{k}")
            )
    twilio_sms = TwilioSms(
        account_sid=TWILIO_SID,
        auth_token=TWILIO_TOKEN,
        from_number="+15005550006",
        base_url=twilio.base_url,
        validity_period_s=900,
    )
    try:
        channel = _StopDuringFirstSend(twilio_sms)
        config = DeliveryConfig.from_settings(
            SmsSettings(outbox_poll_interval_s=0.05), ApiSettings()
        )
        worker = SmsOutboxWorker(pool, channel, config)
        channel.worker = worker
        await asyncio.wait_for(worker.run(), 30)  # returns once stopped
        assert len(twilio.messages) == 1
        assert worker.outcomes["sent"] == 1
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, delivered_at, attempts, last_error, next_attempt_at <= now() AS due "
                "FROM outbox ORDER BY id"
            )
        assert [r["id"] for r in rows] == ids
        assert rows[0]["delivered_at"] is not None
        for r in rows[1:]:  # claimed, not sent: back in the queue at once, no attempt counted
            assert (r["delivered_at"], r["attempts"], r["due"]) == (None, 0, True)
            assert r["last_error"] == "released at shutdown"
        # The next worker (the restarted process) sends them at once, not after the lease.
        again = SmsOutboxWorker(pool, twilio_sms, config)
        assert await again.drain_once() == 2
        assert len(twilio.messages) == 3
    finally:
        await twilio_sms.close()


# --- logs --------------------------------------------------------------------------------------


def record(name: str, msg: str, *args: object, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    r.__dict__.update(extra)
    return r


def test_json_log_line_carries_time_level_logger_message_and_fields() -> None:
    line = JsonFormatter().format(
        record("rpm.pipeline", "alert %s open", 7, alert_id=7, patient_id="p1")
    )
    doc = json.loads(line)
    assert "\n" not in line
    assert datetime.fromisoformat(doc.pop("time")).tzinfo is not None
    assert doc == {
        "level": "INFO",
        "logger": "rpm.pipeline",
        "message": "alert 7 open",
        "alert_id": 7,
        "patient_id": "p1",
    }


def test_json_log_line_of_an_exception_and_of_uvicorns_access_log() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        r = logging.LogRecord("rpm", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    doc = json.loads(JsonFormatter().format(r))
    assert doc["level"] == "ERROR"
    assert "ValueError: boom" in doc["exception"]
    access = record(
        "uvicorn.access", '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/readyz", "1.1", 200
    )
    doc = json.loads(JsonFormatter().format(access))
    assert doc["message"] == '127.0.0.1:5000 - "GET /readyz HTTP/1.1" 200'
    assert (doc["method"], doc["path"], doc["status"]) == ("GET", "/readyz", 200)


# --- configuration documented ------------------------------------------------------------------


def test_the_settings_table_is_generated_from_the_settings() -> None:
    """The committed settings table (between the markers in ``SETTINGS_TABLE``) is what
    ``python -m rpm.settings`` renders from the fields: every variable, its default and
    meaning. After changing a setting: ``python -m rpm.settings --write <that file>``."""
    assert table.committed(SETTINGS_TABLE.read_text(encoding="utf-8")) == table.render(), (
        f"the settings table in {SETTINGS_TABLE.name} is stale: "
        f"run python -m rpm.settings --write {SETTINGS_TABLE.relative_to(ROOT)}"
    )


def test_every_setting_has_its_own_variable() -> None:
    """Variables are unique across groups, and each has a meaning for the table."""
    names = [
        env_name(f) for group in Settings.groups().values() for f in group.model_fields.values()
    ]
    assert len(names) == len(set(names))
    assert all(n.startswith("RPM_") and n == n.upper() for n in names)
