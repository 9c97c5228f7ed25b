"""A small clinic for alert tests: one care team with a tier-1 and a tier-2 on-call nurse,
one patient with a cuff and a glucose meter, and readers of what the alerting wrote."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from rpm.domain import RawMessage
from rpm.pipeline import IngestPipeline
from rpm.storage import registry, rule_programs, staff_auth
from rpm.storage import staff as staff_store
from rpm.storage.pool import Conn
from rpm.validation import ClockPolicy

NOW = datetime.now(UTC).replace(microsecond=0)
PATIENT = "pat-7"
TEAM = "team-north"
TIER1 = "nurse-ana"
TIER2 = "nurse-ben"
CRISIS = "bp.hypertensive_crisis"


def msg(device: str, payload: object, at: datetime = NOW) -> RawMessage:
    body = json.dumps(payload).encode()
    return RawMessage("mqtt", "canonical", device, body, at, f"rpm/v1/devices/{device}/readings")


def bp(sys_: int, dia: int, at: datetime) -> dict[str, object]:
    return {
        "metric": "blood_pressure",
        "measured_at": at.isoformat(),
        "values": {"systolic": sys_, "diastolic": dia},
    }


def glucose(mg_dl: float, at: datetime) -> dict[str, object]:
    return {"metric": "glucose", "measured_at": at.isoformat(), "values": {"glucose": mg_dl}}


def pipeline(pool: asyncpg.Pool, now: datetime = NOW) -> IngestPipeline:
    return IngestPipeline(pool, ClockPolicy(), now=lambda: now, rules_refresh_s=0)


async def clinic(
    pool: asyncpg.Pool, *, programs: tuple[str, ...] = ("hypertension",), on_call: bool = True
) -> None:
    """Seed programs, the team, its nurses (on call for two days unless told otherwise),
    and the patient with a cuff and a glucose meter."""
    async with pool.acquire() as conn:
        await rule_programs.seed_builtin(conn)
        await staff_store.create_team(conn, TEAM, "North ward")
        for staff_id, phone in ((TIER1, "+15550199001"), (TIER2, "+15550199002")):
            await staff_auth.add_staff(
                conn,
                staff_id=staff_id,
                display_name=f"Nurse {staff_id}",
                role="nurse",
                password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
                phone=phone,
            )
            await staff_store.add_member(conn, TEAM, staff_id)
        if on_call:
            await shifts(conn, NOW - timedelta(days=1), NOW + timedelta(days=2))
        await registry.upsert_patient(
            conn,
            patient_id=PATIENT,
            display_name="Alice Example",
            phone="+15550100777",
            sms_consent=True,
            programs=list(programs),
        )
        await staff_store.set_patient_team(conn, PATIENT, TEAM)
        for device, kind in (("cuff-7", "bp_cuff"), ("meter-7", "glucometer")):
            await registry.enroll_device(
                conn, device_id=device, kind=kind, patient_id=PATIENT, since=NOW - timedelta(days=3)
            )


async def shifts(conn: Conn, start: datetime, end: datetime) -> None:
    await staff_store.set_on_call(conn, TEAM, 1, TIER1, start, end)
    await staff_store.set_on_call(conn, TEAM, 2, TIER2, start, end)


async def crisis(pool: asyncpg.Pool, at: datetime = NOW) -> asyncpg.Record:
    """A hypertensive crisis reading; returns its alert."""
    result = await pipeline(pool, at).process([msg("cuff-7", bp(192, 124, at))])
    [alert_id] = result.alerts_opened
    return await alert(pool, alert_id)


async def alert(pool: asyncpg.Pool, alert_id: int) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM alerts WHERE id = $1", alert_id)
    assert row is not None
    return row


async def alerts_of(pool: asyncpg.Pool, rule_id: str) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(
            await conn.fetch("SELECT * FROM alerts WHERE rule_id = $1 ORDER BY id", rule_id)
        )


async def outbox(pool: asyncpg.Pool, recipient: str) -> list[tuple[str, dict[str, Any]]]:
    """(dedupe key, payload) of the SMS work queued for ``patient`` or ``staff``."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT dedupe_key, payload FROM outbox WHERE payload->>'recipient' = $1 ORDER BY id",
            recipient,
        )
    return [(r["dedupe_key"], r["payload"]) for r in rows]


async def events(pool: asyncpg.Pool, alert_id: int) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT at, actor, action, from_state, to_state, severity, note"
                " FROM alert_events WHERE alert_id = $1 ORDER BY id",
                alert_id,
            )
        )
