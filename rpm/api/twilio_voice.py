"""Twilio's voice webhooks: the answer to a call's "press 1" prompt
(``POST /twilio/voice/gather?outbox=N``) and call status callbacks
(``POST /twilio/voice/status``). Signed like every Twilio webhook (``signed_form``: 403
otherwise).

Gather: Twilio posts ``CallSid`` and ``Digits``. The keys are stored on the call
(``voice_calls``); a 1 confirms: the first one is audited on the alert (``patient_confirmed``,
actor ``patient:<id>``) and announced on ``rpm_alerts``. The answer is TwiML in the patient's
language: thanks, or that the care team will call. A retried webhook is recorded once.

Status: moves ``voice_calls`` forward by ``CallSid`` (never backwards).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Response

from alerts import voice_script
from alerts.channels import confirmed
from alerts.voice import say_twiml
from rpm.domain.text_input import whole_number
from rpm.storage import alert_events
from rpm.storage import alerts as alert_store
from rpm.storage import channels as channel_store
from rpm.storage import sms as sms_store

from .deps import PoolDep, SettingsDep
from .twilio_hooks import SignedForm

log = logging.getLogger(__name__)

_TWIML = "application/xml"
router = APIRouter(prefix="/twilio/voice", tags=["twilio"])


@router.post("/gather")
async def gather(outbox: int, form: SignedForm, pool: PoolDep, settings: SettingsDep) -> Response:
    """The keys a patient pressed at the prompt of a call about a critical alert."""
    call_sid = form.get("CallSid", "")
    digits = form.get("Digits", "")
    if not call_sid:
        raise HTTPException(400, "CallSid is required")
    yes = confirmed(digits)
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        answer = await channel_store.record_digits(conn, outbox, call_sid, digits, yes, now)
        if answer is None:
            raise HTTPException(404, "no such call")
        patient = await sms_store.patient(conn, answer.patient_id)
        if answer.first_confirmation and answer.alert_id is not None:
            change = await alert_events.patient_confirmed_event(
                conn,
                alert_id=answer.alert_id,
                patient_id=answer.patient_id,
                note=f"pressed 1 on voice call {call_sid}",
                at=now,
            )
            if change is not None:
                await alert_store.notify(conn, [change])
    script = voice_script.critical_alert(
        advice={},
        language=patient.language if patient else "en",
        service=patient.service(settings.sms.service_name)
        if patient
        else settings.sms.service_name,
        emergency_number=settings.sms.emergency_number,
    )
    log.info(
        "call %s: patient=%s alert=%s confirmed=%s",
        call_sid,
        answer.patient_id,
        answer.alert_id,
        yes,
        extra={"alert_id": answer.alert_id, "patient_id": answer.patient_id},
    )
    text = script.thanks if yes else script.not_confirmed
    return Response(say_twiml(text, script.say_language), media_type=_TWIML)


@router.post("/status")
async def call_status(form: SignedForm, pool: PoolDep) -> Response:
    """A call progress callback for a call we placed."""
    sid = form.get("CallSid")
    state = form.get("CallStatus")
    if not sid or not state:
        raise HTTPException(400, "CallSid and CallStatus are required")
    code_text = form.get("ErrorCode", "")
    code = whole_number(code_text, max_digits=9)  # Twilio's codes have 5 digits
    async with pool.acquire() as conn:
        now_status = await channel_store.apply_call_status(conn, sid, state, code)
    log.info("call %s: status %s (%s)", sid, state, "recorded" if now_status else "not newer")
    return Response(status_code=204)
