"""``rpm simulate --external`` against a running server (the ``server`` fixture: a real
server on the test's PostgreSQL and Mosquitto) that already holds a real patient: the
fleet's traffic is counted alone, nothing of the patient's is touched, no database is
dropped, and ids the simulator did not create are refused."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import asyncpg
import pytest
from pydantic import SecretStr

from rpm.domain import Metric, Reading
from rpm.local_endpoints import ServiceEndpoints
from rpm.server import Server
from rpm.settings import MqttSettings, Settings
from rpm.storage import registry
from simulators.encoders import encode
from simulators.enrolment import EXTERNAL_PREFIX, external_prefix
from simulators.report import ObservedAlert
from simulators.runner import Pace, without_missing_data
from simulators.scenarios import GroundTruth
from simulators.simulate import SimulateOptions, add_parser, make_plan, run, run_external

REAL = "p00000"  # the id the plan's first patient has without the run's prefix
REAL_DEVICE = "p00000-bp_cuff"
CRISIS = frozenset({"bp.hypertensive_crisis"})


# The fleet of these tests: small, with a tenth of its payloads malformed or repeated.
FLEET: dict[str, object] = {
    "patients": 10,
    "days": 1.0,
    "pace": Pace(wall_seconds=4.0),
    "malformed_share": 0.1,
    "duplicate_share": 0.1,
    "http_share": 0.4,
}


def external_opts(server: Server, tmp_path: Path, **kw: object) -> SimulateOptions:
    s = server.settings
    args: dict[str, object] = {
        **FLEET,
        "json_path": tmp_path / "report.json",
        "progress": False,
        "external_api_url": f"http://{s.api.host}:{s.api.port}/",
    }
    args.update(kw)
    return SimulateOptions(**args)  # type: ignore[arg-type]


async def enrol_real_patient(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn,
            patient_id=REAL,
            display_name="Real Person",
            phone="+15550199999",
            sms_consent=True,
            programs=("hypertension",),
        )
        await registry.enroll_device(
            conn,
            device_id=REAL_DEVICE,
            kind="bp_cuff",
            patient_id=REAL,
            since=datetime.now(UTC) - timedelta(days=5),
        )


async def real_traffic(services: ServiceEndpoints, start: datetime, n: int) -> None:
    """The real patient's cuff sends ``n`` readings and one malformed payload (on the
    shared fleet login of the test broker, which may publish as any device)."""
    async with aiomqtt.Client(
        services.mqtt_host,
        services.mqtt_port,
        username=services.mqtt_device_username,
        password=services.mqtt_device_password,
    ) as client:
        topic = f"rpm/v1/devices/{REAL_DEVICE}/readings"
        for k in range(n):
            at = (start - timedelta(minutes=10 * (k + 1))).replace(microsecond=0)
            r = Reading(
                REAL_DEVICE, Metric.BLOOD_PRESSURE, {"systolic": 130, "diastolic": 85}, at, at
            )
            await client.publish(topic, encode("canonical", [r], REAL_DEVICE), qos=1)
        await client.publish(topic, b'{"metric": "blood_pressure", "values": ', qos=1)


async def count(pool: asyncpg.Pool, sql: str, *args: object) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval(sql, *args))


async def wait_for_count(pool: asyncpg.Pool, want: int, sql: str, *args: object) -> None:
    async with asyncio.timeout(30):
        while True:
            if await count(pool, sql, *args) >= want:
                return
            await asyncio.sleep(0.1)


def _starts() -> list[datetime]:
    """Start times over a year: every 37 minutes across two days (each hour and minute of the
    day), and each day around both 2026 US daylight-saving changes and a new year."""
    base = datetime(2026, 12, 3, 0, 0, 17, tzinfo=UTC)
    out = [base + timedelta(minutes=37 * k) for k in range(2 * 24 * 60 // 37)]
    for day in (datetime(2026, 3, 7, tzinfo=UTC), datetime(2026, 10, 31, tzinfo=UTC)):
        out += [day + timedelta(hours=5 * k, minutes=13) for k in range(10)]
    out += [datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)]
    return out


@pytest.mark.pure
def test_the_fleets_plan_has_faults_whatever_the_start() -> None:
    """What test_external_run_counts_only_its_own_fleet relies on holds for every "now" a
    run may start at: the plan sends readings, at least one malformed payload (the fleet's
    quarantine is compared with what it expects) and a repeated one."""
    opts = SimulateOptions(**FLEET)  # type: ignore[arg-type]
    for now in _starts():
        plan = make_plan(opts, now, id_prefix=external_prefix(now))
        reasons = [s.reason for s in plan.sends if s.expect == "quarantined"]
        assert reasons.count("malformed") >= 1, now
        assert any(s.expect == "duplicate" for s in plan.sends), now
        assert sum(s.readings for s in plan.sends if s.expect == "stored") > 0, now
        assert all(plan.config.start <= s.at < plan.config.end for s in plan.sends), now


REAL_READINGS = "SELECT count(*) FROM readings WHERE device_id = $1"
REAL_REFUSED = "SELECT coalesce(sum(seen_count), 0) FROM quarantine WHERE device_id = $1"


async def test_external_run_counts_only_its_own_fleet(
    server: Server, services: ServiceEndpoints, tmp_path: Path
) -> None:
    assert server.pool is not None
    pool = server.pool
    await enrol_real_patient(pool)
    before = datetime.now(UTC)
    await real_traffic(services, before, 3)
    await wait_for_count(pool, 3, REAL_READINGS, REAL_DEVICE)
    admin = await asyncpg.connect(services.database_url)
    try:
        databases = await admin.fetch("SELECT datname FROM pg_database ORDER BY datname")
        opts = external_opts(server, tmp_path)
        # The real patient keeps sending, and sends a malformed payload, during the run.
        code, _ = await asyncio.gather(
            run_external(opts, server.settings), real_traffic(services, before, 6)
        )
        assert await admin.fetch("SELECT datname FROM pg_database ORDER BY datname") == databases
    finally:
        await admin.close()
    assert code == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["sent"] > 0
    assert doc["send_failures"] == 0
    assert doc["lost"] == 0
    assert doc["stored"] == doc["expected_stored"] > 0
    assert doc["unexpected_stored"] == 0
    # The real cuff's malformed payload (refused during the run) is not the fleet's.
    want, got = doc["quarantined_expected_by_reason"], doc["quarantined_by_reason"]
    assert got["malformed"] == want["malformed"] > 0
    # A refused payload counts once, however many of its readings were refused for the
    # reason (a vendor payload of a cuff and a pulse reading, both stale).
    assert got == want
    assert doc["duplicates"] is None  # the deployment's counters are not ours to read
    assert any("not measurable" in n for n in doc["notes"]), doc["notes"]

    # The real patient: untouched record, its readings (3 + 3 new) and its refusal.
    await wait_for_count(pool, 6, REAL_READINGS, REAL_DEVICE)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT display_name, phone, care_team FROM patients WHERE id = $1", REAL
        )
        assert row is not None
        assert (row["display_name"], row["phone"], row["care_team"]) == (
            "Real Person",
            "+15550199999",
            None,
        )
        bound = await conn.fetch(
            "SELECT patient_id FROM device_bindings WHERE device_id = $1", REAL_DEVICE
        )
        assert [b["patient_id"] for b in bound] == [REAL]
        # Everything the run enrolled is namespaced, and no fleet patient may be texted.
        fleet = await conn.fetch(
            "SELECT id, sms_consent FROM patients WHERE id <> $1 ORDER BY id", REAL
        )
    assert len(fleet) == 10
    assert all(f["id"].startswith(EXTERNAL_PREFIX) for f in fleet)
    assert not any(f["sms_consent"] for f in fleet)
    # Its malformed payload, sent before and during the run: one row, seen twice.
    await wait_for_count(pool, 2, REAL_REFUSED, REAL_DEVICE)
    assert await count(pool, REAL_REFUSED, REAL_DEVICE) == 2
    # The stored readings the report counted are the fleet's own.
    fleet_readings = await count(
        pool,
        """SELECT count(*) FROM readings
            WHERE device_id LIKE $1 OR device_id LIKE 'sim-%:%'""",
        EXTERNAL_PREFIX + "%",
    )
    assert fleet_readings == doc["stored"]


async def test_a_plan_naming_a_real_patient_is_refused(server: Server, tmp_path: Path) -> None:
    assert server.pool is not None
    pool = server.pool
    prefix = EXTERNAL_PREFIX + "pinned-"
    taken = prefix + REAL  # someone enrolled a real patient under the prefix
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn, patient_id=taken, display_name="Real Person", phone=None, sms_consent=False
        )
    code = await run_external(external_opts(server, tmp_path), server.settings, id_prefix=prefix)
    assert code == 2
    assert not (tmp_path / "report.json").exists()
    assert await count(pool, "SELECT count(*) FROM patients") == 1
    assert await count(pool, "SELECT count(*) FROM device_bindings") == 0
    assert await count(pool, "SELECT count(*) FROM integrations") == 0


async def test_a_second_run_enrols_a_fleet_of_its_own(server: Server, tmp_path: Path) -> None:
    """The same plan again a moment later: its readings fall on the same hours as the
    first run's, so it needs patients and devices of its own to lose nothing."""
    assert server.pool is not None
    reports = []
    for run_no in range(2):
        json_path = tmp_path / f"report{run_no}.json"
        opts = external_opts(server, tmp_path, json_path=json_path, malformed_share=0.0)
        assert await run_external(opts, server.settings) == 0
        reports.append(json.loads(json_path.read_text()))
    for doc in reports:
        assert doc["lost"] == 0
        assert doc["stored"] == doc["expected_stored"] > 0
    prefixes = await server.pool.fetch(
        "SELECT DISTINCT split_part(id, '-p', 1) AS run FROM patients ORDER BY 1"
    )
    assert len(prefixes) == 2, prefixes


async def test_a_wrong_broker_admin_password_is_refused_before_enrolment(
    server: Server, tmp_path: Path
) -> None:
    assert server.pool is not None
    settings = server.settings.updated(mqtt={"admin_password": SecretStr("wrong")})
    assert await run_external(external_opts(server, tmp_path), settings) == 2
    assert await count(server.pool, "SELECT count(*) FROM patients") == 0


async def test_without_a_broker_admin_login_external_starts_nothing(tmp_path: Path) -> None:
    settings = Settings(mqtt=MqttSettings(admin_username=None, admin_password=None))
    opts = SimulateOptions(
        patients=2, days=1, pace=Pace(wall_seconds=1), external_api_url="http://127.0.0.1:9"
    )
    assert await run_external(opts, settings) == 2


def test_external_flag_selects_the_running_deployment() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"), Path(".rpm-data"))

    def opts(*argv: str) -> SimulateOptions:
        return SimulateOptions.from_args(parser.parse_args(["simulate", *argv]))

    assert opts().external_api_url is None
    assert opts("--external").external_api_url == "http://127.0.0.1:8000"
    assert opts("--external", "--api-url", "http://server:8000").external_api_url == (
        "http://server:8000"
    )


async def test_external_mode_needs_no_local_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run`` hands --external over without starting PostgreSQL or Mosquitto."""
    monkeypatch.delenv("RPM_MQTT_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("RPM_MQTT_ADMIN_PASSWORD", raising=False)
    data_dir = tmp_path / "services"
    opts = SimulateOptions(
        patients=2, days=1, pace=Pace(wall_seconds=1), external_api_url="http://127.0.0.1:9"
    )
    # No admin login in this environment's defaults: refused before anything starts.
    assert await run(data_dir, opts, port=0, stop_services=True) == 2
    assert not data_dir.exists()


def test_a_prefixed_plan_names_only_prefixed_ids() -> None:
    """Patients, devices, topics and the vendor ids inside webhook payloads all carry the
    run's prefix, so the fleet cannot meet a real record."""
    opts = SimulateOptions(patients=40, days=2, pace=Pace(wall_seconds=10), http_share=0.5)
    prefix = external_prefix(datetime(2026, 11, 23, 16, 26, 36, tzinfo=UTC))
    assert prefix == "rpmsim-261123162636-"
    plan = make_plan(opts, datetime.now(UTC), id_prefix=prefix)
    assert all(p.patient_id.startswith(prefix) for p in plan.patients)
    assert all(d.device_id.startswith(prefix) for p in plan.patients for d in p.devices)
    assert all(s.device_id.startswith(prefix) for s in plan.sends)
    assert all(t.patient_id.startswith(prefix) for t in plan.truth)
    webhooks = [s for s in plan.sends if s.transport == "http" and s.expect == "stored"]
    assert webhooks
    assert all(s.device_id.encode() in s.payload for s in webhooks)
    # The same plan without a prefix differs only in its ids.
    bare = make_plan(opts, datetime.now(UTC))
    assert [p.patient_id for p in bare.patients] == [
        p.patient_id.removeprefix(prefix) for p in plan.patients
    ]


def test_missing_data_cases_are_left_out_when_not_measurable() -> None:
    began = datetime(2026, 11, 23, tzinfo=UTC)
    truth = (
        GroundTruth("a", "silent", "device_silent", began, frozenset({"hf.weight_missing"})),
        GroundTruth("b", "crisis", "hypertensive_crisis", began, CRISIS),
        GroundTruth("c", "none", "normal", began, frozenset()),
    )

    def alert(patient: str, rule: str) -> ObservedAlert:
        return ObservedAlert(patient, rule, 0.0, began, began, None)

    alerts = [alert("a", "hf.weight_missing"), alert("b", "bp.hypertensive_crisis")]
    kept_truth, kept_alerts = without_missing_data(truth, alerts)
    assert [t.patient_id for t in kept_truth] == ["b", "c"]
    assert kept_alerts == [alerts[1]]
