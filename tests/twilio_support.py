"""Shared parts of the SMS tests: the webhook routes served over real HTTP, an injectable
clock, and patients, staff and alerts written as the rest of the server writes them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from rpm.api import twilio_hooks
from rpm.settings import ApiSettings, Settings, SmsSettings
from rpm.storage import registry
from rpm.storage import sms as sms_store
from simulators.localservices import free_port
from tests.conftest import TWILIO_SID, TWILIO_TOKEN


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def daytime_clock() -> Clock:
    """A worker clock at the next 12:00 or 18:00 UTC (the zone of these tests' patients):
    outside the default quiet hours (21:00 to 08:00, migration 0005), ahead of the database
    so rows it stamped with now() are already due, and at most 18 hours after a message just
    received (inside WhatsApp's 24-hour window), whenever the test runs."""
    now = datetime.now(UTC)
    if now.hour < 12:
        return Clock(local_time_after(now, UTC, time(12), days=0))
    if now.hour < 18:
        return Clock(local_time_after(now, UTC, time(18), days=0))
    return Clock(local_time_after(now, UTC, time(12), days=1))


def local_time_after(at: datetime, zone: tzinfo, wall: time, days: int = 1) -> datetime:
    """``wall`` o'clock in ``zone`` ``days`` calendar days after ``at`` (in UTC).

    Worker clocks start in the future so that rows the database stamped with its own
    ``now()`` are already due.
    """
    day = at.astimezone(zone).date() + timedelta(days=days)
    return datetime.combine(day, wall, tzinfo=zone).astimezone(UTC)


def hook_settings(*, api: Mapping[str, Any] = {}, sms: Mapping[str, Any] = {}) -> Settings:
    """Settings for the Twilio webhooks on a free port; ``api``, ``sms``: fields changed."""
    return Settings(
        api=ApiSettings(**{"port": free_port(), **api}),
        sms=SmsSettings(
            **{"account_sid": TWILIO_SID, "auth_token": SecretStr(TWILIO_TOKEN), **sms}
        ),
    )


@contextlib.asynccontextmanager
async def serve_hooks(
    pool: asyncpg.Pool,
    *,
    api: Mapping[str, Any] = {},
    sms: Mapping[str, Any] = {},
    app: FastAPI | None = None,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[str]:
    """The Twilio webhook routes on a real HTTP server; yields its base URL. ``app``: an app
    with other routers to serve beside them; ``clock``: the routes' clock (``app.state``).

    The socket is bound before the server starts, so no other process can take the port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = app or FastAPI()
    app.state.pool = pool
    app.state.settings = hook_settings(api={"port": port, **api}, sms=sms)
    if clock is not None:
        app.state.clock = clock
    app.include_router(twilio_hooks.router)
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def add_patient(
    conn: asyncpg.Connection,
    patient_id: str,
    phone: str | None,
    *,
    consent: bool = True,
    timezone: str = "UTC",
    language: str = "en",
    quiet: tuple[time, time] | None = None,
) -> None:
    await registry.upsert_patient(
        conn,
        patient_id=patient_id,
        display_name=f"Name-of-{patient_id}",
        phone=phone,
        sms_consent=consent,
        timezone=timezone,
        language=language,
    )
    if quiet is not None:
        await sms_store.set_quiet_hours(conn, patient_id, *quiet)


async def add_staff(conn: asyncpg.Connection, staff_id: str, phone: str | None) -> None:
    await conn.execute(
        """INSERT INTO staff (id, display_name, role, password_hash, phone)
           VALUES ($1, $2, 'nurse', 'not-a-hash', $3)""",
        staff_id,
        f"Nurse {staff_id}",
        phone,
    )


async def add_alert(
    conn: asyncpg.Connection,
    patient_id: str,
    rule_id: str = "bp.hypertensive_crisis",
    *,
    severity: str = "CRITICAL",
    state: str = "open",
    title: str = "Hypertensive crisis",
    opened_at: datetime | None = None,
) -> int:
    """An alert row as the ingest unit of work writes it."""
    alert_id = await conn.fetchval(
        """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation,
                               evidence, first_reading_uid, last_reading_uid, opened_at)
           VALUES ($1, $2, $3, $4, $5, 'test', '{}', gen_random_uuid(), gen_random_uuid(),
                   coalesce($6, now()))
           RETURNING id""",
        patient_id,
        rule_id,
        severity,
        state,
        title,
        opened_at,
    )
    return int(alert_id)


def patient_payload(
    patient_id: str,
    alert_id: int | None,
    *,
    severity: str = "MEDIUM",
    urgent: bool = False,
    title: str = "Blood pressure in stage 2 on repeated readings",
    advice: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A patient SMS outbox payload as rpm.pipeline writes it."""
    return {
        "recipient": "patient",
        "patient_id": patient_id,
        "alert_id": alert_id,
        "template": "alert",
        "rule_id": "htn.stage2_persistent",
        "severity": severity,
        "urgent": urgent,
        "title": title,
        "advice": advice
        or {"en": "Keep taking your medicines as prescribed. Measure again tomorrow."},
    }
