"""SQL for check-ins (migration 0014): questionnaire responses, the prompts waiting for a
reply, and the nurse's inbox of replies a person must read.

Reply bodies are patient data: stored in ``sms_messages`` and returned to staff, never logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from rpm.domain.errors import ConflictError, NotFoundError
from rpm.storage.pool import Conn

# --- responses ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    id: int
    patient_id: str
    questionnaire: str
    questionnaire_version: str
    campaign: str | None
    campaign_version: int | None
    language: str
    status: str
    started_at: datetime
    authored_at: datetime | None
    answers: Mapping[str, Mapping[str, Any]]  # link id -> {"code", "at", "sms_id"}
    resource: Mapping[str, Any] | None

    def codes(self) -> dict[str, str]:
        """The option chosen per question answered."""
        return {link: str(a["code"]) for link, a in self.answers.items()}


_RESPONSE_COLUMNS = """id, patient_id, questionnaire, questionnaire_version, campaign,
    campaign_version, language, status, started_at, authored_at, answers, resource"""


def _response(r: asyncpg.Record) -> Response:
    return Response(**dict(r))


async def start_response(
    conn: Conn,
    *,
    patient_id: str,
    questionnaire: str,
    version: str,
    campaign: str | None,
    campaign_version: int | None,
    language: str,
    at: datetime,
) -> int:
    """A new, unanswered response; its id."""
    value = await conn.fetchval(
        """INSERT INTO checkin_responses (patient_id, questionnaire, questionnaire_version,
                                          campaign, campaign_version, language, status,
                                          started_at)
           VALUES ($1, $2, $3, $4, $5, $6, 'in-progress', $7) RETURNING id""",
        patient_id,
        questionnaire,
        version,
        campaign,
        campaign_version,
        language,
        at,
    )
    return int(value)


async def response(conn: Conn, response_id: int) -> Response | None:
    row = await conn.fetchrow(
        f"SELECT {_RESPONSE_COLUMNS} FROM checkin_responses WHERE id = $1",  # noqa: S608
        response_id,
    )
    return _response(row) if row else None


async def responses(
    conn: Conn, patient_id: str | Sequence[str], *, limit: int, offset: int = 0
) -> list[Response]:
    """The responses of a patient (or of any of several) that have at least one answer,
    newest first."""
    ids = [patient_id] if isinstance(patient_id, str) else list(patient_id)
    rows = await conn.fetch(
        f"""SELECT {_RESPONSE_COLUMNS} FROM checkin_responses
             WHERE patient_id = ANY($1::text[]) AND resource IS NOT NULL
             ORDER BY started_at DESC, id DESC
             LIMIT $2 OFFSET $3""",  # noqa: S608 - fixed column list
        ids,
        limit,
        offset,
    )
    return [_response(r) for r in rows]


async def response_count(conn: Conn, patient_ids: Sequence[str]) -> int:
    """How many answered responses these patients have."""
    found = await conn.fetchval(
        """SELECT count(*) FROM checkin_responses
            WHERE patient_id = ANY($1::text[]) AND resource IS NOT NULL""",
        list(patient_ids),
    )
    return int(found)


async def record_answer(
    conn: Conn, response_id: int, link_id: str, code: str, sms_id: int | None, at: datetime
) -> Response:
    """Add an answer to a response (a second answer to the same question replaces it)."""
    row = await conn.fetchrow(
        f"""UPDATE checkin_responses
               SET answers = answers || jsonb_build_object(
                       $2::text, jsonb_build_object('code', $3::text, 'at', $5::timestamptz,
                                                    'sms_id', $4::bigint)),
                   authored_at = $5
             WHERE id = $1
         RETURNING {_RESPONSE_COLUMNS}""",  # noqa: S608 - fixed column list
        response_id,
        link_id,
        code,
        sms_id,
        at,
    )
    assert row is not None
    return _response(row)


async def save_resource(
    conn: Conn, response_id: int, status: str, resource: Mapping[str, Any]
) -> None:
    await conn.execute(
        "UPDATE checkin_responses SET status = $2, resource = $3 WHERE id = $1",
        response_id,
        status,
        dict(resource),
    )


# --- prompts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prompt:
    id: int
    response_id: int
    patient_id: str
    link_id: str
    sent_at: datetime
    expires_at: datetime
    questionnaire: str
    language: str


async def open_prompt(
    conn: Conn,
    *,
    response_id: int,
    patient_id: str,
    link_id: str,
    sms_id: int | None,
    outbox_id: int | None,
    at: datetime,
    expires_at: datetime,
) -> int:
    """Record a question sent; the patient's older open prompt is superseded. A resend of the
    same question (at-least-once delivery) updates the prompt it made before."""
    await conn.execute(
        """UPDATE checkin_prompts SET state = 'superseded'
            WHERE patient_id = $1 AND state = 'open' AND NOT (response_id = $2 AND link_id = $3)""",
        patient_id,
        response_id,
        link_id,
    )
    value = await conn.fetchval(
        """INSERT INTO checkin_prompts (response_id, patient_id, link_id, sms_id, outbox_id,
                                        sent_at, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (response_id, link_id) DO UPDATE
              SET sms_id = excluded.sms_id, outbox_id = excluded.outbox_id,
                  sent_at = excluded.sent_at, expires_at = excluded.expires_at, state = 'open'
           RETURNING id""",
        response_id,
        patient_id,
        link_id,
        sms_id,
        outbox_id,
        at,
        expires_at,
    )
    return int(value)


async def waiting_prompt(conn: Conn, patient_ids: Sequence[str], at: datetime) -> Prompt | None:
    """The newest open prompt of these patients (one phone, one family) still waiting at
    ``at``, locked for this transaction."""
    if not patient_ids:
        return None
    row = await conn.fetchrow(
        """SELECT p.id, p.response_id, p.patient_id, p.link_id, p.sent_at, p.expires_at,
                  r.questionnaire, r.language
             FROM checkin_prompts p JOIN checkin_responses r ON r.id = p.response_id
            WHERE p.patient_id = ANY($1::text[]) AND p.state = 'open'
              AND p.sent_at <= $2 AND p.expires_at > $2
            ORDER BY p.sent_at DESC, p.id DESC
            LIMIT 1
              FOR UPDATE OF p""",
        list(patient_ids),
        at,
    )
    return Prompt(**dict(row)) if row else None


async def answered(conn: Conn, prompt_id: int, at: datetime) -> None:
    await conn.execute(
        "UPDATE checkin_prompts SET state = 'answered', answered_at = $2 WHERE id = $1",
        prompt_id,
        at,
    )


async def unreadable(conn: Conn, prompt_id: int) -> None:
    """Count a reply to the prompt nobody could read (the prompt stays open)."""
    await conn.execute(
        "UPDATE checkin_prompts SET unparseable = unparseable + 1 WHERE id = $1", prompt_id
    )


# --- the inbox ---------------------------------------------------------------------------

_INBOX_COLUMNS = """i.id, i.patient_id, i.reason, i.created_at, i.handled_at, i.handled_by,
    i.note, m.body, m.media, m.twilio_sid, p.care_team, pr.link_id, r.questionnaire"""
_INBOX_FROM = """inbox_items i
    JOIN sms_messages m ON m.id = i.sms_id
    JOIN patients p ON p.id = i.patient_id
    LEFT JOIN checkin_prompts pr ON pr.id = i.prompt_id
    LEFT JOIN checkin_responses r ON r.id = pr.response_id"""


async def add_to_inbox(
    conn: Conn,
    *,
    patient_id: str,
    sms_id: int,
    prompt_id: int | None,
    reason: str,
    at: datetime,
) -> int | None:
    """An item for the nurse; None when this SMS already has one."""
    value = await conn.fetchval(
        """INSERT INTO inbox_items (patient_id, sms_id, prompt_id, reason, created_at)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sms_id) DO NOTHING RETURNING id""",
        patient_id,
        sms_id,
        prompt_id,
        reason,
        at,
    )
    return int(value) if value is not None else None


async def inbox(
    conn: Conn,
    *,
    care_teams: Sequence[str] | None,
    handled: bool | None,
    patient_id: str | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    """Inbox items of these care teams' patients (None: every team), oldest waiting first
    (``handled`` False), newest handled first (True), or newest first (None: both)."""
    order = "i.created_at, i.id" if handled is False else "i.created_at DESC, i.id DESC"
    rows = await conn.fetch(
        f"""SELECT {_INBOX_COLUMNS} FROM {_INBOX_FROM}
             WHERE ($1::text[] IS NULL OR p.care_team = ANY($1::text[]))
               AND ($2::boolean IS NULL OR (i.handled_at IS NOT NULL) = $2)
               AND ($3::text IS NULL OR i.patient_id = $3)
             ORDER BY {order}
             LIMIT $4""",  # noqa: S608 - fixed fragments, values are bound
        list(care_teams) if care_teams is not None else None,
        handled,
        patient_id,
        limit,
    )
    return [dict(r) for r in rows]


async def inbox_item(conn: Conn, item_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_INBOX_COLUMNS} FROM {_INBOX_FROM} WHERE i.id = $1",  # noqa: S608
        item_id,
    )
    return dict(row) if row else None


async def mark_handled(
    conn: Conn, item_id: int, actor: str, note: str | None, at: datetime | None = None
) -> dict[str, Any]:
    """Mark an item handled by ``actor``; ``ConflictError`` when someone already did."""
    changed = await conn.fetchval(
        """UPDATE inbox_items SET handled_at = coalesce($4::timestamptz, now()), handled_by = $2,
                  note = $3
            WHERE id = $1 AND handled_at IS NULL RETURNING id""",
        item_id,
        actor,
        note,
        at,
    )
    found = await inbox_item(conn, item_id)
    if found is None:
        raise NotFoundError("no such inbox item")
    if changed is None:
        raise ConflictError(f"already handled by {found['handled_by']}")
    return found
