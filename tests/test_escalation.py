"""Escalation to on-call staff, re-notification and auto-resolve.

Pure decisions first (no loop, no database), then the timers worker against a real
PostgreSQL with a frozen ``now`` passed to ``tick``: a critical alert nobody acknowledges
goes to the tier-1 nurse after 10 minutes and to tier 2 after 10 more; acknowledging
stops it; a restart or a second worker changes nothing; nobody on call is audited and
retried; an acknowledged alert still firing re-opens; a cleared condition auto-resolves
only for a rule that says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from alerts.escalation import (
    AlertFacts,
    Do,
    EscalationConfig,
    Step,
    next_step,
    should_auto_resolve,
    should_renotify,
    staff_sms,
)
from alerts.lifecycle import Action, AlertState
from alerts.policy import Snooze, SnoozeCaps
from rpm.domain import Severity
from rpm.settings import AlertSettings
from rpm.storage import alert_actions, rule_programs
from rpm.storage import alert_timers as timer_store
from rpm.workers.alert_timers import AlertTimers
from rules.programs import RuleBook, builtin_programs
from rules.spec import parse_program
from tests.alert_helpers import (
    CRISIS,
    NOW,
    PATIENT,
    TEAM,
    TIER1,
    TIER2,
    alert,
    bp,
    clinic,
    crisis,
    events,
    glucose,
    msg,
    outbox,
    pipeline,
    shifts,
)

T = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
CFG = EscalationConfig()
ON_CALL = {1: TIER1, 2: TIER2}
MIN = timedelta(minutes=1)


def facts(**changes: Any) -> AlertFacts:
    base: dict[str, Any] = {
        "alert_id": 123,
        "patient_id": "pat-7",
        "rule_id": CRISIS,
        "title": "Hypertensive crisis",
        "severity": Severity.CRITICAL,
        "state": AlertState.OPEN,
        "care_team": TEAM,
        "step_started_at": T,
    }
    return AlertFacts(**(base | changes))


# --- pure: what to do -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "delay"),
    [
        (Severity.CRITICAL, timedelta(minutes=10)),
        (Severity.HIGH, timedelta(minutes=30)),
        (Severity.MEDIUM, timedelta(hours=4)),
    ],
)
def test_an_unacknowledged_alert_waits_its_severitys_delay_then_goes_to_tier_1(
    severity: Severity, delay: timedelta
) -> None:
    a = facts(severity=severity)
    assert next_step(a, ON_CALL, T + delay - MIN, CFG) == Step(Do.WAIT, T + delay)
    now = T + delay
    assert next_step(a, ON_CALL, now, CFG) == Step(Do.PAGE, now + delay, 1, TIER1, audit=True)


def test_a_patient_no_channel_reached_pages_tier_1_at_once_then_keeps_the_delays() -> None:
    now = T + 2 * MIN  # the patient's text failed two minutes after the alert opened
    a = facts(patient_unreachable=True)
    assert next_step(a, ON_CALL, now, CFG) == Step(Do.PAGE, now + 10 * MIN, 1, TIER1, audit=True)
    # Tier 2 still waits its delay after tier 1.
    assert next_step(facts(patient_unreachable=True, tier=1), ON_CALL, now, CFG).do is Do.WAIT


def test_tier_2_after_a_further_delay_then_nothing_more() -> None:
    paged = T + 10 * MIN
    a = facts(tier=1, step_started_at=paged)
    assert next_step(a, ON_CALL, paged + 9 * MIN, CFG).do is Do.WAIT
    now = paged + 10 * MIN
    assert next_step(a, ON_CALL, now, CFG) == Step(Do.PAGE, None, 2, TIER2, audit=True)
    assert next_step(facts(tier=2), ON_CALL, T + timedelta(days=1), CFG).do is Do.STOP


@pytest.mark.parametrize(
    "a",
    [
        pytest.param(facts(severity=Severity.LOW), id="low never escalates"),
        pytest.param(facts(state=AlertState.ACKNOWLEDGED), id="acknowledged"),
        pytest.param(facts(state=AlertState.RESOLVED), id="resolved"),
        pytest.param(facts(step_started_at=None), id="opened while snoozed: silent"),
    ],
)
def test_nothing_to_do(a: AlertFacts) -> None:
    assert next_step(a, ON_CALL, T + timedelta(days=3), CFG) == Step(Do.STOP, None)


def test_a_snooze_holds_the_escalation_until_it_ends_unless_the_alert_is_worse() -> None:
    until = T + 20 * MIN
    held = facts(snooze=Snooze("pat-7", CRISIS, until, Severity.CRITICAL, "nurse-ana"))
    assert next_step(held, ON_CALL, T + 10 * MIN, CFG) == Step(Do.WAIT, until)
    assert next_step(held, ON_CALL, until, CFG).do is Do.PAGE
    below = facts(snooze=Snooze("pat-7", CRISIS, until, Severity.HIGH, "nurse-ana"))
    assert next_step(below, ON_CALL, T + 10 * MIN, CFG).do is Do.PAGE


def test_nobody_on_call_retries_and_is_audited_once_per_step() -> None:
    now = T + 10 * MIN
    first = next_step(facts(), {}, now, CFG)
    assert first == Step(Do.NOBODY, now + timedelta(minutes=5), 1, audit=True)
    again = next_step(facts(unreachable_reported=True), {}, now + 5 * MIN, CFG)
    assert again == Step(Do.NOBODY, now + 10 * MIN, 1, audit=False)
    # Tier 2 is due: tier 1 being on call does not help.
    assert next_step(facts(tier=1), {1: TIER1}, now, CFG).do is Do.NOBODY


def test_re_notification_needs_the_rule_still_firing_long_after_acknowledgement() -> None:
    acked = facts(state=AlertState.ACKNOWLEDGED, acknowledged_at=T)
    assert not should_renotify(acked, T + timedelta(hours=3), CFG)  # no firing since
    early = replace(acked, last_fired_at=T + 59 * MIN)
    assert not should_renotify(early, T + timedelta(hours=3), CFG)
    firing = replace(acked, last_fired_at=T + 60 * MIN)
    assert should_renotify(firing, T + 61 * MIN, CFG)
    cleared = replace(firing, condition_cleared_at=T + 62 * MIN)
    assert not should_renotify(cleared, T + 63 * MIN, CFG)
    assert not should_renotify(replace(firing, severity=Severity.LOW), T + 61 * MIN, CFG)
    never = EscalationConfig(renotify_after=None)
    assert not should_renotify(firing, T + 61 * MIN, never)
    assert not should_renotify(replace(firing, state=AlertState.OPEN), T + 61 * MIN, CFG)
    snooze = Snooze("pat-7", CRISIS, T + 2 * 60 * MIN, Severity.CRITICAL, "nurse-ana")
    assert not should_renotify(replace(firing, snooze=snooze), T + 61 * MIN, CFG)


def test_auto_resolve_only_for_a_rule_that_says_so_after_its_time() -> None:
    cleared = facts(condition_cleared_at=T)
    assert not should_auto_resolve(cleared, None, T + timedelta(days=30))
    assert not should_auto_resolve(cleared, 1.0, T + 59 * MIN)
    assert should_auto_resolve(cleared, 1.0, T + 60 * MIN)
    assert not should_auto_resolve(facts(), 1.0, T + timedelta(days=1))  # never cleared
    resolved = facts(condition_cleared_at=T, state=AlertState.RESOLVED)
    assert not should_auto_resolve(resolved, 1.0, T + timedelta(days=1))


def test_the_staff_sms_carries_ids_and_the_title_only() -> None:
    step = Step(Do.PAGE, None, 2, TIER2, audit=True)
    channel, key, payload = staff_sms(facts(), step)
    assert (channel, key) == ("sms", "sms:alert:123:escalation:2")
    assert payload == {
        "recipient": "staff",
        "staff_id": TIER2,
        "patient_id": "pat-7",
        "alert_id": 123,
        "template": "escalation",
        "tier": 2,
        "severity": "CRITICAL",
        "rule_id": CRISIS,
        "title": "Hypertensive crisis",
        "urgent": True,
    }
    # A later round (the alert re-opened) has keys of its own.
    assert staff_sms(facts(round=1), step)[1] == "sms:alert:123:escalation:2:round:1"


def test_settings_defaults_are_the_pure_defaults() -> None:
    s = AlertSettings()
    config = s.escalation()
    assert {sev: config.delay(sev) for sev in Severity} == {sev: CFG.delay(sev) for sev in Severity}
    assert (config.retry_after, config.renotify_after) == (CFG.retry_after, CFG.renotify_after)
    caps, default = s.snooze_caps(), SnoozeCaps()
    assert {sev: caps.cap(sev) for sev in Severity} == {sev: default.cap(sev) for sev in Severity}
    tuned = AlertSettings(
        escalation_after_min={"HIGH": 20, "low": 600}, renotify_after_min=0
    )  # others keep their defaults
    config = tuned.escalation()
    assert config.delay(Severity.HIGH) == timedelta(minutes=20)
    assert config.delay(Severity.LOW) == timedelta(hours=10)
    assert config.delay(Severity.CRITICAL) == timedelta(minutes=10)
    assert config.renotify_after is None


def test_settings_read_severities_by_their_one_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPM_SNOOZE_CAP_MIN", '{"Critical": 15}')
    assert AlertSettings().snooze_caps().cap(Severity.CRITICAL) == timedelta(minutes=15)
    monkeypatch.setenv("RPM_ESCALATION_AFTER_MIN", '{"urgent": 5}')
    with pytest.raises(ValueError, match="unknown severity 'urgent'"):
        AlertSettings()
    monkeypatch.setenv("RPM_ESCALATION_AFTER_MIN", '{"high": -1}')
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        AlertSettings()


# --- the timers worker against PostgreSQL, with a frozen now ------------------------------


@pytest.fixture
async def ward(pool: asyncpg.Pool) -> None:
    await clinic(pool)


async def staff_pages(pool: asyncpg.Pool) -> list[tuple[str, dict[str, Any]]]:
    return await outbox(pool, "staff")


async def actions(pool: asyncpg.Pool, alert_id: int) -> list[str]:
    return [e["action"] for e in await events(pool, alert_id)]


async def test_critical_unacknowledged_goes_to_tier_1_after_10_min_then_tier_2(
    pool: asyncpg.Pool, ward: None
) -> None:
    a = await crisis(pool)
    t0 = a["last_notified_at"]
    assert a["next_escalation_at"] == t0  # armed when the episode opened
    timers = AlertTimers(pool)

    await timers.tick(t0 + 9 * MIN)
    assert await staff_pages(pool) == []
    assert (await alert(pool, a["id"]))["next_escalation_at"] == t0 + 10 * MIN

    result = await timers.tick(t0 + 10 * MIN)
    assert result.paged == [(a["id"], 1, TIER1)]
    [(key, payload)] = await staff_pages(pool)
    assert key == f"sms:alert:{a['id']}:escalation:1"
    assert payload == {
        "recipient": "staff",
        "staff_id": TIER1,
        "patient_id": PATIENT,
        "alert_id": a["id"],
        "template": "escalation",
        "tier": 1,
        "severity": "CRITICAL",
        "rule_id": CRISIS,
        "title": a["title"],
        "urgent": True,
    }
    assert "Alice" not in json.dumps(payload)
    assert "+1555" not in json.dumps(payload)

    await timers.tick(t0 + 19 * MIN)
    assert len(await staff_pages(pool)) == 1
    result = await timers.tick(t0 + 20 * MIN)
    assert result.paged == [(a["id"], 2, TIER2)]
    await timers.tick(t0 + 3 * 60 * MIN)
    pages = await staff_pages(pool)
    assert [(p["staff_id"], p["tier"]) for _, p in pages] == [(TIER1, 1), (TIER2, 2)]

    trail = await events(pool, a["id"])
    assert [(e["action"], e["actor"]) for e in trail] == [
        ("open", "system:rules"),
        ("escalate_tier", "system:timers"),
        ("escalate_tier", "system:timers"),
    ]
    assert [e["at"] for e in trail[1:]] == [t0 + 10 * MIN, t0 + 20 * MIN]
    assert TIER1 in trail[1]["note"]
    row = await alert(pool, a["id"])
    assert (row["state"], row["escalation_tier"], row["next_escalation_at"]) == ("open", 2, None)


async def test_acknowledging_stops_the_escalation(pool: asyncpg.Pool, ward: None) -> None:
    a = await crisis(pool)
    t0 = a["last_notified_at"]
    async with pool.acquire() as conn:
        await alert_actions.transition(conn, a["id"], Action.ACKNOWLEDGE, TIER1)
    result = await AlertTimers(pool).tick(t0 + 30 * MIN)
    assert result.paged == []
    assert await staff_pages(pool) == []
    assert await actions(pool, a["id"]) == ["open", "acknowledge"]


async def test_acknowledging_after_tier_1_keeps_tier_2_out_of_it(
    pool: asyncpg.Pool, ward: None
) -> None:
    a = await crisis(pool)
    t0 = a["last_notified_at"]
    timers = AlertTimers(pool)
    await timers.tick(t0 + 10 * MIN)
    async with pool.acquire() as conn:
        await alert_actions.transition(conn, a["id"], Action.ACKNOWLEDGE, TIER1)
    await timers.tick(t0 + 30 * MIN)
    assert [p["tier"] for _, p in await staff_pages(pool)] == [1]


async def test_timers_survive_a_restart(pool: asyncpg.Pool, ward: None) -> None:
    a = await crisis(pool)
    t0 = a["last_notified_at"]
    before = AlertTimers(pool)
    await before.tick(t0 + 5 * MIN)
    del before
    # A new process: everything it needs is in the alert rows.
    after = AlertTimers(pool)
    result = await after.tick(t0 + 10 * MIN)
    assert result.paged == [(a["id"], 1, TIER1)]


async def test_two_workers_ticking_at_once_escalate_once(pool: asyncpg.Pool, ward: None) -> None:
    a = await crisis(pool)
    now = a["last_notified_at"] + 10 * MIN
    results = await asyncio.gather(*(AlertTimers(pool).tick(now) for _ in range(4)))
    assert sum(len(r.paged) for r in results) == 1
    assert len(await staff_pages(pool)) == 1
    assert (await actions(pool, a["id"])).count("escalate_tier") == 1


async def test_a_worker_that_cannot_take_the_lock_does_nothing(
    pool: asyncpg.Pool, ward: None
) -> None:
    a = await crisis(pool)
    now = a["last_notified_at"] + 10 * MIN
    async with pool.acquire() as other, other.transaction():
        assert await timer_store.lock(other)
        result = await AlertTimers(pool).tick(now)
    assert not result.ran
    assert await staff_pages(pool) == []
    assert (await AlertTimers(pool).tick(now)).paged == [(a["id"], 1, TIER1)]


async def test_nobody_on_call_is_audited_logged_and_retried(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    await clinic(pool, on_call=False)
    a = await crisis(pool)
    t0 = a["last_notified_at"]
    timers = AlertTimers(pool)
    with caplog.at_level(logging.WARNING, logger="rpm.workers.alert_timers"):
        result = await timers.tick(t0 + 10 * MIN)
    assert result.unreachable == [a["id"]]
    assert await staff_pages(pool) == []
    [warning] = [r.getMessage() for r in caplog.records if r.name == "rpm.workers.alert_timers"]
    assert f"alert {a['id']}" in warning
    assert "Alice" not in warning
    assert "+1555" not in warning
    trail = await events(pool, a["id"])
    assert [e["action"] for e in trail] == ["open", "nobody_on_call"]
    assert TEAM in trail[1]["note"]
    assert (await alert(pool, a["id"]))["next_escalation_at"] == t0 + 15 * MIN

    # Retried, audited once; a nurse going on call gets it at the next try.
    assert (await timers.tick(t0 + 15 * MIN)).unreachable == [a["id"]]
    assert await actions(pool, a["id"]) == ["open", "nobody_on_call"]
    async with pool.acquire() as conn:
        await shifts(conn, t0, t0 + timedelta(hours=8))
    assert (await timers.tick(t0 + 20 * MIN)).paged == [(a["id"], 1, TIER1)]


async def test_an_acknowledged_alert_still_firing_returns_to_open_and_escalates_again(
    pool: asyncpg.Pool, ward: None
) -> None:
    a = await crisis(pool)
    async with pool.acquire() as conn:
        await alert_actions.transition(conn, a["id"], Action.ACKNOWLEDGE, TIER1)
    acked = (await alert(pool, a["id"]))["acknowledged_at"]
    timers = AlertTimers(pool)

    # Still high 30 minutes later: not yet.
    at = acked + 30 * MIN
    await pipeline(pool, at).process([msg("cuff-7", bp(190, 121, at))])
    assert (await timers.tick(at + MIN)).renotified == []

    at = acked + 61 * MIN
    await pipeline(pool, at).process([msg("cuff-7", bp(195, 125, at))])
    result = await timers.tick(at + MIN)
    assert result.renotified == [a["id"]]
    row = await alert(pool, a["id"])
    assert (row["state"], row["escalation_round"], row["escalation_tier"]) == ("open", 1, 0)
    assert (await events(pool, a["id"]))[-1]["action"] == "renotify"

    result = await timers.tick(at + 11 * MIN)
    assert result.paged == [(a["id"], 1, TIER1)]
    [(key, _)] = await staff_pages(pool)
    assert key == f"sms:alert:{a['id']}:escalation:1:round:1"


async def test_a_worse_value_re_times_the_escalation(pool: asyncpg.Pool) -> None:
    await clinic(pool, programs=("diabetes",))
    result = await pipeline(pool).process([msg("meter-7", glucose(65, NOW))])  # high
    [alert_id] = result.alerts_opened
    t0 = (await alert(pool, alert_id))["last_notified_at"]
    timers = AlertTimers(pool)
    await timers.tick(t0 + 12 * MIN)
    assert (await alert(pool, alert_id))["next_escalation_at"] == t0 + 30 * MIN
    # Critical now, unacknowledged for 12 minutes: past the critical delay, so tier 1 now.
    later = NOW + 12 * MIN
    await pipeline(pool, later).process([msg("meter-7", glucose(50, later))])
    assert (await timers.tick(t0 + 13 * MIN)).paged == [(alert_id, 1, TIER1)]


async def test_auto_resolve_once_the_condition_was_clear_for_the_rules_time(
    pool: asyncpg.Pool, ward: None
) -> None:
    # A published version of the general program lets the crisis rule resolve itself.
    document = json.loads(builtin_programs()["general"].canonical_json())
    for rule in document["rules"]:
        if rule["id"] == CRISIS:
            rule["auto_resolve_after_hours"] = 1
    async with pool.acquire() as conn:
        await rule_programs.publish(conn, parse_program(document), "dr-lead", "auto-resolve")

    p = pipeline(pool)
    [alert_id] = (await p.process([msg("cuff-7", bp(192, 124, NOW - 90 * MIN))])).alerts_opened
    await p.process([msg("cuff-7", bp(130, 80, NOW - 80 * MIN))])
    cleared = (await alert(pool, alert_id))["condition_cleared_at"]
    assert cleared == NOW - 80 * MIN

    timers = AlertTimers(pool)  # the active versions in the database
    assert (await timers.tick(cleared + 59 * MIN)).auto_resolved == []
    result = await timers.tick(cleared + 60 * MIN)
    assert result.auto_resolved == [alert_id]
    row = await alert(pool, alert_id)
    assert (row["state"], row["resolved_by"]) == ("resolved", "system:timers")
    assert row["resolved_at"] == cleared + 60 * MIN
    assert "resolved automatically" in row["resolution_note"]
    last = (await events(pool, alert_id))[-1]
    assert (last["action"], last["actor"], last["to_state"]) == (
        "auto_resolve",
        "system:timers",
        "resolved",
    )


async def test_a_rule_without_auto_resolve_waits_for_a_nurse(
    pool: asyncpg.Pool, ward: None
) -> None:
    p = pipeline(pool)
    [alert_id] = (await p.process([msg("cuff-7", bp(192, 124, NOW - 90 * MIN))])).alerts_opened
    await p.process([msg("cuff-7", bp(130, 80, NOW - 80 * MIN))])
    timers = AlertTimers(pool, book=RuleBook.builtin())
    assert (await timers.tick(NOW + timedelta(days=3))).auto_resolved == []
    assert (await alert(pool, alert_id))["state"] == "open"


async def test_a_firing_after_the_clear_cancels_the_auto_resolve(
    pool: asyncpg.Pool, ward: None
) -> None:
    programs = dict(builtin_programs())
    document = json.loads(programs["general"].canonical_json())
    for rule in document["rules"]:
        if rule["id"] == CRISIS:
            rule["auto_resolve_after_hours"] = 1
    programs["general"] = parse_program(document)
    book = RuleBook(programs)
    p = pipeline(pool)
    [alert_id] = (await p.process([msg("cuff-7", bp(192, 124, NOW - 90 * MIN))])).alerts_opened
    await p.process([msg("cuff-7", bp(130, 80, NOW - 80 * MIN))])
    await p.process([msg("cuff-7", bp(185, 100, NOW - 10 * MIN))])  # back again
    assert (await alert(pool, alert_id))["condition_cleared_at"] is None
    assert (await AlertTimers(pool, book=book).tick(NOW)).auto_resolved == []
