"""The interpretation stored with each reading through the ingest unit of work (a real
PostgreSQL) is the one its threshold rules give it on their own (the reference in
``tests/test_threshold_once.py``): programs, a per-patient override, a patient with no
program, a redelivered batch (duplicates skipped) and a late reading."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import asyncpg

from rpm.domain import AcceptedReading, Metric, RawMessage, Reading
from rpm.pipeline import IngestPipeline
from rpm.storage import registry, rule_programs
from rpm.storage.reading_values import row_values
from rpm.validation import ClockPolicy
from rules.engine import PatientContext
from rules.programs import RuleBook
from tests.test_threshold_once import reference

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

PATIENTS = {
    "p-dm-copd": ["diabetes", "copd"],
    "p-htn": ["hypertension"],
    "p-none": [],
    "p-copd": ["copd"],
}
OVERRIDES = {  # patient -> (rule, params): limits moved so the codes differ from the program's
    "p-htn": ("htn.low_bp", {"systolic_below": 100.0}),
    "p-copd": ("copd.spo2_below_target", {"target_low": 92.0}),
}
DEVICES = {
    "cuff": ("bp_cuff", "blood_pressure"),
    "ox": ("pulse_oximeter", "spo2"),
    "gluc": ("glucometer", "glucose"),
    "scale": ("scale", "weight"),
}
VALUES = {
    "blood_pressure": {"systolic": (80, 200), "diastolic": (50, 125)},
    "spo2": {"spo2": (80, 100), "pulse": (50, 120)},
    "glucose": {"glucose": (45, 410)},
    "weight": {"weight": (60, 90)},
}


def messages(rng: random.Random, n: int, minutes_from: int) -> list[RawMessage]:
    out = []
    for k in range(n):
        patient = rng.choice(sorted(PATIENTS))
        device = rng.choice(sorted(DEVICES))
        metric = DEVICES[device][1]
        values = {c: float(rng.randint(lo, hi)) for c, (lo, hi) in VALUES[metric].items()}
        if metric == "blood_pressure":  # plausible: the diastolic below the systolic
            values["diastolic"] = min(values["diastolic"], values["systolic"] - 20)
        at = NOW - timedelta(minutes=minutes_from + k)
        body = {"metric": metric, "measured_at": at.isoformat(), "values": values}
        device_id = f"{device}-{patient}"
        out.append(
            RawMessage(
                "mqtt",
                "canonical",
                device_id,
                json.dumps(body).encode(),
                NOW,
                f"rpm/v1/devices/{device_id}/readings",
            )
        )
    return out


async def test_the_stored_interpretation_is_the_one_its_rules_give_on_their_own(
    pool: asyncpg.Pool,
) -> None:
    book = RuleBook.builtin()
    async with pool.acquire() as conn:
        await rule_programs.seed_builtin(conn)
        for patient, programs in PATIENTS.items():
            await registry.upsert_patient(
                conn,
                patient_id=patient,
                display_name=patient,
                phone=None,
                sms_consent=False,
                programs=programs,
            )
            for device, (kind, _) in DEVICES.items():
                await registry.enroll_device(
                    conn,
                    device_id=f"{device}-{patient}",
                    kind=kind,
                    patient_id=patient,
                    since=NOW - timedelta(days=10),
                )
        for patient, (rule_id, params) in OVERRIDES.items():
            await rule_programs.set_overrides(conn, patient, rule_id, params, "test", None, book)

    p = IngestPipeline(pool, ClockPolicy(), now=lambda: NOW, rules_refresh_s=0)
    rng = random.Random(21)
    first = messages(rng, 300, 30)
    assert (await p.process(first)).quarantined == 0
    # Redelivered (already stored: skipped), with new readings and late ones among them.
    late = messages(rng, 20, 2000)
    second = rng.sample(first, 100) + messages(rng, 200, 400) + late
    result = await p.process(second)
    assert (result.duplicates, result.stored, result.quarantined) == (100, 220, 0)

    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT device_id, metric, measured_at, patient_id, v1, v2, v3, received_at,"
            " interpretation FROM readings ORDER BY measured_at, device_id"
        )
        contexts = await registry.patient_contexts(conn, PATIENTS)
    assert len(rows) == 520
    readings = [
        AcceptedReading(
            Reading(
                r["device_id"],
                Metric(r["metric"]),
                row_values(r),
                r["measured_at"],
                r["received_at"],
            ),
            r["patient_id"],
        )
        for r in rows
    ]
    plans = [
        p.engine.plan(contexts.get(a.patient_id) or PatientContext(a.patient_id)) for a in readings
    ]
    want = reference(readings, plans, p.engine._buffer)
    assert [r["interpretation"] for r in rows] == want
    assert {"N", "H", "L", "HH", "LL", None} <= set(want)
    # the overrides made a difference to some readings' codes
    plain = [
        p.engine.plan(PatientContext(a.patient_id, tuple(PATIENTS[a.patient_id]))) for a in readings
    ]
    assert reference(readings, plain, p.engine._buffer) != want
