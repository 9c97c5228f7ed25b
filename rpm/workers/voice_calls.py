"""The worker that calls patients about critical alerts: drains channel ``voice`` of the outbox.

Calls are queued (``voice:alert:{id}:round:{n}``: one per alert per escalation round, whoever
asks) when a critical alert's patient message was not delivered (rpm/workers/channels.py),
when the patient prefers voice, and, by this worker's own pass, when a critical alert is still
open ``unacknowledged_after`` after its patient message went out with no reply or confirmation
from the patient (:func:`rpm.storage.channels.unconfirmed_critical`).

Per item: :func:`alerts.channels.voice_gate` (consent, opt-out, voice among the patient's
channels, the alert still worth a call), then the call through Twilio's Calls API with its
TwiML inline (``alerts/voice.py``): the alert in the patient's language and "press 1 to
confirm", whose answer comes back to ``/twilio/voice/gather`` (rpm/api/twilio_voice.py).
Retries, backoff and at-least-once are the SMS worker's: 429, 5xx and network errors retry
with capped exponential backoff up to ``max_attempts``; other refusals fail the item with
Twilio's code. A call that rings out (busy, no-answer) is not placed again in that round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import asyncpg

from alerts import voice_script
from alerts.channels import Callee, CallSituation, VoiceWork, voice_gate
from alerts.voice import PlacedCall, call_twiml
from rpm.backoff import Backoff
from rpm.domain.errors import (
    BadWork,
    CredentialsRefused,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from rpm.settings import ApiSettings, ChannelSettings, SmsSettings
from rpm.storage import alert_reads
from rpm.storage import channels as channel_store
from rpm.storage import engagement as engagement_store
from rpm.storage import outbox as outbox_store
from rpm.storage import sms as sms_store
from rpm.storage.pool import Conn
from rpm.workers.credentials import CredentialsHold
from rpm.workers.loop import drain_until_stopped, half_lease_gone, release

log = logging.getLogger(__name__)

CHANNEL = "voice"
# placed: Twilio accepted the call; dropped by the gate or bad work; retry after a transient
# error; gave_up after max attempts; refused by Twilio; queued: calls this worker's pass
# queued for unconfirmed critical alerts.
OUTCOMES = ("placed", "dropped", "retry", "gave_up", "refused", "queued", "held")
_LEASE = timedelta(minutes=2)
GATHER_PATH = "/twilio/voice/gather"
STATUS_PATH = "/twilio/voice/status"


class VoiceChannel(Protocol):
    async def call(
        self, to: str, twiml: str, *, status_callback: str | None = None
    ) -> PlacedCall: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class VoiceConfig:
    poll_interval_s: float
    max_attempts: int
    backoff: Backoff
    emergency_number: str
    service_name: str
    gather_url: str
    status_callback_url: str | None
    unacknowledged_after: timedelta | None  # None: no call for unconfirmed alerts
    batch: int = 20

    @classmethod
    def from_settings(
        cls, channels: ChannelSettings, sms: SmsSettings, api: ApiSettings
    ) -> VoiceConfig:
        after = channels.voice_unacknowledged_min
        return cls(
            poll_interval_s=sms.outbox_poll_interval_s,
            max_attempts=sms.outbox_max_attempts,
            backoff=sms.backoff,
            emergency_number=sms.emergency_number,
            service_name=sms.service_name,
            gather_url=api.public_url(GATHER_PATH),
            status_callback_url=api.public_url(STATUS_PATH),
            unacknowledged_after=timedelta(minutes=after) if after > 0 else None,
        )


class VoiceCallWorker:
    """Queues calls for unconfirmed critical alerts, then places the calls that are due."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        voice: VoiceChannel,
        config: VoiceConfig,
        *,
        clock: Callable[[], datetime] = _utcnow,
        hold: CredentialsHold | None = None,
    ) -> None:
        self._pool = pool
        self.hold = hold or CredentialsHold()  # shared with the SMS worker: one account
        self._voice = voice
        self._config = config
        self._clock = clock
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._stopping = asyncio.Event()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await drain_until_stopped(
            self.drain_once, self._stopping, lambda: self._config.poll_interval_s, log, "voice"
        )

    async def drain_once(self) -> int:
        """Queue calls for unconfirmed alerts, then handle the calls due; return how many."""
        now = self._clock()
        async with self._pool.acquire() as conn:
            await self._queue_unconfirmed(conn, now)
            items = await outbox_store.claim_due(conn, CHANNEL, self._config.batch, _LEASE, now)
        claimed = time.monotonic()
        for k, item in enumerate(items):
            if self._stopping.is_set() or half_lease_gone(claimed, _LEASE):
                await release(self._pool, items[k:], now)
                break
            await self._deliver(item)
        return len(items)

    async def _queue_unconfirmed(self, conn: Conn, now: datetime) -> None:
        after = self._config.unacknowledged_after
        if after is None:
            return
        found = await channel_store.unconfirmed_critical(conn, now - after, self._config.batch)
        works = [
            VoiceWork(u.patient_id, u.alert_id, u.round, "unacknowledged", u.title, u.advice)
            for u in found
        ]
        await outbox_store.enqueue(conn, [(CHANNEL, w.dedupe_key, w.payload()) for w in works])
        if works:
            self.outcomes["queued"] += len(works)
            log.info("voice: calls queued for %d unconfirmed critical alerts", len(works))

    async def _deliver(self, item: outbox_store.OutboxItem) -> None:
        try:
            work = VoiceWork.from_payload(item.payload)
        except BadWork as exc:
            await self._fail(item, str(exc), "?")
            return
        async with self._pool.acquire() as conn:
            patient = await sms_store.patient(conn, work.patient_id)
            channels = await channel_store.patient_channels(conn, work.patient_id)
            alert = await alert_reads.get(conn, work.alert_id)
            done = await channel_store.confirmed(conn, work.alert_id)
        callee = None
        if patient is not None and channels is not None:
            callee = Callee(
                patient.phone, patient.consent, patient.opted_out_at is not None, channels.route
            )
        situation = CallSituation(work, callee, str(alert["state"]) if alert else None, done)
        reason = voice_gate(situation)
        if reason is not None:
            await self._fail(item, reason, work.patient_id)
            return
        assert patient is not None
        assert patient.phone
        script = voice_script.critical_alert(
            advice=work.advice,
            language=patient.language,
            service=patient.service(self._config.service_name),
            emergency_number=self._config.emergency_number,
        )
        twiml = call_twiml(script, f"{self._config.gather_url}?outbox={item.id}")
        await self._call(item, work, patient.phone, twiml)

    async def _call(
        self, item: outbox_store.OutboxItem, work: VoiceWork, phone: str, twiml: str
    ) -> None:
        now = self._clock()
        try:
            placed = await self._voice.call(
                phone, twiml, status_callback=self._config.status_callback_url
            )
        except CredentialsRefused as exc:
            await self.hold.refused(self._pool, [item], now, str(exc))
            self.outcomes["held"] += 1
            return
        except TransientDeliveryError as exc:
            async with self._pool.acquire() as conn:
                gave_up = await outbox_store.retry_or_give_up(
                    conn,
                    item,
                    now,
                    str(exc),
                    max_attempts=self._config.max_attempts,
                    backoff=self._config.backoff,
                )
            self.outcomes["gave_up" if gave_up else "retry"] += 1
            log.warning("voice %s: attempt %d failed: %s", item.id, item.attempts, exc)
            return
        except PermanentDeliveryError as exc:
            async with self._pool.acquire() as conn, conn.transaction():
                await channel_store.record_call(
                    conn,
                    outbox_id=item.id,
                    patient_id=work.patient_id,
                    alert_id=work.alert_id,
                    sid=None,
                    status="failed",
                    error_code=exc.code,
                    at=now,
                )
                await outbox_store.failed(conn, item.id, str(exc))
            self.outcomes["refused"] += 1
            log.warning("voice %s: refused for patient=%s: %s", item.id, work.patient_id, exc)
            return
        self.hold.accepted()
        async with self._pool.acquire() as conn, conn.transaction():
            await channel_store.record_call(
                conn,
                outbox_id=item.id,
                patient_id=work.patient_id,
                alert_id=work.alert_id,
                sid=placed.sid,
                status=placed.status,
                error_code=None,
                at=now,
            )
            await outbox_store.delivered(
                conn, item.id, {"sid": placed.sid, "status": placed.status}
            )
            await engagement_store.record(
                conn,
                [
                    engagement_store.Interaction(
                        work.patient_id, now, "alert", CHANNEL, "outbound", f"voice:{placed.sid}"
                    )
                ],
            )
        self.outcomes["placed"] += 1
        log.info(
            "voice %s: call %s placed to patient=%s alert=%s (%s)",
            item.id,
            placed.sid,
            work.patient_id,
            work.alert_id,
            work.reason,
            extra={"outbox_id": item.id, "alert_id": work.alert_id, "patient_id": work.patient_id},
        )

    async def _fail(self, item: outbox_store.OutboxItem, reason: str, who: str) -> None:
        async with self._pool.acquire() as conn:
            await outbox_store.failed(conn, item.id, reason)
        self.outcomes["dropped"] += 1
        log.info("voice %s: no call to patient=%s: %s", item.id, who, reason)
