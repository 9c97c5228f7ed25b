"""The FHIR API over our store (rpm/api/fhir.py) against a real PostgreSQL: metadata, reads
and searches of every resource, paging, search parameters as R4 defines them, and errors as
OperationOutcomes. Every answer validates with fhir.resources (R4B models)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from alerts.lifecycle import Action
from rpm.api import fhir as fhir_api
from rpm.domain.errors import SearchError
from rpm.fhir.mapping import logical_id
from rpm.fhir.search import parse_date, time_window
from rpm.storage import alert_actions
from rpm.storage import sms as sms_store
from rpm.storage.pool import create_pool
from tests.fhir_helpers import (
    NOW,
    OBSERVATIONS_OF_PAT_1,
    codes,
    entries,
    fhir_client,
    ids,
    ingest_clinic,
    link,
    minutes_ago,
)
from tests.helpers import api_app, staff_headers

FHIR_JSON = "application/fhir+json"


@pytest.fixture
async def http(pool: asyncpg.Pool) -> Any:
    await ingest_clinic(pool)
    async with fhir_client(pool) as client:
        yield client


async def search(http: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    resp = await http.get(path, params=params)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith(FHIR_JSON)
    bundle: dict[str, Any] = resp.json()
    Bundle.model_validate(bundle)
    return bundle


async def outcome(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(FHIR_JSON)
    body: dict[str, Any] = resp.json()
    OperationOutcome.model_validate(body)
    return body


# --- pure: date parameters ---------------------------------------------------------------------


def test_a_date_stands_for_the_range_its_precision_implies() -> None:
    day = parse_date("2026-11-23")
    assert (day.prefix, day.start, day.end) == (
        "eq",
        datetime(2026, 11, 23, tzinfo=UTC),
        datetime(2026, 11, 24, tzinfo=UTC),
    )
    month = parse_date("ge2026-12")
    assert (month.start, month.end) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    second = parse_date("lt2026-11-23T08:00:00+02:00")
    assert second.start == datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    assert second.end - second.start == timedelta(seconds=1)
    millis = parse_date("2026-11-23T08:00:00.120Z")
    assert millis.end - millis.start == timedelta(milliseconds=1)
    for bad in ("yesterday", "2026-13-01", "2026-11-23T25:00", "xx2026", "2026-11-23T08:00+25:00"):
        with pytest.raises(SearchError):
            parse_date(bad)


def test_prefixes_bound_a_point_in_time() -> None:
    t = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)

    def holds(*values: str) -> bool:
        return time_window(parse_date(v) for v in values).contains(t)

    for inside in (
        ["2026-11-23"],
        ["eq2026-11-23T08:00"],
        ["ne2026-11-22"],
        ["ge2026-11-23T08:00:00Z"],
        ["le2026-11-23T08:00:00Z"],
        ["gt2026-11-22", "lt2026-11-24"],
        ["sa2026-11-22"],
        ["eb2026-11-24"],
    ):
        assert holds(*inside), inside
    for outside in (
        ["ne2026-11-23"],
        ["gt2026-11-23T08:00:00Z"],
        ["lt2026-11-23T08:00:00Z"],
        ["gt2026-11-22", "lt2026-11-23"],
        ["2026-11-22"],
    ):
        assert not holds(*outside), outside


# --- metadata and Observation -------------------------------------------------------------------


async def test_metadata_is_a_capability_statement(http: httpx.AsyncClient) -> None:
    resp = await http.get("/fhir/metadata")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith(FHIR_JSON)
    statement = resp.json()
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"
    offered = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(offered) == {
        "Observation",
        "Patient",
        "Device",
        "DetectedIssue",
        "Communication",
        "QuestionnaireResponse",
        "Questionnaire",
    }
    assert offered["Questionnaire"]["interaction"] == [{"code": "read"}]
    params = {p["name"] for p in offered["Observation"]["searchParam"]}
    assert params == {"patient", "subject", "code", "category", "date"}


async def test_observations_of_a_patient_newest_first_with_interpretation(
    http: httpx.AsyncClient,
) -> None:
    bundle = await search(http, "/fhir/Observation", patient="pat-1")
    found = entries(bundle)
    assert len(found) == OBSERVATIONS_OF_PAT_1
    times = [o["effectiveDateTime"] for o in found]
    assert times == sorted(times, reverse=True)
    assert {o["subject"]["reference"] for o in found} == {"Patient/pat-1"}
    assert link(bundle, "next") is None
    panels = {
        o["component"][0]["valueQuantity"]["value"]: o for o in found if codes(o) == ["85354-9"]
    }
    interpretation = {s: p["interpretation"][0]["coding"][0]["code"] for s, p in panels.items()}
    assert interpretation == {130: "N", 192: "HH"}  # the hypertension program's thresholds
    [entry] = [e for e in bundle["entry"] if e["resource"]["id"] == panels[192]["id"]]
    assert entry["fullUrl"] == f"http://rpm.test/fhir/Observation/{panels[192]['id']}"
    # Read gives the same resource as the search did.
    read = await http.get(f"/fhir/Observation/{panels[192]['id']}")
    assert read.status_code == 200
    assert read.json() == panels[192]
    pulse = await http.get(f"/fhir/Observation/{panels[192]['id']}-pulse")
    assert pulse.json()["valueQuantity"]["value"] == 88


async def test_pages_follow_next_links_even_inside_a_reading(http: httpx.AsyncClient) -> None:
    everything = ids(entries(await search(http, "/fhir/Observation", patient="pat-1")))
    for count in (1, 2, 4):
        seen: list[str] = []
        bundle = await search(http, "/fhir/Observation", patient="pat-1", _count=count)
        pages = 1
        while True:
            page = ids(entries(bundle))
            assert 1 <= len(page) <= count
            seen += page
            nxt = link(bundle, "next")
            if nxt is None:
                break
            assert nxt.startswith("http://rpm.test/fhir/Observation?")
            resp = await http.get(nxt)
            assert resp.status_code == 200
            bundle = resp.json()
            Bundle.model_validate(bundle)
            pages += 1
        assert seen == everything
        assert pages == -(-len(everything) // count)


async def test_sort_by_date_ascending(http: httpx.AsyncClient) -> None:
    newest = ids(entries(await search(http, "/fhir/Observation", patient="pat-1")))
    oldest = entries(await search(http, "/fhir/Observation", patient="pat-1", _sort="date"))
    times = [o["effectiveDateTime"] for o in oldest]
    assert times == sorted(times)
    assert sorted(ids(oldest)) == sorted(newest)
    paged: list[str] = []
    url: str | None = "/fhir/Observation?patient=pat-1&_sort=date&_count=3"
    while url:
        bundle = (await http.get(url)).json()
        paged += ids(entries(bundle))
        url = link(bundle, "next")
    assert paged == ids(oldest)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"code": "8867-4"}, [["8867-4"]] * 4),  # heart rate, and pulses of cuff and oximeter
        ({"code": "http://loinc.org|85354-9"}, [["85354-9"]] * 2),
        ({"code": "85354-9,29463-7"}, [["29463-7"], ["85354-9"], ["85354-9"]]),
        ({"code": "59408-5"}, [["2708-6", "59408-5"]]),
        ({"code": "http://snomed.info/sct|8867-4"}, []),
        ({"category": "laboratory"}, [["2339-0", "41653-7"]]),
        ({"code": "2339-0", "category": "vital-signs"}, []),
        (
            {
                "category": "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
                "code": "29463-7",
            },
            [["29463-7"]],
        ),
    ],
)
async def test_code_and_category(
    http: httpx.AsyncClient, params: dict[str, str], expected: list[list[str]]
) -> None:
    found = entries(await search(http, "/fhir/Observation", patient="pat-1", **params))
    assert sorted(codes(o) for o in found) == sorted(expected)


async def test_date_prefixes(http: httpx.AsyncClient) -> None:
    async def minutes(*dates: str) -> list[float]:
        resp = await http.get(
            "/fhir/Observation", params=[("patient", "pat-1"), *(("date", d) for d in dates)]
        )
        assert resp.status_code == 200, resp.text
        out = {
            round((NOW - datetime.fromisoformat(o["effectiveDateTime"])).total_seconds() / 60)
            for o in entries(resp.json())
        }
        return sorted(out)

    def at(n: float) -> str:
        return minutes_ago(n).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert await minutes("ge" + at(20)) == [5, 10, 20]
    assert await minutes("gt" + at(20)) == [5, 10]
    assert await minutes("le" + at(40)) == [40, 50]
    assert await minutes("lt" + at(40)) == [50]
    assert await minutes("eq" + at(30)) == [30]
    assert await minutes(at(30)) == [30]
    assert await minutes("ge" + at(40), "lt" + at(10)) == [20, 30, 40]
    assert await minutes("ne" + at(30), "gt" + at(45)) == [5, 10, 20, 40]
    assert await minutes("gt" + (NOW + timedelta(days=1)).date().isoformat()) == []


async def test_subject_and_references(http: httpx.AsyncClient) -> None:
    by_patient = ids(entries(await search(http, "/fhir/Observation", patient="pat-1")))
    for params in (
        {"subject": "Patient/pat-1"},
        {"patient": "http://elsewhere.example/fhir/Patient/pat-1"},
        {"subject": "pat-1"},
    ):
        assert ids(entries(await search(http, "/fhir/Observation", **params))) == by_patient
    other = logical_id("pat_2")
    assert other != "pat_2"
    [obs] = entries(await search(http, "/fhir/Observation", patient=other))
    assert obs["subject"]["reference"] == f"Patient/{other}"
    both = entries(await search(http, "/fhir/Observation", patient=f"pat-1,{other}"))
    assert len(both) == len(by_patient) + 1
    assert entries(await search(http, "/fhir/Observation", patient="nobody")) == []


async def test_unknown_parameters_are_ignored_unless_strict(http: httpx.AsyncClient) -> None:
    bundle = await search(http, "/fhir/Observation", patient="pat-1", _elements="id")
    assert len(entries(bundle)) == OBSERVATIONS_OF_PAT_1
    assert "_elements" not in str(link(bundle, "self"))
    resp = await http.get(
        "/fhir/Observation",
        params={"patient": "pat-1", "_elements": "id"},
        headers={"Prefer": "handling=strict"},
    )
    body = await outcome(resp, 400)
    assert body["issue"][0]["code"] == "not-supported"


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("/fhir/Observation", 400, "required"),
        ("/fhir/Observation?patient=pat-1&date=yesterday", 400, "invalid"),
        ("/fhir/Observation?patient=pat-1&_count=many", 400, "invalid"),
        ("/fhir/Observation?patient=pat-1&_count=1&_count=2", 400, "invalid"),
        ("/fhir/Observation?patient=pat-1&_cursor=garbage", 400, "invalid"),
        ("/fhir/Observation?patient=pat-1&code:text=pulse", 400, "not-supported"),
        ("/fhir/Observation?patient=pat-1&_sort=value", 400, "not-supported"),
        ("/fhir/Observation?patient=Device/cuff-1", 400, "invalid"),
        ("/fhir/Observation/not-an-id", 404, "not-found"),
        ("/fhir/Observation/00000000-0000-0000-0000-000000000000", 404, "not-found"),
        ("/fhir/Patient/nobody", 404, "not-found"),
        ("/fhir/Device/nothing", 404, "not-found"),
        ("/fhir/DetectedIssue/999", 404, "not-found"),
        ("/fhir/DetectedIssue/abc", 404, "not-found"),
        ("/fhir/Communication/999", 404, "not-found"),
        ("/fhir/Communication", 400, "required"),
        ("/fhir/MedicationRequest", 404, "not-supported"),
        ("/fhir/Observation/a/b", 404, "not-found"),
        ("/fhir", 404, "not-found"),
        ("/fhir/Patient?_format=xml", 406, "not-supported"),
    ],
)
async def test_errors_are_operation_outcomes(
    http: httpx.AsyncClient, query: str, status: int, code: str
) -> None:
    body = await outcome(await http.get(query), status)
    assert body["issue"][0]["code"] == code


async def test_only_reading_is_allowed_and_only_json_is_spoken(http: httpx.AsyncClient) -> None:
    for method, path in (
        ("POST", "/fhir/Observation"),
        ("DELETE", "/fhir/Patient/pat-1"),
        ("POST", "/fhir"),
    ):
        resp = await http.request(method, path, json={"resourceType": "Bundle"})
        await outcome(resp, 405)
        assert resp.headers["allow"] == "GET"
    xml_only = await http.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})
    await outcome(xml_only, 406)
    either = await http.get("/fhir/metadata", headers={"Accept": "application/fhir+xml, */*;q=0.1"})
    assert either.status_code == 200


# --- Patient and Device -------------------------------------------------------------------------


async def test_patients_read_and_search(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    bundle = await search(http, "/fhir/Patient", _count=2)
    first = entries(bundle)
    rest = entries((await http.get(str(link(bundle, "next")))).json())
    assert len(first) == 2  # pages in the database's order of our ids
    assert sorted(ids(first + rest)) == sorted(["pat-1", logical_id("pat_2"), "pat-3"])
    grace = (await http.get(f"/fhir/Patient/{logical_id('pat_2')}")).json()
    assert grace["identifier"] == [{"system": "urn:rpm:patient", "value": "pat_2"}]
    assert grace["name"] == [{"text": "Grace Example"}]
    by_identifier = entries(await search(http, "/fhir/Patient", identifier="urn:rpm:patient|pat_2"))
    assert by_identifier == [grace]
    both = entries(await search(http, "/fhir/Patient", _id="pat-3,pat-1"))
    assert sorted(ids(both)) == ["pat-1", "pat-3"]
    assert entries(await search(http, "/fhir/Patient", identifier="urn:other|pat-1")) == []
    # Our ids as FHIR ids: the database derives the same ones (the read above relied on it).
    async with pool.acquire() as conn:
        for ours in ("pat-1", "pat_2", "acme-cloud:v_1", "x" * 70):
            assert await conn.fetchval("SELECT rpm_fhir_id($1)", ours) == logical_id(ours)


async def test_devices_read_and_search(http: httpx.AsyncClient) -> None:
    cuffs = entries(await search(http, "/fhir/Device", patient="pat-1"))
    assert sorted(ids(cuffs)) == ["cuff-1", "glu-1", "hr-1", "ox-1", "scale-1"]
    assert {d["patient"]["reference"] for d in cuffs} == {"Patient/pat-1"}
    vendor_id = logical_id("acme-cloud:v_1")
    device = (await http.get(f"/fhir/Device/{vendor_id}")).json()
    assert device["identifier"] == [{"system": "urn:rpm:device", "value": "acme-cloud:v_1"}]
    assert device["serialNumber"] == "SN-acme-cloud:v_1"
    assert device["patient"] == {"reference": f"Patient/{logical_id('pat_2')}"}
    # The Observation's device reference resolves.
    [obs] = entries(await search(http, "/fhir/Observation", patient=logical_id("pat_2")))
    assert obs["device"]["reference"] == f"Device/{vendor_id}"
    found = entries(await search(http, "/fhir/Device", identifier="urn:rpm:device|acme-cloud:v_1"))
    assert found == [device]
    assert len(entries(await search(http, "/fhir/Device", _count=4))) == 4


# --- alerts and SMS -------------------------------------------------------------------------------


async def test_an_alert_is_a_detected_issue_whose_evidence_resolves(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    [issue] = entries(await search(http, "/fhir/DetectedIssue", patient="pat-1"))
    assert issue["code"]["coding"][0]["code"] == "bp.hypertensive_crisis"
    assert issue["status"] == "preliminary"
    assert issue["severity"] == "high"
    [evidence] = issue["evidence"][0]["detail"]
    obs = (await http.get(f"/fhir/{evidence['reference']}")).json()
    assert obs["component"][0]["valueQuantity"]["value"] == 192
    async with pool.acquire() as conn:
        await alert_actions.transition(conn, int(issue["id"]), Action.ACKNOWLEDGE, "nurse:jo")
    seen = (await http.get(f"/fhir/DetectedIssue/{issue['id']}")).json()
    assert seen["status"] == "final"
    assert seen["mitigation"][0]["author"] == {"display": "nurse:jo"}
    assert entries(await search(http, "/fhir/DetectedIssue", patient="pat-3")) == []
    assert ids(entries(await search(http, "/fhir/DetectedIssue"))) == [issue["id"]]


async def test_patient_sms_are_communications(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        alert_id = await conn.fetchval("SELECT id FROM alerts")
        for i in range(3):
            await sms_store.record_outbound(
                conn,
                outbox_id=None,
                patient_id="pat-1",
                staff_id=None,
                alert_id=alert_id,
                sid=f"SM{i:032d}",
                status="delivered",
                error_code=None,
                body=f"message {i}",
                at=NOW + timedelta(seconds=i),
            )
    bundle = await search(http, "/fhir/Communication", patient="pat-1", _count=2)
    page = entries(bundle)
    assert [c["payload"][0]["contentString"] for c in page] == ["message 2", "message 1"]
    assert page[0]["about"] == [{"reference": f"DetectedIssue/{alert_id}"}]
    rest = entries((await http.get(str(link(bundle, "next")))).json())
    assert [c["payload"][0]["contentString"] for c in rest] == ["message 0"]
    one = (await http.get(f"/fhir/Communication/{page[0]['id']}")).json()
    assert one == page[0]
    assert entries(await search(http, "/fhir/Communication", subject="Patient/pat-3")) == []


async def test_a_database_away_is_503(db_url: str, pool: asyncpg.Pool) -> None:
    closed = await create_pool(db_url, size=1)
    await closed.close()
    app = api_app(pool)  # the caller is known (Auth has its own pool); the FHIR store is away
    app.state.pool = closed
    app.include_router(fhir_api.router)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://rpm.test",
        headers=await staff_headers(pool),
    ) as http:
        body = await outcome(await http.get("/fhir/Observation?patient=pat-1"), 503)
    assert body["issue"][0]["code"] == "transient"
