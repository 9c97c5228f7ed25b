"""Concurrent vendor webhooks share units of work, and each request still hears its own outcome.

Against a real server and PostgreSQL: many concurrent posts (new, duplicate and refused
payloads from several integrations and formats) get the answer each would get alone, in fewer
transactions than requests; a failed transaction answers 503 to every request in it and
stores nothing of any of them; a full queue answers 503 with Retry-After at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from rpm.domain import Metric, RawMessage, Reading
from rpm.domain.errors import BatcherFull
from rpm.ingest_batcher import BatchLimits, IngestBatcher
from rpm.pipeline import BatchResult, MessageResult
from rpm.server import Server
from rpm.settings import Settings
from simulators.encoders import encode
from tests.helpers import eventually
from tests.test_operations import parse, value
from tests.test_webhooks import enroll_vendor_device, integration, signed


@pytest.fixture
def server_settings(server_settings: Settings) -> Settings:
    # A generous wait, so that requests posted together surely meet in a batch on a busy
    # machine; it only delays answers, and nothing here measures time.
    return server_settings.updated(ingest={"webhook_batch_max_wait_ms": 300})


@pytest.fixture
async def api(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    from tests.helpers import staff_headers

    assert server.pool is not None
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.settings.api.port}",
        timeout=60,
        headers=await staff_headers(server.pool),
    ) as client:
        r = await client.post("/api/patients", json={"id": "pat-w", "display_name": "W"})
        assert r.status_code == 201
        yield client


def _at(minutes_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).replace(microsecond=0).isoformat()


def bp_body(*devices: str, minutes_ago: int = 2, systolic: int = 128) -> bytes:
    return json.dumps(
        [
            {
                "device_id": d,
                "metric": "blood_pressure",
                "measured_at": _at(minutes_ago),
                "values": {"systolic": systolic, "diastolic": 81},
            }
            for d in devices
        ]
    ).encode()


@dataclass(frozen=True, slots=True)
class Post:
    """One webhook request and the answer it must get."""

    payload_format: str
    body: bytes
    headers: dict[str, str]
    status: int
    answer: dict[str, Any]


def answer(stored: int = 0, duplicates: int = 0, **reasons: int) -> dict[str, Any]:
    return {
        "stored": stored,
        "duplicates": duplicates,
        "quarantined": sum(reasons.values()),
        "reasons": reasons,
    }


async def send(api: httpx.AsyncClient, p: Post) -> httpx.Response:
    return await api.post(f"/ingest/{p.payload_format}", content=p.body, headers=p.headers)


async def scrape(api: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await api.get("/metrics")
    assert r.status_code == 200
    return parse(r.text)


async def test_concurrent_webhooks_share_units_of_work_each_with_its_own_answer(
    api: httpx.AsyncClient, server: Server
) -> None:
    acme = await integration(api, "acme", "hmac", ["canonical"])
    wcloud = await integration(api, "wcloud", "hmac", ["withings"])
    tok = await integration(api, "tok", "token", ["canonical"])
    for i in range(12):
        await enroll_vendor_device(api, "acme", f"A{i}")
    for i in range(4):
        await enroll_vendor_device(api, "wcloud", f"W{i}")
    await enroll_vendor_device(api, "tok", "T0")

    def by_acme(body: bytes, status: int, ans: dict[str, Any]) -> Post:
        return Post("canonical", body, signed("acme", acme, body), status, ans)

    # Stored before: its retries inside the batch are duplicates.
    earlier = bp_body("A0", minutes_ago=30)
    first = await send(api, by_acme(earlier, 200, {}))
    assert first.json() == answer(stored=1)

    posts = [by_acme(bp_body(f"A{i}", minutes_ago=i + 1), 200, answer(stored=1)) for i in range(12)]
    posts += [by_acme(earlier, 200, answer(duplicates=1)) for _ in range(3)]
    # One body, two devices: one enrolled (stored), one not (quarantined); still a 200.
    mixed = bp_body("A1", "NOBODY", minutes_ago=40)
    posts.append(by_acme(mixed, 200, answer(stored=1, unknown_device=1)))
    junk = b'{"metric": "blood_pressure", "values": '
    posts += [by_acme(junk, 422, answer(malformed=1)) for _ in range(2)]
    stranger = bp_body("STRANGER", minutes_ago=3)
    posts += [by_acme(stranger, 422, answer(unknown_device=1)) for _ in range(2)]
    absurd = bp_body("A2", minutes_ago=50, systolic=900)
    posts.append(by_acme(absurd, 422, answer(implausible_value=1)))
    for i in range(4):
        reading = Reading(
            device_id=f"W{i}",
            metric=Metric.WEIGHT,
            values={"weight": 70.0 + i},
            measured_at=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5),
            received_at=datetime.now(UTC),
        )
        body = encode("withings", [reading], f"W{i}")
        posts.append(Post("withings", body, signed("wcloud", wcloud, body), 200, answer(stored=1)))
    token_body = bp_body("T0", minutes_ago=4)
    token_headers = {"X-RPM-Integration": "tok", "Authorization": f"Bearer {tok}"}
    posts.append(Post("canonical", token_body, token_headers, 200, answer(stored=1)))
    # The same new body twice at once: stored by one request, a duplicate for the other.
    twice = bp_body("A3", minutes_ago=60)
    twins = [by_acme(twice, 200, {}), by_acme(twice, 200, {})]

    before = await scrape(api)
    responses = await asyncio.gather(*(send(api, p) for p in [*posts, *twins]))
    after = await scrape(api)

    for p, r in zip(posts, responses, strict=False):
        assert (r.status_code, r.json()) == (p.status, p.answer), p.body[:80]
    twin_answers = sorted((r.json() for r in responses[len(posts) :]), key=lambda a: a["stored"])
    assert twin_answers == [answer(duplicates=1), answer(stored=1)]
    assert all(r.status_code == 200 for r in responses[len(posts) :])

    requests = len(posts) + len(twins)
    messages = value(after, "rpm_ingest_messages_total", transport="http") - value(
        before, "rpm_ingest_messages_total", transport="http"
    )
    batches = value(after, "rpm_ingest_batch_size_count") - value(
        before, "rpm_ingest_batch_size_count"
    )
    assert messages == requests
    assert 1 <= batches < requests, (batches, requests)

    assert server.pool is not None
    async with server.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT count(*) FROM readings")
        kept = await conn.fetch("SELECT reason, seen_count FROM quarantine")
    assert stored == 1 + 12 + 1 + 4 + 1 + 1  # earlier, acme, mixed, withings, token, twins
    # One row per refused payload and reason; a repeat raises its seen_count.
    assert sorted((r["reason"], r["seen_count"]) for r in kept) == [
        ("implausible_value", 1),
        ("malformed", 2),
        ("unknown_device", 1),
        ("unknown_device", 2),
    ]


async def _locked(db_url: str, tables: str) -> asyncpg.Connection:
    """A connection holding ``tables`` locked, so units of work wait on them."""
    conn = await asyncpg.connect(db_url)
    tx = conn.transaction()
    await tx.start()
    await conn.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
    return conn


async def _blocked_by(conn: asyncpg.Connection) -> list[int]:
    """Backends waiting for a lock ``conn`` holds (pg_locks: pg_stat_activity would show
    ``conn``'s transaction the snapshot it took first)."""
    rows = await conn.fetch(
        "SELECT DISTINCT pid FROM pg_locks"
        " WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
    )
    return [r["pid"] for r in rows]


async def test_a_failed_unit_of_work_answers_503_to_every_request_and_stores_nothing(
    api: httpx.AsyncClient, server: Server, db_url: str
) -> None:
    secret = await integration(api, "acme", "hmac", ["canonical"])
    for i in range(6):
        await enroll_vendor_device(api, "acme", f"A{i}")
    bodies = [bp_body(f"A{i}", minutes_ago=i + 1) for i in range(6)]
    bodies.append(b"not json at all")
    bodies.append(bp_body("STRANGER"))
    before = await scrape(api)

    # Both tables: a batch holding only refused payloads writes the quarantine alone.
    lock = await _locked(db_url, "readings, quarantine")
    try:
        sent = [
            asyncio.create_task(
                api.post("/ingest/canonical", content=b, headers=signed("acme", secret, b))
            )
            for b in bodies
        ]
        # The database goes away under every unit of work waiting for the table: each such
        # backend is terminated (57P01, what a restarting server does to its sessions).
        while not all(t.done() for t in sent):
            for pid in await _blocked_by(lock):
                await lock.execute("SELECT pg_terminate_backend($1)", pid)
            await asyncio.sleep(0.05)
    finally:
        await lock.close()  # rolls back: the lock is released

    responses = [t.result() for t in sent]
    assert [r.status_code for r in responses] == [503] * len(bodies)
    assert all(r.headers["Retry-After"] for r in responses)
    after = await scrape(api)
    assert value(after, "rpm_ingest_batches_not_committed_total") > value(
        before, "rpm_ingest_batches_not_committed_total"
    )
    assert server.pool is not None
    async with server.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM readings") == 0
        assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0

    # The vendors retry: every request now gets the answer it would have had.
    retried = await asyncio.gather(
        *(
            api.post("/ingest/canonical", content=b, headers=signed("acme", secret, b))
            for b in bodies
        )
    )
    assert [r.status_code for r in retried] == [200] * 6 + [422, 422]
    assert [r.json() for r in retried] == [answer(stored=1)] * 6 + [
        answer(malformed=1),
        answer(unknown_device=1),
    ]


async def test_a_full_queue_answers_503_with_retry_after_at_once(
    server_settings: Settings, db_url: str
) -> None:
    from tests.helpers import staff_headers

    settings = server_settings.updated(
        ingest={
            "webhook_batch_max_messages": 1,
            "webhook_batch_max_wait_ms": 0,
            "webhook_queue_max": 1,
        }
    )
    server = Server(settings)
    await server.start()
    try:
        assert server.pool is not None
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.api.port}",
            timeout=60,
            headers=await staff_headers(server.pool),
        ) as api:
            r = await api.post("/api/patients", json={"id": "pat-w", "display_name": "W"})
            assert r.status_code == 201
            secret = await integration(api, "acme", "hmac", ["canonical"])
            for i in range(5):
                await enroll_vendor_device(api, "acme", f"A{i}")
            bodies = [bp_body(f"A{i}", minutes_ago=i + 1) for i in range(5)]

            def post(b: bytes) -> asyncio.Task[httpx.Response]:
                return asyncio.create_task(
                    api.post("/ingest/canonical", content=b, headers=signed("acme", secret, b))
                )

            lock = await _locked(db_url, "readings")
            try:
                first = post(bodies[0])
                await eventually(lambda: _blocked_by(lock), 30)  # its unit of work waits
                rest = [post(b) for b in bodies[1:]]
                # One of them waits in the queue (its limit is 1); the others are refused
                # while the unit of work still waits for the table.
                refused: list[httpx.Response] = []
                while len(refused) < 3:
                    done, _ = await asyncio.wait(
                        [t for t in rest if not t.done()], return_when=asyncio.FIRST_COMPLETED
                    )
                    refused += [t.result() for t in done]
                assert not first.done()
                queued = [t for t in rest if not t.done()]
                assert len(queued) == 1
            finally:
                await lock.close()
            assert [(r.status_code, r.headers.get("Retry-After")) for r in refused] == [
                (503, "1")
            ] * 3
            accepted = [await first, await queued[0]]
            assert [(r.status_code, r.json()) for r in accepted] == [(200, answer(stored=1))] * 2
            exposed = (await api.get("/metrics")).text
            assert 'rpm_webhook_messages_total{outcome="refused"} 3.0' in exposed
            assert 'rpm_webhook_messages_total{outcome="batched"} 2.0' in exposed
    finally:
        await server.stop()


# --- the batcher alone, over a stand-in unit of work (no database) -------------------------------


def _raw(n: int) -> RawMessage:
    return RawMessage(
        transport="http",
        payload_format="canonical",
        device_id=None,
        payload=str(n).encode(),
        received_at=datetime.now(UTC),
        integration="x",
    )


def _echo(gate: asyncio.Event, seen: list[int]) -> Callable[[Any], Awaitable[BatchResult]]:
    """A unit of work that notes its batch's size, waits for ``gate`` and says each message
    stored its number."""

    async def run(batch: Any) -> BatchResult:
        seen.append(len(batch))
        await gate.wait()
        return BatchResult(
            messages=len(batch), per_message=[MessageResult(stored=int(m.payload)) for m in batch]
        )

    return run


async def test_each_sender_gets_its_own_messages_outcome_in_shared_batches() -> None:
    gate = asyncio.Event()
    sizes: list[int] = []
    batcher = IngestBatcher(_echo(gate, sizes), BatchLimits(4, 0.05, 100))
    waiting = [asyncio.create_task(batcher.submit(_raw(n))) for n in range(10)]
    await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*waiting)
    assert [o.stored for o in outcomes] == list(range(10))
    assert sizes == [4, 4, 2]  # full batches close at once; the rest after the wait
    assert batcher.counters.batches == len(sizes)


async def test_a_full_batcher_refuses_at_once_and_serves_the_rest() -> None:
    gate = asyncio.Event()
    sizes: list[int] = []
    batcher = IngestBatcher(_echo(gate, sizes), BatchLimits(1, 0.0, 2))
    first = asyncio.create_task(batcher.submit(_raw(1)))
    await eventually(lambda: _true(sizes == [1]))  # taken into a unit of work, waiting there
    assert batcher.waiting == 0
    queued = [asyncio.create_task(batcher.submit(_raw(n))) for n in (2, 3)]
    await asyncio.sleep(0)
    with pytest.raises(BatcherFull):
        await batcher.submit(_raw(4))
    assert batcher.counters.refused == 1
    gate.set()
    assert [(await t).stored for t in [first, *queued]] == [1, 2, 3]


async def _true(flag: bool) -> bool:
    return flag


async def test_a_failing_unit_of_work_fails_every_sender_of_its_batch() -> None:
    from rpm.domain.errors import StorageError

    async def broken(batch: Any) -> BatchResult:
        raise StorageError("database unavailable: test")

    batcher = IngestBatcher(broken, BatchLimits(10, 0.05, 100))
    results = await asyncio.gather(
        *(batcher.submit(_raw(n)) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, StorageError) for r in results)
    assert batcher.counters.batches == 0
