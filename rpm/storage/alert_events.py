"""SQL of what happens to an alert besides the rules and the nurses (``alert_events``): a
patient's reply, a patient's confirmation by phone, a message Twilio could not deliver, and a
patient no channel reached (which brings the escalation forward). The state never changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rpm.storage.pool import Conn


async def reply_event(
    conn: Conn,
    *,
    alert_id: int,
    patient_id: str,
    state: str,
    severity: str,
    text: str,
    media: Sequence[Mapping[str, str]] = (),
) -> None:
    """Audit a patient's SMS reply, with its media links, on the alert it answers (the state
    does not change)."""
    await conn.execute(
        """INSERT INTO alert_events
                  (alert_id, actor, action, from_state, to_state, severity, note, media)
           VALUES ($1, $2, 'patient_reply', $3, $3, $4, $5, $6)""",
        alert_id,
        f"patient:{patient_id}",
        state,
        severity,
        text,
        list(media) or None,
    )


async def patient_confirmed_event(
    conn: Conn, *, alert_id: int, patient_id: str, note: str, at: datetime | None = None
) -> dict[str, Any] | None:
    """Audit that the patient confirmed the alert (pressed 1 on a call); the state does not
    change. Return the alert as the live stream announces it, None if it is gone."""
    row = await conn.fetchrow(
        """INSERT INTO alert_events (alert_id, actor, action, from_state, to_state, severity,
                                     note, at)
           SELECT id, $2, 'patient_confirmed', state, state, severity, $3, coalesce($4, now())
             FROM alerts WHERE id = $1
        RETURNING alert_id, to_state AS state, severity""",
        alert_id,
        f"patient:{patient_id}",
        note,
        at,
    )
    if row is None:
        return None
    return {
        "alert_id": row["alert_id"],
        "patient_id": patient_id,
        "action": "patient_confirmed",
        "state": row["state"],
        "severity": row["severity"],
    }


async def message_failed_event(
    conn: Conn, *, alert_id: int, note: str, at: datetime | None = None
) -> dict[str, Any] | None:
    """Audit that a message about the alert was not delivered (``message_failed``, actor
    ``system:twilio``); the state does not change. Return the alert as the live stream
    announces it, None if it is gone."""
    row = await conn.fetchrow(
        """INSERT INTO alert_events (alert_id, actor, action, from_state, to_state, severity,
                                     note, at)
           SELECT id, 'system:twilio', 'message_failed', state, state, severity, $2,
                  coalesce($3, now())
             FROM alerts WHERE id = $1
        RETURNING alert_id, to_state AS state, severity""",
        alert_id,
        note,
        at,
    )
    if row is None:
        return None
    patient_id = await conn.fetchval("SELECT patient_id FROM alerts WHERE id = $1", alert_id)
    return {
        "alert_id": row["alert_id"],
        "patient_id": patient_id,
        "action": "message_failed",
        "state": row["state"],
        "severity": row["severity"],
    }


async def patient_unreachable(conn: Conn, *, alert_id: int, note: str) -> bool:
    """The patient could not be told of this open critical alert on any channel: audit it
    (``patient_unreachable``) and make the escalation due now, so the timers page the
    on-call nurse at once (``alerts.escalation.next_step``). False when the alert is not
    open and critical (nothing to bring forward) or was already so marked."""
    row = await conn.fetchrow(
        """UPDATE alerts SET next_escalation_at = least(next_escalation_at, now()),
                             updated_at = now()
            WHERE id = $1 AND state = 'open' AND severity = 'CRITICAL'
              AND NOT EXISTS (SELECT 1 FROM alert_events e WHERE e.alert_id = $1
                                 AND e.action = 'patient_unreachable')
        RETURNING id""",
        alert_id,
    )
    if row is None:
        return False
    await conn.execute(
        """INSERT INTO alert_events (alert_id, actor, action, from_state, to_state, severity, note)
           VALUES ($1, 'system:twilio', 'patient_unreachable', 'open', 'open', 'CRITICAL', $2)""",
        alert_id,
        note,
    )
    return True
