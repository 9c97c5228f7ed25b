"""Channels for patient messages: which one a message goes out on (SMS or WhatsApp, or a call
for a critical alert), and the next one when it fails. The decisions are
``alerts.channels``'; this module reads what they need and writes what they decide.

The SMS outbox worker (rpm/workers/sms_outbox.py) asks :meth:`ChannelRouter.plan` before each
patient message, after the gate (consent, opt-out, quiet hours, cap) let it through. A failure
of a patient message, refused at once by Twilio or reported ``undelivered``/``failed`` by a
status callback, goes to :func:`follow_failure`, which queues the next channel of the
patient's route as a new outbox item keyed by the failed one (``fallback:{outbox id}``), or a
call (``voice:alert:{id}:round:{n}``): each at most once.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from alerts.channels import (
    FAILED_STATUSES,
    MESSAGE_CHANNELS,
    WHATSAPP_ERRORS,
    Carriage,
    Channel,
    Route,
    Template,
    VoiceWork,
    address,
    after_failure,
    can_carry,
    choose,
    whatsapp_content,
)
from alerts.sms_policy import SmsWork
from rpm.domain import Severity
from rpm.domain.errors import BadWork
from rpm.settings import ChannelSettings
from rpm.storage import alert_reads
from rpm.storage import channels as channel_store
from rpm.storage import outbox as outbox_store
from rpm.storage import sms as sms_store
from rpm.storage.pool import Conn

log = logging.getLogger(__name__)

VOICE = "voice"  # the outbox channel of calls (rpm/workers/voice_calls.py)


def critical_alert(work: SmsWork) -> bool:
    return work.template == "alert" and work.severity is Severity.CRITICAL


def kind_of(work: SmsWork) -> str:
    """The kind of message, as WhatsApp templates are looked up (``alert``, ``campaign``)."""
    return "campaign" if work.is_campaign else "alert"


@dataclass(frozen=True, slots=True)
class Send:
    """Send the message on ``channel`` with these Messages API parameters."""

    channel: Channel
    to: str
    from_: str | None = None  # None: the SMS sender
    content_sid: str | None = None
    content_variables: str | None = None

    def options(self) -> dict[str, str]:
        """The channel's ``send`` keywords beyond an SMS's (none for an SMS)."""
        given = {
            "from_": self.from_,
            "content_sid": self.content_sid,
            "content_variables": self.content_variables,
        }
        return {k: v for k, v in given.items() if v is not None}


@dataclass(frozen=True, slots=True)
class HandOver:
    """The message becomes a call (a critical alert to a patient who prefers voice)."""

    voice_key: str


@dataclass(frozen=True, slots=True)
class NoChannel:
    reason: str


Plan = Send | HandOver | NoChannel


class ChannelRouter:
    """Plans patient messages over the patient's channels; counts outcomes per channel."""

    def __init__(self, settings: ChannelSettings | None = None) -> None:
        s = settings or ChannelSettings()
        self._whatsapp_from = s.whatsapp_from
        self._templates = dict(s.whatsapp_templates)
        # (channel, outcome) -> count since start, for /metrics.
        self.outcomes: Counter[tuple[str, str]] = Counter()

    def count(self, channel: str, outcome: str) -> None:
        self.outcomes[(channel, outcome)] += 1

    async def plan(
        self,
        conn: Conn,
        outbox_id: int,
        payload: dict[str, Any],
        work: SmsWork,
        phone: str,
        body: str,
        now: datetime,
    ) -> Plan:
        """How this message goes out now. Staff messages are SMS; a patient message goes on
        the first channel of the patient's route that can carry it, or on the channel a
        fallback item names (when it still can; else the next one)."""
        if work.audience != "patient" or work.patient_id is None:
            return Send("sms", phone)
        found = await channel_store.patient_channels(conn, work.patient_id)
        route = found.route if found else Route()
        language = (await _language(conn, work.patient_id)) or "en"
        content = whatsapp_content(
            now,
            found.whatsapp_inbound_at if found else None,
            self._templates,
            kind_of(work),
            language,
        )
        carriage = Carriage(
            critical_alert(work), self._whatsapp_from is not None, content is not None
        )
        tried = [str(c) for c in payload.get("tried", [])]
        pinned = payload.get("channel")
        if pinned in ("sms", "whatsapp", "voice") and pinned not in tried:
            channel: Channel | None = pinned
            if not can_carry(pinned, carriage):
                channel = after_failure(route, carriage, pinned, tried)
        else:
            channel = choose(route, carriage, tried)
        if channel is None:
            return NoChannel("no channel of the patient's route can carry this message")
        if channel == "voice":
            work_voice = await _voice_work(conn, work, "preferred")
            if work_voice is None:
                return NoChannel("no alert to call about")
            await outbox_store.enqueue(conn, [(VOICE, work_voice.dedupe_key, work_voice.payload())])
            return HandOver(work_voice.dedupe_key)
        if channel == "whatsapp":
            assert self._whatsapp_from is not None
            sid = content.content_sid if isinstance(content, Template) else None
            return Send(
                "whatsapp",
                address("whatsapp", phone),
                address("whatsapp", self._whatsapp_from),
                sid,
                json.dumps({"1": body}, ensure_ascii=False) if sid else None,
            )
        return Send("sms", phone)


async def _language(conn: Conn, patient_id: str) -> str | None:
    p = await sms_store.patient(conn, patient_id)
    return p.language if p else None


async def _voice_work(conn: Conn, work: SmsWork, reason: str) -> VoiceWork | None:
    if work.alert_id is None or work.patient_id is None:
        return None
    round_ = await alert_reads.escalation_round(conn, work.alert_id)
    if round_ is None:
        return None
    return VoiceWork.from_payload(
        {
            "patient_id": work.patient_id,
            "alert_id": work.alert_id,
            "round": round_,
            "reason": reason,
            "title": work.title,
            "advice": dict(work.advice),
        }
    )


async def follow_failure(
    conn: Conn,
    *,
    outbox_id: int,
    payload: dict[str, Any],
    channel: str,
    error_code: int | None = None,
) -> str | None:
    """Queue the next channel for a patient message that failed on ``channel``; return it
    (None: nothing further). Idempotent: the new item's key names the failed item."""
    try:
        work = SmsWork.from_payload(payload)
    except BadWork:
        return None
    if work.audience != "patient" or work.patient_id is None or channel not in MESSAGE_CHANNELS:
        return None
    found = await channel_store.patient_channels(conn, work.patient_id)
    route = found.route if found else Route()
    tried = [*(str(c) for c in payload.get("tried", [])), channel]
    # Optimistic about WhatsApp: the worker checks the window and templates at send time.
    carriage = Carriage(critical_alert(work), whatsapp_sender=True)
    failed: Channel = "whatsapp" if channel == "whatsapp" else "sms"
    following = after_failure(route, carriage, failed, tried)
    why = WHATSAPP_ERRORS.get(error_code or 0, f"code {error_code}" if error_code else "failed")
    if following is None:
        log.info("outbox %s: %s failed (%s); no further channel", outbox_id, channel, why)
        return None
    if following == "voice":
        voice = await _voice_work(conn, work, "undelivered")
        if voice is None:
            return None
        await outbox_store.enqueue(conn, [(VOICE, voice.dedupe_key, voice.payload())])
    else:
        await outbox_store.enqueue(
            conn,
            [("sms", f"fallback:{outbox_id}", {**payload, "channel": following, "tried": tried})],
        )
    log.info(
        "outbox %s: %s failed (%s); next channel %s",
        outbox_id,
        channel,
        why,
        following,
        extra={"outbox_id": outbox_id, "alert_id": work.alert_id, "patient_id": work.patient_id},
    )
    return following


async def after_message_status(conn: Conn, recorded: sms_store.Recorded | None) -> str | None:
    """A status callback moved a message: when it failed, queue the next channel."""
    if recorded is None or recorded.status not in FAILED_STATUSES:
        return None
    origin = await channel_store.message_origin(conn, recorded.id)
    if origin is None:
        return None  # a callback before the worker recorded the message; it will not retry
    return await follow_failure(
        conn,
        outbox_id=origin.outbox_id,
        payload=origin.payload,
        channel=origin.channel,
        error_code=recorded.error_code,
    )
