"""Who may call what, over the whole server (real PostgreSQL, Mosquitto, uvicorn): every
/api and /fhir route wants a principal; roles and key scopes; nurses see their care teams'
patients only; tokens expire; keys are revocable; the audit log is written and append-only."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from rpm.server import Server
from tests import helpers
from tests.dashboard_helpers import add_nurse, crisis_reading, enroll, form_token, sign_in
from tests.helpers import staff_headers

UA = {"User-Agent": "access-test/1.0"}


class Clinic:
    """Two care teams, a patient with an open crisis alert in each, and callers."""

    def __init__(self, server: Server, http: httpx.AsyncClient) -> None:
        assert server.pool is not None
        self.server = server
        self.pool: asyncpg.Pool = server.pool
        self.http = http
        self.alerts: dict[str, int] = {}  # one open alert per patient
        self.all_alerts: dict[str, set[int]] = {}
        self.fhir_ids: dict[str, str] = {}
        self.admin: dict[str, str] = {}
        self.nurse_a: dict[str, str] = {}
        self.keys_made = 0

    async def setup(self) -> None:
        assert self.server.pipeline is not None
        now = datetime.now(UTC)
        for name in ("a", "b"):
            devices = {f"cuff-{name}": "bp_cuff"}
            await enroll(self.pool, f"pat-{name}", devices, ["hypertension"], f"team-{name}")
            raw = helpers.raw(crisis_reading(now), f"cuff-{name}", at=now)
            await self.server.pipeline.process([raw])
            async with self.pool.acquire() as conn:
                ids = await conn.fetch(
                    "SELECT id FROM alerts WHERE patient_id = $1 ORDER BY id", f"pat-{name}"
                )
                self.alerts[name] = ids[0]["id"]
                self.all_alerts[name] = {r["id"] for r in ids}
                self.fhir_ids[name] = await conn.fetchval("SELECT rpm_fhir_id($1)", f"pat-{name}")
        self.admin = await staff_headers(self.pool)
        self.nurse_a = await staff_headers(self.pool, "nurse.a", "nurse", ["team-a"])

    async def key(self, scopes: list[str], integration: str | None = None) -> str:
        self.keys_made += 1
        ident = f"key-{self.keys_made}"
        r = await self.http.post(
            "/api/keys",
            json={"id": ident, "name": "EHR", "scopes": scopes, "integration": integration},
            headers=self.admin,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{server.settings.api.port}"
    async with httpx.AsyncClient(base_url=base, timeout=15, headers=UA) as client:
        yield client


@pytest.fixture
async def clinic(server: Server, http: httpx.AsyncClient) -> Clinic:
    c = Clinic(server, http)
    await c.setup()
    return c


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


OPEN = {("post", "/api/auth/token"), ("get", "/fhir/metadata")}


async def test_every_api_and_fhir_route_refuses_a_caller_without_credentials(
    http: httpx.AsyncClient,
) -> None:
    schema = (await http.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    checked = 0
    for path, operations in schema["paths"].items():
        if not path.startswith(("/api/", "/fhir")):
            continue
        for method, operation in operations.items():
            if (method, path) in OPEN:
                continue
            assert operation.get("security"), f"{method} {path} documents no security"
            r = await http.request(method.upper(), _concrete(path), json={})
            assert r.status_code == 401, f"{method} {path}: {r.status_code}"
            assert r.headers["www-authenticate"] == "Bearer"
            checked += 1
    assert checked >= 40  # the whole API, not a handful
    # The open ones: how a program gets a credential, and how a FHIR client discovers us.
    capability = await http.get("/fhir/metadata")
    assert capability.status_code == 200
    assert capability.json()["resourceType"] == "CapabilityStatement"
    # Routes outside the schema (the FHIR catch-all) too; a wrong credential is refused alike.
    assert (await http.post("/fhir/Observation", json={})).status_code == 401
    fhir = await http.get("/fhir/Nothing")
    assert fhir.status_code == 401
    assert fhir.headers["content-type"] == "application/fhir+json"  # FHIR clients read it
    assert fhir.json()["issue"][0]["code"] == "login"
    bad = {"Authorization": "Bearer rpmt_not-a-token"}
    assert (await http.get("/api/alerts", headers=bad)).status_code == 401
    assert (
        await http.get("/api/alerts", headers={"Authorization": "Basic eDp5"})
    ).status_code == 401


# (method, path, body) -> status for admin, nurse (team a), fhir:read key, ingest key.
MATRIX: list[tuple[str, str, dict[str, Any] | None, tuple[int, int, int, int]]] = [
    ("GET", "/api/alerts", None, (200, 200, 403, 403)),
    ("GET", "/api/patients/pat-a/readings", None, (200, 200, 403, 403)),
    ("GET", "/api/patients/pat-a/rules", None, (200, 200, 403, 403)),
    ("GET", "/api/rules/programs", None, (200, 200, 403, 403)),
    ("GET", "/fhir/metadata", None, (200, 200, 200, 200)),  # open: discovery, no patient data
    ("GET", "/fhir/Patient", None, (200, 200, 200, 403)),
    ("POST", "/fhir/Observation", {}, (405, 405, 405, 403)),  # read-only for everyone
    ("GET", "/api/audit", None, (200, 403, 403, 403)),
    ("GET", "/api/keys", None, (200, 403, 403, 403)),
    ("GET", "/api/teams", None, (200, 403, 403, 403)),
    ("GET", "/api/quarantine", None, (200, 403, 403, 403)),
    ("GET", "/api/fhir/push/failures", None, (200, 403, 403, 403)),
    ("POST", "/api/patients", {"id": "pat-new", "display_name": "N"}, (201, 403, 403, 403)),
    ("PUT", "/api/rules/programs/copd", {}, (422, 403, 403, 403)),  # allowed; empty document
    ("POST", "/api/rules/programs/copd/activate", {"version": 1}, (200, 403, 403, 403)),
]


async def test_roles_and_scopes_per_route_class(http: httpx.AsyncClient, clinic: Clinic) -> None:
    r = await http.post(
        "/api/integrations",
        json={"id": "vendor", "name": "Vendor", "auth": "token", "formats": ["canonical"]},
        headers=clinic.admin,
    )
    assert r.status_code == 201
    callers = [
        clinic.admin,
        clinic.nurse_a,
        {"Authorization": f"Bearer {await clinic.key(['fhir:read'])}"},
        {"Authorization": f"Bearer {await clinic.key(['ingest'], 'vendor')}"},
    ]
    for method, path, body, expected in MATRIX:
        got = []
        for headers in callers:
            resp = await http.request(method, path, json=body, headers=headers)
            got.append(resp.status_code)
        assert tuple(got) == expected, f"{method} {path}: {got}"


async def test_a_nurse_sees_only_the_patients_of_her_teams(
    http: httpx.AsyncClient, clinic: Clinic
) -> None:
    a, b = clinic.alerts["a"], clinic.alerts["b"]
    fa, fb = clinic.fhir_ids["a"], clinic.fhir_ids["b"]
    nurse, admin = clinic.nurse_a, clinic.admin
    ehr = {"Authorization": f"Bearer {await clinic.key(['fhir:read'])}"}

    mine, theirs = clinic.all_alerts["a"], clinic.all_alerts["b"]
    queue = (await http.get("/api/alerts", headers=nurse)).json()
    assert {q["id"] for q in queue} == mine
    everyone = (await http.get("/api/alerts", headers=admin)).json()
    assert {q["id"] for q in everyone} == mine | theirs
    # Another team's resources are missing (404), exactly like ones that do not exist.
    for path in (
        f"/api/alerts/{b}",
        "/api/patients/pat-b/readings",
        "/api/patients/pat-b/rules",
        f"/fhir/Patient/{fb}",
        f"/fhir/DetectedIssue/{b}",
    ):
        refused = await http.get(path, headers=nurse)
        assert refused.status_code == 404, path
        assert (await http.get(path, headers=admin)).status_code == 200, path
        if path.startswith("/fhir/"):  # the EHR's key reads every patient's record
            assert (await http.get(path, headers=ehr)).status_code == 200, path
    missing = await http.get("/api/alerts/999999", headers=nurse)
    assert (
        missing.json()["detail"]
        == (await http.get(f"/api/alerts/{b}", headers=nurse)).json()["detail"]
    )
    acted = await http.post(f"/api/alerts/{b}/acknowledge", json={}, headers=nurse)
    assert acted.status_code == 404
    assert (await http.get(f"/api/alerts/{a}", headers=nurse)).status_code == 200
    assert len((await http.get("/api/patients/pat-a/readings", headers=nurse)).json()) == 1

    def subjects(bundle: dict[str, Any]) -> set[str]:
        return {e["resource"]["id"] for e in bundle.get("entry", [])}

    assert subjects((await http.get("/fhir/Patient", headers=nurse)).json()) == {fa}
    assert subjects((await http.get("/fhir/Patient", headers=ehr)).json()) == {fa, fb}
    obs_b = (await http.get("/fhir/Observation", params={"patient": fb}, headers=nurse)).json()
    assert obs_b["resourceType"] == "Bundle"
    assert obs_b.get("entry", []) == []
    obs_a = (await http.get("/fhir/Observation", params={"patient": fa}, headers=nurse)).json()
    assert len(obs_a["entry"]) >= 1
    issues = (await http.get("/fhir/DetectedIssue", headers=nurse)).json()
    assert subjects(issues) == {str(i) for i in mine}
    devices = (await http.get("/fhir/Device", headers=nurse)).json()
    assert len(devices["entry"]) == 1
    # Filtering by another team's patient finds nothing either.
    page = await http.get("/api/alerts", params={"patient": "pat-b"}, headers=nurse)
    assert page.json() == []


async def test_the_live_stream_leaves_out_other_teams(
    http: httpx.AsyncClient, clinic: Clinic
) -> None:
    a, b = clinic.alerts["a"], clinic.alerts["b"]
    seen: list[int] = []

    async def listen() -> None:
        async with http.stream("GET", "/api/alerts/stream", headers=clinic.nurse_a) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data: ") and "alert_id" in line:
                    seen.append(json.loads(line[6:])["alert_id"])
                    if seen[-1] == a:
                        return

    listener = asyncio.create_task(listen())
    try:
        # Each round changes B's alert, then A's; once the stream listens it hears A's.
        # B's changes come first every round, so a leak would show before A's.
        for round_ in range(200):
            minutes = 1 + round_ % 29  # within the critical cap of 30 minutes
            for alert_id in (b, a):
                r = await http.post(
                    f"/api/alerts/{alert_id}/snooze",
                    json={"minutes": minutes},
                    headers=clinic.admin,
                )
                assert r.status_code == 200
            done, _ = await asyncio.wait({listener}, timeout=0.2)
            if done:
                break
        await asyncio.wait_for(listener, 10)
    finally:
        listener.cancel()
    assert seen
    assert set(seen) == {a}


async def test_staff_tokens_are_issued_for_passwords_and_expire(
    http: httpx.AsyncClient, clinic: Clinic
) -> None:
    nurse = await add_nurse(clinic.pool)  # team ward-test, with a real password
    r = await http.post(
        "/api/auth/token",
        json={"username": nurse, "password": "correct horse battery staple"},
    )
    assert r.status_code == 200, r.text
    token = r.json()
    assert token["token_type"] == "bearer"
    assert token["access_token"].startswith("rpmt_")
    assert 0 < token["expires_in"] <= 15 * 60
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert (await http.get("/api/alerts", headers=bearer)).status_code == 200
    async with clinic.pool.acquire() as conn:  # only a hash is stored
        stored = await conn.fetchval(
            "SELECT token_hash FROM staff_tokens WHERE staff_id = $1", nurse
        )
    assert stored == hashlib.sha256(token["access_token"].encode()).digest()
    expired = await staff_headers(clinic.pool, "nurse.late", "nurse", ttl=timedelta(seconds=-1))
    assert (await http.get("/api/alerts", headers=expired)).status_code == 401
    # Wrong passwords: 401, then 429 once the limit (5 within 15 min) is reached.
    statuses = [
        (
            await http.post("/api/auth/token", json={"username": nurse, "password": "x" * 20})
        ).status_code
        for _ in range(6)
    ]
    assert statuses == [401] * 5 + [429]


async def test_api_keys_are_scoped_shown_once_and_revocable(
    http: httpx.AsyncClient, clinic: Clinic
) -> None:
    key = await clinic.key(["fhir:read"])
    assert key.startswith("rpmk_")
    ehr = {"Authorization": f"Bearer {key}"}
    listed = (await http.get("/api/keys", headers=clinic.admin)).json()
    assert [k["scopes"] for k in listed] == [["fhir:read"]]
    assert key not in json.dumps(listed)
    assert listed[0]["created_by"] == "staff:test.admin"
    assert (await http.get("/fhir/Patient", headers=ehr)).status_code == 200
    assert (await http.post("/api/keys", json={}, headers=clinic.nurse_a)).status_code == 403
    bad = await http.post(
        "/api/keys", json={"id": "x", "name": "x", "scopes": ["ingest"]}, headers=clinic.admin
    )
    assert bad.status_code == 422  # an ingest key names its integration
    revoked = await http.post(f"/api/keys/{listed[0]['id']}/revoke", headers=clinic.admin)
    assert revoked.status_code == 200
    assert (await http.get("/fhir/Patient", headers=ehr)).status_code == 401


async def test_an_ingest_key_posts_for_its_integration(
    http: httpx.AsyncClient, clinic: Clinic
) -> None:
    r = await http.post(
        "/api/integrations",
        json={"id": "acme", "name": "Acme", "auth": "hmac", "formats": ["canonical"]},
        headers=clinic.admin,
    )
    assert r.status_code == 201
    r = await http.post(
        "/api/devices",
        json={
            "id": "SN-1",
            "kind": "bp_cuff",
            "integration": "acme",
            "patient_id": "pat-a",
            "bound_from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        },
        headers=clinic.admin,
    )
    assert r.status_code == 201, r.text
    key = await clinic.key(["ingest"], "acme")
    at = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0).isoformat()
    payload = json.dumps(
        {
            "device_id": "SN-1",
            "metric": "blood_pressure",
            "measured_at": at,
            "values": {"systolic": 120, "diastolic": 80},
        }
    ).encode()
    post = await http.post(
        "/ingest/canonical", content=payload, headers={"Authorization": f"Bearer {key}"}
    )
    assert post.status_code == 200, post.text
    assert post.json()["stored"] == 1
    other = await http.post(
        "/ingest/canonical",
        content=payload,
        headers={"Authorization": f"Bearer {key}", "X-RPM-Integration": "someone-else"},
    )
    assert other.status_code == 403
    fhir_key = await clinic.key(["fhir:read"])
    no_scope = await http.post(
        "/ingest/canonical", content=payload, headers={"Authorization": f"Bearer {fhir_key}"}
    )
    assert no_scope.status_code == 403
    keys = (await http.get("/api/keys", headers=clinic.admin)).json()
    ingest_id = next(k["id"] for k in keys if k["scopes"] == ["ingest"])
    await http.post(f"/api/keys/{ingest_id}/revoke", headers=clinic.admin)
    gone = await http.post(
        "/ingest/canonical", content=payload, headers={"Authorization": f"Bearer {key}"}
    )
    assert gone.status_code == 401


async def test_reads_and_changes_are_audited_and_the_log_is_append_only(
    http: httpx.AsyncClient, clinic: Clinic
) -> None:
    a, b = clinic.alerts["a"], clinic.alerts["b"]
    nurse = clinic.nurse_a
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert (await http.get(f"/api/alerts/{a}", headers=nurse)).status_code == 200
    assert (await http.get(f"/api/alerts/{b}", headers=nurse)).status_code == 404
    await http.get("/api/patients/pat-a/readings", headers=nurse)
    await http.get("/fhir/Observation", params={"patient": clinic.fhir_ids["a"]}, headers=nurse)
    ack = await http.post(f"/api/alerts/{a}/acknowledge", json={}, headers=nurse)
    assert ack.status_code == 200
    assert ack.json()["acknowledged_by"] == "staff:nurse.a"

    async with clinic.pool.acquire() as conn:
        rows = [
            dict(r)
            for r in await conn.fetch(
                "SELECT * FROM audit_log WHERE actor = 'staff:nurse.a' ORDER BY id"
            )
        ]
    summary = [(r["action"], r["resource"], r["patient_ids"], r["status"]) for r in rows]
    assert summary == [
        ("read", "alert", ["pat-a"], 200),
        ("read", "alert", [], 404),  # another team's: refused, and recorded
        ("read", "readings", ["pat-a"], 200),
        ("search", "Observation", ["pat-a"], 200),
        ("acknowledge", "alert", ["pat-a"], 200),
    ]
    for r in rows:
        assert (r["role"], r["client_addr"], r["user_agent"]) == (
            "nurse",
            "127.0.0.1",
            "access-test/1.0",
        )
        assert r["at"] >= before
    assert rows[0]["route"] == "GET /api/alerts/{alert_id}"
    assert rows[1]["resource_id"] == str(b)

    # The database refuses to change or remove a row, whoever asks.
    async with clinic.pool.acquire() as conn:
        for sql in (
            "UPDATE audit_log SET actor = 'staff:nobody'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(sql)
        assert await conn.fetchval("SELECT count(*) FROM audit_log") >= len(rows)

    # Admins query it; nurses may not.
    async def query(**params: Any) -> list[dict[str, Any]]:
        r = await http.get("/api/audit", params=params, headers=clinic.admin)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    assert (await http.get("/api/audit", headers=nurse)).status_code == 403
    mine = await query(actor="staff:nurse.a")
    assert [m["action"] for m in mine] == [s[0] for s in reversed(summary)]  # newest first
    about_a = await query(patient="pat-a")
    assert all("pat-a" in m["patient_ids"] for m in about_a)
    assert {m["id"] for m in mine if m["patient_ids"]} <= {m["id"] for m in about_a}
    assert [m["action"] for m in await query(actor="staff:nurse.a", action="acknowledge")] == [
        "acknowledge"
    ]
    assert await query(since=(datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []
    assert await query(actor="staff:nurse.a", until=before.isoformat()) == []
    first = await query(actor="staff:nurse.a", limit=2)
    second = await query(actor="staff:nurse.a", limit=2, before_id=first[-1]["id"])
    assert [m["id"] for m in first + second] == [m["id"] for m in mine[:4]]


async def test_api_headers_and_csrf_for_sessions(server: Server, http: httpx.AsyncClient) -> None:
    assert server.pool is not None
    assert server.pipeline is not None
    await add_nurse(server.pool)
    await enroll(server.pool, "pat-s", {"cuff-s": "bp_cuff"}, ["hypertension"])  # her team
    now = datetime.now(UTC)
    await server.pipeline.process([helpers.raw(crisis_reading(now), "cuff-s", at=now)])
    assert (await sign_in(http)).status_code == 303
    page = await http.get("/dashboard/", headers={"Accept": "text/html"})
    csrf = form_token(page.text, "csrf-token")

    listed = await http.get("/api/alerts")  # the session cookie is enough to read
    assert listed.status_code == 200
    # The crisis reading's alert (the missing-data timer may also have found the devices,
    # bound 30 days ago, silent until now).
    [alert] = [a for a in listed.json() if a["rule_id"] == "bp.hypertensive_crisis"]
    h = listed.headers
    assert h["x-content-type-options"] == "nosniff"
    assert h["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    assert "camera=()" in h["permissions-policy"]
    assert "strict-transport-security" not in h  # plain HTTP in tests: no Secure cookies

    url = f"/api/alerts/{alert['id']}/acknowledge"
    assert (await http.post(url, json={})).status_code == 403  # cookie alone: refused
    wrong = await http.post(url, json={}, headers={"X-CSRF-Token": "forged"})
    assert wrong.status_code == 403
    ok = await http.post(url, json={}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200
    assert ok.json()["acknowledged_by"] == "staff:nina.nurse"
