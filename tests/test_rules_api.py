"""The rules API over HTTP against the real database: programs as versioned specs (seeded
once, published, rolled back, refused with a readable reason) and per-patient parameter
overrides that are validated and audited."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from rpm.api import rules as rules_api
from rpm.storage import registry, rule_programs
from rpm.storage import staff as staff_store
from rules.programs import RuleBook, builtin_programs
from tests.helpers import api_app, staff_headers

HTN = "hypertension"
# htn.low_bp's defaults as the built-in program has them ({systolic_below: 90, hysteresis: 5}).
LOW_BP = dict(next(r for r in builtin_programs()[HTN].rules if r.id == "htn.low_bp").params)


@pytest.fixture
def changes() -> list[str]:
    return []


@pytest.fixture
async def api(pool: asyncpg.Pool, changes: list[str]) -> AsyncIterator[httpx.AsyncClient]:
    """The rules router in a FastAPI app over the test database, seeded, with one patient."""
    app = api_app(pool)
    app.state.rule_books = rules_api.RuleBooks(on_change=lambda: changes.append("changed"))
    app.include_router(rules_api.router)
    async with pool.acquire() as conn:
        await rule_programs.seed_builtin(conn)
        await registry.upsert_patient(
            conn,
            patient_id="pat-r",
            display_name="Pat R",
            phone=None,
            sms_consent=False,
            programs=[HTN],
        )
        await staff_store.create_team(conn, "ward", "Ward")
        await staff_store.set_patient_team(conn, "pat-r", "ward")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://rpm.test",
        headers=await staff_headers(pool, "dr-lead"),  # an admin; the actor of what it does
    ) as client:
        yield client


def htn_document(**param_changes: float) -> dict[str, Any]:
    """The built-in hypertension program as JSON, with htn.low_bp's params changed."""
    document: dict[str, Any] = json.loads(builtin_programs()[HTN].canonical_json())
    for rule in document["rules"]:
        if rule["id"] == "htn.low_bp":
            rule["params"].update(param_changes)
    return document


def rule_of(rules: list[dict[str, Any]], rule_id: str) -> dict[str, Any]:
    [rule] = [r for r in rules if r["id"] == rule_id]
    return rule


async def versions_of(pool: asyncpg.Pool, program: str) -> list[int]:
    async with pool.acquire() as conn:
        return [v["version"] for v in await rule_programs.versions(conn, program)]


async def stamp(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return await rule_programs.stamp(conn)


async def audit(api: httpx.AsyncClient, patient: str = "pat-r") -> list[dict[str, Any]]:
    r = await api.get(f"/api/patients/{patient}/rules/audit")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# --- programs ------------------------------------------------------------------------


async def test_seeding_stores_each_builtin_program_once_even_when_raced(
    pool: asyncpg.Pool,
) -> None:
    async def seed() -> list[str]:
        async with pool.acquire() as conn:
            return await rule_programs.seed_builtin(conn)

    first, second = await asyncio.gather(seed(), seed())
    builtin = builtin_programs()
    assert sorted(first + second) == sorted(builtin)  # one of them did it all
    assert await seed() == []
    async with pool.acquire() as conn:
        book = await rule_programs.active_book(conn)
        rows = await conn.fetch("SELECT program, version, active FROM rule_program_versions")
    assert sorted((r["program"], r["version"], r["active"]) for r in rows) == [
        (name, 1, True) for name in sorted(builtin)
    ]
    assert dict(book.versions) == dict.fromkeys(builtin, 1)
    # Stored and read back, each program is exactly the built-in one.
    assert {n: p.digest for n, p in book.programs.items()} == {
        n: p.digest for n, p in builtin.items()
    }


async def test_publishing_a_version_changes_the_active_book_and_the_stamp(
    api: httpx.AsyncClient, pool: asyncpg.Pool, changes: list[str]
) -> None:
    before = await stamp(pool)
    r = await api.put(
        f"/api/rules/programs/{HTN}",
        json={**htn_document(systolic_below=95), "actor": "dr-lead", "note": "fewer alarms"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"program": HTN, "version": 2, "changed": True}
    assert changes == ["changed"]
    assert await stamp(pool) > before
    async with pool.acquire() as conn:
        book = await rule_programs.active_book(conn)
    assert book.versions[HTN] == 2
    assert book.rule("htn.low_bp", [HTN]).p("systolic_below") == 95  # type: ignore[union-attr]
    assert book.programs["copd"] == RuleBook.builtin().programs["copd"]

    # The same document again is no new version, and nobody is told of a change.
    same = await stamp(pool)
    r = await api.put(
        f"/api/rules/programs/{HTN}?actor=dr-lead", json=htn_document(systolic_below=95)
    )
    assert r.json() == {"program": HTN, "version": 2, "changed": False}
    assert await stamp(pool) == same
    assert changes == ["changed"]

    r = await api.get(f"/api/rules/programs/{HTN}/versions")
    assert [(v["version"], v["active"], v["created_by"], v["note"]) for v in r.json()] == [
        (2, True, "staff:dr-lead", "fewer alarms"),
        (1, False, "system:builtin", f"built-in rules/programs/{HTN}.yaml"),
    ]
    [listed] = [p for p in (await api.get("/api/rules/programs")).json() if p["program"] == HTN]
    assert listed["version"] == 2
    assert listed["digest"] == book.programs[HTN].digest
    assert rule_of(listed["spec"]["rules"], "htn.low_bp")["params"]["systolic_below"] == 95


async def test_a_yaml_document_is_accepted_with_the_actor_in_the_query(
    api: httpx.AsyncClient,
) -> None:
    text = yaml.safe_dump(htn_document(systolic_below=92))
    r = await api.put(
        f"/api/rules/programs/{HTN}",
        params={"actor": "dr-lead", "note": "from the editor"},
        content=text,
        headers={"Content-Type": "application/yaml"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    r = await api.get(f"/api/rules/programs/{HTN}")
    assert rule_of(r.json()["spec"]["rules"], "htn.low_bp")["params"]["systolic_below"] == 92
    assert r.json()["note"] == "from the editor"


async def test_activating_an_old_version_copies_it_forward_as_the_active_one(
    api: httpx.AsyncClient, pool: asyncpg.Pool, changes: list[str]
) -> None:
    r = await api.put(f"/api/rules/programs/{HTN}?actor=a", json=htn_document(systolic_below=95))
    assert r.json()["version"] == 2
    r = await api.post(
        f"/api/rules/programs/{HTN}/activate",
        json={"version": 1, "actor": "dr-lead", "note": "too quiet"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"program": HTN, "version": 3, "changed": True}
    assert changes == ["changed", "changed"]
    async with pool.acquire() as conn:
        book = await rule_programs.active_book(conn)
        history = await rule_programs.versions(conn, HTN)
    assert book.programs[HTN].digest == builtin_programs()[HTN].digest
    assert (history[0]["version"], history[0]["created_by"], history[0]["note"]) == (
        3,
        "staff:dr-lead",
        "activated version 1: too quiet",
    )
    assert history[0]["digest"] == history[2]["digest"]

    # What is active already: nothing changes. Unknown versions and programs: 404.
    r = await api.post(f"/api/rules/programs/{HTN}/activate", json={"version": 1, "actor": "a"})
    assert r.json() == {"program": HTN, "version": 3, "changed": False}
    r = await api.post(f"/api/rules/programs/{HTN}/activate", json={"version": 9, "actor": "a"})
    assert r.status_code == 404
    assert "no version 9" in r.json()["detail"]
    assert (await api.get("/api/rules/programs/nope/versions")).status_code == 404


def _unknown_kind(d: dict[str, Any]) -> None:
    d["rules"][0]["kind"] = "astrology"


def _missing_param(d: dict[str, Any]) -> None:
    bp_missing = rule_of(d["rules"], "htn.bp_missing")
    del bp_missing["params"]["after_hours"]


def _undefined_param(d: dict[str, Any]) -> None:
    rule_of(d["rules"], "htn.low_bp")["tiers"][0]["any"][0]["param"] = "systolic_under"


def _unknown_component(d: dict[str, Any]) -> None:
    rule_of(d["rules"], "htn.low_bp")["tiers"][0]["any"][0]["component"] = "mean"


def _rules_not_a_list(d: dict[str, Any]) -> None:
    d["rules"] = 5


def _confirm_a_critical_tier(d: dict[str, Any]) -> None:
    # Crisis values page at once (confirm before paging, docs/alerts.md).
    rule_of(d["rules"], "htn.low_bp")["confirm"] = {"minutes": 15, "severities": ["critical"]}


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (_unknown_kind, "unknown rule kind 'astrology'"),
        (_missing_param, "missing rule htn.bp_missing needs params ['after_hours']"),
        (_undefined_param, "rule htn.low_bp refers to undefined param 'systolic_under'"),
        (_unknown_component, "blood_pressure has no component 'mean'"),
        (_rules_not_a_list, "rules: must be a list"),
        (_confirm_a_critical_tier, "a critical tier pages at once and cannot be confirmed"),
    ],
)
async def test_an_invalid_program_is_refused_with_the_reason_and_nothing_stored(
    api: httpx.AsyncClient, pool: asyncpg.Pool, changes: list[str], spoil: Any, expected: str
) -> None:
    document = htn_document()
    spoil(document)
    before = await stamp(pool)
    r = await api.put(f"/api/rules/programs/{HTN}?actor=a", json=document)
    assert r.status_code == 422
    assert expected in r.json()["detail"]
    assert "errors.pydantic.dev" not in r.json()["detail"]
    assert await stamp(pool) == before
    assert await versions_of(pool, HTN) == [1]
    assert changes == []


@pytest.mark.parametrize(
    ("content", "content_type", "status", "expected"),
    [
        (b"program: [unclosed", "application/yaml", 422, "not YAML"),
        (b"{", "application/json", 422, "not JSON"),
        (b"- a list", "application/yaml", 422, "a program document is a mapping"),
        (b"program: hypertension", "text/csv", 415, "application/yaml"),
    ],
)
async def test_a_body_that_is_no_program_document_is_refused(
    api: httpx.AsyncClient, content: bytes, content_type: str, status: int, expected: str
) -> None:
    r = await api.put(
        f"/api/rules/programs/{HTN}?actor=a",
        content=content,
        headers={"Content-Type": content_type},
    )
    assert r.status_code == status
    assert expected in r.json()["detail"]


async def test_a_document_for_another_program_or_with_conflicting_actors_is_refused(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    r = await api.put("/api/rules/programs/copd?actor=a", json=htn_document())
    assert r.status_code == 422
    assert r.json()["detail"] == "the document is program 'hypertension' but the path names 'copd'"
    r = await api.put(
        f"/api/rules/programs/{HTN}?actor=a", json={**htn_document(systolic_below=95), "actor": "b"}
    )
    assert r.status_code == 422
    assert await versions_of(pool, HTN) == [1]
    assert await versions_of(pool, "copd") == [1]


# --- per-patient overrides -----------------------------------------------------------


async def test_an_override_changes_the_effective_params_and_is_audited(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    r = await api.get("/api/patients/pat-r/rules")
    assert r.status_code == 200
    low = rule_of(r.json(), "htn.low_bp")
    assert low["params"] == low["defaults"] == LOW_BP
    assert (low["overridden"], low["program"], low["program_version"]) == ([], HTN, 1)
    assert {r["program"] for r in r.json()} == {"general", HTN}

    r = await api.put(
        "/api/patients/pat-r/rules/htn.low_bp/params",
        json={"params": {"systolic_below": 95}, "reason": "on midodrine"},
        headers=await staff_headers(pool, "nurse-kim", "nurse", ["ward"]),
    )
    assert r.status_code == 200, r.text
    assert r.json()["params"] == {**LOW_BP, "systolic_below": 95}
    assert r.json()["defaults"] == LOW_BP
    assert r.json()["overridden"] == ["systolic_below"]
    assert rule_of((await api.get("/api/patients/pat-r/rules")).json(), "htn.low_bp") == r.json()

    r = await api.put(
        "/api/patients/pat-r/rules/htn.low_bp/params",
        json={"params": {"systolic_below": 100, "hysteresis": 3}, "actor": "dr-lee"},
    )
    assert r.json()["overridden"] == ["hysteresis", "systolic_below"]
    events = await audit(api)
    assert [
        (e["rule_id"], e["actor"], e["old_params"], e["new_params"], e["reason"]) for e in events
    ] == [
        ("htn.low_bp", "staff:nurse-kim", None, {"systolic_below": 95}, "on midodrine"),
        (
            "htn.low_bp",
            "staff:dr-lead",
            {"systolic_below": 95},
            {"systolic_below": 100, "hysteresis": 3},
            None,
        ),
    ]
    async with pool.acquire() as conn:
        stored = await conn.fetchval("SELECT rule_overrides FROM patients WHERE id = 'pat-r'")
    assert stored == {"htn.low_bp": {"systolic_below": 100, "hysteresis": 3}}

    # Setting what is set already records nothing.
    r = await api.put(
        "/api/patients/pat-r/rules/htn.low_bp/params",
        json={"params": {"systolic_below": 100, "hysteresis": 3}, "actor": "dr-lee"},
    )
    assert r.status_code == 200
    assert len(await audit(api)) == 2


@pytest.mark.parametrize(
    ("rule_id", "params", "status", "expected"),
    [
        ("htn.low_bp", {"systolic_over": 95}, 422, "has no parameters ['systolic_over']"),
        ("htn.stage2_persistent", {"k": 6}, 422, "need 1 <= k <= n <= 64"),
        ("htn.low_bp", {"hysteresis": -1}, 422, "hysteresis cannot be negative"),
        ("htn.low_bp", {}, 422, ""),
        ("htn.low_bp", {"systolic_below": "low"}, 422, ""),
        ("copd.spo2_below_target", {"target_low": 85}, 404, "has no rule"),
        # A window only where the rule confirms (htn.low_bp pages at once).
        ("htn.low_bp", {"confirm_minutes": 15}, 422, "has no parameters ['confirm_minutes']"),
    ],
)
async def test_a_refused_override_changes_nothing_and_is_not_audited(
    api: httpx.AsyncClient,
    pool: asyncpg.Pool,
    rule_id: str,
    params: dict[str, Any],
    status: int,
    expected: str,
) -> None:
    r = await api.put(
        f"/api/patients/pat-r/rules/{rule_id}/params", json={"params": params, "actor": "n"}
    )
    assert r.status_code == status, r.text
    assert expected in str(r.json()["detail"])
    assert await audit(api) == []
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT rule_overrides FROM patients WHERE id = 'pat-r'") == {}


async def test_an_unknown_patient_is_404(api: httpx.AsyncClient) -> None:
    body = {"params": {"systolic_below": 95}, "actor": "n"}
    assert (await api.get("/api/patients/nobody/rules")).status_code == 404
    assert (await api.get("/api/patients/nobody/rules/audit")).status_code == 404
    r = await api.put("/api/patients/nobody/rules/htn.low_bp/params", json=body)
    assert r.status_code == 404
    r = await api.delete("/api/patients/nobody/rules/htn.low_bp/params", params={"actor": "n"})
    assert r.status_code == 404


async def test_reverting_restores_the_defaults_and_is_audited(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    r = await api.put(
        "/api/patients/pat-r/rules/htn.low_bp/params",
        json={"params": {"systolic_below": 95}, "actor": "nurse-kim"},
    )
    assert r.status_code == 200
    r = await api.delete(
        "/api/patients/pat-r/rules/htn.low_bp/params",
        params={"actor": "dr-lee", "reason": "stopped midodrine"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["params"] == r.json()["defaults"] == LOW_BP
    assert r.json()["overridden"] == []
    last = (await audit(api))[-1]
    assert (last["actor"], last["old_params"], last["new_params"], last["reason"]) == (
        "staff:dr-lead",
        {"systolic_below": 95},
        None,
        "stopped midodrine",
    )
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT rule_overrides FROM patients WHERE id = 'pat-r'") == {}

    # Reverting again is no change.
    r = await api.delete("/api/patients/pat-r/rules/htn.low_bp/params")
    assert r.status_code == 200
    assert len(await audit(api)) == 2


async def test_an_override_the_new_program_version_refuses_shows_and_defaults_apply(
    api: httpx.AsyncClient,
) -> None:
    r = await api.put(
        "/api/patients/pat-r/rules/htn.low_bp/params",
        json={"params": {"hysteresis": 2}, "actor": "nurse-kim"},
    )
    assert r.status_code == 200
    document = htn_document()
    del rule_of(document["rules"], "htn.low_bp")["params"]["hysteresis"]
    r = await api.put(f"/api/rules/programs/{HTN}?actor=a", json=document)
    assert r.status_code == 200, r.text
    low = rule_of((await api.get("/api/patients/pat-r/rules")).json(), "htn.low_bp")
    assert low["program_version"] == 2
    assert low["params"] == low["defaults"] == {"systolic_below": LOW_BP["systolic_below"]}
    assert low["overridden"] == []
    assert "has no parameters ['hysteresis']" in low["override_error"]


async def test_a_patients_confirmation_window_is_an_override_like_any_parameter(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as conn:
        await conn.execute("UPDATE patients SET programs = '{copd}' WHERE id = 'pat-r'")
    rule = "copd.spo2_below_target"
    before = rule_of((await api.get("/api/patients/pat-r/rules")).json(), rule)
    assert before["confirm"] == {"minutes": 15, "default_minutes": 15, "severities": ["high"]}
    r = await api.put(
        f"/api/patients/pat-r/rules/{rule}/params",
        json={"params": {"confirm_minutes": 30}, "reason": "slow to warm up her hands"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["confirm"] == {"minutes": 30, "default_minutes": 15, "severities": ["high"]}
    assert r.json()["overridden"] == ["confirm_minutes"]
    assert [e["new_params"] for e in await audit(api)] == [{"confirm_minutes": 30}]
    refused = await api.put(
        f"/api/patients/pat-r/rules/{rule}/params", json={"params": {"confirm_minutes": 0}}
    )
    assert refused.status_code == 422
