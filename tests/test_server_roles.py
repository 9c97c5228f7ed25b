"""``rpm serve --role``: the gateway and the delivery workers in separate servers, meeting
only in the database (DESIGN.md, processes and scale)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from rpm.cli import main
from rpm.local_endpoints import ServiceEndpoints
from rpm.server import ROLES, Server, parse_roles
from rpm.settings import Settings
from rpm.storage import registry
from simulators.twilio_sink import TwilioSink
from tests import helpers
from tests.helpers import eventually


def test_roles_are_parsed_from_a_comma_separated_list() -> None:
    assert parse_roles("all") == frozenset(ROLES)
    assert parse_roles("gateway, api") == {"gateway", "api"}
    assert parse_roles("workers") == {"workers"}
    with pytest.raises(ValueError, match="roles are gateway, api, workers or all"):
        parse_roles("gateway,sms")
    with pytest.raises(ValueError, match="roles are"):
        parse_roles(" , ")


def test_rpm_serve_refuses_an_unknown_role(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--role", "gateway,mailer"])
    assert exit_.value.code == 2
    assert "roles are gateway, api, workers or all, not 'gateway,mailer'" in capsys.readouterr().err


async def test_a_crisis_sms_is_sent_by_the_workers_server_not_the_gateway(
    server_settings: Settings, services: ServiceEndpoints, twilio: TwilioSink
) -> None:
    gateway = Server(server_settings, ("gateway", "api"))
    await gateway.start()
    workers: Server | None = None
    try:
        assert gateway.sms_worker is None
        assert gateway.pool is not None
        async with gateway.pool.acquire() as conn:
            await registry.upsert_patient(
                conn,
                patient_id="pat-roles",
                display_name="Ada Example",
                phone="+15550100077",
                sms_consent=True,
                programs=["hypertension"],
            )
            await registry.enroll_device(
                conn,
                device_id="cuff-roles",
                kind="bp_cuff",
                patient_id="pat-roles",
                since=datetime.now(UTC) - timedelta(days=1),
            )
        measured = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        reading = {
            "metric": "blood_pressure",
            "measured_at": measured.isoformat(),
            "values": {"systolic": 190, "diastolic": 122, "pulse": 90},
        }
        result = await asyncio.to_thread(
            helpers.mosquitto_pub,
            services.mqtt_port,
            services.mqtt_device_username,
            services.mqtt_device_password,
            "rpm/v1/devices/cuff-roles/readings",
            json.dumps(reading).encode(),
        )
        assert result.returncode == 0, result.stderr

        async def queued() -> list[tuple[object, ...]]:
            async with gateway.pool.acquire() as conn:  # type: ignore[union-attr]
                rows = await conn.fetch("SELECT channel, delivered_at FROM outbox")
            return [tuple(r) for r in rows]

        # The gateway stored the reading, opened the alert and queued the SMS; with no
        # worker in its process, the message waits in the outbox.
        assert await eventually(queued) == [("sms", None)]
        assert twilio.messages == []

        workers = Server(server_settings.updated(api={"port": 0}), ("workers",))
        await workers.start()
        assert workers.gateway is None
        [sms] = await twilio.wait_for(1, timeout=10)
        assert sms.to == "+15550100077"
        assert sms.body is not None
        assert "danger range" in sms.body

        async def delivered() -> bool:
            return all(at is not None for _, at in await queued())

        assert await eventually(delivered)
    finally:
        if workers is not None:
            await workers.stop()
        await gateway.stop()
