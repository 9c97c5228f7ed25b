"""The dashboard over HTTP against the whole running server: signing in and out, the
failed-sign-in limit, CSRF on state changes, security headers, charts, and actions."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rpm.api import charts
from rpm.auth import verify_password
from rpm.cli import main as rpm_main
from rpm.domain import Metric
from rpm.server import Server
from rpm.storage import readings as reading_store
from rpm.storage import staff_auth
from tests import helpers
from tests.dashboard_helpers import (
    NURSE_ID,
    NURSE_PASSWORD,
    add_nurse,
    crisis_reading,
    enroll,
    form_token,
    sign_in,
)

HTML = {"Accept": "text/html"}


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{server.settings.api.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client


@pytest.fixture
async def nurse(server: Server) -> str:
    assert server.pool is not None
    return await add_nurse(server.pool)


@pytest.fixture
async def crisis_alert(server: Server) -> dict[str, Any]:
    """An open hypertensive-crisis alert of patient pat-dash, through the real pipeline."""
    assert server.pool is not None
    assert server.pipeline is not None
    await enroll(server.pool, "pat-dash", {"cuff-dash": "bp_cuff"}, ["hypertension"])
    now = datetime.now(UTC)
    await server.pipeline.process([helpers.raw(crisis_reading(now), "cuff-dash", at=now)])
    async with server.pool.acquire() as conn:
        alert_id = await conn.fetchval("SELECT id FROM alerts WHERE patient_id = 'pat-dash'")
    assert alert_id is not None
    return {"id": alert_id, "patient_id": "pat-dash"}


async def signed_in(http: httpx.AsyncClient) -> str:
    """Sign in; return the session's CSRF token from the queue page."""
    resp = await sign_in(http)
    assert resp.status_code == 303, resp.text
    page = await http.get("/dashboard/", headers=HTML)
    assert page.status_code == 200
    return form_token(page.text, "csrf-token")


async def test_pages_and_actions_require_sign_in(
    http: httpx.AsyncClient, crisis_alert: dict[str, Any]
) -> None:
    root = await http.get("/")
    assert (root.status_code, root.headers["location"]) == (303, "/dashboard/")
    page = await http.get("/dashboard/", headers=HTML)
    assert page.status_code == 303
    assert page.headers["location"] == "/dashboard/sign-in?next=/dashboard/"
    patient = await http.get("/dashboard/patients/pat-dash?alert=1", headers=HTML)
    assert patient.status_code == 303
    assert patient.headers["location"].startswith("/dashboard/sign-in?next=/dashboard/patients/")
    chart = await http.get("/dashboard/patients/pat-dash/chart/blood_pressure.svg")
    assert chart.status_code == 401
    act = await http.post(f"/dashboard/alerts/{crisis_alert['id']}/acknowledge", json={})
    assert act.status_code == 401
    # A made-up session cookie is no session.
    http.cookies.set("rpm_session", "forged-token")
    assert (await http.get("/dashboard/", headers=HTML)).status_code == 303


async def test_sign_in_sets_a_hardened_session_cookie_and_sign_out_ends_it(
    server: Server, http: httpx.AsyncClient, nurse: str
) -> None:
    resp = await sign_in(http)
    assert resp.status_code == 303
    assert resp.headers["location"] == "/dashboard/"
    cookie = next(
        c for c in resp.headers.get_list("set-cookie") if c.startswith("rpm_session=")
    ).lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/" in cookie
    assert "secure" not in cookie  # RPM_SESSION_COOKIE_SECURE is off on plain-HTTP loopback
    token = http.cookies["rpm_session"]
    assert server.pool is not None
    async with server.pool.acquire() as conn:
        stored = await conn.fetch("SELECT token_hash, csrf_token FROM staff_sessions")
    # Only the token's SHA-256 is stored.
    assert [bytes(r["token_hash"]) for r in stored] == [hashlib.sha256(token.encode()).digest()]

    queue = await http.get("/dashboard/", headers=HTML)
    assert queue.status_code == 200
    assert "Nina Test" in queue.text
    csrf = form_token(queue.text, "csrf-token")
    assert csrf == stored[0]["csrf_token"]

    # Signing out needs the CSRF token too, then the session is gone.
    refused = await http.post("/dashboard/sign-out", data={})
    assert refused.status_code == 403
    out = await http.post("/dashboard/sign-out", data={"csrf_token": csrf})
    assert (out.status_code, out.headers["location"]) == (303, "/dashboard/sign-in")
    async with server.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM staff_sessions") == 0
    http.cookies.set("rpm_session", token)  # replaying the old cookie does not help
    assert (await http.get("/dashboard/", headers=HTML)).status_code == 303


async def test_sign_in_failures(http: httpx.AsyncClient, nurse: str) -> None:
    wrong = await sign_in(http, password="not the password at all")
    assert wrong.status_code == 401
    assert "Wrong sign-in name or password" in wrong.text
    unknown = await sign_in(http, username="nobody")
    assert unknown.status_code == 401
    assert "Wrong sign-in name or password" in unknown.text  # the same answer
    assert "rpm_session" not in http.cookies
    # A post without the form's double-submit token (another site's form) is refused.
    forged = await http.post(
        "/dashboard/sign-in",
        data={"username": NURSE_ID, "password": NURSE_PASSWORD, "signin_token": "x"},
    )
    assert forged.status_code == 403
    assert "rpm_session" not in http.cookies


async def test_failed_sign_ins_are_limited_per_name_and_address(
    server: Server, http: httpx.AsyncClient, nurse: str
) -> None:
    assert server.pool is not None
    await add_nurse(server.pool, "other.nurse", NURSE_PASSWORD)
    for _ in range(server.settings.api.signin_max_failures):
        assert (await sign_in(http, password="wrong password, again")).status_code == 401
    limited = await sign_in(http)  # even the right password, for now
    assert limited.status_code == 429
    assert "Too many failed sign-ins" in limited.text
    assert 0 < int(limited.headers["retry-after"]) <= server.settings.api.signin_failure_window_s
    assert "rpm_session" not in http.cookies
    # Another name from the same address is not locked out.
    other = await sign_in(http, username="other.nurse")
    assert other.status_code == 303


async def test_state_changes_need_the_session_csrf_token(
    server: Server, http: httpx.AsyncClient, nurse: str, crisis_alert: dict[str, Any]
) -> None:
    csrf = await signed_in(http)
    url = f"/dashboard/alerts/{crisis_alert['id']}/acknowledge"
    missing = await http.post(url, json={})
    assert missing.status_code == 403
    wrong = await http.post(url, json={}, headers={"X-CSRF-Token": "0" * len(csrf)})
    assert wrong.status_code == 403
    form = await http.post(url, data={"next": "/dashboard/"})
    assert form.status_code == 403
    alert = (await http.get(f"/api/alerts/{crisis_alert['id']}")).json()
    assert alert["state"] == "open"

    ok = await http.post(url, json={}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.text
    assert ok.json()["state"] == "acknowledged"
    assert ok.json()["acknowledged_by"] == f"staff:{NURSE_ID}"  # named by the session
    again = await http.post(url, json={}, headers={"X-CSRF-Token": csrf})
    assert again.status_code == 409


async def test_security_headers_on_dashboard_responses(
    http: httpx.AsyncClient, nurse: str, crisis_alert: dict[str, Any]
) -> None:
    responses = {"sign-in page": await http.get("/dashboard/sign-in", headers=HTML)}
    responses["redirect to sign-in"] = await http.get("/dashboard/", headers=HTML)
    await signed_in(http)
    responses["queue"] = await http.get("/dashboard/", headers=HTML)
    responses["patient"] = await http.get("/dashboard/patients/pat-dash", headers=HTML)
    responses["script"] = await http.get("/dashboard/static/dashboard.js")
    responses["styles"] = await http.get("/dashboard/static/dashboard.css")
    responses["chart"] = await http.get("/dashboard/patients/pat-dash/chart/blood_pressure.svg")
    responses["not found"] = await http.get("/dashboard/patients/nobody", headers=HTML)
    for what, resp in responses.items():
        assert resp.status_code in (200, 303, 404), what
        csp = resp.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp, what
        assert "unsafe-inline" not in _directive(csp, "script-src"), what
        assert "default-src 'none'" in csp, what
        assert resp.headers.get("x-content-type-options") == "nosniff", what
        assert resp.headers.get("referrer-policy") == "no-referrer", what
        assert resp.headers.get("x-frame-options") == "DENY", what
    assert "script-src 'self'" in responses["queue"].headers["content-security-policy"]
    # Pages and charts hold patient data: not kept in caches.
    assert responses["patient"].headers["cache-control"] == "no-store"
    assert responses["chart"].headers["cache-control"] == "no-store"
    # No inline script anywhere in the pages.
    for what in ("sign-in page", "queue", "patient"):
        scripts = re.findall(r"<script\b[^>]*>", responses[what].text)
        assert all("src=" in s for s in scripts), what
        assert not re.search(r"<[^>]+\son[a-z]+\s*=", responses[what].text), what


def _directive(csp: str, name: str) -> str:
    for part in csp.split(";"):
        if part.strip().startswith(name):
            return part
    return _directive(csp, "default-src") if name != "default-src" else ""


async def test_a_chart_renders_for_every_metric(
    server: Server, http: httpx.AsyncClient, nurse: str
) -> None:
    assert server.pool is not None
    await enroll(
        server.pool, "pat-vitals", {"multi-1": "other"}, ["hypertension", "diabetes", "copd"]
    )
    values = {
        Metric.BLOOD_PRESSURE: {"systolic": 150.0, "diastolic": 95.0, "pulse": 80.0},
        Metric.HEART_RATE: {"pulse": 72.0},
        Metric.SPO2: {"spo2": 94.0, "pulse": 75.0},
        Metric.WEIGHT: {"weight": 81.5},
        Metric.BODY_TEMPERATURE: {"temperature": 37.1},
        Metric.GLUCOSE: {"glucose": 140.0},
        Metric.RESPIRATORY_RATE: {"respiratory_rate": 16.0},
    }
    now = datetime.now(UTC).replace(microsecond=0)
    # Through the pipeline, as a device sends them (the page finds a patient's metrics where
    # the unit of work keeps them).
    assert server.pipeline is not None
    await server.pipeline.process(
        [
            helpers.raw(
                {
                    "metric": metric.value,
                    "measured_at": (now - timedelta(hours=6 * i)).isoformat(),
                    "values": {k: v + i for k, v in vals.items()},
                },
                "multi-1",
                at=now,
            )
            for metric, vals in values.items()
            for i in range(4)
        ]
    )
    await signed_in(http)
    for metric in Metric:
        resp = await http.get(f"/dashboard/patients/pat-vitals/chart/{metric.value}.svg")
        assert resp.status_code == 200, metric
        assert resp.headers["content-type"] == "image/svg+xml"
        assert resp.text.startswith("<?xml"), metric
        assert "<svg" in resp.text, metric
        assert "<script" not in resp.text
    bp = (await http.get("/dashboard/patients/pat-vitals/chart/blood_pressure.svg")).text
    assert "systolic &gt; 180: Hypertensive crisis" in bp  # the rule's limit, labelled
    glucose = (await http.get("/dashboard/patients/pat-vitals/chart/glucose.svg")).text
    assert "glucose &lt; 70: Low blood glucose" in glucose
    empty = await http.get("/dashboard/patients/pat-dash-none/chart/weight.svg")
    assert empty.status_code == 404  # no such patient
    unknown = await http.get("/dashboard/patients/pat-vitals/chart/mood.svg")
    assert unknown.status_code == 404
    page = await http.get("/dashboard/patients/pat-vitals", headers=HTML)
    for metric in Metric:
        assert f'src="/dashboard/patients/pat-vitals/chart/{metric.value}.svg"' in page.text
    assert "Blood pressure: 4 readings from" in page.text  # the text alternative
    # Each chart's text alternative describes the readings the chart draws.
    async with server.pool.acquire() as conn:
        for metric in Metric:
            drawn = await reading_store.for_patient(conn, "pat-vitals", metrics=[metric.value])
            points = [(s.accepted.reading.measured_at, s.accepted.reading.values) for s in drawn]
            assert len(points) == 4, metric
            assert f'alt="{charts.describe(metric, points)}"' in page.text, metric


async def test_patient_view_explains_the_alert_and_acts_through_forms(
    http: httpx.AsyncClient, nurse: str, crisis_alert: dict[str, Any]
) -> None:
    await signed_in(http)
    alert_id = crisis_alert["id"]
    here = f"/dashboard/patients/pat-dash?alert={alert_id}"
    page = await http.get(here, headers=HTML)
    assert page.status_code == 200
    assert "Hypertensive crisis" in page.text
    assert "192/124 mmHg" in page.text  # the explanation
    assert "system:rules" in page.text  # the history
    csrf = form_token(page.text, "csrf_token")

    ack = await http.post(
        f"/dashboard/alerts/{alert_id}/acknowledge", data={"csrf_token": csrf, "next": here}
    )
    assert ack.status_code == 303
    assert ack.headers["location"] == f"{here}&done=acknowledge"
    no_note = await http.post(
        f"/dashboard/alerts/{alert_id}/resolve",
        data={"csrf_token": csrf, "next": here, "note": "  "},
    )
    assert no_note.headers["location"] == f"{here}&problem=note"
    shown = await http.get(no_note.headers["location"], headers=HTML)
    assert "Resolving needs a note" in shown.text
    # ``next`` may only lead back into the dashboard.
    resolved = await http.post(
        f"/dashboard/alerts/{alert_id}/resolve",
        data={"csrf_token": csrf, "next": "https://evil.example/", "note": "Called; 150/90."},
    )
    assert resolved.headers["location"] == "/dashboard/?done=resolve"
    detail = (await http.get(f"/api/alerts/{alert_id}")).json()
    assert detail["state"] == "resolved"
    assert [(e["action"], e["actor"]) for e in detail["events"]] == [
        ("open", "system:rules"),
        ("acknowledge", f"staff:{NURSE_ID}"),
        ("resolve", f"staff:{NURSE_ID}"),
    ]
    page = await http.get(here, headers=HTML)
    assert "Called; 150/90." in page.text


async def test_assign_to_me_or_a_clear_answer_until_the_api_offers_it(
    http: httpx.AsyncClient, nurse: str, crisis_alert: dict[str, Any]
) -> None:
    csrf = await signed_in(http)
    resp = await http.post(
        f"/dashboard/alerts/{crisis_alert['id']}/assign",
        json={"assignee": "me"},
        headers={"X-CSRF-Token": csrf},
    )
    offered = any(p.endswith("/assign") for p in (await http.get("/openapi.json")).json()["paths"])
    if offered:
        assert resp.status_code == 200, resp.text
        assert resp.json()["assigned_to"] == NURSE_ID
    else:
        assert resp.status_code == 501
        assert "not available" in resp.json()["detail"]


async def test_staff_add_command(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPM_DATABASE_URL", server.settings.database.url.get_secret_value())
    monkeypatch.delenv("RPM_STAFF_PASSWORD", raising=False)
    secret = tmp_path / "password"
    secret.write_text("a long enough passphrase\n")
    args = ["staff", "add", "--id", "jo.smith", "--name", "Jo Smith", "--role", "nurse"]
    short = tmp_path / "short"
    short.write_text("short\n")
    assert await asyncio.to_thread(rpm_main, [*args, "--password-file", str(short)]) == 2
    assert (
        await asyncio.to_thread(rpm_main, [*args, "--phone", "555", "--password-file", str(secret)])
        == 2
    )
    assert await asyncio.to_thread(rpm_main, [*args, "--password-file", str(secret)]) == 0
    assert await asyncio.to_thread(rpm_main, [*args, "--password-file", str(secret)]) == 1
    monkeypatch.setenv("RPM_STAFF_PASSWORD", "another long passphrase")
    assert await asyncio.to_thread(rpm_main, [*args, "--replace"]) == 0
    assert server.pool is not None
    async with server.pool.acquire() as conn:
        creds = await staff_auth.credentials(conn, "jo.smith")
    assert creds is not None
    assert creds.active
    assert creds.password_hash.startswith("$argon2id$")
    assert verify_password(creds.password_hash, "another long passphrase")
