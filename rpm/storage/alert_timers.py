"""SQL of the alert timers (``rpm.workers.alert_timers``): due escalations, re-notification and
auto-resolve, over the tables of ``rpm.storage.alerts``.

Rows are locked ``FOR UPDATE SKIP LOCKED``: an alert that an ingest batch or a nurse is
changing right now is left for the next pass, so the timers never wait on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from alerts.escalation import TIMERS_ACTOR as _TIMERS
from alerts.escalation import AlertFacts, Step
from alerts.lifecycle import Action, AlertState
from alerts.policy import Snooze
from rpm.domain import Severity
from rpm.storage.alerts import audit
from rpm.storage.pool import Conn

TIMERS_LOCK = 0x52504D54  # advisory lock key of the alert timers ("RPMT")


async def lock(conn: Conn) -> bool:
    """Take the timers' transaction lock, or say another process holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", TIMERS_LOCK))


_FACTS = """a.id, a.patient_id, a.rule_id, a.title, a.severity, a.state, p.care_team,
    a.escalation_round, a.escalation_tier, a.last_notified_at, a.acknowledged_at,
    a.last_fired_at, a.condition_cleared_at, p.programs,
    s.until AS snooze_until, s.max_severity AS snooze_severity, s.actor AS snooze_actor,
    EXISTS (SELECT 1 FROM alert_events u WHERE u.alert_id = a.id
                                          AND u.action = 'patient_unreachable')
        AS patient_unreachable"""
_FACTS_FROM = """alerts a JOIN patients p ON p.id = a.patient_id
    LEFT JOIN alert_snoozes s ON s.patient_id = a.patient_id AND s.rule_id = a.group_key"""


@dataclass(frozen=True, slots=True)
class TimerRow:
    facts: AlertFacts
    programs: tuple[str, ...]


def _timer_row(r: asyncpg.Record, unreachable_reported: bool = False) -> TimerRow:
    snooze = None
    if r["snooze_until"] is not None:
        snooze = Snooze(
            r["patient_id"],
            r["rule_id"],
            r["snooze_until"],
            Severity[r["snooze_severity"]],
            r["snooze_actor"],
        )
    facts = AlertFacts(
        alert_id=r["id"],
        patient_id=r["patient_id"],
        rule_id=r["rule_id"],
        title=r["title"],
        severity=Severity[r["severity"]],
        state=AlertState(r["state"]),
        care_team=r["care_team"],
        round=r["escalation_round"],
        tier=r["escalation_tier"],
        step_started_at=r["last_notified_at"],
        acknowledged_at=r["acknowledged_at"],
        last_fired_at=r["last_fired_at"],
        condition_cleared_at=r["condition_cleared_at"],
        snooze=snooze,
        patient_unreachable=r["patient_unreachable"],
        unreachable_reported=unreachable_reported,
    )
    return TimerRow(facts, tuple(r["programs"]))


async def due(conn: Conn, now: datetime, limit: int) -> list[TimerRow]:
    """Open alerts whose escalation timer is due, locked (rows others hold are skipped)."""
    rows = await conn.fetch(
        f"""SELECT {_FACTS}, EXISTS (
                   SELECT 1 FROM alert_events e
                    WHERE e.alert_id = a.id AND e.action = 'nobody_on_call'
                      AND e.at >= a.last_notified_at) AS unreachable_reported
              FROM {_FACTS_FROM}
             WHERE a.state = 'open' AND a.next_escalation_at <= $1
             ORDER BY a.next_escalation_at LIMIT $2
               FOR UPDATE OF a SKIP LOCKED""",  # noqa: S608 - fixed fragments, values are bound
        now,
        limit,
    )
    return [_timer_row(r, r["unreachable_reported"]) for r in rows]


async def still_firing(
    conn: Conn, renotify_after: timedelta, severities: Sequence[Severity], limit: int
) -> list[TimerRow]:
    """Acknowledged alerts of ``severities`` whose rule fired again ``renotify_after`` or
    more after the acknowledgement and has not cleared since, locked."""
    rows = await conn.fetch(
        f"""SELECT {_FACTS} FROM {_FACTS_FROM}
             WHERE a.state = 'acknowledged' AND a.condition_cleared_at IS NULL
               AND a.last_fired_at >= a.acknowledged_at + $1::interval
               AND a.severity = ANY($2::text[])
             ORDER BY a.id LIMIT $3
               FOR UPDATE OF a SKIP LOCKED""",  # noqa: S608 - fixed fragments, values are bound
        renotify_after,
        [s.name for s in severities],
        limit,
    )
    return [_timer_row(r) for r in rows]


async def cleared(
    conn: Conn, now: datetime, shortest: Mapping[str, float], limit: int
) -> list[TimerRow]:
    """Unresolved alerts of the given rules whose condition has been clear at least the
    rule's shortest auto-resolve time (hours, by rule id). Not locked: see ``auto_resolve``."""
    if not shortest:
        return []
    rows = await conn.fetch(
        f"""SELECT {_FACTS} FROM {_FACTS_FROM}
              JOIN unnest($2::text[], $3::float8[]) AS r(rule_id, hours) ON r.rule_id = a.rule_id
             WHERE a.state <> 'resolved' AND a.condition_cleared_at IS NOT NULL
               AND a.condition_cleared_at <= $1::timestamptz - r.hours * interval '1 hour'
             ORDER BY a.condition_cleared_at LIMIT $4""",  # noqa: S608 - values are bound
        now,
        list(shortest),
        list(shortest.values()),
        limit,
    )
    return [_timer_row(r) for r in rows]


async def reschedule(conn: Conn, due: Mapping[int, datetime | None]) -> None:
    """Set when the timers look at each alert next (None: not until something changes)."""
    if due:
        await conn.execute(
            """UPDATE alerts a SET next_escalation_at = r.at
                 FROM unnest($1::bigint[], $2::timestamptz[]) AS r(id, at) WHERE a.id = r.id""",
            list(due),
            list(due.values()),
        )


async def record_page(conn: Conn, a: AlertFacts, step: Step, now: datetime) -> None:
    """The alert went to the on-call staff member of ``step.tier``: audit and re-time."""
    await conn.execute(
        """UPDATE alerts SET escalation_tier = $2, last_notified_at = $3,
                  next_escalation_at = $4, updated_at = now() WHERE id = $1""",
        a.alert_id,
        step.tier,
        now,
        step.next_at,
    )
    note = f"tier {step.tier}: SMS to {step.staff_id}"
    await audit(
        conn, a.alert_id, _TIMERS, Action.ESCALATE_TIER, a.state, a.state, a.severity, note, now
    )


async def record_nobody(conn: Conn, a: AlertFacts, step: Step, now: datetime) -> None:
    """Nobody reachable on call for the due tier: retry later, audited once per step."""
    await conn.execute(
        "UPDATE alerts SET next_escalation_at = $2 WHERE id = $1", a.alert_id, step.next_at
    )
    if step.audit:
        who = f"care team {a.care_team}" if a.care_team else "the patient (no care team)"
        assert step.next_at is not None
        retry = int((step.next_at - now).total_seconds() // 60)
        note = (
            f"tier {step.tier}: nobody on call with a phone for {who}; retrying every {retry} min"
        )
        await audit(
            conn,
            a.alert_id,
            _TIMERS,
            Action.NOBODY_ON_CALL,
            a.state,
            a.state,
            a.severity,
            note,
            now,
        )


async def record_renotify(
    conn: Conn, a: AlertFacts, now: datetime, next_at: datetime | None, note: str
) -> AlertState:
    """Back to open for the nurse's attention; escalation starts a new round."""
    after = AlertState.OPEN
    await conn.execute(
        """UPDATE alerts SET state = $2, escalation_round = escalation_round + 1,
                  escalation_tier = 0, last_notified_at = $3, next_escalation_at = $4,
                  updated_at = now() WHERE id = $1""",
        a.alert_id,
        after.value,
        now,
        next_at,
    )
    await audit(conn, a.alert_id, _TIMERS, Action.RENOTIFY, a.state, after, a.severity, note, now)
    return after


async def auto_resolve(conn: Conn, a: AlertFacts, now: datetime, note: str) -> AlertState | None:
    """Resolve by the system if the alert is still unresolved and clear since the same time
    (a firing in between resets the clear); returns the state it left, or None."""
    before = await conn.fetchval(
        """SELECT state FROM alerts WHERE id = $1 AND state <> 'resolved'
              AND condition_cleared_at = $2 FOR UPDATE SKIP LOCKED""",
        a.alert_id,
        a.condition_cleared_at,
    )
    if before is None:
        return None
    after = AlertState.RESOLVED
    await conn.execute(
        """UPDATE alerts SET state = $2, resolved_at = $3, resolved_by = $4, resolution_note = $5,
                  next_escalation_at = NULL, updated_at = now() WHERE id = $1""",
        a.alert_id,
        after.value,
        now,
        _TIMERS,
        note,
    )
    await audit(
        conn, a.alert_id, _TIMERS, Action.AUTO_RESOLVE, before, after, a.severity, note, now
    )
    return AlertState(before)
