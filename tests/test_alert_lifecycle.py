"""The alert lifecycle: the transition table (pure), and the nurse's actions through the
alerts API against a real PostgreSQL: assign, snooze within its cap, resolve with a note,
each audited and announced; the triage queue; snoozes per alert kind with break-through;
one open episode per patient and rule under concurrency and redelivery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from alerts.lifecycle import (
    ACTIONS,
    TRANSITIONS,
    Action,
    Actor,
    AlertState,
    next_state,
    staff_transition,
)
from alerts.policy import SnoozeCaps, decide
from rpm.api import alerts as alerts_api
from rpm.api.live import Broadcaster
from rpm.domain import AlertCandidate, Severity
from rpm.domain.errors import InvalidTransition, NoteRequired, StorageError
from rpm.pipeline import IngestPipeline
from rpm.storage import alerts as alert_store
from rpm.storage import registry
from rpm.storage.alerts import ALERTS_CHANNEL
from rpm.storage.pool import connect
from rpm.workers.alert_timers import AlertTimers
from tests.alert_helpers import (
    CRISIS,
    NOW,
    PATIENT,
    TEAM,
    TIER1,
    TIER2,
    alert,
    alerts_of,
    bp,
    clinic,
    crisis,
    events,
    glucose,
    msg,
    outbox,
    pipeline,
)
from tests.helpers import api_app, eventually, staff_headers

OPEN, ACK, RESOLVED = AlertState.OPEN, AlertState.ACKNOWLEDGED, AlertState.RESOLVED
MIN = timedelta(minutes=1)

# --- the table (pure) -------------------------------------------------------------------


def test_the_table() -> None:
    assert dict(TRANSITIONS) == {
        (None, Action.OPEN): OPEN,
        (OPEN, Action.ESCALATE): OPEN,
        (ACK, Action.ESCALATE): OPEN,
        (OPEN, Action.RECUR): OPEN,
        (ACK, Action.RECUR): ACK,
        (OPEN, Action.JOIN): OPEN,
        (ACK, Action.JOIN): ACK,
        (OPEN, Action.LATE_EVIDENCE): OPEN,
        (ACK, Action.LATE_EVIDENCE): ACK,
        (RESOLVED, Action.LATE_EVIDENCE): RESOLVED,
        (OPEN, Action.EVIDENCE_ENTERED_IN_ERROR): OPEN,
        (ACK, Action.EVIDENCE_ENTERED_IN_ERROR): ACK,
        (RESOLVED, Action.EVIDENCE_ENTERED_IN_ERROR): RESOLVED,
        (OPEN, Action.WITHDRAW): RESOLVED,
        (ACK, Action.WITHDRAW): RESOLVED,
        (OPEN, Action.ESCALATE_TIER): OPEN,
        (OPEN, Action.NOBODY_ON_CALL): OPEN,
        (ACK, Action.RENOTIFY): OPEN,
        (OPEN, Action.ACKNOWLEDGE): ACK,
        (OPEN, Action.RESOLVE): RESOLVED,
        (ACK, Action.RESOLVE): RESOLVED,
        (OPEN, Action.AUTO_RESOLVE): RESOLVED,
        (ACK, Action.AUTO_RESOLVE): RESOLVED,
        (OPEN, Action.ASSIGN): OPEN,
        (ACK, Action.ASSIGN): ACK,
        (OPEN, Action.SNOOZE): OPEN,
        (ACK, Action.SNOOZE): ACK,
        (OPEN, Action.UNSNOOZE): OPEN,
        (ACK, Action.UNSNOOZE): ACK,
    }
    assert set(ACTIONS) == set(Action) == {a for _, a in TRANSITIONS}


@pytest.mark.parametrize(
    "action",
    [a for a in Action if a not in (Action.LATE_EVIDENCE, Action.EVIDENCE_ENTERED_IN_ERROR)],
)
def test_nothing_leaves_resolved(action: Action) -> None:
    with pytest.raises(InvalidTransition):
        next_state(RESOLVED, action)


def test_late_evidence_stays_resolved() -> None:
    # A reading measured before the resolution is recorded on the episode; it stays closed.
    assert next_state(RESOLVED, Action.LATE_EVIDENCE) is RESOLVED


@pytest.mark.parametrize("action", [a for a, r in ACTIONS.items() if r.by is Actor.SYSTEM])
def test_staff_cannot_take_the_systems_actions(action: Action) -> None:
    with pytest.raises(InvalidTransition, match="done by the system"):
        staff_transition(OPEN, action, "note")


@pytest.mark.parametrize("note", [None, "", "   \n"])
def test_a_nurse_resolves_with_a_note(note: str | None) -> None:
    with pytest.raises(NoteRequired):
        staff_transition(ACK, Action.RESOLVE, note)
    assert staff_transition(ACK, Action.RESOLVE, "Called; repeat 150/90.") is RESOLVED
    # The system's auto-resolve writes its own note.
    assert next_state(OPEN, Action.AUTO_RESOLVE) is RESOLVED


def test_escalation_to_a_tier_is_for_open_alerts_and_re_notification_for_acknowledged() -> None:
    assert next_state(OPEN, Action.ESCALATE_TIER) is OPEN
    with pytest.raises(InvalidTransition):
        next_state(ACK, Action.ESCALATE_TIER)
    assert next_state(ACK, Action.RENOTIFY) is OPEN
    with pytest.raises(InvalidTransition):
        next_state(OPEN, Action.RENOTIFY)
    with pytest.raises(InvalidTransition):
        staff_transition(ACK, Action.ACKNOWLEDGE, None)


# --- the API against PostgreSQL -----------------------------------------------------------


@pytest.fixture
async def api(pool: asyncpg.Pool, db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The alerts router over the test database, with the clinic of ``alert_helpers``."""
    await clinic(pool, programs=("hypertension", "diabetes"))
    app = api_app(pool)
    # only the stream route would start the broadcaster
    app.state.broadcaster = Broadcaster(db_url, (ALERTS_CHANNEL,))
    app.state.snooze_caps = SnoozeCaps()
    app.include_router(alerts_api.router)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://rpm.test",
        headers=await staff_headers(pool, TIER1, "nurse"),  # a nurse of the patient's team
    ) as client:
        yield client


async def trail(api: httpx.AsyncClient, alert_id: int) -> list[tuple[str, str, str | None]]:
    detail = (await api.get(f"/api/alerts/{alert_id}")).json()
    return [(e["action"], e["actor"], e["note"]) for e in detail["events"]]


async def test_assign_is_audited(api: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    a = await crisis(pool)
    resp = await api.post(f"/api/alerts/{a['id']}/assign", json={"assignee": TIER2, "actor": TIER1})
    assert resp.status_code == 200, resp.text
    assert resp.json()["assigned_to"] == TIER2
    assert (await trail(api, a["id"]))[-1] == ("assign", f"staff:{TIER1}", f"to {TIER2}")

    unknown = await api.post(
        f"/api/alerts/{a['id']}/assign", json={"assignee": "nobody", "actor": TIER1}
    )
    assert unknown.status_code == 422
    missing = await api.post("/api/alerts/999/assign", json={"assignee": TIER2, "actor": TIER1})
    assert missing.status_code == 404
    await api.post(f"/api/alerts/{a['id']}/resolve", json={"actor": TIER1, "note": "Seen."})
    late = await api.post(f"/api/alerts/{a['id']}/assign", json={"assignee": TIER1, "actor": TIER1})
    assert late.status_code == 409


@pytest.mark.parametrize("body", [{}, {"note": ""}, {"note": "   "}])
async def test_resolve_needs_a_note(
    api: httpx.AsyncClient, pool: asyncpg.Pool, body: dict[str, str]
) -> None:
    a = await crisis(pool)
    resp = await api.post(f"/api/alerts/{a['id']}/resolve", json={"actor": TIER1, **body})
    assert resp.status_code == 422
    assert (await alert(pool, a["id"]))["state"] == "open"
    ok = await api.post(
        f"/api/alerts/{a['id']}/resolve", json={"actor": TIER1, "note": "Called; 150/90 now."}
    )
    assert ok.status_code == 200
    assert (ok.json()["state"], ok.json()["resolution_note"]) == ("resolved", "Called; 150/90 now.")
    assert ok.json()["next_escalation_at"] is None


async def test_snooze_is_capped_by_severity_and_can_be_ended(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    a = await crisis(pool)  # critical: at most 30 minutes
    too_long = await api.post(
        f"/api/alerts/{a['id']}/snooze", json={"minutes": 31, "actor": TIER1, "reason": "x"}
    )
    assert too_long.status_code == 422
    assert "at most 30 min" in too_long.json()["detail"]
    resp = await api.post(
        f"/api/alerts/{a['id']}/snooze",
        json={"minutes": 30, "actor": TIER1, "reason": "repeat reading in 20 min"},
    )
    assert resp.status_code == 200
    until = datetime.fromisoformat(resp.json()["snoozed_until"])
    assert timedelta(minutes=29) < until - a["opened_at"] < timedelta(minutes=31)
    [listed] = (await api.get("/api/alerts")).json()
    assert listed["snoozed_until"] == resp.json()["snoozed_until"]

    ended = await api.delete(
        f"/api/alerts/{a['id']}/snooze", headers=await staff_headers(pool, TIER2, "nurse")
    )
    assert ended.status_code == 200
    assert ended.json()["snoozed_until"] is None
    assert (await trail(api, a["id"]))[-2:] == [
        ("snooze", f"staff:{TIER1}", "30 min: repeat reading in 20 min"),
        ("unsnooze", f"staff:{TIER2}", None),
    ]


async def test_every_action_is_announced_on_the_live_stream(
    api: httpx.AsyncClient, pool: asyncpg.Pool, db_url: str
) -> None:
    a = await crisis(pool)
    heard: list[dict[str, Any]] = []
    listener = await connect(db_url)
    try:
        await listener.add_listener(ALERTS_CHANNEL, lambda *args: heard.append(json.loads(args[3])))
        base = f"/api/alerts/{a['id']}"
        await api.post(f"{base}/acknowledge", json={"actor": TIER1})
        await api.post(f"{base}/assign", json={"assignee": TIER1, "actor": TIER1})
        await api.post(f"{base}/snooze", json={"minutes": 10, "actor": TIER1})
        await api.delete(f"{base}/snooze", params={"actor": TIER1})
        await api.post(f"{base}/resolve", json={"actor": TIER1, "note": "Done."})

        async def all_heard() -> bool:
            return len(heard) == 5

        await eventually(all_heard)
    finally:
        await listener.close()
    assert [(h["alert_id"], h["action"]) for h in heard] == [
        (a["id"], action) for action in ("acknowledge", "assign", "snooze", "unsnooze", "resolve")
    ]
    assert heard[-1]["state"] == "resolved"


async def test_the_triage_queue(api: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await registry.upsert_patient(
            conn,
            patient_id="pat-8",
            display_name="Bob Example",
            phone=None,
            sms_consent=False,
            programs=["heart_failure"],
        )
        await registry.enroll_device(
            conn, device_id="cuff-8", kind="bp_cuff", patient_id="pat-8", since=NOW - 3 * MIN
        )
    p = pipeline(pool)
    await p.process([msg("cuff-8", bp(190, 100, NOW - 2 * MIN))])  # oldest critical
    # Medium, with the repeat that confirms it (dm.glucose_high confirms its medium tier).
    await p.process(
        [msg("meter-7", glucose(300, NOW - 50 * MIN)), msg("meter-7", glucose(300, NOW - 49 * MIN))]
    )
    await p.process([msg("meter-7", glucose(60, NOW - 40 * MIN))])  # high
    await p.process([msg("cuff-7", bp(192, 124, NOW - MIN))])  # critical, newer

    # pat-8 has no care team: the team's nurse does not see it, an admin sees everything.
    ward = (await api.get("/api/alerts", params={"order": "triage"})).json()
    assert {q["patient_id"] for q in ward} == {PATIENT}
    api.headers.update(await staff_headers(pool))
    queue = (await api.get("/api/alerts", params={"order": "triage"})).json()
    assert [(q["patient_id"], q["rule_id"]) for q in queue] == [
        ("pat-8", CRISIS),
        (PATIENT, CRISIS),
        (PATIENT, "dm.glucose_low"),
        (PATIENT, "dm.glucose_high"),
    ]
    mine = queue[1]
    assert mine["patient_programs"] == ["hypertension", "diabetes"]
    assert mine["care_team"] == TEAM
    assert (mine["assigned_to"], mine["escalation_tier"], mine["snoozed_until"]) == (None, 0, None)
    assert queue[0]["care_team"] is None

    diabetes = (await api.get("/api/alerts", params={"program": "diabetes"})).json()
    assert {q["patient_id"] for q in diabetes} == {PATIENT}
    critical = (await api.get("/api/alerts", params={"severity": "critical"})).json()
    assert [q["patient_id"] for q in critical] == ["pat-8", PATIENT]
    both = await api.get("/api/alerts", params=[("severity", "high"), ("severity", "MEDIUM")])
    assert [q["rule_id"] for q in both.json()] == ["dm.glucose_low", "dm.glucose_high"]
    await api.post(f"/api/alerts/{queue[0]['id']}/acknowledge", json={"actor": TIER1})
    acked = (await api.get("/api/alerts", params={"state": "acknowledged"})).json()
    assert [q["id"] for q in acked] == [queue[0]["id"]]
    assert (await api.get("/api/alerts", params={"state": "closed"})).status_code == 422


async def test_snoozing_high_glucose_leaves_low_glucose_alerting(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    p = pipeline(pool)
    # Each medium reading comes with the repeat that confirms it (confirm before paging).
    first_pair = [glucose(300, NOW - 50 * MIN), glucose(300, NOW - 49 * MIN)]
    [first] = (await p.process([msg("meter-7", g) for g in first_pair])).alerts_opened
    snoozed = await api.post(
        f"/api/alerts/{first}/snooze", json={"minutes": 120, "actor": TIER1, "reason": "steroids"}
    )
    assert snoozed.status_code == 200
    await api.post(f"/api/alerts/{first}/resolve", json={"actor": TIER1, "note": "Reviewed."})

    # High glucose again, within the snoozed severity: recorded, but nobody is told. Measured
    # time decides, so these readings are measured after the nurse's resolution and snooze.
    after = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    pair = [glucose(280, after), glucose(280, after + timedelta(seconds=30))]
    [silent] = (await p.process([msg("meter-7", g) for g in pair])).alerts_opened
    row = await alert(pool, silent)
    assert (row["rule_id"], row["severity"]) == ("dm.glucose_high", "MEDIUM")
    assert (row["last_notified_at"], row["next_escalation_at"]) == (None, None)
    assert "snoozed until" in (await events(pool, silent))[0]["note"]

    # Low glucose is another rule: it alerts as usual.
    [low] = (await p.process([msg("meter-7", glucose(60, after + MIN))])).alerts_opened
    assert (await alert(pool, low))["next_escalation_at"] is not None

    # Very high glucose is worse than the snooze allows: it breaks through.
    result = await p.process([msg("meter-7", glucose(450, after + 2 * MIN))])
    assert result.alerts_changed == [silent]
    row = await alert(pool, silent)
    assert row["severity"] == "HIGH"
    assert row["next_escalation_at"] is not None

    patient_sms = {key for key, _ in await outbox(pool, "patient")}
    assert patient_sms == {f"sms:alert:{i}:open" for i in (first, low, silent)}

    # And the timers page for both once nobody acknowledges.
    t0 = (await alert(pool, silent))["last_notified_at"]
    paged = (await AlertTimers(pool).tick(t0 + 30 * MIN)).paged
    assert {alert_id for alert_id, _, _ in paged} == {low, silent}


async def test_one_open_episode_under_concurrency_and_redelivery(pool: asyncpg.Pool) -> None:
    await clinic(pool)
    batches = [[msg("cuff-7", bp(190 + i, 121, NOW - i * MIN))] for i in range(4)]

    async def deliver(p: IngestPipeline, batch: list[Any]) -> None:
        for _ in range(5):
            try:
                await p.process(batch)
                return
            except StorageError:  # the other process opened the episode first: retry
                await asyncio.sleep(0.01)
        raise AssertionError("did not get through")

    workers = [pipeline(pool) for _ in batches]
    await asyncio.gather(*(deliver(w, b) for w, b in zip(workers, batches, strict=True)))
    [episode] = await alerts_of(pool, CRISIS)
    # The processes' units of work on the patient run one after the other, each on the state
    # the previous one left (docs/architecture.md, "Several gateways"), as one process would:
    # the four crisis readings, and the stage 2 persistence rule (3 of the last 5 readings)
    # joining the episode at the third and the fourth, whatever the order.
    assert episode["occurrences"] == 4 + 2
    await asyncio.gather(*(deliver(w, b) for w, b in zip(workers, batches[::-1], strict=True)))
    [episode] = await alerts_of(pool, CRISIS)
    assert episode["state"] == "open"
    assert episode["occurrences"] == 4 + 2  # redelivered readings count nothing
    # One patient SMS for the episode.
    keys = [key for key, _ in await outbox(pool, "patient")]
    assert [k for k in keys if k.startswith(f"sms:alert:{episode['id']}:")] == [
        f"sms:alert:{episode['id']}:open"
    ]


async def test_the_unique_index_refuses_a_second_episode_opened_at_the_same_moment(
    pool: asyncpg.Pool,
) -> None:
    """Two transactions that both saw no episode: the second insert fails (the ingest turns
    that into a retry of its batch, which then records a recurrence)."""
    await clinic(pool)
    key = (PATIENT, CRISIS)
    candidate = AlertCandidate(
        patient_id=PATIENT,
        rule_id=CRISIS,
        severity=Severity.CRITICAL,
        title="Hypertensive crisis",
        measured_at=NOW,
        explanation="SBP 190",
    )
    both_looked = asyncio.Barrier(2)

    async def open_episode() -> None:
        async with pool.acquire() as conn, conn.transaction():
            episodes = await alert_store.open_episodes(conn, [key])
            await both_looked.wait()
            await alert_store.apply(conn, decide([candidate], episodes))

    outcomes = await asyncio.gather(open_episode(), open_episode(), return_exceptions=True)
    assert sum(o is None for o in outcomes) == 1
    assert any(isinstance(o, asyncpg.UniqueViolationError) for o in outcomes)
    assert len(await alerts_of(pool, CRISIS)) == 1
