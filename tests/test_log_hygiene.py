"""No patient name, phone number, password, token, key or secret in our logs, along a whole
day's path: enrolment, an MQTT device reading, an alert, the patient's SMS through the fake
Twilio, a nurse signing in (once mistyping her password into the name field), dashboard
pages, an acknowledgement, FHIR reads by the EHR's key. Our loggers run at DEBUG."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from rpm.local_endpoints import ServiceEndpoints
from rpm.server import Server
from rpm.storage import sms as sms_store
from simulators.twilio_sink import TwilioSink
from tests.conftest import TWILIO_TOKEN
from tests.dashboard_helpers import (
    NURSE_PASSWORD,
    TEAM,
    add_nurse,
    crisis_reading,
    form_token,
    sign_in,
)
from tests.helpers import eventually, mosquitto_pub, staff_headers

OUR_LOGGERS = ("rpm", "alerts", "device_gateways", "rules")
NAME = "Zelda Quixotic-Marrow"
PHONE = "+15550142424"


async def test_a_day_of_use_leaves_no_personal_data_or_secret_in_the_logs(
    server: Server,
    services: ServiceEndpoints,
    twilio: TwilioSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in OUR_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    assert server.pool is not None
    base = f"http://127.0.0.1:{server.settings.api.port}"
    admin = await staff_headers(server.pool)
    secrets_seen: list[str] = [NAME, PHONE, PHONE.removeprefix("+"), NURSE_PASSWORD, TWILIO_TOKEN]
    secrets_seen.append(admin["Authorization"].removeprefix("Bearer "))
    async with httpx.AsyncClient(base_url=base, timeout=15, headers=admin) as api:
        # Enrolment: the patient, her care team, her cuff (an MQTT login).
        r = await api.post(
            "/api/patients",
            json={
                "id": "pat-hyg",
                "display_name": NAME,
                "phone": PHONE,
                "sms_consent": True,
                "programs": ["hypertension"],
            },
        )
        assert r.status_code == 201, r.text
        nurse = await add_nurse(server.pool)  # in team TEAM, with a password
        secrets_seen.append("Nina Test")  # the nurse's display name
        r = await api.put("/api/patients/pat-hyg/care-team", json={"team": TEAM})
        assert r.status_code == 200, r.text
        async with server.pool.acquire() as conn:  # quiet hours away from now: SMS goes out
            hour = datetime.now(UTC).hour
            await sms_store.set_quiet_hours(
                conn,
                "pat-hyg",
                datetime.now(UTC).replace(hour=(hour + 6) % 24).time(),
                datetime.now(UTC).replace(hour=(hour + 8) % 24).time(),
            )
        r = await api.post(
            "/api/devices",
            json={
                "id": "cuff-hyg",
                "kind": "bp_cuff",
                "patient_id": "pat-hyg",
                "bound_from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            },
        )
        assert r.status_code == 201, r.text
        login = r.json()["mqtt"]
        secrets_seen.append(login["password"])

        # A crisis reading from the device, over MQTT as the device sends it.
        published = await asyncio.to_thread(
            mosquitto_pub,
            services.mqtt_port,
            login["username"],
            login["password"],
            login["topic"],
            crisis_reading(datetime.now(UTC) - timedelta(seconds=30)),
            "-V",
            "mqttv5",
            "-i",
            login["username"],
        )
        assert published.returncode == 0, published.stderr

        async def alert_open() -> list[dict[str, object]]:
            return (await api.get("/api/alerts", params={"patient": "pat-hyg"})).json()  # type: ignore[no-any-return]

        [alert] = await eventually(alert_open, within=20)

        async def sms_sent() -> bool:
            return any(m.to == PHONE for m in twilio.messages)

        await eventually(sms_sent, within=20)

        # The EHR reads the record with its key.
        r = await api.post("/api/keys", json={"id": "ehr", "name": "EHR", "scopes": ["fhir:read"]})
        key = r.json()["key"]
        secrets_seen.append(key)
        ehr = {"Authorization": f"Bearer {key}"}
        for path, params in (
            ("/fhir/Patient", {}),
            ("/fhir/Observation", {"patient": "pat-hyg"}),
            ("/fhir/Communication", {"patient": "pat-hyg"}),
            ("/fhir/DetectedIssue", {"patient": "pat-hyg"}),
        ):
            read = await api.get(path, params=params, headers=ehr)
            assert read.status_code == 200, (path, read.text)

    # The nurse: a password typed into the name field, then signing in, pages, an action.
    async with httpx.AsyncClient(base_url=base, timeout=15) as browser:
        assert (await sign_in(browser, NURSE_PASSWORD, NURSE_PASSWORD)).status_code == 401
        assert (await sign_in(browser, nurse)).status_code == 303
        secrets_seen += [c for c in browser.cookies.values() if len(c) > 20]
        page = await browser.get("/dashboard/", headers={"Accept": "text/html"})
        csrf = form_token(page.text, "csrf-token")
        secrets_seen.append(csrf)
        view = await browser.get(f"/dashboard/patients/pat-hyg?alert={alert['id']}")
        assert view.status_code == 200
        ack = await browser.post(
            f"/api/alerts/{alert['id']}/acknowledge", json={}, headers={"X-CSRF-Token": csrf}
        )
        assert ack.status_code == 200, ack.text
        token = await browser.post(
            "/api/auth/token", json={"username": nurse, "password": NURSE_PASSWORD}
        )
        secrets_seen.append(token.json()["access_token"])

    ours = [r for r in caplog.records if r.name.split(".")[0] in OUR_LOGGERS]
    assert ours, "nothing was logged: the capture is not working"
    text = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.stack_info or ''}" for r in ours
    )
    assert "sign-in failed" in text  # the refused attempt was logged...
    for value in secrets_seen:
        assert value not in text, f"leaked into the logs: {value[:4]}..."  # ...without values
