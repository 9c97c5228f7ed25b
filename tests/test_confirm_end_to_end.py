"""Confirm before paging through the whole server (issue 17, item 4): a COPD patient's SpO2
of 86 % (below the 88-92 % target, BTS 2017; not critical, >= 84 %) published over MQTT
waits for a repeat: no alert, a pending confirmation in the API, and a plain "rest and
measure again" text at the Twilio stand-in. Then (a) a repeat of 85 % pages, its
explanation naming the repeat; (b) a repeat of 91 % ends it not confirmed, nobody paged;
(c) no repeat: the timer, at the window's end (a pinned time), pages.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from alerts.templates import JARGON
from rpm.local_endpoints import ServiceEndpoints
from rpm.server import Server
from rpm.storage import staff as staff_store
from simulators.twilio_sink import TwilioSink
from tests import helpers
from tests.dashboard_helpers import NURSE_ID, add_nurse, sign_in
from tests.helpers import eventually, staff_headers
from tests.test_rule_end_to_end import SERVICE, enrol


def publish(services: ServiceEndpoints, device: str, spo2: int, at: datetime) -> None:
    reading = {"metric": "spo2", "measured_at": at.isoformat(), "values": {"spo2": spo2}}
    result = helpers.mosquitto_pub(
        services.mqtt_port,
        services.mqtt_device_username,
        services.mqtt_device_password,
        f"rpm/v1/devices/{device}/readings",
        json.dumps(reading).encode(),
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("repeat", [85, 91, None], ids=["confirmed", "not-confirmed", "none"])
async def test_a_first_low_spo2_asks_for_a_repeat_before_paging(
    server: Server, services: ServiceEndpoints, twilio: TwilioSink, repeat: int | None
) -> None:
    device = await enrol(server, "pat-cf", ["copd"], "+15550100088")
    # The ingest clock refuses readings from the future: measured times are in the past.
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    await asyncio.to_thread(publish, services, device, 86, first)

    assert server.pool is not None
    admin = await staff_headers(server.pool)
    api = f"http://127.0.0.1:{server.settings.api.port}"
    async with httpx.AsyncClient(base_url=api, timeout=10, headers=admin) as http:

        async def confirmations(state: str) -> list[dict[str, object]]:
            got = await http.get("/api/alerts/confirmations", params={"state": state})
            assert got.status_code == 200, got.text
            return got.json()  # type: ignore[no-any-return]

        [pending] = await eventually(lambda: confirmations("pending"))
        assert pending["rule_id"] == "copd.spo2_below_target"
        assert pending["first_values"] == {"spo2": 86}
        assert (await http.get("/api/alerts")).json() == []  # nobody paged yet

        [ask] = await twilio.wait_for(1, timeout=10)
        assert ask.to == "+15550100088"
        assert ask.body is not None
        assert SERVICE in ask.body
        assert "rest for 5 minutes, then measure again within 15 minutes" in ask.body
        assert not [w for w in JARGON if w in ask.body.lower()], ask.body

        if repeat is None:
            # The patient page shows it as waiting, not paged (a nurse of the patient's team).
            await add_nurse(server.pool)
            async with server.pool.acquire() as conn:
                await staff_store.add_member(conn, "lungs", NURSE_ID)
            async with httpx.AsyncClient(base_url=api, timeout=10) as browser:
                await sign_in(browser)
                page = await browser.get("/dashboard/patients/pat-cf")
                queue = await browser.get("/dashboard/")
            assert "Waiting for a repeat reading (not paged)" in queue.text
            assert "/dashboard/patients/pat-cf" in queue.text
            assert page.status_code == 200
            assert "Repeat readings asked for" in page.text
            assert "waiting for a repeat" in page.text
            assert "spo2 86" in page.text
            # The window's end, pinned: the server's own timer runs on the wall clock,
            # which is 5 min short of it.
            assert server.pipeline is not None
            assert await server.pipeline.check_confirmations(now=first + timedelta(minutes=15))
        else:
            at = first + timedelta(minutes=5)
            await asyncio.to_thread(publish, services, device, repeat, at)

        async def alerts() -> list[dict[str, object]]:
            return (await http.get("/api/alerts")).json()  # type: ignore[no-any-return]

        if repeat == 91:
            [ended] = await eventually(lambda: confirmations("not_confirmed"))
            assert "SpO2 91%" in str(ended["note"])
            assert ended["alert_id"] is None
            assert await alerts() == []
            assert await confirmations("pending") == []
            return
        [alert] = await eventually(alerts)
        assert alert["rule_id"] == "copd.spo2_below_target"
        assert alert["severity"] == "HIGH"
        explanation = str(alert["explanation"])
        if repeat == 85:
            assert "Confirmed by a repeat reading: SpO2 85%" in explanation
            [done] = await confirmations("confirmed")
        else:
            assert "No repeat reading within 15 min" in explanation
            [done] = await confirmations("no_repeat")
        assert done["alert_id"] == alert["id"]
        # The alert's own text follows the request to re-measure.
        texts = await twilio.wait_for(2, timeout=10)
        assert "has been told" in str(texts[-1].body)
