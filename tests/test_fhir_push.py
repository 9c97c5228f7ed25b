"""Push to an EHR (rpm/fhir/push.py) against a local FHIR server that speaks the protocol
(simulators/fhir_server.py: validates every Bundle with fhir.resources, honours conditional
creates, fails, hangs or refuses on demand). Our real httpx client makes the calls; the
readings come through the real ingest unit of work, which writes the push work."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from fhir.resources.R4B.bundle import Bundle

from rpm.domain import AcceptedReading, Metric, Reading
from rpm.domain.errors import EhrUnavailable, MalformedResponse
from rpm.fhir.bundles import (
    EntryResult,
    named_entries,
    operation_outcome,
    push_entries,
    split_for_isolation,
    transaction,
    transaction_results,
)
from rpm.fhir.ehr import BearerToken, ClientCredentials, EhrClient
from rpm.fhir.mapping import RecordedReading, observation_id
from rpm.fhir.push import FhirPushWorker, PushConfig
from rpm.pipeline import IngestPipeline
from rpm.server import Server
from rpm.settings import EhrSettings, Settings
from rpm.storage import outbox as outbox_store
from rpm.storage import registry
from rpm.validation import ClockPolicy
from simulators.fhir_server import FhirServer
from tests.fhir_helpers import (
    NOW,
    OBSERVATIONS_OF_PAT_1,
    enroll,
    fhir_client,
    ingest_clinic,
    message,
)
from tests.helpers import T0, eventually

PATIENTS = {("urn:rpm:patient", "pat-1"), ("urn:rpm:patient", "pat_2")}
OBSERVATIONS = 10  # pat-1's nine and pat_2's one (tests/fhir_helpers.py)


class Clock:
    """The worker's clock, moved by the test (the database's own clock runs on)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def ehr() -> AsyncIterator[FhirServer]:
    server = FhirServer(patients=set(PATIENTS))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def make_worker(
    pool: asyncpg.Pool,
    ehr: FhirServer,
    clock: Clock | None = None,
    *,
    auth: Any = None,
    timeout_s: float = 2.0,
    poll_interval_s: float = 0.05,
    **settings: Any,
) -> FhirPushWorker:
    """A worker pushing to ``ehr``; ``settings``: fields of ``EhrSettings``."""
    assert ehr.base_url is not None
    values = {"backoff_base_s": 1.0, "backoff_cap_s": 8.0, "max_attempts": 5, **settings}
    config = PushConfig.from_settings(EhrSettings(**values), poll_interval_s=poll_interval_s)
    client = EhrClient(ehr.base_url, auth, timeout_s=timeout_s)
    if clock is None:
        return FhirPushWorker(pool, client, config)
    return FhirPushWorker(pool, client, config, clock=clock)


async def outbox(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch(
            "SELECT id, attempts, delivered_at, failed_at, last_error, result FROM outbox "
            "WHERE channel = 'fhir' ORDER BY id"
        )


async def expected_identifiers(pool: asyncpg.Pool) -> set[tuple[str, str]]:
    """Every Observation identifier our stored readings make."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT rpm_reading_uid(device_id, metric, measured_at) AS uid,"
            " rpm_components(metric, v1, v2, v3) AS components, metric FROM readings"
        )
    out = set()
    for r in rows:
        out.add(("urn:rpm:observation", observation_id(r["uid"])))
        if r["metric"] != "heart_rate" and "pulse" in r["components"]:
            out.add(("urn:rpm:observation", observation_id(r["uid"], "pulse")))
    return out


# --- pure: the transaction we send and the answer we read ---------------------------------------


def recorded(metric: Metric, values: dict[str, float], patient: str = "pat_1") -> RecordedReading:
    accepted = AcceptedReading(Reading("acme:dev_1", metric, values, T0, T0), patient)
    return RecordedReading(accepted, accepted.reading.uid, T0, "N")


def test_a_transaction_is_conditional_creates_with_conditional_subjects() -> None:
    recs = [
        recorded(Metric.BLOOD_PRESSURE, {"systolic": 150, "diastolic": 95, "pulse": 80}),
        recorded(Metric.GLUCOSE, {"glucose": 140}),
    ]
    entries = push_entries(recs, "urn:oid:1.2.3.4")
    assert [e.observation_id for e in entries] == [
        str(recs[0].uid),
        f"{recs[0].uid}-pulse",
        str(recs[1].uid),
    ]
    assert [e.reading_key for e in entries] == [
        ("acme:dev_1", "blood_pressure", T0.isoformat()),
        ("acme:dev_1", "blood_pressure", T0.isoformat()),
        ("acme:dev_1", "glucose", T0.isoformat()),
    ]
    bundle = transaction(entries)
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    assert len({e["fullUrl"] for e in bundle["entry"]}) == 3
    for entry, pushed in zip(bundle["entry"], entries, strict=True):
        resource = entry["resource"]
        assert "id" not in resource  # the EHR assigns its own
        [identifier] = resource["identifier"]
        assert identifier == {"system": "urn:rpm:observation", "value": pushed.observation_id}
        assert entry["request"] == {
            "method": "POST",
            "url": "Observation",
            "ifNoneExist": f"identifier=urn:rpm:observation|{pushed.observation_id}",
        }
        # Named as the EHR knows them: by identifier, not by our logical ids.
        assert resource["subject"] == {"reference": "Patient?identifier=urn:oid:1.2.3.4|pat_1"}
        assert resource["device"] == {
            "identifier": {"system": "urn:rpm:device", "value": "acme:dev_1"}
        }


def test_a_patient_with_an_ehr_identifier_is_named_by_it() -> None:
    """The subject is the patient's identifier at the EHR (their MRN) when they have one,
    else our id under the configured system."""
    recs = [
        recorded(Metric.BLOOD_PRESSURE, {"systolic": 150, "diastolic": 95, "pulse": 80}),
        recorded(Metric.GLUCOSE, {"glucose": 140}, patient="pat_2"),
    ]
    entries = push_entries(recs, "urn:oid:1.2.3.4", {"pat_1": (MRN_SYSTEM, "MRN-1")})
    subjects = [e.resource["subject"]["reference"] for e in entries]
    assert subjects == [
        f"Patient?identifier={MRN_SYSTEM}|MRN-1",
        f"Patient?identifier={MRN_SYSTEM}|MRN-1",  # the pulse, split off
        "Patient?identifier=urn:oid:1.2.3.4|pat_2",
    ]
    assert [e.patient_id for e in entries] == ["pat_1", "pat_1", "pat_2"]  # our ids, still
    Bundle.model_validate(transaction(entries))


def test_isolation_follows_the_outcome_or_halves() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "invalid", "expression": ["Bundle.entry[3].resource"]},
            {"severity": "error", "code": "invalid", "location": ["Bundle.entry[7]", "x"]},
            {"severity": "error", "code": "invalid", "expression": ["Bundle.entry[3].code"]},
            {"severity": "error", "code": "invalid", "expression": ["Bundle.entry[40]"]},
        ],
    }
    blamed = named_entries(outcome, 10)
    assert blamed == [3, 7]
    assert split_for_isolation(10, blamed) == [[3], [7], [0, 1, 2, 4, 5, 6, 8, 9]]
    assert split_for_isolation(5, []) == [[0, 1], [2, 3, 4]]
    # Nothing named (HAPI's 404 for an unknown patient): one part per patient, then halves.
    assert split_for_isolation(5, [], ["a", "b", "a", "c", "b"]) == [[0, 2], [1, 4], [3]]
    assert split_for_isolation(4, [], ["a"] * 4) == [[0, 1], [2, 3]]
    assert split_for_isolation(3, [1], ["a", "b", "c"]) == [[1], [0, 2]]
    assert named_entries(operation_outcome("invalid", "no entry named"), 4) == []
    assert named_entries(None, 4) == []


def test_transaction_responses_are_read_entry_by_entry() -> None:
    answer = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {"response": {"status": "201 Created", "location": "Observation/1/_history/1"}},
            {"response": {"status": "200", "location": "Observation/9/_history/2"}},
        ],
    }
    assert transaction_results(answer, 2) == [
        EntryResult(201, "Observation/1/_history/1"),
        EntryResult(200, "Observation/9/_history/2"),
    ]
    for bad, sent in (
        (answer, 3),
        ({**answer, "type": "batch-response"}, 2),
        ({"resourceType": "OperationOutcome"}, 2),
        ({**answer, "entry": [{"response": {"status": "Created"}}] * 2}, 2),
        ([], 2),
    ):
        with pytest.raises(MalformedResponse):
            transaction_results(bad, sent)


# --- against the local FHIR server -------------------------------------------------------------


async def test_every_observation_reaches_the_ehr_once_in_transactions(
    pool: asyncpg.Pool, ehr: FhirServer
) -> None:
    await ingest_clinic(pool, fhir_push=True)
    worker = make_worker(pool, ehr, Clock(), bundle_max_entries=3)
    try:
        assert await worker.drain_once() == 1
        assert await worker.drain_once() == 0
    finally:
        await worker.close()
    assert ehr.identifiers() == await expected_identifiers(pool)
    assert len(ehr.observations) == OBSERVATIONS
    assert ehr.duplicates() == {}
    assert ehr.transactions == math.ceil(OBSERVATIONS / 3)
    [done] = await outbox(pool)
    assert done["delivered_at"] is not None
    assert done["result"] == {
        "observations": OBSERVATIONS,
        "created": OBSERVATIONS,
        "existing": 0,
        "refused": 0,
        "bundles": 4,
    }
    stored = next(iter(ehr.observations.values()))
    assert stored["subject"]["reference"].startswith("Patient?identifier=urn:rpm:patient|")


async def test_a_request_that_timed_out_but_was_stored_is_not_stored_twice(
    pool: asyncpg.Pool, ehr: FhirServer
) -> None:
    """The EHR hangs past our timeout, then stores the Bundle anyway; our retry of it must
    find every Observation already there (conditional create) and store nothing new."""
    await ingest_clinic(pool, fhir_push=True)
    clock = Clock()
    worker = make_worker(pool, ehr, clock, timeout_s=0.3)
    try:
        ehr.set_outage("hang")
        assert await worker.drain_once() == 1
        [waiting] = await outbox(pool)
        assert waiting["delivered_at"] is None
        assert "no answer within 0.3 s" in waiting["last_error"]
        assert worker.paused_until is not None
        assert await worker.drain_once() == 0  # paused: nothing claimed, nothing sent
        ehr.set_outage(None)
        await ehr.wait_for(OBSERVATIONS)  # the hung request, processed late
        clock.advance(60)
        assert await worker.drain_once() == 1
    finally:
        await worker.close()
    [done] = await outbox(pool)
    assert done["delivered_at"] is not None
    assert done["result"]["existing"] == OBSERVATIONS
    assert done["result"]["created"] == 0
    assert len(ehr.observations) == OBSERVATIONS
    assert ehr.duplicates() == {}
    assert worker.paused_until is None


@pytest.mark.parametrize("blame", [True, False])
async def test_a_refused_observation_is_isolated_kept_and_visible(
    pool: asyncpg.Pool, ehr: FhirServer, blame: bool
) -> None:
    await ingest_clinic(pool, fhir_push=True)
    async with pool.acquire() as conn:
        uid = await conn.fetchval(
            "SELECT rpm_reading_uid(device_id, metric, measured_at) FROM readings"
            " WHERE metric = 'weight'"
        )
    bad = observation_id(uid)

    def refuse_weight(obs: Any) -> str | None:
        return "weight needs a method" if obs["identifier"][0]["value"] == bad else None

    ehr.reject(refuse_weight, blame=blame)
    clock = Clock()
    worker = make_worker(pool, ehr, clock)
    try:
        assert await worker.drain_once() == 1
        requests = ehr.requests
        if blame:
            assert requests == 3  # the whole, the blamed entry alone, the rest
        else:
            # The whole, one part per patient (pat-1's nine, pat_2's one), then halves of nine.
            assert requests <= 1 + 2 + 2 * math.ceil(math.log2(OBSERVATIONS - 1))
        clock.advance(3600)
        assert await worker.drain_once() == 0  # never retried on its own
        assert ehr.requests == requests
    finally:
        await worker.close()
    assert len(ehr.observations) == OBSERVATIONS - 1
    assert ("urn:rpm:observation", bad) not in ehr.identifiers()
    [item] = await outbox(pool)
    assert item["delivered_at"] is not None
    assert item["result"]["refused"] == 1
    assert item["result"]["created"] == OBSERVATIONS - 1

    async with fhir_client(pool) as http:
        failures = (await http.get("/api/fhir/push/failures")).json()
        [refusal] = failures["refused"]
        assert refusal["observation_id"] == bad
        assert refusal["patient_id"] == "pat-1"
        assert refusal["metric"] == "weight"
        assert refusal["status"] == 422
        assert refusal["outcome"]["issue"][0]["diagnostics"] == "weight needs a method"
        assert failures["failed"] == []
        assert failures["backlog"]["items"] == 0

        # Fixed at the EHR: send it again.
        ehr.reject(None)
        requeue = await http.post("/api/fhir/push/requeue", json={"refusal_ids": [refusal["id"]]})
        assert requeue.json() == {"requeued_readings": 1}
        worker = make_worker(pool, ehr, clock)
        try:
            clock.advance(1)
            assert await worker.drain_once() == 1
        finally:
            await worker.close()
        assert len(ehr.observations) == OBSERVATIONS
        after = (await http.get("/api/fhir/push/failures")).json()
        assert after["refused"] == []
        everything = (await http.get("/api/fhir/push/failures?include_requeued=true")).json()
        assert everything["refused"][0]["requeued_by"] == "staff:test.admin"
    assert ehr.duplicates() == {}


UNKNOWN = 'HAPI-1091: Invalid match URL "Patient?identifier=urn:rpm:patient|pat_2" - '


async def refusals(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("SELECT * FROM fhir_push_refusals ORDER BY id")


async def test_a_patient_the_ehr_does_not_know_is_isolated_at_once_without_backoff(
    pool: asyncpg.Pool, ehr: FhirServer
) -> None:
    """HAPI answers a conditional reference to an unknown patient with 404 for the whole
    transaction (naming no entry). That is a refused entry, not an outage: in the same pass
    the known patient's Observations are stored and the unknown one's recorded as refused;
    the worker does not pause and nothing is retried, even hours later."""
    ehr.patients = {("urn:rpm:patient", "pat-1")}
    await ingest_clinic(pool, fhir_push=True)
    clock = Clock()
    worker = make_worker(pool, ehr, clock)
    try:
        assert await worker.drain_once() == 1
        # Delivered in this pass, on the worker's clock as it was: no backoff was waited.
        assert len(ehr.observations) == OBSERVATIONS - 1
        assert worker.paused_until is None
        assert worker.counters.retries == 0
        assert ehr.refused == 2  # the whole transaction, then pat_2's part alone
        assert ehr.requests == 3  # the whole, one part per patient
        requests = ehr.requests
        clock.advance(6 * 3600)
        assert await worker.drain_once() == 0  # nothing left to retry, hours later
        assert ehr.requests == requests
    finally:
        await worker.close()
    [item] = await outbox(pool)
    assert item["delivered_at"] is not None
    assert item["attempts"] == 1
    assert item["last_error"] is None
    assert item["result"]["created"] == OBSERVATIONS - 1
    assert item["result"]["refused"] == 1
    [refusal] = await refusals(pool)
    assert refusal["patient_id"] == "pat_2"
    assert refusal["status"] == 404
    [issue] = refusal["outcome"]["issue"]
    assert issue["code"] == "processing"
    assert issue["diagnostics"] == UNKNOWN + "No resources match this search"
    assert "expression" not in issue
    async with fhir_client(pool) as http:
        failures = (await http.get("/api/fhir/push/failures")).json()
        assert [r["status"] for r in failures["refused"]] == [404]
        assert failures["failed"] == []
        assert failures["backlog"]["items"] == 0
    assert ehr.duplicates() == {}


async def test_a_patient_unknown_in_every_part_is_found_by_halves(
    pool: asyncpg.Pool, ehr: FhirServer
) -> None:
    """A patient's entries of one transaction, all refused with 404: each is kept, once."""
    ehr.patients = {("urn:rpm:patient", "pat_2")}  # pat-1, with nine Observations, unknown
    await ingest_clinic(pool, fhir_push=True)
    worker = make_worker(pool, ehr, Clock(), bundle_max_entries=4)
    try:
        assert await worker.drain_once() == 1
        assert worker.paused_until is None
    finally:
        await worker.close()
    assert len(ehr.observations) == 1
    rows = await refusals(pool)
    assert len(rows) == OBSERVATIONS - 1
    assert {(r["patient_id"], r["status"]) for r in rows} == {("pat-1", 404)}


async def test_an_outage_during_a_refusal_still_backs_off_the_whole_batch(
    pool: asyncpg.Pool, ehr: FhirServer
) -> None:
    """503 backs off and retries the whole batch, as before; once the EHR answers, the 404
    is isolated in the same pass and nothing is stored twice."""
    ehr.patients = {("urn:rpm:patient", "pat-1")}
    await ingest_clinic(pool, fhir_push=True)
    ehr.fail_next(1, 503)
    clock = Clock()
    worker = make_worker(pool, ehr, clock)
    try:
        assert await worker.drain_once() == 1
        assert worker.paused_until is not None  # the circuit is open
        assert worker.counters.retries == 1
        assert len(ehr.observations) == 0
        assert await refusals(pool) == []
        [item] = await outbox(pool)
        assert item["delivered_at"] is None
        assert item["last_error"].startswith("503")
        assert await worker.drain_once() == 0  # backing off: no request
        assert ehr.requests == 1
        clock.advance(600)
        assert await worker.drain_once() == 1
    finally:
        await worker.close()
    [item] = await outbox(pool)
    assert item["delivered_at"] is not None
    assert item["attempts"] == 2
    assert len(ehr.observations) == OBSERVATIONS - 1
    [refusal] = await refusals(pool)
    assert (refusal["patient_id"], refusal["status"]) == ("pat_2", 404)
    assert ehr.duplicates() == {}


# --- patients mapped to the EHR's own identifier (their MRN) --------------------------------------

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"


async def map_patient(pool: asyncpg.Pool, patient: str, value: str) -> None:
    async with pool.acquire() as conn:
        await registry.set_ehr_identifier(conn, patient, (MRN_SYSTEM, value))


def subjects(ehr: FhirServer) -> Counter[str]:
    return Counter(o["subject"]["reference"] for o in ehr.observations.values())


async def test_a_patient_mapped_to_an_mrn_the_ehr_knows_is_stored_under_it(
    pool: asyncpg.Pool, ehr: FhirServer
) -> None:
    """pat-1 is known to the EHR only by MRN (not under urn:rpm:patient): their Observations
    are stored under it; pat_2, unmapped, still goes by our id."""
    ehr.patients = {(MRN_SYSTEM, "MRN-0001"), ("urn:rpm:patient", "pat_2")}
    await ingest_clinic(pool, fhir_push=True)
    await map_patient(pool, "pat-1", "MRN-0001")
    worker = make_worker(pool, ehr, Clock(), bundle_max_entries=4)
    try:
        assert await worker.drain_once() == 1
    finally:
        await worker.close()
    assert await refusals(pool) == []
    assert ehr.identifiers() == await expected_identifiers(pool)
    assert subjects(ehr) == {
        f"Patient?identifier={MRN_SYSTEM}|MRN-0001": OBSERVATIONS_OF_PAT_1,
        "Patient?identifier=urn:rpm:patient|pat_2": 1,
    }
    [item] = await outbox(pool)
    assert item["result"]["created"] == OBSERVATIONS


async def test_an_mrn_the_ehr_does_not_know_is_refused_isolated_and_never_logged(
    pool: asyncpg.Pool, ehr: FhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    """pat_2's MRN is unknown to the EHR (HAPI's 404 for the whole transaction): pat-1's
    Observations go through under their MRN in the same pass, pat_2's is kept as refused
    with no backoff; once the EHR knows the MRN, a requeue stores it under it. Neither MRN
    is ever in a log."""
    caplog.set_level("DEBUG")
    ehr.patients = {(MRN_SYSTEM, "MRN-0001"), ("urn:rpm:patient", "pat_2")}
    await ingest_clinic(pool, fhir_push=True)
    await map_patient(pool, "pat-1", "MRN-0001")
    await map_patient(pool, "pat_2", "MRN-0404")
    clock = Clock()
    worker = make_worker(pool, ehr, clock)
    try:
        assert await worker.drain_once() == 1
        assert worker.paused_until is None
        assert worker.counters.retries == 0
        assert ehr.requests == 3  # the whole, then one part per patient
    finally:
        await worker.close()
    assert subjects(ehr) == {f"Patient?identifier={MRN_SYSTEM}|MRN-0001": OBSERVATIONS_OF_PAT_1}
    [item] = await outbox(pool)
    assert item["delivered_at"] is not None
    assert item["attempts"] == 1
    assert (item["result"]["created"], item["result"]["refused"]) == (OBSERVATIONS - 1, 1)
    [refusal] = await refusals(pool)
    assert (refusal["patient_id"], refusal["status"]) == ("pat_2", 404)
    [issue] = refusal["outcome"]["issue"]
    assert f"{MRN_SYSTEM}|MRN-0404" in issue["diagnostics"]  # kept in the database only

    # The EHR registers the patient under that MRN: send the refused Observation again.
    ehr.patients.add((MRN_SYSTEM, "MRN-0404"))
    async with fhir_client(pool) as http:
        requeue = await http.post("/api/fhir/push/requeue", json={"refusal_ids": [refusal["id"]]})
        assert requeue.json() == {"requeued_readings": 1}
    worker = make_worker(pool, ehr, clock)
    try:
        clock.advance(1)
        assert await worker.drain_once() == 1
    finally:
        await worker.close()
    assert subjects(ehr) == {
        f"Patient?identifier={MRN_SYSTEM}|MRN-0001": OBSERVATIONS_OF_PAT_1,
        f"Patient?identifier={MRN_SYSTEM}|MRN-0404": 1,
    }
    assert ehr.duplicates() == {}
    assert caplog.records  # the worker did log (a refusal warning), without the MRNs
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert "MRN-0" not in text, text


@pytest.mark.parametrize("status", [401, 403, 429])
async def test_credentials_and_rate_limits_are_not_isolated(
    pool: asyncpg.Pool, ehr: FhirServer, status: int
) -> None:
    """401/403 (credentials) and 429 hold the whole batch and back off: nothing is split or
    recorded as refused."""
    await ingest_clinic(pool, fhir_push=True)
    ehr.fail_next(1, status)
    clock = Clock()
    worker = make_worker(pool, ehr, clock)
    try:
        assert await worker.drain_once() == 1
        assert ehr.requests == 1  # not split
        assert worker.paused_until is not None
        [item] = await outbox(pool)
        assert item["last_error"].startswith(str(status))
        assert await refusals(pool) == []
        clock.advance(600)
        assert await worker.drain_once() == 1
    finally:
        await worker.close()
    assert len(ehr.observations) == OBSERVATIONS
    assert await refusals(pool) == []


async def test_a_404_that_is_not_fhir_is_an_outage(ehr: FhirServer) -> None:
    """A 404 without an OperationOutcome (a wrong base URL) is the endpoint, not an entry."""
    client = EhrClient(f"{ehr.base_url}/wrong", timeout_s=2.0)
    try:
        with pytest.raises(EhrUnavailable, match=r"^404") as caught:
            await client.transaction(transaction([]))
    finally:
        await client.close()
    assert caught.value.status == 404


async def test_an_ehr_down_for_good_fails_the_item_visibly_after_max_attempts(
    pool: asyncpg.Pool, ehr: FhirServer
) -> None:
    await ingest_clinic(pool, fhir_push=True)
    ehr.set_outage(503)
    clock = Clock()
    worker = make_worker(pool, ehr, clock, max_attempts=3)
    try:
        for _ in range(3):
            assert await worker.drain_once() == 1
            paused = worker.paused_until
            assert paused is not None
            assert await worker.drain_once() == 0  # the circuit is open: no request
            clock.advance(600)
        assert await worker.drain_once() == 0
    finally:
        await worker.close()
    assert ehr.requests == 3
    [item] = await outbox(pool)
    assert item["failed_at"] is not None
    assert item["attempts"] == 3
    assert item["last_error"].startswith("gave up after 3 attempts: 503")
    assert "outage" in item["last_error"]
    assert item["result"]["outcome"]["resourceType"] == "OperationOutcome"
    async with fhir_client(pool) as http:
        [failed] = (await http.get("/api/fhir/push/failures")).json()["failed"]
        assert failed["outbox_id"] == item["id"]
        assert failed["readings"] == 7
        ehr.set_outage(None)
        resp = await http.post("/api/fhir/push/requeue", json={"outbox_ids": [item["id"]]})
        assert resp.json() == {"requeued_readings": 7}
        assert (await http.get("/api/fhir/push/failures")).json()["failed"] == []
    worker = make_worker(pool, ehr, clock)
    try:
        clock.advance(1)
        assert await worker.drain_once() == 1
    finally:
        await worker.close()
    assert len(ehr.observations) == OBSERVATIONS


async def test_bearer_token(pool: asyncpg.Pool) -> None:
    ehr = FhirServer(bearer_token="s3cret-token")
    await ehr.start()
    try:
        await ingest_clinic(pool, fhir_push=True)
        clock = Clock()
        wrong = make_worker(pool, ehr, clock, auth=BearerToken("nope"))
        try:
            await wrong.drain_once()
        finally:
            await wrong.close()
        [item] = await outbox(pool)
        assert item["last_error"].startswith("401")  # the endpoint refused us: retried later
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM fhir_push_refusals") == 0
        clock.advance(600)
        right = make_worker(pool, ehr, clock, auth=BearerToken("s3cret-token"))
        try:
            assert await right.drain_once() == 1
        finally:
            await right.close()
        assert len(ehr.observations) == OBSERVATIONS
    finally:
        await ehr.stop()


async def test_client_credentials_token_is_cached_and_fetched_again_after_a_401(
    pool: asyncpg.Pool,
) -> None:
    ehr = FhirServer(client=("rpm-server", "client-secret"))
    await ehr.start()
    assert ehr.token_url is not None
    auth = ClientCredentials(
        ehr.token_url, "rpm-server", "client-secret", "system/Observation.write"
    )
    try:
        await ingest_clinic(pool, fhir_push=True)
        clock = Clock()
        worker = make_worker(pool, ehr, clock, auth=auth, bundle_max_entries=2)
        try:
            assert await worker.drain_once() == 1
            assert auth.fetched == 1  # five transactions, one token
            ehr.revoke_tokens()
            pipeline_item = message(
                "scale-1", "weight", {"weight": 81.0}, NOW - timedelta(minutes=1)
            )
            await IngestPipeline(pool, ClockPolicy(), rules_refresh_s=0, fhir_push=True).process(
                [pipeline_item]
            )
            clock.advance(1)
            assert await worker.drain_once() == 1
        finally:
            await worker.close()
        assert auth.fetched == 2
        assert len(ehr.observations) == OBSERVATIONS + 1
        bad = ClientCredentials(ehr.token_url, "rpm-server", "wrong", None)
        client = EhrClient(str(ehr.base_url), bad, timeout_s=2.0)
        try:
            with pytest.raises(EhrUnavailable, match="token endpoint answered 401"):
                await client.transaction(transaction([]))
        finally:
            await client.close()
    finally:
        await ehr.stop()


async def test_outage_under_load_every_observation_delivered_exactly_once(
    pool: asyncpg.Pool, ehr: FhirServer
) -> None:
    """The EHR down for a minute under load, scaled down about 20 times: ingest batches keep
    coming for 6 s; the EHR answers 503 from 1 s to 2.5 s, then hangs (timing our requests
    out, and storing what it held once it recovers) until 4 s. The worker's knobs are scaled
    likewise: timeout 10 s -> 0.4 s, backoff base 2 s -> 0.05 s, cap 600 s -> 0.4 s, poll
    0.5 s -> 0.05 s. Afterwards every Observation is at the EHR exactly once."""
    await enroll(pool)
    pipeline = IngestPipeline(pool, ClockPolicy(), rules_refresh_s=0, fhir_push=True)
    devices = [
        ("cuff-1", "blood_pressure", {"systolic": 128, "diastolic": 82, "pulse": 71}),
        ("ox-1", "spo2", {"spo2": 96, "pulse": 68}),
        ("scale-1", "weight", {"weight": 79.5}),
        ("glu-1", "glucose", {"glucose": 105}),
        ("hr-1", "heart_rate", {"pulse": 64}),
    ]
    worker = make_worker(
        pool,
        ehr,
        timeout_s=0.4,
        backoff_base_s=0.05,
        backoff_cap_s=0.4,
        poll_interval_s=0.05,
        max_attempts=1000,
        bundle_max_entries=20,
    )
    task = asyncio.create_task(worker.run())
    start = asyncio.get_running_loop().time()
    schedule = [(1.0, 503), (2.5, "hang"), (4.0, None)]
    batches = 0
    try:
        while (elapsed := asyncio.get_running_loop().time() - start) < 6.0:
            while schedule and elapsed >= schedule[0][0]:
                ehr.set_outage(schedule.pop(0)[1])
            at = NOW - timedelta(hours=1) + timedelta(seconds=batches)
            await pipeline.process([message(d, m, v, at) for d, m, v in devices])
            batches += 1
            await asyncio.sleep(0.05)
        for _, mode in schedule:
            ehr.set_outage(mode)

        async def drained() -> bool:
            rows = await outbox(pool)
            return all(r["delivered_at"] is not None or r["failed_at"] is not None for r in rows)

        await eventually(drained, within=30)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await worker.close()

    expected = await expected_identifiers(pool)
    assert len(expected) == batches * 7
    assert ehr.identifiers() == expected
    assert len(ehr.observations) == len(expected)
    assert ehr.duplicates() == {}
    assert set(ehr.creates.values()) == {1}
    rows = await outbox(pool)
    assert len(rows) == batches
    assert all(r["delivered_at"] is not None for r in rows)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM fhir_push_refusals") == 0
    # The outage really happened, and a late-stored Bundle was answered "already there".
    assert ehr.failed > 0
    assert worker.counters.retries > 0
    assert ehr.existing > 0
    assert worker.counters.created + worker.counters.existing >= len(expected)


async def test_the_server_pushes_when_an_ehr_is_configured(
    server_settings: Settings, ehr: FhirServer
) -> None:
    settings = server_settings.updated(
        ehr={"fhir_base_url": ehr.base_url, "bearer_token": None, "timeout_s": 2.0}
    )
    server = Server(settings)
    await server.start()
    try:
        assert server.pool is not None
        assert server.fhir_push is not None
        await enroll(server.pool)
        assert server.pipeline is not None
        await server.pipeline.process(
            [message("scale-1", "weight", {"weight": 80.0}, NOW - timedelta(minutes=3))]
        )
        await ehr.wait_for(1)
    finally:
        await server.stop()
    [obs] = ehr.observations.values()
    assert obs["valueQuantity"]["value"] == 80.0


async def test_push_is_off_without_an_ehr(server: Server) -> None:
    assert server.fhir_push is None
    assert server.pool is not None
    await enroll(server.pool)
    assert server.pipeline is not None
    await server.pipeline.process(
        [message("scale-1", "weight", {"weight": 80.0}, NOW - timedelta(minutes=3))]
    )
    assert await outbox(server.pool) == []


async def test_work_naming_nothing_usable_fails_and_missing_readings_are_counted(
    pool: asyncpg.Pool, ehr: FhirServer
) -> None:
    await enroll(pool)
    async with pool.acquire() as conn:
        await outbox_store.enqueue(
            conn,
            [
                ("fhir", "fhir:bad", {"readings": "all of them"}),
                ("fhir", "fhir:gone", {"readings": [["cuff-1", "blood_pressure", T0.isoformat()]]}),
            ],
        )
    worker = make_worker(pool, ehr, Clock())
    try:
        assert await worker.drain_once() == 2
    finally:
        await worker.close()
    bad, gone = await outbox(pool)
    assert bad["failed_at"] is not None
    assert bad["last_error"] == "bad push work: payload has no readings list"
    assert gone["delivered_at"] is not None
    assert gone["result"]["missing_readings"] == 1
    assert ehr.requests == 0
