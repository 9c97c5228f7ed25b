"""Builders shared by the FHIR tests: an enrolled clinic, readings through the real ingest
unit of work, and an HTTP client for the FHIR router."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from rpm.api import fhir as fhir_api
from rpm.domain import RawMessage
from rpm.pipeline import IngestPipeline
from rpm.storage import registry
from rpm.validation import ClockPolicy
from tests.helpers import api_app, staff_headers

NOW = datetime.now(UTC).replace(microsecond=0)

# (device id, kind, patient id)
DEVICES = (
    ("cuff-1", "bp_cuff", "pat-1"),
    ("ox-1", "pulse_oximeter", "pat-1"),
    ("scale-1", "scale", "pat-1"),
    ("glu-1", "glucometer", "pat-1"),
    ("hr-1", "other", "pat-1"),
    ("acme-cloud:v_1", "bp_cuff", "pat_2"),
)


async def enroll(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for pid, name, programs in (
            ("pat-1", "Ada Example", ["hypertension"]),
            ("pat_2", "Grace Example", ["hypertension"]),
            ("pat-3", "Alan Example", []),
        ):
            await registry.upsert_patient(
                conn,
                patient_id=pid,
                display_name=name,
                phone="+1555010000" + pid[-1],
                sms_consent=True,
                programs=programs,
            )
        for device_id, kind, patient in DEVICES:
            await registry.enroll_device(
                conn,
                device_id=device_id,
                kind=kind,
                patient_id=patient,
                since=NOW - timedelta(days=2),
                vendor="Acme",
                serial=f"SN-{device_id}",
            )


def message(device: str, metric: str, values: dict[str, float], at: datetime) -> RawMessage:
    body = json.dumps({"metric": metric, "measured_at": at.isoformat(), "values": values})
    return RawMessage(
        "mqtt", "canonical", device, body.encode(), NOW, f"rpm/v1/devices/{device}/readings"
    )


def minutes_ago(n: float) -> datetime:
    return NOW - timedelta(minutes=n)


# pat-1's readings: (device, metric, values, minutes ago). Two carry a pulse (two Observations).
READINGS: tuple[tuple[str, str, dict[str, float], float], ...] = (
    ("cuff-1", "blood_pressure", {"systolic": 130, "diastolic": 80, "pulse": 70}, 50),
    ("cuff-1", "blood_pressure", {"systolic": 192, "diastolic": 124, "pulse": 88}, 40),
    ("ox-1", "spo2", {"spo2": 95, "pulse": 72}, 30),
    ("scale-1", "weight", {"weight": 80.5}, 20),
    ("glu-1", "glucose", {"glucose": 110}, 10),
    ("hr-1", "heart_rate", {"pulse": 65}, 5),
)
OBSERVATIONS_OF_PAT_1 = len(READINGS) + 3


async def ingest_clinic(pool: asyncpg.Pool, *, fhir_push: bool = False) -> IngestPipeline:
    """Enroll the clinic and store pat-1's readings (one batch) and one of pat_2's."""
    await enroll(pool)
    pipeline = IngestPipeline(pool, ClockPolicy(), rules_refresh_s=0, fhir_push=fhir_push)
    batch = [message(d, m, v, minutes_ago(n)) for d, m, v, n in READINGS]
    batch.append(
        message(
            "acme-cloud:v_1",
            "blood_pressure",
            {"systolic": 120, "diastolic": 75},
            minutes_ago(15),
        )
    )
    result = await pipeline.process(batch)
    assert result.stored == len(batch), result
    return pipeline


@asynccontextmanager
async def fhir_client(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for an app with only the FHIR router, as an admin (who sees all)."""
    app = api_app(pool)
    app.include_router(fhir_api.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://rpm.test", headers=await staff_headers(pool)
    ) as client:
        yield client


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", [])]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    found = [lk["url"] for lk in bundle["link"] if lk["relation"] == relation]
    return found[0] if found else None


def codes(obs: dict[str, Any]) -> list[str]:
    return [c["code"] for c in obs["code"]["coding"]]


def ids(resources: Sequence[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in resources]
