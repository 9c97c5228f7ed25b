"""Restart-to-ready of ``benchmarks/data_year.py``: ``rpm serve`` stopped, readings of
``queued`` patients waiting in its persistent MQTT session (the first a hypertensive crisis,
192/124 mm Hg, which ``bp.hypertensive_crisis`` opens an alert for), then the process started;
ready when that alert is in the database (the reading accepted and evaluated), timed from the
process's start. Also: when its API first answered, and when every queued reading was stored.
Optionally under ``py-spy record`` (``--profile``), to see where the time goes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from _common import BenchError, Child, Login, children_of, cpu_seconds, paho_client

from simulators.fleet import topic

CRISIS = {"systolic": 192, "diastolic": 124, "pulse": 88}  # above 180/120: ACC/AHA 2017 §11.2


def publish_queued(login: Login, patients: Sequence[str], at: datetime) -> None:
    """One blood pressure per patient at ``at`` from its cuff, QoS 1, every PUBACK awaited;
    the first is the crisis."""
    stamp = at.isoformat().replace("+00:00", "Z")
    acked, done = 0, threading.Event()

    def on_publish(c: Any, u: object, mid: int, reason: object, p: object) -> None:
        nonlocal acked
        acked += 1
        if acked >= len(patients):
            done.set()

    client = paho_client(login, "year-restart-publisher")
    client.max_inflight_messages_set(1000)
    client.on_publish = on_publish
    client.connect(login.host, login.port)
    client.loop_start()
    try:
        for n, p in enumerate(patients):
            values = CRISIS if n == 0 else {"systolic": 126, "diastolic": 78, "pulse": 70}
            payload = {"metric": "blood_pressure", "measured_at": stamp, "values": values}
            client.publish(topic(f"{p}-bp"), json.dumps(payload), qos=1)
        if not done.wait(120):
            raise BenchError(f"only {acked} of {len(patients)} queued readings acknowledged")
    finally:
        client.disconnect()
        client.loop_stop()


async def restart_ready(
    dsn: str,
    env: Mapping[str, str],
    base_url: str,
    log: Path,
    patients: Sequence[str],
    at: datetime,
    *,
    py_spy: str | None = None,
    profile: Path | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Start ``rpm serve``; seconds to the API answering, to the crisis evaluated (and the
    server's CPU seconds until then), to every queued reading stored (``readings`` at ``at``
    of ``patients``' cuffs)."""
    import asyncpg

    serve = [sys.executable, "-m", "rpm.cli", "serve"]
    if py_spy and profile:
        serve = [py_spy, "record", "--rate", "200", "--subprocesses", "--format", "raw",
                 "-o", str(profile), "--", *serve]  # fmt: skip
    devices = [f"{p}-bp" for p in patients]
    conn = await asyncpg.connect(dsn)
    t0 = time.monotonic()
    child = Child("rpm serve (restart)", serve, env, log)
    marks: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            while "all_stored_s" not in marks:
                now = time.monotonic() - t0
                if child.proc.poll() is not None:
                    raise BenchError(f"rpm serve exited during restart\n{child.log_tail()}")
                if now > 300:
                    raise BenchError(f"restart not ready in 300 s: {marks}\n{child.log_tail()}")
                if "api_s" not in marks:
                    try:
                        r = await http.get(f"{base_url}/api/alerts?limit=1")
                        if r.status_code < 500:
                            marks["api_s"] = time.monotonic() - t0
                    except httpx.HTTPError:
                        pass
                if "ready_s" not in marks and await conn.fetchval(
                    """SELECT count(*) FROM alerts WHERE patient_id = $1
                          AND greatest(opened_at, updated_at, last_fired_at) >= $2""",
                    patients[0],
                    at,
                ):
                    marks["ready_s"] = time.monotonic() - t0
                    # CPU seconds the server used until then: what the wall time is on a
                    # machine with a core to spare (the wall time grows with other load).
                    marks["ready_cpu_s"] = cpu_seconds(children_of(child.proc.pid))
                    say(f"crisis evaluated {marks['ready_s']:.1f} s after the start")
                if "ready_s" in marks:
                    stored = await conn.fetchval(
                        """SELECT count(*) FROM readings
                            WHERE device_id = ANY($1::text[]) AND metric = 'blood_pressure'
                              AND measured_at = $2""",
                        devices,
                        at,
                    )
                    if stored >= len(patients):
                        marks["all_stored_s"] = time.monotonic() - t0
                await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return {"child": child, **{k: round(v, 2) for k, v in marks.items()}}


def stamp_now() -> datetime:
    """Now, to the second (a reading's measured time)."""
    return datetime.now(UTC).replace(microsecond=0)
