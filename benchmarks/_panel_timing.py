"""The patient panel's server time (docs/panel.md): every sort and filter of ``GET /api/panel``
and of the dashboard page over it, each asked ``repeat`` times one request at a time on
loopback, with p50 and p99 per case. ``benchmarks/panel.py`` calls it on a population of its
own; ``benchmarks/billing.py`` on the billing population's team of 10,000.

The time is the client's wall time per request over a kept-alive loopback connection: the
server's time plus well under a millisecond of loopback.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

SORTS = ("name", "patient", "days", "minutes", "last_reading", "alerts")
FLAGS = ("readings", "time", "any", "none")


def cases(
    team: str | None = None, program: str | None = None, segment: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(label, query) of every sort in both directions, every flag, the filters, a deep
    page and the largest page."""
    base: dict[str, Any] = {"team": team} if team else {}
    out = [
        (f"sort {s} {d}", {**base, "sort": s, "direction": d})
        for s in SORTS
        for d in ("asc", "desc")
    ]
    out += [(f"flag {f}", {**base, "flag": f}) for f in FLAGS]
    if program:
        out.append((f"program {program}", {**base, "program": program}))
    if segment:
        out.append((f"segment {segment}", {**base, "segment": segment}))
        out.append(
            (
                f"segment {segment}, needs time, by days",
                {**base, "segment": segment, "flag": "time", "sort": "days"},
            )
        )
    out.append(("last page, by minutes", {**base, "sort": "minutes", "offset": 9_950}))
    out.append(("200 a page, by alerts", {**base, "sort": "alerts", "limit": 200}))
    return out


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


async def sign_in_cookies(base_url: str, username: str, password: str) -> dict[str, str]:
    """A dashboard session's cookies, signing in through the form as a browser does."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        form = await http.get("/dashboard/sign-in")
        token = re.search(r'name="signin_token" value="([^"]+)"', form.text)
        if token is None:
            raise RuntimeError("no sign-in form at /dashboard/sign-in")
        done = await http.post(
            "/dashboard/sign-in",
            data={
                "username": username,
                "password": password,
                "signin_token": token.group(1),
                "next": "/dashboard/panel",
            },
        )
        if done.status_code >= 400 or not http.cookies:
            raise RuntimeError(f"sign-in failed: {done.status_code}")
        return dict(http.cookies)


async def panel_p99_ms(
    base_url: str,
    headers: Mapping[str, str],
    *,
    cookies: Mapping[str, str] | None = None,
    team: str | None = None,
    program: str | None = None,
    segment: str | None = None,
    repeat: int = 10,
    page_cases: int = 4,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """p50/p99 in ms of each case of :func:`cases` through the API (``headers``: a bearer
    credential); with ``cookies`` (a session, :func:`sign_in_cookies`) the first
    ``page_cases`` cases through the page too. ``panel_p99_ms`` is the worst case's p99.
    ``transport``: an app in this process (httpx.ASGITransport) instead of a server."""
    timings: dict[str, list[float]] = {}
    totals: dict[str, int] = {}
    plan = cases(team, program, segment)
    async with httpx.AsyncClient(
        base_url=base_url, headers=dict(headers), timeout=60, transport=transport
    ) as api:
        for label, query in plan:
            await _time(api, "/api/panel", query, 1)  # warm: plans and caches
            timings[f"api {label}"] = await _time(api, "/api/panel", query, repeat)
            answer = await api.get("/api/panel", params=query)
            totals[label] = int(answer.json()["total"])
    if cookies:
        async with httpx.AsyncClient(base_url=base_url, cookies=dict(cookies), timeout=60) as page:
            for label, query in plan[:page_cases]:
                await _time(page, "/dashboard/panel", query, 1)
                timings[f"page {label}"] = await _time(page, "/dashboard/panel", query, repeat)
    per_case = {
        label: {
            "p50_ms": round(_percentile(sorted(t), 50), 1),
            "p99_ms": round(_percentile(sorted(t), 99), 1),
        }
        for label, t in timings.items()
    }
    return {
        "panel_p99_ms": max(c["p99_ms"] for c in per_case.values()),
        "panel_p50_ms": max(c["p50_ms"] for c in per_case.values()),
        "cases": per_case,
        "totals": totals,
        "requests": sum(len(t) for t in timings.values()),
    }


async def _time(
    client: httpx.AsyncClient, path: str, query: Mapping[str, Any], repeat: int
) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        resp = await client.get(path, params=query)
        elapsed = (time.perf_counter() - t0) * 1000
        if resp.status_code != 200:
            raise RuntimeError(f"{path} {dict(query)} answered {resp.status_code}")
        out.append(elapsed)
    return out
