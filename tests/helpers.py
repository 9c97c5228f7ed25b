"""Small builders shared by tests."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg
from fastapi import FastAPI

from rpm.api import errors
from rpm.api.guard import Guard
from rpm.auth import STAFF_TOKEN_PREFIX, Auth, AuthConfig, token_hash
from rpm.domain import AcceptedReading, Metric, RawMessage, Reading
from rpm.settings import ApiSettings
from rpm.storage import staff as staff_store
from rpm.storage import staff_auth

__all__ = [
    "T0",
    "AcceptedReading",
    "Reading",
    "api_app",
    "bp",
    "eventually",
    "mosquitto_pub",
    "raw",
    "single",
    "staff_headers",
]

T = TypeVar("T")

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def raw(payload: object, device_id: str | None = "dev-1", at: datetime = T0) -> RawMessage:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return RawMessage(
        "mqtt", "canonical", device_id, body, at, f"rpm/v1/devices/{device_id}/readings"
    )


def bp(
    sys_: float,
    dia: float,
    *,
    at: datetime = T0,
    device: str = "dev-1",
    patient: str = "pat-1",
    pulse: float | None = None,
) -> AcceptedReading:
    values = {"systolic": sys_, "diastolic": dia}
    if pulse is not None:
        values["pulse"] = pulse
    return AcceptedReading(
        Reading(device, Metric.BLOOD_PRESSURE, values, at, at + timedelta(seconds=2)), patient
    )


def single(
    metric: Metric,
    component: str,
    value: float,
    *,
    at: datetime = T0,
    device: str = "dev-1",
    patient: str = "pat-1",
) -> AcceptedReading:
    return AcceptedReading(Reading(device, metric, {component: value}, at, at), patient)


async def eventually(check: Callable[[], Awaitable[T]], within: float = 10.0) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.05)


def mosquitto_pub(
    port: int,
    username: str,
    password: str,
    topic: str,
    payload: bytes,
    *options: str,
    stdin_mode: str = "-s",
) -> subprocess.CompletedProcess[bytes]:
    """An independent MQTT client publishing at QoS 1 on loopback; the payload comes on
    stdin, whole (``-s``) or one message per line (``-l``). ``options``: TLS, protocol."""
    return subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-u",
            username,
            "-P",
            password,
            "-q",
            "1",
            *options,
            "-t",
            topic,
            stdin_mode,
        ],
        input=payload,
        capture_output=True,
        timeout=60,
        check=False,
    )


# --- principals for API tests (rpm/api/access.py) --------------------------------------------


async def staff_headers(
    pool: asyncpg.Pool,
    staff_id: str = "test.admin",
    role: str = "admin",
    teams: Sequence[str] = (),
    ttl: timedelta = timedelta(hours=1),
) -> dict[str, str]:
    """``Authorization`` headers of a staff member (created if new, in ``teams``): a bearer
    token minted straight into the database, as ``POST /api/auth/token`` would."""
    token = STAFF_TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with pool.acquire() as conn:
        if await staff_auth.credentials(conn, staff_id) is None:
            await staff_auth.add_staff(
                conn,
                staff_id=staff_id,
                display_name=f"Test {role}",
                role=role,
                password_hash="!",  # not an argon2 hash: no password signs in, tokens only
                phone=None,
            )
        for team in teams:
            await staff_store.create_team(conn, team, f"Team {team}")
            await staff_store.add_member(conn, team, staff_id)
        await staff_auth.create_token(
            conn,
            token_hash=token_hash(token),
            staff_id=staff_id,
            expires_at=datetime.now(UTC) + ttl,
        )
    return {"Authorization": f"Bearer {token}"}


def api_app(pool: asyncpg.Pool) -> FastAPI:
    """A bare app for mounting single routers in tests: with the pool and the ``Auth`` the
    routes and access dependencies look for (rpm/api/deps.py; a test adds what its router
    asks for besides), the audit/headers middleware and the error handlers of the real app."""
    app = FastAPI()
    app.state.pool = pool
    app.state.auth = Auth(pool, AuthConfig.from_settings(ApiSettings()))
    app.state.started_at = datetime.now(UTC)
    app.add_middleware(Guard, pool=pool, hsts=False)
    errors.install(app)
    return app
