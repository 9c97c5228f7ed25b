"""FHIR search as clients use it (R4 search.html, http.html#search), against a real PostgreSQL:
``total`` on every searchset, ``_summary=count`` and ``_count=0``, ``POST [type]/_search``,
comma lists of patients, the ``:Patient`` type modifier, ``_sort`` on ``_lastUpdated``, and a
CapabilityStatement that says exactly that, with ``rest.security``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from rpm.fhir.mapping import logical_id
from rpm.pipeline import IngestPipeline
from rpm.storage import sms as sms_store
from rpm.validation import ClockPolicy
from tests.fhir_helpers import (
    NOW,
    OBSERVATIONS_OF_PAT_1,
    entries,
    fhir_client,
    ids,
    ingest_clinic,
    link,
    message,
    minutes_ago,
)
from tests.helpers import staff_headers

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
GRACE = logical_id("pat_2")


@pytest.fixture
async def http(pool: asyncpg.Pool) -> Any:
    await ingest_clinic(pool)
    async with pool.acquire() as conn:
        for i, patient in enumerate(("pat-1", "pat-1", "pat_2", "pat-3")):
            await sms_store.record_outbound(
                conn,
                outbox_id=None,
                patient_id=patient,
                staff_id=None,
                alert_id=None,
                sid=f"SM{i:032d}",
                status="delivered",
                error_code=None,
                body=f"message {i}",
                at=NOW + timedelta(seconds=i),
            )
    async with fhir_client(pool) as client:
        yield client


async def bundle_of(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    bundle: dict[str, Any] = resp.json()
    Bundle.model_validate(bundle)
    return bundle


async def get(http: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    return await bundle_of(await http.get(path, params=params))


# Every searchable type, with parameters that find something, and how many they find.
SEARCHES = [
    ("Observation", {"patient": "pat-1"}, OBSERVATIONS_OF_PAT_1),
    ("Patient", {}, 3),
    ("Device", {"patient": "pat-1"}, 5),
    ("DetectedIssue", {}, 1),
    ("Communication", {"patient": "pat-1"}, 2),
    ("QuestionnaireResponse", {"patient": "pat-1"}, 0),
]


@pytest.mark.parametrize(("kind", "params", "total"), SEARCHES)
async def test_every_searchset_carries_its_total_on_every_page(
    http: httpx.AsyncClient, kind: str, params: dict[str, str], total: int
) -> None:
    bundle = await get(http, f"/fhir/{kind}", **params, _count=1)
    assert bundle["total"] == total
    assert len(entries(bundle)) == min(total, 1)
    if total > 1:
        nxt = await bundle_of(await http.get(str(link(bundle, "next"))))
        assert nxt["total"] == total
    spared = await get(http, f"/fhir/{kind}", **params, _total="none")
    assert "total" not in spared
    assert len(entries(spared)) == total


@pytest.mark.parametrize(("kind", "params", "total"), SEARCHES)
@pytest.mark.parametrize("summary", [{"_summary": "count"}, {"_count": "0"}])
async def test_summary_count_and_count_zero_answer_the_total_alone(
    http: httpx.AsyncClient,
    kind: str,
    params: dict[str, str],
    total: int,
    summary: dict[str, str],
) -> None:
    # R4 search.html#count: "_count=0 ... treat as _summary=count".
    bundle = await get(http, f"/fhir/{kind}", **params, **summary)
    assert bundle["total"] == total
    assert "entry" not in bundle or bundle["entry"] == []
    assert link(bundle, "next") is None


async def test_the_total_counts_what_the_caller_may_see(pool: asyncpg.Pool) -> None:
    await ingest_clinic(pool)
    nurse = await staff_headers(pool, staff_id="nurse-t1", role="nurse", teams=["t1"])
    async with pool.acquire() as conn:
        await conn.execute("UPDATE patients SET care_team = 't1' WHERE id = 'pat-1'")
    async with fhir_client(pool) as http:
        http.headers.update(nurse)
        assert (await get(http, "/fhir/Patient"))["total"] == 1
        both = await get(http, "/fhir/Observation", patient=f"pat-1,{GRACE}", _summary="count")
        assert both["total"] == OBSERVATIONS_OF_PAT_1  # pat_2 is another team's
        assert (await get(http, "/fhir/Device", _summary="count"))["total"] == 5


async def test_post_search_is_the_get_search(http: httpx.AsyncClient) -> None:
    by_get = await get(http, "/fhir/Observation", patient="pat-1", code="85354-9")
    by_post = await bundle_of(
        await http.post(
            "/fhir/Observation/_search", content="patient=pat-1&code=85354-9", headers=FORM
        )
    )
    assert ids(entries(by_post)) == ids(entries(by_get))
    assert by_post["total"] == by_get["total"] == 2
    # The query's parameters count too (R4 http.html#search), and the self link is a GET.
    mixed = await bundle_of(
        await http.post("/fhir/Observation/_search?patient=pat-1", content="_count=1", headers=FORM)
    )
    assert len(entries(mixed)) == 1
    assert mixed["total"] == OBSERVATIONS_OF_PAT_1
    assert str(link(mixed, "self")).startswith("http://rpm.test/fhir/Observation?")
    for kind, body in (
        ("Patient", "_id=pat-1"),
        ("Device", "patient=pat-1&_count=2"),
        ("DetectedIssue", "patient=pat-1"),
        ("Communication", "subject=pat-1"),
        ("QuestionnaireResponse", "patient=pat-1"),
    ):
        resp = await http.post(f"/fhir/{kind}/_search", content=body, headers=FORM)
        assert (await bundle_of(resp))["resourceType"] == "Bundle", kind


async def test_post_search_takes_a_form_only(http: httpx.AsyncClient) -> None:
    resp = await http.post("/fhir/Observation/_search", json={"patient": "pat-1"})
    assert resp.status_code == 415
    assert resp.json()["resourceType"] == "OperationOutcome"
    # Creating is still not offered: the API is read-only.
    assert (await http.post("/fhir/Observation", content="{}", headers=FORM)).status_code == 405


async def test_comma_lists_name_any_of_several_patients(http: httpx.AsyncClient) -> None:
    pair = await get(http, "/fhir/Communication", subject=f"pat-1,{GRACE}")
    assert sorted(c["payload"][0]["contentString"] for c in entries(pair)) == [
        "message 0",
        "message 1",
        "message 2",
    ]
    assert pair["total"] == 3
    issues = await get(http, "/fhir/DetectedIssue", patient=f"pat-1,{GRACE}")
    assert issues["total"] == 1
    assert (await get(http, "/fhir/DetectedIssue", patient=f"pat-3,{GRACE}"))["total"] == 0
    # Two parameters AND: a patient in both.
    anded = await get(http, "/fhir/Communication", patient="pat-1,pat-3", subject="pat-3")
    assert [c["payload"][0]["contentString"] for c in entries(anded)] == ["message 3"]
    assert (await get(http, "/fhir/Communication", patient="nobody"))["total"] == 0


async def test_the_patient_type_modifier(http: httpx.AsyncClient) -> None:
    plain = await get(http, "/fhir/Observation", subject="pat-1")
    typed = await get(http, "/fhir/Observation", **{"subject:Patient": "pat-1"})
    assert ids(entries(typed)) == ids(entries(plain))
    assert "subject=pat-1" in str(link(typed, "self"))
    for kind in ("Communication", "QuestionnaireResponse"):
        assert (await get(http, f"/fhir/{kind}", **{"subject:Patient": "pat-1"}))["total"] >= 0
    assert (await get(http, "/fhir/DetectedIssue", **{"patient:Patient": "pat-1"}))["total"] == 1
    refused = await http.get("/fhir/Observation", params={"subject:Device": "cuff-1"})
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["code"] == "not-supported"


async def test_sort_by_last_updated_pages_in_storage_order(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    # A phone syncs late: measured before everything else, stored after it.
    async with pool.acquire() as conn:
        # The clinic's batch was stored a second ago, not now (one transaction's now()).
        await conn.execute("UPDATE readings SET stored_at = stored_at - interval '1 second'")
    pipeline = IngestPipeline(pool, ClockPolicy(), rules_refresh_s=0)
    late = message("scale-1", "weight", {"weight": 81.0}, minutes_ago(600))
    assert (await pipeline.process([late])).stored == 1
    newest_stored = entries(
        await get(http, "/fhir/Observation", patient="pat-1", _sort="-_lastUpdated")
    )
    newest_measured = entries(await get(http, "/fhir/Observation", patient="pat-1"))
    assert newest_stored[0]["effectiveDateTime"] == minutes_ago(600).isoformat()
    assert newest_measured[-1]["effectiveDateTime"] == minutes_ago(600).isoformat()
    stamps = [o["meta"]["lastUpdated"] for o in newest_stored]
    assert stamps == sorted(stamps, reverse=True)
    assert all(o["meta"]["lastUpdated"] == o["issued"] for o in newest_stored)
    oldest_stored = entries(
        await get(http, "/fhir/Observation", patient="pat-1", _sort="_lastUpdated")
    )
    assert sorted(ids(oldest_stored)) == sorted(ids(newest_stored))
    assert oldest_stored[-1]["effectiveDateTime"] == minutes_ago(600).isoformat()
    # Pages in both directions cover every Observation once, in order.
    for sort, expected in (("-_lastUpdated", newest_stored), ("_lastUpdated", oldest_stored)):
        paged: list[str] = []
        url: str | None = f"/fhir/Observation?patient=pat-1&_sort={sort}&_count=2"
        while url:
            bundle = await bundle_of(await http.get(url))
            paged += ids(entries(bundle))
            url = link(bundle, "next")
        assert paged == ids(expected), sort
    refused = await http.get("/fhir/Observation", params={"patient": "pat-1", "_sort": "code"})
    assert refused.status_code == 400


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("/fhir/Observation?patient=pat-1&_summary=true", "not-supported"),
        ("/fhir/Observation?patient=pat-1&_total=some", "invalid"),
        ("/fhir/Communication?_summary=count", "required"),
    ],
)
async def test_result_parameters_we_do_not_offer_are_refused(
    http: httpx.AsyncClient, query: str, code: str
) -> None:
    resp = await http.get(query)
    assert resp.status_code == 400
    assert resp.json()["issue"][0]["code"] == code


async def test_the_capability_statement_says_what_is_offered(http: httpx.AsyncClient) -> None:
    statement = (await http.get("/fhir/metadata")).json()
    CapabilityStatement.model_validate(statement)
    rest = statement["rest"][0]
    assert rest["security"]["cors"] is False
    assert "fhir:read" in rest["security"]["description"]
    for words in ("POST [type]/_search", "total", "_summary=count", "_lastUpdated", ":Patient"):
        assert words in rest["documentation"], words
    offered = {r["type"]: r for r in rest["resource"]}
    issue_params = {p["name"]: p for p in offered["DetectedIssue"]["searchParam"]}
    assert "comma" in issue_params["patient"]["documentation"]
