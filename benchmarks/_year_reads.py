"""The reads of ``benchmarks/data_year.py``, through ``rpm serve``'s HTTP API one request at a
time on loopback: the patient page (the dashboard view, the readings API under it, its blood
pressure chart), a month of a patient's Observations over FHIR, the alert queue and the
monthly billing report. Each request's wall time at the client (server time plus well under
a millisecond of loopback); p50 and p99 per kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import httpx
from _common import percentile

LOINC = "http://loinc.org"
CODES = {"blood_pressure": "85354-9", "weight": "29463-7", "spo2": "2708-6"}


def sample_patients(patients: int, count: int, seed: int) -> list[str]:
    """``count`` distinct patients of those with a year, spread over the ids."""
    import numpy as np

    rng = np.random.default_rng([seed, 7])
    picks = rng.choice(patients, size=min(count, patients), replace=False)
    return [f"y{int(i) + 1:06d}" for i in sorted(picks)]


async def _timed(
    client: httpx.AsyncClient, path: str, params: Any, out: list[float], ok: int = 200
) -> httpx.Response:
    t0 = time.perf_counter()
    resp = await client.get(path, params=params)
    out.append((time.perf_counter() - t0) * 1000)
    if resp.status_code != ok:
        raise RuntimeError(f"GET {path} {params} answered {resp.status_code}: {resp.text[:200]}")
    return resp


async def time_reads(
    base_url: str,
    bearer: str,
    cookies: dict[str, str],
    patients: Sequence[str],
    month: tuple[date, date],
    report_month: str,
    repeat: int,
    say: Callable[[str], None],
) -> dict[str, list[float]]:
    """Milliseconds per request of each kind of read (a first, untimed pass warms up)."""
    timings: dict[str, list[float]] = {
        k: []
        for k in (
            "patient_page",
            "patient_readings_api",
            "patient_chart",
            "fhir_search",
            "alert_queue",
            "billing_report",
        )
    }
    api = httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {bearer}"}, timeout=60
    )
    page = httpx.AsyncClient(base_url=base_url, cookies=cookies, timeout=60)
    lo, hi = month
    async with api, page:

        async def per_patient(p: str, sink: dict[str, list[float]]) -> None:
            await _timed(page, f"/dashboard/patients/{p}", None, sink["patient_page"])
            await _timed(api, f"/api/patients/{p}/readings", None, sink["patient_readings_api"])
            await _timed(
                page,
                f"/dashboard/patients/{p}/chart/blood_pressure.svg",
                None,
                sink["patient_chart"],
            )
            for code in CODES.values():
                params = [
                    ("patient", p),
                    ("code", f"{LOINC}|{code}"),
                    ("date", f"ge{lo.isoformat()}"),
                    ("date", f"lt{hi.isoformat()}"),
                ]
                await _timed(api, "/fhir/Observation", params, sink["fhir_search"])

        queue_cases: list[Any] = [
            None,
            {"order": "newest"},
            {"program": "diabetes"},
            [("state", "open"), ("severity", "CRITICAL")],
        ]

        async def queue(sink: dict[str, list[float]]) -> None:
            for params in queue_cases:
                await _timed(api, "/api/alerts", params, sink["alert_queue"])

        async def billing(sink: dict[str, list[float]], pages: int) -> None:
            after = None
            for _ in range(pages):
                params = {"month": report_month, "limit": 100}
                if after:
                    params["after"] = after
                resp = await _timed(api, "/api/billing/report", params, sink["billing_report"])
                after = resp.json().get("next_after")
                if not after:
                    after = None

        warm: dict[str, list[float]] = {k: [] for k in timings}
        say("warming up ...")
        await per_patient(patients[0], warm)
        await queue(warm)
        await billing(warm, 2)
        for n, p in enumerate(patients):
            await per_patient(p, timings)
            if n % 10 == 0:
                say(f"patient {n + 1}/{len(patients)} ...")
        for _ in range(repeat):
            await queue(timings)
        await billing(timings, repeat * 4)
    return timings


def summary(timings: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """p50 and p99 (nearest rank) and the count per kind."""
    out = {}
    for kind, values in timings.items():
        ordered = sorted(values)
        out[kind] = {
            "p50_ms": round(percentile(ordered, 50), 1),
            "p99_ms": round(percentile(ordered, 99), 1),
            "n": len(ordered),
        }
    return out


async def bearer_token(base_url: str, username: str, password: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        r = await http.post("/api/auth/token", json={"username": username, "password": password})
        r.raise_for_status()
        return str(r.json()["access_token"])
