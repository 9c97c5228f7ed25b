"""SQL for alerts, their audit events, and the notifications that announce them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from alerts.lifecycle import Action, AlertState, next_state
from alerts.policy import Decision, Episode, EpisodeKey
from rpm.storage.pool import Conn
from rules.engine import Clear
from rules.spec import Severity

ALERTS_CHANNEL = "rpm_alerts"
SYSTEM_ACTOR = "system:rules"


async def open_episodes(conn: Conn, keys: Iterable[EpisodeKey]) -> dict[EpisodeKey, Episode]:
    """Unresolved episodes for (patient, rule) pairs, locked for this transaction."""
    keys = list(set(keys))
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT a.id, a.patient_id, a.rule_id, a.severity, a.state
             FROM alerts a
             JOIN unnest($1::text[], $2::text[]) AS k(patient_id, rule_id)
               ON a.patient_id = k.patient_id AND a.rule_id = k.rule_id
            WHERE a.state <> 'resolved'
            ORDER BY a.id
              FOR UPDATE OF a""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {
        (r["patient_id"], r["rule_id"]): Episode(
            r["id"], r["patient_id"], r["rule_id"], Severity[r["severity"]], AlertState(r["state"])
        )
        for r in rows
    }


@dataclass(frozen=True, slots=True)
class AppliedDecision:
    alert_id: int
    decision: Decision


async def apply(conn: Conn, decisions: Sequence[Decision]) -> list[AppliedDecision]:
    """Write the policy's decisions: new episodes, escalations, recurrences, audit events.

    Recurrences (the common case under load) are counted in one statement per batch;
    they are not audited one by one.
    """
    applied: list[AppliedDecision] = []
    opened: dict[EpisodeKey, int] = {}
    recurring: dict[int, tuple[int, UUID | None]] = {}  # alert id -> (count, last reading)
    for d in decisions:
        c = d.candidate
        key = (c.patient_id, c.rule_id)
        if d.action is Action.OPEN:
            alert_id = await conn.fetchval(
                """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation,
                                       evidence, first_reading_uid, last_reading_uid)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id""",
                c.patient_id,
                c.rule_id,
                c.severity.name,
                d.new_state.value,
                c.title,
                c.explanation,
                dict(c.evidence),
                c.reading_uid,
            )
            opened[key] = alert_id
            await _event(conn, alert_id, SYSTEM_ACTOR, d.action, None, d.new_state, c.severity)
        elif d.action is Action.ESCALATE:
            assert d.episode is not None
            alert_id = d.episode.alert_id
            await conn.execute(
                """UPDATE alerts SET occurrences = occurrences + 1, last_reading_uid = $2,
                          updated_at = now(), state = $3, severity = $4, explanation = $5,
                          evidence = $6, condition_cleared_at = NULL
                    WHERE id = $1""",
                alert_id,
                c.reading_uid,
                d.new_state.value,
                c.severity.name,
                c.explanation,
                dict(c.evidence),
            )
            await _event(
                conn,
                alert_id,
                SYSTEM_ACTOR,
                d.action,
                d.episode.state.value,
                d.new_state,
                c.severity,
            )
        else:
            alert_id = d.episode.alert_id if d.episode else opened[key]
            count, _ = recurring.get(alert_id, (0, c.reading_uid))
            recurring[alert_id] = (count + 1, c.reading_uid)
        applied.append(AppliedDecision(alert_id, d))
    if recurring:
        ids = list(recurring)
        await conn.execute(
            """UPDATE alerts a SET occurrences = a.occurrences + r.n,
                      last_reading_uid = coalesce(r.uid, a.last_reading_uid),
                      updated_at = now(), condition_cleared_at = NULL
                 FROM unnest($1::bigint[], $2::int[], $3::uuid[]) AS r(id, n, uid)
                WHERE a.id = r.id""",
            ids,
            [recurring[i][0] for i in ids],
            [recurring[i][1] for i in ids],
        )
    return applied


async def mark_cleared(conn: Conn, clears: Sequence[Clear]) -> int:
    """Record when a fired rule's condition was seen to be over (auto-resolve reads it)."""
    if not clears:
        return 0
    status = await conn.execute(
        """UPDATE alerts a SET condition_cleared_at = c.at, updated_at = now()
             FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS c(patient_id, rule_id, at)
            WHERE a.patient_id = c.patient_id AND a.rule_id = c.rule_id
              AND a.state <> 'resolved' AND a.condition_cleared_at IS NULL""",
        [c.patient_id for c in clears],
        [c.rule_id for c in clears],
        [c.measured_at for c in clears],
    )
    return int(status.split()[-1])


async def _event(
    conn: Conn,
    alert_id: int,
    actor: str,
    action: Action,
    from_state: str | None,
    to_state: AlertState,
    severity: Severity | str,
    note: str | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO alert_events (alert_id, actor, action, from_state, to_state, severity, note)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        alert_id,
        actor,
        action.value,
        from_state,
        to_state.value,
        severity.name if isinstance(severity, Severity) else severity,
        note,
    )


async def notify(conn: Conn, payloads: Sequence[dict[str, Any]]) -> None:
    """Announce alert changes on the ``rpm_alerts`` channel; delivered at commit."""
    if payloads:
        await conn.execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
            ALERTS_CHANNEL,
            [json.dumps(p) for p in payloads],
        )


class AlertNotFound(LookupError):
    pass


async def transition(
    conn: Conn, alert_id: int, action: Action, actor: str, note: str | None = None
) -> dict[str, Any]:
    """A nurse's action on an alert, checked against the lifecycle table and audited."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT state, severity, patient_id FROM alerts WHERE id = $1 FOR UPDATE", alert_id
        )
        if row is None:
            raise AlertNotFound(alert_id)
        before = AlertState(row["state"])
        after = next_state(before, action)
        if action is Action.ACKNOWLEDGE:
            await conn.execute(
                """UPDATE alerts SET state = $2, acknowledged_at = now(), acknowledged_by = $3,
                          updated_at = now() WHERE id = $1""",
                alert_id,
                after.value,
                actor,
            )
        elif action is Action.RESOLVE:
            await conn.execute(
                """UPDATE alerts SET state = $2, resolved_at = now(), resolved_by = $3,
                          resolution_note = $4, updated_at = now() WHERE id = $1""",
                alert_id,
                after.value,
                actor,
                note,
            )
        await _event(conn, alert_id, actor, action, before.value, after, row["severity"], note)
        await notify(
            conn,
            [
                {
                    "alert_id": alert_id,
                    "patient_id": row["patient_id"],
                    "action": action.value,
                    "state": after.value,
                    "severity": row["severity"],
                }
            ],
        )
        found = await get(conn, alert_id)
        assert found is not None
        return found


_ALERT_COLUMNS = """id, patient_id, rule_id, severity, state, title, explanation, evidence,
    first_reading_uid, last_reading_uid, occurrences, opened_at, updated_at, acknowledged_at,
    acknowledged_by, resolved_at, resolved_by, resolution_note"""

_SEVERITY_ORDER = (
    "CASE severity WHEN 'CRITICAL' THEN 4 WHEN 'HIGH' THEN 3 WHEN 'MEDIUM' THEN 2 ELSE 1 END"
)


async def get(conn: Conn, alert_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = $1", alert_id)  # noqa: S608
    return dict(row) if row else None


async def listing(
    conn: Conn,
    *,
    states: Sequence[str] | None,
    patient_id: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Alerts for the triage queue: most severe first, then oldest first."""
    rows = await conn.fetch(
        f"""SELECT {_ALERT_COLUMNS} FROM alerts
             WHERE ($1::text[] IS NULL OR state = ANY($1::text[]))
               AND ($2::text IS NULL OR patient_id = $2)
             ORDER BY {_SEVERITY_ORDER} DESC, opened_at ASC, id ASC
             LIMIT $3""",  # noqa: S608 - fixed fragments, values are bound
        list(states) if states else None,
        patient_id,
        limit,
    )
    return [dict(r) for r in rows]


async def events(conn: Conn, alert_id: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT at, actor, action, from_state, to_state, severity, note FROM alert_events "
        "WHERE alert_id = $1 ORDER BY id",
        alert_id,
    )
    return [dict(r) for r in rows]
