"""Builders shared by the dashboard tests: a nurse account, an enrolled patient, a
crisis reading, and signing in through the form as a browser would."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from rpm.auth import hash_password
from rpm.storage import registry, staff_auth
from rpm.storage import staff as staff_store

NURSE_ID = "nina.nurse"
NURSE_PASSWORD = "correct horse battery staple"  # a test account's
TEAM = "ward-test"  # the nurse's care team, and the team of the patients ``enroll`` adds


async def add_nurse(
    pool: asyncpg.Pool, staff_id: str = NURSE_ID, password: str = NURSE_PASSWORD
) -> str:
    async with pool.acquire() as conn:
        await staff_auth.add_staff(
            conn,
            staff_id=staff_id,
            display_name="Nina Test",
            role="nurse",
            password_hash=hash_password(password),
            phone=None,
        )
        await staff_store.create_team(conn, TEAM, "Test ward")
        await staff_store.add_member(conn, TEAM, staff_id)
    return staff_id


async def enroll(
    pool: asyncpg.Pool,
    patient_id: str,
    devices: dict[str, str],
    programs: list[str],
    team: str | None = TEAM,
) -> None:
    """A patient of ``team`` with devices ({device id: kind}) bound since yesterday."""
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn,
            patient_id=patient_id,
            display_name="Test Patient",
            phone=None,
            sms_consent=False,
            programs=programs,
        )
        for device_id, kind in devices.items():
            await registry.enroll_device(
                conn,
                device_id=device_id,
                kind=kind,
                patient_id=patient_id,
                since=datetime.now(UTC) - timedelta(days=30),
            )
        if team is not None:
            await staff_store.create_team(conn, team, f"Team {team}")
            await staff_store.set_patient_team(conn, patient_id, team)


def crisis_reading(at: datetime | None = None) -> bytes:
    """A hypertensive crisis (ACC/AHA 2017: SBP > 180 or DBP > 120) as the canonical payload."""
    measured = (at or datetime.now(UTC)).replace(microsecond=0)
    return json.dumps(
        {
            "metric": "blood_pressure",
            "measured_at": measured.isoformat(),
            "values": {"systolic": 192, "diastolic": 124, "pulse": 88},
        }
    ).encode()


def form_token(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" (?:value|content)="([^"]+)"', page)
    assert found, f"no {name} in the page"
    return found.group(1)


async def sign_in(
    http: httpx.AsyncClient, username: str = NURSE_ID, password: str = NURSE_PASSWORD
) -> httpx.Response:
    """Fetch the form (its double-submit cookie and token), then post it."""
    form = await http.get("/dashboard/sign-in")
    assert form.status_code == 200
    return await http.post(
        "/dashboard/sign-in",
        data={
            "username": username,
            "password": password,
            "signin_token": form_token(form.text, "signin_token"),
            "next": "/dashboard/",
        },
    )
