"""SQL for channels beyond SMS: patients' routes and WhatsApp windows, where a failed message
came from, critical alerts waiting for a call, and ``voice_calls``.

Phone numbers are patient data: stored, never logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from alerts.channels import CALL_STATUS_RANK, Route, split_address
from rpm.storage.pool import Conn


@dataclass(frozen=True, slots=True)
class PatientChannels:
    route: Route
    whatsapp_inbound_at: datetime | None


async def patient_channels(conn: Conn, patient_id: str) -> PatientChannels | None:
    row = await conn.fetchrow(
        """SELECT preferred_channel, channel_fallback, whatsapp_inbound_at
             FROM patients WHERE id = $1""",
        patient_id,
    )
    if row is None:
        return None
    return PatientChannels(
        Route.of(row["preferred_channel"], row["channel_fallback"]), row["whatsapp_inbound_at"]
    )


async def set_channels(
    conn: Conn,
    patient_id: str,
    preferred: str | None,
    fallback: Sequence[str] | None = None,
) -> None:
    """Set a patient's preferred channel and fallback order (each unchanged when None)."""
    await conn.execute(
        """UPDATE patients SET preferred_channel = coalesce($2, preferred_channel),
                               channel_fallback = coalesce($3::text[], channel_fallback)
            WHERE id = $1""",
        patient_id,
        preferred,
        None if fallback is None else list(fallback),
    )


async def note_inbound(conn: Conn, sender: str, at: datetime | None = None) -> int:
    """A message came in from ``sender`` (Twilio's ``From``): a WhatsApp one opens the
    patients' 24-hour window. Return how many patients' windows moved."""
    channel, phone = split_address(sender)
    if channel != "whatsapp" or not phone:
        return 0
    status = await conn.execute(
        """UPDATE patients
              SET whatsapp_inbound_at = greatest(whatsapp_inbound_at,
                                                 coalesce($2::timestamptz, now()))
            WHERE phone = $1""",
        phone,
        at,
    )
    return int(status.split()[-1])


@dataclass(frozen=True, slots=True)
class MessageOrigin:
    """A message we sent, with the outbox item that asked for it."""

    channel: str
    outbox_id: int
    payload: dict[str, Any]


async def message_origin(conn: Conn, message_id: int) -> MessageOrigin | None:
    """Where an outbound message (``sms_messages.id``) came from; None for a placeholder."""
    row = await conn.fetchrow(
        """SELECT m.channel, m.outbox_id, o.payload
             FROM sms_messages m JOIN outbox o ON o.id = m.outbox_id
            WHERE m.id = $1 AND m.direction = 'outbound'""",
        message_id,
    )
    return MessageOrigin(row["channel"], row["outbox_id"], row["payload"]) if row else None


@dataclass(frozen=True, slots=True)
class Unconfirmed:
    """A critical alert still open after its patient message went out, unanswered."""

    alert_id: int
    patient_id: str
    round: int
    title: str
    advice: dict[str, str]


async def unconfirmed_critical(conn: Conn, sent_before: datetime, limit: int) -> list[Unconfirmed]:
    """Open critical alerts whose newest patient message went out before ``sent_before``,
    with no patient reply or confirmation since, and no call queued in this round."""
    rows = await conn.fetch(
        """SELECT a.id, a.patient_id, a.escalation_round, a.title,
                  (SELECT o.payload->'advice' FROM outbox o
                    WHERE o.dedupe_key = 'sms:alert:' || a.id || ':open') AS advice
             FROM alerts a
             JOIN LATERAL (SELECT max(m.created_at) AS sent_at FROM sms_messages m
                            WHERE m.alert_id = a.id AND m.direction = 'outbound'
                              AND m.staff_id IS NULL AND m.twilio_sid IS NOT NULL) s ON true
            WHERE a.state = 'open' AND a.severity = 'CRITICAL' AND s.sent_at < $1
              AND NOT EXISTS (SELECT 1 FROM alert_events e
                               WHERE e.alert_id = a.id
                                 AND e.action IN ('patient_reply', 'patient_confirmed')
                                 AND e.at >= s.sent_at)
              AND NOT EXISTS (SELECT 1 FROM outbox o
                               WHERE o.dedupe_key = 'voice:alert:' || a.id
                                                    || ':round:' || a.escalation_round)
            ORDER BY a.id
            LIMIT $2""",
        sent_before,
        limit,
    )
    return [
        Unconfirmed(
            r["id"],
            r["patient_id"],
            r["escalation_round"],
            r["title"],
            {str(k): str(v) for k, v in (r["advice"] or {}).items()},
        )
        for r in rows
    ]


# --- voice calls ---------------------------------------------------------------------------


def _call_rank_sql(column: str) -> str:
    cases = " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in CALL_STATUS_RANK.items())
    return f"(CASE {column} {cases} ELSE 0 END)"


async def record_call(
    conn: Conn,
    *,
    outbox_id: int,
    patient_id: str,
    alert_id: int | None,
    sid: str | None,
    status: str,
    error_code: int | None,
    at: datetime,
) -> None:
    """Record a call we placed (or Twilio refused); once per outbox item."""
    await conn.execute(
        """INSERT INTO voice_calls (outbox_id, patient_id, alert_id, call_sid, status,
                                    error_code, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
           ON CONFLICT (outbox_id) DO UPDATE
              SET call_sid = excluded.call_sid, status = excluded.status,
                  error_code = excluded.error_code, updated_at = excluded.updated_at""",
        outbox_id,
        patient_id,
        alert_id,
        sid,
        status,
        error_code,
        at,
    )


async def apply_call_status(
    conn: Conn, sid: str, status: str, error_code: int | None
) -> str | None:
    """A call status callback: move the call forward (never back); the status it now has,
    or None when the sid is unknown or the status not newer."""
    newer = _call_rank_sql("$2") + " > " + _call_rank_sql("status")
    value = await conn.fetchval(
        f"""UPDATE voice_calls SET status = $2, error_code = coalesce($3, error_code),
                                   updated_at = now()
             WHERE call_sid = $1 AND {newer}
            RETURNING status""",  # noqa: S608 - fixed fragments, values are bound
        sid,
        status,
        error_code,
    )
    return str(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class CallAnswer:
    """A call after the patient pressed keys: whom it was for and whether this press was the
    first confirmation."""

    patient_id: str
    alert_id: int | None
    call_sid: str | None
    first_confirmation: bool


async def record_digits(
    conn: Conn, outbox_id: int, call_sid: str, digits: str, confirmed: bool, at: datetime
) -> CallAnswer | None:
    """Store what was pressed on the call of ``outbox_id`` (checked against its sid);
    None for a call we do not know."""
    row = await conn.fetchrow(
        """UPDATE voice_calls c
              SET digits = $3,
                  confirmed_at = CASE WHEN $4 THEN coalesce(c.confirmed_at, $5) END,
                  updated_at = $5
             FROM (SELECT id, confirmed_at AS before FROM voice_calls
                    WHERE outbox_id = $1 AND call_sid = $2 FOR UPDATE) old
            WHERE c.id = old.id
        RETURNING c.patient_id, c.alert_id, c.call_sid,
                  $4 AND old.before IS NULL AS first_confirmation""",
        outbox_id,
        call_sid,
        digits,
        confirmed,
        at,
    )
    if row is None:
        return None
    return CallAnswer(
        row["patient_id"], row["alert_id"], row["call_sid"], bool(row["first_confirmation"])
    )


async def confirmed(conn: Conn, alert_id: int) -> bool:
    """Whether the patient confirmed this alert on a call already."""
    value = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM voice_calls WHERE alert_id = $1 "
        "AND confirmed_at IS NOT NULL)",
        alert_id,
    )
    return bool(value)


async def calls(
    conn: Conn, *, alert_id: int | None = None, patient_id: str | None = None
) -> list[dict[str, Any]]:
    """Calls of an alert or a patient, oldest first."""
    rows = await conn.fetch(
        """SELECT id, outbox_id, patient_id, alert_id, call_sid, status, error_code, digits,
                  confirmed_at, created_at, updated_at
             FROM voice_calls
            WHERE ($1::bigint IS NULL OR alert_id = $1)
              AND ($2::text IS NULL OR patient_id = $2)
            ORDER BY id""",
        alert_id,
        patient_id,
    )
    return [dict(r) for r in rows]
