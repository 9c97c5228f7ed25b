"""Twilio's webhooks: inbound SMS (``POST /twilio/sms``) and status callbacks
(``POST /twilio/status``).

Every request must carry Twilio's ``X-Twilio-Signature`` for the URL Twilio called, which is
``RPM_PUBLIC_BASE_URL`` + path (a proxy in front changes what this server sees); 403 otherwise.

Inbound: STOP and its synonyms opt the sender out, START opts back in, HELP explains; each
gets a TwiML reply. A reply to an open check-in question is parsed and stored as its answer,
or handed to the nurse's inbox when it cannot be read (rpm/api/checkin_replies.py); an opt-in
word that answers an open check-in of a subscribed patient (Twilio's YES) is that answer.
Any other text is stored, attached to the sender's most recent unresolved alert, audited on
it (``patient_reply``), announced on ``rpm_alerts`` and put in the nurse's inbox. Every
message from a patient is a ``reply`` in the interaction ledger, once per MessageSid.
Unknown numbers get a generic reply and their message is stored without a patient.

Status callbacks move ``sms_messages`` forward by MessageSid (idempotent, never backwards);
error 21610 marks the patient opted out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from alerts import templates
from alerts.channels import FAILED_STATUSES
from alerts.delivery_errors import describe, error_class
from alerts.inbound_media import media_of
from alerts.keywords import Keyword, keyword_of, mentions_opt_out
from alerts.sms import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    UNSUBSCRIBED,
    signature_valid,
    twiml_message,
)
from rpm.domain.text_input import whole_number
from rpm.settings import Settings
from rpm.storage import alert_events, alert_reads
from rpm.storage import alerts as alert_store
from rpm.storage import channels as channel_store
from rpm.storage import checkins as checkin_store
from rpm.storage import sms as sms_store
from rpm.storage.pool import Conn
from rpm.workers.channels import after_message_status

from . import checkin_replies
from .deps import ClockDep, PoolDep, SettingsDep
from .health import Operations

log = logging.getLogger(__name__)

# The inbox reason of free text that uses a word revoking consent without being a keyword
# ("stop texting me, I'm fine"): the intent is not clear enough to act on (alerts.keywords),
# so a person asks; FCC 24-24 lets the sender ask once.
POSSIBLE_OPT_OUT = "may ask to stop messages: ask the patient, and opt them out if so"

MAX_BODY_BYTES = 64 * 1024
_FORM = "application/x-www-form-urlencoded"
_TWIML = "application/xml"
PATIENT_REPLY = "patient_reply"


router = APIRouter(prefix="/twilio", tags=["twilio"])


async def signed_form(request: Request, settings: SettingsDep) -> dict[str, str]:
    """The form Twilio posted; 413 when too large, 403 unless Twilio signed it with the
    account's auth token."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise HTTPException(413, "too large")
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    text = raw.decode("utf-8", errors="replace") if media == _FORM else ""
    pairs = parse_qsl(text, keep_blank_values=True)
    url = settings.api.public_url(request.url.path)
    if request.url.query:
        url += "?" + request.url.query
    if not signature_valid(
        settings.sms.auth_token.get_secret_value(),
        url,
        pairs,
        request.headers.get(SIGNATURE_HEADER),
        request.headers.get(SIGNATURE_SETTINGS_HEADER),
    ):
        log.warning("twilio webhook %s: missing or invalid signature", request.url.path)
        raise HTTPException(403, "invalid signature")
    return dict(pairs)  # Twilio sends each of these fields once


SignedForm = Annotated[dict[str, str], Depends(signed_form)]


@router.post("/sms")
async def inbound(
    form: SignedForm, pool: PoolDep, settings: SettingsDep, clock: ClockDep, request: Request
) -> Response:
    """An SMS to our number: a keyword, a check-in answer, or a reply for the care team.
    Its media (photos) are kept as Twilio's links; other links are dropped and counted."""
    sid = form.get("MessageSid") or form.get("SmsSid") or None
    sender = form.get("From", "")
    body = form.get("Body", "")
    keyword = keyword_of(body, form.get("OptOutType"))
    kept, dropped = media_of(form)
    if dropped:  # counts and reasons only: a media link names patient data
        reasons = " ".join(f"{r.value}={n}" for r, n in sorted(dropped.items()))
        log.info("sms %s: %d media kept, dropped %s", sid, len(kept), reasons)
        ops = getattr(request.app.state, "operations", None)
        if isinstance(ops, Operations):
            for reason, n in dropped.items():
                ops.metrics.inbound_media_dropped.labels(reason).inc(n)
    media = [m.as_json() for m in kept]
    async with pool.acquire() as conn, conn.transaction():
        await channel_store.note_inbound(conn, sender)  # a WhatsApp message opens its window
        reply = await _handle_inbound(conn, sid, sender, body, keyword, settings, clock(), media)
    return Response(twiml_message(reply), media_type=_TWIML)


@router.post("/status")
async def status(form: SignedForm, pool: PoolDep, request: Request) -> Response:
    """A delivery status callback for a message we sent."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    state = form.get("MessageStatus") or form.get("SmsStatus")
    if not sid or not state:
        raise HTTPException(400, "MessageSid and MessageStatus are required")
    code_text = form.get("ErrorCode", "")
    code = whole_number(code_text, max_digits=9)  # Twilio's codes have 5 digits
    async with pool.acquire() as conn, conn.transaction():
        recorded = await sms_store.apply_status(conn, sid, state, code)
        if recorded and recorded.error_code == UNSUBSCRIBED and recorded.patient_id:
            await sms_store.opt_out(conn, [recorded.patient_id])
        following = await after_message_status(conn, recorded)  # failed: the next channel
        if recorded is not None and recorded.status in FAILED_STATUSES:
            await _failed(conn, request, recorded, following)
    if recorded is None:
        log.debug("sms %s: status %s not newer, ignored", sid, state)
    else:
        log.info("sms %s: status %s code=%s", sid, recorded.status, recorded.error_code)
    return Response(status_code=204)


async def _failed(
    conn: Conn, request: Request, recorded: sms_store.Recorded, following: str | None
) -> None:
    """A message Twilio reported failed or undelivered: counted in /metrics by error class,
    and written to its alert's audit trail (and announced) so the nurse sees it. A patient's
    message about a critical alert that no further channel carries (``following`` None)
    pages the on-call nurse now instead of after the escalation delay."""
    facts = await sms_store.message_facts(conn, recorded.id)
    if facts is None:
        return
    channel, alert_id, audience = facts
    ops = getattr(request.app.state, "operations", None)
    if isinstance(ops, Operations):
        klass = error_class(recorded.error_code)
        ops.metrics.message_failures.labels(channel, recorded.status, klass).inc()
    if alert_id is None:
        return
    note = f"{audience} {describe(channel, recorded.status, recorded.error_code)}"
    change = await alert_events.message_failed_event(conn, alert_id=alert_id, note=note)
    if change is not None:
        await alert_store.notify(conn, [change])
    if audience == "patient" and following is None:
        said = "no channel reached the patient: the on-call nurse is paged now"
        if await alert_events.patient_unreachable(conn, alert_id=alert_id, note=said):
            log.info("alert %s: patient unreachable, escalation brought forward", alert_id)


async def _handle_inbound(
    conn: Conn,
    sid: str | None,
    sender: str,
    body: str,
    keyword: Keyword | None,
    settings: Settings,
    now: datetime,
    media: Sequence[Mapping[str, str]] = (),
) -> str | None:
    """Apply an inbound SMS (with its media links); return the reply text (None: reply with
    nothing)."""
    number = settings.sms.emergency_number
    patients = await sms_store.patients_by_phone(conn, sender) if sender else []
    ids = [p.patient_id for p in patients]
    language = patients[0].language if patients else templates.DEFAULT_LANGUAGE
    service = (
        patients[0].service(settings.sms.service_name) if patients else settings.sms.service_name
    )
    first = ids[0] if ids else None
    if keyword is Keyword.OPT_IN and await checkin_replies.answers_keyword(
        conn, patients, body, now
    ):
        keyword = None
    if keyword is not None:
        sms_id = await sms_store.record_inbound(
            conn, sid=sid, patient_id=first, alert_id=None, body=body, media=media
        )
        if first is not None:
            await checkin_replies.touch(conn, first, sid, sms_id, now, sender)
        log.info("sms %s: keyword %s from patients=%s", sid, keyword.value, ids or "unknown")
        if keyword is Keyword.OPT_OUT:
            await sms_store.opt_out(conn, ids)
            return templates.opted_out_reply(language, service=service, emergency_number=number)
        if keyword is Keyword.OPT_IN:
            await sms_store.opt_in(conn, ids)
            return templates.opted_in_reply(language, service=service, emergency_number=number)
        return templates.help_reply(
            language, service=service, emergency_number=number, contact=settings.sms.help_contact
        )
    if not ids:
        await sms_store.record_inbound(
            conn, sid=sid, patient_id=None, alert_id=None, body=body, media=media
        )
        log.info("sms %s: reply from an unknown number", sid)
        return templates.unknown_sender_reply(service=service, emergency_number=number)
    answered = await checkin_replies.handle(
        conn,
        ids,
        sid=sid,
        body=body,
        at=now,
        emergency_number=number,
        sender=sender,
        media=media,
    )
    if answered is not None:
        return answered.text
    alert = await _latest_unresolved(conn, ids)
    patient_id = str(alert["patient_id"]) if alert else ids[0]
    alert_id = int(alert["id"]) if alert else None
    stored = await sms_store.record_inbound(
        conn, sid=sid, patient_id=patient_id, alert_id=alert_id, body=body, media=media
    )
    if stored is not None:
        await checkin_replies.touch(conn, patient_id, sid, stored, now, sender)
        await checkin_store.add_to_inbox(
            conn,
            patient_id=patient_id,
            sms_id=stored,
            prompt_id=None,
            reason=POSSIBLE_OPT_OUT if mentions_opt_out(body) else checkin_replies.NO_CHECKIN,
            at=now,
        )
    if stored is not None and alert is not None:
        await alert_events.reply_event(
            conn,
            alert_id=int(alert["id"]),
            patient_id=patient_id,
            state=str(alert["state"]),
            severity=str(alert["severity"]),
            text=body,
            media=media,
        )
        await alert_store.notify(
            conn,
            [
                {
                    "alert_id": alert["id"],
                    "patient_id": patient_id,
                    "action": PATIENT_REPLY,
                    "state": alert["state"],
                    "severity": alert["severity"],
                }
            ],
        )
    log.info("sms %s: reply from patient=%s on alert=%s", sid, patient_id, alert_id)
    return templates.reply_received(language, service=service, emergency_number=number)


async def _latest_unresolved(conn: Conn, patient_ids: list[str]) -> dict[str, Any] | None:
    """The most recently opened unresolved alert of any of these patients."""
    found: list[dict[str, Any]] = []
    for pid in patient_ids:
        found += await alert_reads.listing(
            conn, states=["open", "acknowledged"], patient_id=pid, limit=1000
        )
    return max(found, key=lambda a: (a["opened_at"], a["id"]), default=None)
