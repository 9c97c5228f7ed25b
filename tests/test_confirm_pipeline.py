"""Confirm before paging through the real unit of work and database (issue 17, item 4):
glucose of 250-400 mg/dL is `dm.glucose_high`'s confirmed medium tier (ADA Standards of Care
2024 §7: a fingerstick reads high with sugar on the skin; wash, dry and re-check). Nothing
pages and no escalation is armed while a confirmation waits; a restart loses none; measured
time decides (a late first reading, a repeat at the window's last instant)."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from tests.alert_helpers import NOW, PATIENT, alert, clinic, glucose, msg, outbox, pipeline

MIN = timedelta(minutes=1)
T = NOW - 60 * MIN  # the first reading, an hour ago (the ingest clock refuses the future)


async def waiting(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT * FROM alert_confirmations WHERE patient_id = $1 ORDER BY id", PATIENT
            )
        )


async def test_a_waiting_confirmation_arms_nothing_and_survives_a_restart(
    pool: asyncpg.Pool,
) -> None:
    await clinic(pool, programs=("diabetes",))
    result = await pipeline(pool).process([msg("meter-7", glucose(300, T))])
    assert result.alerts_opened == []
    assert result.confirmations_opened == 1
    [row] = await waiting(pool)
    assert (row["state"], row["deadline"]) == ("pending", T + 15 * MIN)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM alerts") == 0  # no escalation timer
    [(key, payload)] = await outbox(pool, "patient")
    assert key == f"sms:confirm:{row['id']}:remeasure"
    assert (payload["template"], payload["urgent"]) == ("remeasure", False)  # medium
    assert payload["context"]["minutes"] == 15

    # A new process (a restart): its own engine, nothing in memory; the row is the timer.
    restarted = pipeline(pool)
    assert await restarted.check_confirmations(T + 15 * MIN - timedelta(seconds=1)) == 0
    assert await restarted.check_confirmations(T + 15 * MIN) == 1
    assert await restarted.check_confirmations(T + 16 * MIN) == 0  # paged once
    [row] = await waiting(pool)
    assert row["state"] == "no_repeat"
    paged = await alert(pool, row["alert_id"])
    assert paged["rule_id"] == "dm.glucose_high"
    assert "No repeat reading within 15 min" in paged["explanation"]
    assert paged["next_escalation_at"] is not None  # the nurse's escalation starts now
    assert [k for k, _ in await outbox(pool, "patient")][-1] == f"sms:alert:{paged['id']}:open"


async def test_a_first_reading_delivered_after_its_repeat_is_decided_at_once(
    pool: asyncpg.Pool,
) -> None:
    await clinic(pool, programs=("diabetes",))
    p = pipeline(pool)
    # The repeat (5 min later) arrives first: on its own it is a first reading, and waits.
    await p.process([msg("meter-7", glucose(310, T + 5 * MIN))])
    [early] = await waiting(pool)
    assert early["state"] == "pending"
    # Then the first one, late: the stored repeat confirms it; the same event, one alert.
    result = await p.process([msg("meter-7", glucose(300, T))])
    [alert_id] = result.alerts_opened
    a = await alert(pool, alert_id)
    assert "Confirmed by a repeat reading: glucose 310 mg/dL" in a["explanation"]
    assert {r["state"] for r in await waiting(pool)} == {"confirmed"}


async def test_a_repeat_at_the_window_s_last_instant_decides_and_one_after_it_does_not(
    pool: asyncpg.Pool,
) -> None:
    await clinic(pool, programs=("diabetes",))
    p = pipeline(pool)
    await p.process([msg("meter-7", glucose(300, T))])
    # 15 min after the first, exactly: inside the window (t0 < t <= t0 + 15 min).
    result = await p.process([msg("meter-7", glucose(120, T + 15 * MIN))])
    assert result.alerts_opened == []
    [ended] = await waiting(pool)
    assert ended["state"] == "not_confirmed"
    assert ended["closed_values"] == {"glucose": 120}
    # A new first reading; its repeat one second past the window does not count: at the
    # window's end (the timer) it pages, and the late, normal repeat changes nothing.
    await p.process([msg("meter-7", glucose(300, T + 30 * MIN))])
    assert await p.check_confirmations(T + 45 * MIN) == 1
    late = await p.process([msg("meter-7", glucose(90, T + 45 * MIN + timedelta(seconds=1)))])
    assert late.alerts_opened == []
    states = [r["state"] for r in await waiting(pool)]
    assert states == ["not_confirmed", "no_repeat"]
