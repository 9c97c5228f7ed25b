"""SQL for SMS: every message sent or received (``sms_messages``) and patients' SMS preferences.

Bodies and phone numbers are patient data: stored, returned, never logged.

Delivery states only move forward (:data:`STATUS_RANK`): Twilio's status callbacks may arrive
out of order, or before the worker has recorded the message it sent, so a callback for an
unknown sid stores a placeholder that the worker's record later fills in.

Two statements here touch tables of ``rpm.storage.alerts`` / ``rpm.storage.staff`` (a staff
member's phone; the audit event of a patient's reply); they belong there once those modules
offer them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, time
from types import MappingProxyType
from typing import Any

import asyncpg

from alerts.channels import split_address
from rpm.storage.pool import Conn

# Twilio's message statuses in the order they can happen. A status replaces another only if
# it ranks higher, so a late "sent" never undoes "delivered". Terminal states share a rank:
# the first one reported stays. Unknown statuses rank lowest.
STATUS_RANK: Mapping[str, int] = MappingProxyType(
    {
        "accepted": 1,
        "scheduled": 1,
        "queued": 2,
        "sending": 3,
        "sent": 4,
        "receiving": 4,
        "received": 5,
        "delivered": 5,
        "undelivered": 5,
        "failed": 5,
        "canceled": 5,
        "partially_delivered": 5,
        "read": 6,
    }
)


def status_rank(status: str) -> int:
    return STATUS_RANK.get(status, 0)


def _rank_sql(column: str) -> str:
    cases = " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in STATUS_RANK.items())
    return f"(CASE {column} {cases} ELSE 0 END)"


@dataclass(frozen=True, slots=True)
class PatientSms:
    """A patient's SMS contact and preferences."""

    patient_id: str
    phone: str | None
    consent: bool
    opted_out_at: datetime | None
    language: str
    timezone: str
    quiet_start: time
    quiet_end: time
    # The patient's care team's service name (None: the team has none; RPM_SMS_SERVICE_NAME)
    service_name: str | None = None

    def service(self, default: str) -> str:
        """The name patient texts and calls are from."""
        return self.service_name or default


_PATIENT_COLUMNS = """id, phone, sms_consent, sms_opted_out_at, language, timezone,
    quiet_hours_start, quiet_hours_end,
    (SELECT t.service_name FROM care_teams t WHERE t.id = patients.care_team) AS service_name"""


def _patient(row: asyncpg.Record) -> PatientSms:
    return PatientSms(
        row["id"],
        row["phone"],
        bool(row["sms_consent"]),
        row["sms_opted_out_at"],
        row["language"],
        row["timezone"],
        row["quiet_hours_start"],
        row["quiet_hours_end"],
        row["service_name"],
    )


async def patient(conn: Conn, patient_id: str) -> PatientSms | None:
    row = await conn.fetchrow(
        f"SELECT {_PATIENT_COLUMNS} FROM patients WHERE id = $1",  # noqa: S608 - fixed columns
        patient_id,
    )
    return _patient(row) if row else None


async def patients_by_phone(conn: Conn, phone: str) -> list[PatientSms]:
    """Patients with this number (a family may share one), oldest enrolment first. A channel
    address (``whatsapp:+E164``, as Twilio posts WhatsApp messages) finds its number's."""
    rows = await conn.fetch(
        f"SELECT {_PATIENT_COLUMNS} FROM patients WHERE phone = $1 ORDER BY created_at, id",  # noqa: S608
        split_address(phone)[1],
    )
    return [_patient(r) for r in rows]


async def set_quiet_hours(conn: Conn, patient_id: str, start: time, end: time) -> None:
    await conn.execute(
        "UPDATE patients SET quiet_hours_start = $2, quiet_hours_end = $3 WHERE id = $1",
        patient_id,
        start,
        end,
    )


async def opt_out(conn: Conn, patient_ids: Iterable[str], at: datetime | None = None) -> int:
    """Mark patients opted out of SMS (the first time counts); return how many changed."""
    status = await conn.execute(
        """UPDATE patients SET sms_opted_out_at = coalesce($2::timestamptz, now())
            WHERE id = ANY($1::text[]) AND sms_opted_out_at IS NULL""",
        list(patient_ids),
        at,
    )
    return int(status.split()[-1])


async def opt_in(conn: Conn, patient_ids: Iterable[str]) -> int:
    """Clear the opt-out (START). Consent given at enrolment is not changed."""
    status = await conn.execute(
        """UPDATE patients SET sms_opted_out_at = NULL
            WHERE id = ANY($1::text[]) AND sms_opted_out_at IS NOT NULL""",
        list(patient_ids),
    )
    return int(status.split()[-1])


# The class of the advisory locks of ``patient_turn`` (two-key advisory locks: apart from the
# one-key locks of the missing-data timer and the lifecycle scheduler). "RPMS".
_TURN_CLASS = 0x52504D53


@asynccontextmanager
async def patient_turn(
    pool: asyncpg.Pool, patient_id: str, *, wait_s: float, waited: Callable[[], None]
) -> AsyncIterator[bool]:
    """Take the patient's turn to message, or give up after ``wait_s``: one worker at a time,
    across processes, counts the patient's messages of the day, sends and records (so two
    sends in flight cannot both see room under the daily cap). Yields whether the turn was
    taken; ``waited`` is called once when another worker holds it. A session advisory lock on
    a connection of its own, released on exit, or by the server if this process dies."""
    async with pool.acquire() as conn:
        deadline = asyncio.get_running_loop().time() + wait_s
        taken = await conn.fetchval(_TRY_TURN, _TURN_CLASS, patient_id)
        if not taken:
            waited()
        while not taken and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(_TURN_POLL_S)
            taken = await conn.fetchval(_TRY_TURN, _TURN_CLASS, patient_id)
        try:
            yield bool(taken)
        finally:
            if taken:
                await conn.execute(
                    "SELECT pg_advisory_unlock($1, hashtext($2))", _TURN_CLASS, patient_id
                )


_TRY_TURN = "SELECT pg_try_advisory_lock($1, hashtext($2))"
_TURN_POLL_S = 0.05


async def sent_today(
    conn: Conn, patient_id: str, start: datetime, end: datetime, *, every_kind: bool = False
) -> int:
    """Patient SMS Twilio accepted for this patient in [start, end): the non-urgent alert
    messages, or with ``every_kind`` every message (alerts, urgent ones too, and campaigns)."""
    value = await conn.fetchval(
        """SELECT count(*) FROM sms_messages m JOIN outbox o ON o.id = m.outbox_id
            WHERE m.patient_id = $1 AND m.direction = 'outbound' AND m.staff_id IS NULL
              AND m.twilio_sid IS NOT NULL
              AND m.created_at >= $2 AND m.created_at < $3
              AND ($4 OR (NOT coalesce((o.payload->>'urgent')::boolean, true)
                          AND coalesce(o.payload->>'template', '') <> 'campaign'))""",
        patient_id,
        start,
        end,
        every_kind,
    )
    return int(value)


@dataclass(frozen=True, slots=True)
class Recorded:
    """A message row after a write: its id, patient and the delivery state it now has."""

    id: int
    patient_id: str | None
    status: str
    error_code: int | None


async def record_outbound(
    conn: Conn,
    *,
    outbox_id: int | None,
    patient_id: str | None,
    staff_id: str | None,
    alert_id: int | None,
    sid: str | None,
    status: str,
    error_code: int | None,
    body: str,
    at: datetime,
    channel: str = "sms",
    content_sid: str | None = None,
) -> Recorded:
    """Record a message we sent (or Twilio refused) on ``channel`` (``sms``, ``whatsapp``);
    merges with callbacks that came first."""
    newer = _rank_sql("excluded.status") + " > " + _rank_sql("m.status")
    row = await conn.fetchrow(
        f"""INSERT INTO sms_messages AS m (direction, outbox_id, patient_id, staff_id, alert_id,
                                          twilio_sid, status, error_code, body, created_at,
                                          updated_at, channel, content_sid)
            VALUES ('outbound', $1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)
            ON CONFLICT (twilio_sid) DO UPDATE
               SET outbox_id = excluded.outbox_id, patient_id = excluded.patient_id,
                   channel = excluded.channel, content_sid = excluded.content_sid,
                   staff_id = excluded.staff_id, alert_id = excluded.alert_id,
                   body = excluded.body, created_at = excluded.created_at,
                   updated_at = excluded.updated_at,
                   status = CASE WHEN {newer} THEN excluded.status ELSE m.status END,
                   error_code = coalesce(m.error_code, excluded.error_code)
            RETURNING id, patient_id, status, error_code""",  # noqa: S608 - fixed fragments
        outbox_id,
        patient_id,
        staff_id,
        alert_id,
        sid,
        status,
        error_code,
        body,
        at,
        channel,
        content_sid,
    )
    assert row is not None
    return Recorded(row["id"], row["patient_id"], row["status"], row["error_code"])


async def apply_status(
    conn: Conn, sid: str, status: str, error_code: int | None
) -> Recorded | None:
    """A status callback: move the message forward; None if it is not newer than what we have.

    Idempotent. A callback for a sid not recorded yet leaves a placeholder row (no body) that
    :func:`record_outbound` completes.
    """
    newer = _rank_sql("excluded.status") + " > " + _rank_sql("m.status")
    row = await conn.fetchrow(
        f"""INSERT INTO sms_messages AS m (direction, twilio_sid, status, error_code, body)
            VALUES ('outbound', $1, $2, $3, '')
            ON CONFLICT (twilio_sid) DO UPDATE
               SET status = excluded.status,
                   error_code = coalesce(excluded.error_code, m.error_code),
                   updated_at = now()
             WHERE {newer}
            RETURNING id, patient_id, status, error_code""",  # noqa: S608 - fixed fragments
        sid,
        status,
        error_code,
    )
    return Recorded(row["id"], row["patient_id"], row["status"], row["error_code"]) if row else None


async def record_inbound(
    conn: Conn,
    *,
    sid: str | None,
    patient_id: str | None,
    alert_id: int | None,
    body: str,
    media: Sequence[Mapping[str, str]] = (),
) -> int | None:
    """Store a received SMS with its media links ({url, content_type}); None when this sid
    was stored before (Twilio retried)."""
    value = await conn.fetchval(
        """INSERT INTO sms_messages
                  (direction, patient_id, alert_id, twilio_sid, status, body, media)
           VALUES ('inbound', $1, $2, $3, 'received', $4, $5)
           ON CONFLICT (twilio_sid) DO NOTHING RETURNING id""",
        patient_id,
        alert_id,
        sid,
        body,
        list(media),
    )
    return int(value) if value is not None else None


async def messages(
    conn: Conn,
    *,
    patient_id: str | None = None,
    alert_id: int | None = None,
    limit: int = 200,
    patient_ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Messages of a patient (or any of ``patient_ids``) or an alert, newest first."""
    if patient_id is not None:
        patient_ids = [patient_id, *(patient_ids or ())]
    rows = await conn.fetch(
        """SELECT id, direction, outbox_id, patient_id, staff_id, alert_id, twilio_sid, status,
                  error_code, body, media, created_at, updated_at
             FROM sms_messages
            WHERE ($1::text[] IS NULL OR patient_id = ANY($1::text[]))
              AND ($2::bigint IS NULL OR alert_id = $2)
            ORDER BY created_at DESC, id DESC
            LIMIT $3""",
        list(patient_ids) if patient_ids is not None else None,
        alert_id,
        limit,
    )
    return [dict(r) for r in rows]


async def message_count(conn: Conn, patient_ids: Sequence[str]) -> int:
    """How many messages to or from these patients."""
    found = await conn.fetchval(
        "SELECT count(*) FROM sms_messages WHERE patient_id = ANY($1::text[])", list(patient_ids)
    )
    return int(found)


async def message_facts(conn: Conn, message_id: int) -> tuple[str, int | None, str] | None:
    """An outbound message's channel, alert and audience (``patient`` or ``staff``)."""
    row = await conn.fetchrow(
        "SELECT channel, alert_id, staff_id FROM sms_messages WHERE id = $1", message_id
    )
    if row is None:
        return None
    return row["channel"], row["alert_id"], "staff" if row["staff_id"] else "patient"
