"""Several gateways on one shared subscription: the fleet, the gateway processes and the
comparison that ``tests/test_active_active.py`` and ``benchmarks/scale_out.py`` share.

The fleet: ``patients`` hypertension patients with one cuff each, ``per_patient`` blood
pressures a minute apart (at most the rule engine's buffer of 48 per patient: a reading later
than a full buffer's span is evaluated against what it holds, docs/architecture.md),
published patient by patient in rounds (reading 0 of every patient, then reading 1, ...),
so a patient's consecutive readings are in flight together and reach different gateways.
Some patients have three stage-2 readings in a row (``htn.stage2_persistent``: 3 of the last
5, a rule over the history that a stale gateway would miss), some one crisis
reading (``bp.hypertensive_crisis``), some both (one ``bp.high`` episode, escalated), and a
device retransmits every 50th message later, as a cuff that missed its PUBACK would.

What must come out the same whichever gateway got which reading: the readings by identity,
and each alert episode as (rule, patient, severity, measured time of its triggering reading)
(:func:`alert_keys`). The reference is one pipeline stepping the distinct readings in
publish order (:func:`reference_alerts`), as a single gateway would.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from device_gateways.mqtt import to_raw
from rpm.pipeline import IngestPipeline
from rpm.storage import registry
from rpm.storage.pool import Conn
from rpm.validation import ClockPolicy

RETRANSMIT_EVERY = 50
RETRANSMIT_AFTER = 1_000  # messages later

AlertKey = tuple[str, str, str, str]  # rule, patient, severity, measured time (ISO)


def patient_id(p: int) -> str:
    return f"aa-pat-{p:04d}"


def device_id(p: int) -> str:
    return f"aa-cuff-{p:04d}"


def topic(device: str) -> str:
    return f"rpm/v1/devices/{device}/readings"


@dataclass(frozen=True, slots=True)
class Stream:
    messages: list[tuple[str, bytes]]  # in publish order, retransmits included
    distinct: int  # distinct readings among them


def _values(p: int, i: int, per_patient: int) -> dict[str, int]:
    """Normal below 135/85; stage 2 (150/95) three times in a row for p % 4 in (1, 3);
    a crisis (192/124) once for p % 4 in (2, 3)."""
    run = 5 + (p * 7) % max(1, per_patient // 2)
    crisis = per_patient // 2 + (p * 11) % max(1, per_patient // 3)
    if p % 4 in (2, 3) and i == crisis:
        return {"systolic": 192, "diastolic": 124, "pulse": 96}
    if p % 4 in (1, 3) and run <= i < run + 3:
        return {"systolic": 150, "diastolic": 95, "pulse": 80}
    return {
        "systolic": 110 + (7 * i + p) % 25,
        "diastolic": 70 + (3 * i + p) % 15,
        "pulse": 60 + (i + p) % 30,
    }


def make_stream(end: datetime, patients: int, per_patient: int) -> Stream:
    """The fleet's messages (pure): reading ``i`` of every patient, then ``i + 1``, ..."""
    messages: list[tuple[str, bytes]] = []
    later: dict[int, list[tuple[str, bytes]]] = {}
    for i in range(per_patient):
        measured = end - timedelta(minutes=per_patient - 1 - i)
        stamp = measured.isoformat().replace("+00:00", "Z")
        for p in range(patients):
            doc = {
                "metric": "blood_pressure",
                "measured_at": stamp,
                "values": _values(p, i, per_patient),
            }
            message = (topic(device_id(p)), json.dumps(doc).encode())
            k = len(messages)
            messages.append(message)
            if k % RETRANSMIT_EVERY == 0:
                later.setdefault(k + RETRANSMIT_AFTER, []).append(message)
            messages.extend(later.pop(k, []))
    for rest in later.values():
        messages.extend(rest)
    return Stream(messages, patients * per_patient)


async def enroll(conn: Conn, patients: int, since: datetime) -> None:
    """The fleet's patients (hypertension program) and their cuffs."""
    async with conn.transaction():
        for p in range(patients):
            await registry.upsert_patient(
                conn,
                patient_id=patient_id(p),
                display_name=f"Patient {p}",
                phone=f"+1555020{p:04d}",
                sms_consent=True,
                programs=["hypertension"],
            )
            await registry.enroll_device(
                conn, device_id=device_id(p), kind="bp_cuff", patient_id=patient_id(p), since=since
            )


async def reading_counts(conn: Conn) -> tuple[int, int]:
    """(rows, distinct identities) of the fleet's readings."""
    row = await conn.fetchrow(
        """SELECT count(*) AS n, count(DISTINCT (device_id, metric, measured_at)) AS d
             FROM readings WHERE device_id LIKE 'aa-cuff-%'"""
    )
    assert row is not None
    return int(row["n"]), int(row["d"])


async def alert_keys(conn: Conn) -> list[AlertKey]:
    """Every alert episode as (rule, patient, severity, measured time of its triggering
    reading): the earliest measured time of the candidates of the episode's rule that fired
    into it (``contributions``). Not the reading ``first_reading_uid`` names, nor the rule that
    opened a grouped episode: when a late reading makes a held later one fire, the engine
    credits the late reading, and a late stage-2 reading joins a crisis episode that a single
    gateway, getting it first, would have opened with it; both depend on arrival order."""
    rows = await conn.fetch(
        """SELECT a.rule_id, a.patient_id, a.severity,
                  coalesce((SELECT min((c->>'measured_at')::timestamptz)
                              FROM jsonb_array_elements(a.contributions) c
                             WHERE c->>'rule_id' = a.rule_id),
                           r.measured_at) AS measured_at
             FROM alerts a
             JOIN readings r
               ON rpm_reading_uid(r.device_id, r.metric, r.measured_at) = a.first_reading_uid
            ORDER BY 2, 1, 4"""
    )
    return [
        (r["rule_id"], r["patient_id"], r["severity"], r["measured_at"].isoformat()) for r in rows
    ]


def distinct_in_order(messages: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The messages without the retransmits, first sighting kept."""
    seen: set[tuple[str, bytes]] = set()
    out = []
    for m in messages:
        if m not in seen:
            seen.add(m)
            out.append(m)
    return out


async def reference_alerts(
    pool: asyncpg.Pool, messages: Sequence[tuple[str, bytes]], batch: int = 2000
) -> list[AlertKey]:
    """The alerts of one pipeline stepping ``messages`` in order, ``batch`` at a time."""
    pipeline = IngestPipeline(pool, ClockPolicy(), rules_refresh_s=0)
    async with pool.acquire() as conn:
        await pipeline.load_rules(conn)
    ordered = distinct_in_order(messages)
    for k in range(0, len(ordered), batch):
        now = datetime.now(UTC)
        await pipeline.process([to_raw(t, payload, now) for t, payload in ordered[k : k + batch]])
    async with pool.acquire() as conn:
        return await alert_keys(conn)


class GatewayProcess:
    """``rpm serve --role gateway`` (or the ``command`` given) as a child process of this
    checkout, one log per start."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        name: str,
        root: Path,
        command: Sequence[str] = ("serve", "--role", "gateway"),
    ) -> None:
        self.env, self.log_dir, self.name, self.root = dict(env), log_dir, name, root
        self.command = list(command)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = log_dir / f"{name}-0.log"

    def spawn(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        with self.log_path.open("wb") as log:
            # ``-m`` from the checkout's root: this tree's code, whatever the venv points at.
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
                [sys.executable, "-m", "rpm.cli", *self.command],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
            )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return f"--- {self.log_path.name} ---\n" + "\n".join(self.log().splitlines()[-lines:])

    def check_alive(self) -> None:
        assert self.proc is not None
        if (code := self.proc.poll()) is not None:
            raise RuntimeError(f"{self.name} exited with {code}\n{self.log_tail()}")

    async def subscribed(self, within: float = 60.0) -> None:
        """Wait until this start logged its subscription."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while "subscribed to" not in self.log():
            self.check_alive()
            if loop.time() > deadline:
                raise RuntimeError(
                    f"{self.name} not subscribed in {within:.0f} s\n{self.log_tail()}"
                )
            await asyncio.sleep(0.1)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (a clean stop), then SIGKILL; always reaped."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
