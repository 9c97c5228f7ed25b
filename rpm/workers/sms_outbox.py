"""The worker that drains SMS work from the outbox: gate, render, send, record.

Per item: parse the payload (:class:`~alerts.sms_policy.SmsWork`), look the recipient up, and
let :func:`alerts.sms_policy.decide` say send now, defer (quiet hours) or drop (consent,
opt-out, daily cap, moot escalation), with the reason kept on the outbox row. A message that
goes out is rendered in the recipient's language (``alerts.templates``), sent with a status
callback and a validity period, and recorded in ``sms_messages`` together with the outbox
row's delivery, in one transaction. A check-in campaign's SMS asks a question
(``rpm.engagement.checkins``); its prompt, which the reply will answer, is recorded in that
same transaction (``rpm.storage.checkins``).

Retries: 429, 5xx and network errors retry with capped exponential backoff (rpm/backoff.py) up
to ``max_attempts``, so a Twilio outage delays messages and loses none. Twilio's 21610
(the recipient texted STOP) marks the patient opted out and fails the item at once; other
refusals fail it with Twilio's code.

At-least-once: a crash between Twilio's answer and our commit can send one message twice
(after the claim's lease ends); nothing is ever lost. Several workers share the outbox: claims
skip locked rows, and what is unsent at half the lease is handed back (never sent twice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from alerts.delivery_errors import describe
from alerts.sms import UNSUBSCRIBED
from alerts.sms_policy import (
    Defer,
    Drop,
    Recipient,
    Situation,
    SmsWork,
    decide,
    local_day,
    zone_of,
)
from rpm.domain import Severity
from rpm.domain.errors import (
    BadWork,
    CredentialsRefused,
    PermanentDeliveryError,
    RecipientOptedOut,
    TransientDeliveryError,
)
from rpm.engagement.campaigns import CampaignSpec
from rpm.storage import alert_events, alert_reads
from rpm.storage import alerts as alert_store
from rpm.storage import campaigns as campaign_store
from rpm.storage import checkins as checkin_store
from rpm.storage import engagement as engagement_store
from rpm.storage import outbox as outbox_store
from rpm.storage import sms as sms_store
from rpm.storage import staff as staff_store
from rpm.storage.pool import Conn
from rpm.workers.channels import (
    ChannelRouter,
    HandOver,
    Send,
    after_message_status,
    follow_failure,
)
from rpm.workers.credentials import CredentialsHold
from rpm.workers.loop import drain_until_stopped, half_lease_gone, release
from rpm.workers.sms_config import DeliveryConfig, SmsChannel
from rpm.workers.sms_render import Asked, RenderContext, asked_in, render

log = logging.getLogger(__name__)

CHANNEL = "sms"
# Delivery results as /metrics counts them: sent to Twilio; deferred (quiet hours); dropped by
# policy (consent, opt-out, daily cap, moot) or bad work; retry after a transient error;
# gave_up after max attempts; refused by Twilio (permanent error); held while Twilio refuses
# the credentials (rpm/workers/credentials.py).
OUTCOMES = ("sent", "deferred", "dropped", "retry", "gave_up", "refused", "held")
_LEASE = timedelta(minutes=2)
# How long a message waits for its patient's turn (another worker sending to the patient):
# longer than a Twilio request may take, well inside half the lease.
_TURN_WAIT_S = 30.0
_TURN_TAKEN = "another worker is messaging the patient"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SmsOutboxWorker:
    """Claims due SMS items, decides, sends, records the outcome."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        channel: SmsChannel,
        config: DeliveryConfig,
        *,
        clock: Callable[[], datetime] = _utcnow,
        router: ChannelRouter | None = None,
        hold: CredentialsHold | None = None,
    ) -> None:
        self._pool = pool
        self.hold = hold or CredentialsHold()
        # This pass's items not yet handled; emptied when they were all held (credentials).
        self._claim: list[outbox_store.OutboxItem] = []
        self._channel = channel
        self._config = config
        self.router = router or ChannelRouter()  # SMS, WhatsApp or a call (docs/channels.md)
        self._clock = clock
        self.sent = 0
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)  # since start, for metrics
        self.turn_waits = 0  # messages that found another worker sending to their patient
        self._stopping = asyncio.Event()
        self._campaigns: dict[tuple[str, int], CampaignSpec | None] = {}  # versions never change

    def request_stop(self) -> None:
        """Graceful stop: finish the message being sent, release the rest of the claim."""
        self._stopping.set()

    async def run(self) -> None:
        await drain_until_stopped(
            self.drain_once, self._stopping, lambda: self._config.poll_interval_s, log, "outbox"
        )

    async def drain_once(self) -> int:
        """Handle the items due now; return how many were handled."""
        async with self._pool.acquire() as conn:
            items = await outbox_store.claim_due(
                conn, CHANNEL, self._config.batch, _LEASE, self._clock()
            )
        claimed = time.monotonic()
        for k, item in enumerate(items):
            if self._stopping.is_set() or half_lease_gone(claimed, _LEASE):
                await self._release(items[k:])
                break
            self._claim = items[k:]
            await self._deliver(item)
            if not self._claim:  # Twilio refused the credentials: the rest was held too
                break
        self._claim = []
        return len(items)

    async def _release(self, items: list[outbox_store.OutboxItem]) -> None:
        """Hand claimed items back at once (not after the lease), the claim not counted."""
        await release(self._pool, items, self._clock())
        log.info("outbox: %d claimed SMS released (shutdown or lease)", len(items))

    async def _deliver(self, item: outbox_store.OutboxItem) -> None:
        try:
            work = SmsWork.from_payload(item.payload)
        except BadWork as exc:
            await self._fail(item, str(exc), "?")
            return
        if work.audience != "patient":
            await self._decide_and_send(item, work)
            return
        assert work.patient_id is not None
        # Counting the day's messages, sending and recording are one patient's turn: another
        # worker's message to the same patient waits for this one's outcome (the daily cap).
        # A turn held longer than a send takes (another worker stuck) hands the item back.
        async with sms_store.patient_turn(
            self._pool, work.patient_id, wait_s=_TURN_WAIT_S, waited=self._waited_for_turn
        ) as mine:
            if mine:
                await self._decide_and_send(item, work)
                return
        await release(self._pool, [item], self._clock(), _TURN_TAKEN)  # due again at once
        log.info("outbox %s: handed back (%s)", item.id, _TURN_TAKEN)

    def _waited_for_turn(self) -> None:
        self.turn_waits += 1

    async def _decide_and_send(self, item: outbox_store.OutboxItem, work: SmsWork) -> None:
        now = self._clock()
        async with self._pool.acquire() as conn:
            situation, alert = await self._situation(conn, work, now)
        verdict = decide(situation)
        if isinstance(verdict, Drop):
            await self._fail(item, verdict.reason, _who(work))
            return
        if isinstance(verdict, Defer):
            async with self._pool.acquire() as conn:
                await outbox_store.defer(conn, item.id, verdict.until, verdict.reason)
            self.outcomes["deferred"] += 1
            log.info("outbox %s: deferred to %s (%s)", item.id, verdict.until, verdict.reason)
            return
        recipient = situation.recipient
        assert recipient is not None
        assert recipient.phone
        campaign = None
        if work.is_campaign:
            campaign = await self._campaign(work)
            if campaign is None:
                await self._fail(
                    item, f"campaign {work.campaign} v{work.campaign_version} is gone", _who(work)
                )
                return
        context = RenderContext(
            recipient,
            item.created_at or now,
            now,
            alert,
            self._config.emergency_number,
            self._config.dashboard_url,
            campaign,
            recipient.service_name or self._config.service_name,
        )
        try:
            body = render(work, context)
        except BadWork as exc:
            await self._fail(item, str(exc), _who(work))
            return
        asked = asked_in(work, campaign, recipient.language) if campaign is not None else None
        # An alert deleted since (or never stored) is not referenced from the SMS log.
        alert_id = work.alert_id if alert is not None else None
        await self._send(item, work, alert_id, recipient.phone, body, now, asked)

    async def _campaign(self, work: SmsWork) -> CampaignSpec | None:
        assert work.campaign is not None
        assert work.campaign_version is not None
        key = (work.campaign, work.campaign_version)
        if key not in self._campaigns:
            async with self._pool.acquire() as conn:
                found = await campaign_store.campaign(conn, *key)
            self._campaigns[key] = found.spec if found and found.version == key[1] else None
        return self._campaigns[key]

    async def _situation(
        self, conn: Conn, work: SmsWork, now: datetime
    ) -> tuple[Situation, Mapping[str, Any] | None]:
        alert = await alert_reads.get(conn, work.alert_id) if work.alert_id is not None else None
        state = str(alert["state"]) if alert else None
        cap = self._config.daily_cap
        if work.audience == "staff":
            assert work.staff_id is not None
            known, phone = await staff_store.staff_phone(conn, work.staff_id)
            staff = Recipient(phone) if known else None
            return Situation(work, staff, now, state, daily_cap=cap), alert
        assert work.patient_id is not None
        p = await sms_store.patient(conn, work.patient_id)
        if p is None:
            return Situation(work, None, now, state, daily_cap=cap), alert
        zone = zone_of(p.timezone)
        recipient = Recipient(
            p.phone,
            consent=p.consent,
            opted_out=p.opted_out_at is not None,
            zone=zone,
            quiet_start=p.quiet_start,
            quiet_end=p.quiet_end,
            language=p.language,
            service_name=p.service_name,
        )
        sent = 0
        if not work.urgent:
            start, end = local_day(now, zone)
            sent = await sms_store.sent_today(
                conn, p.patient_id, start, end, every_kind=work.is_campaign
            )
        crisis = (
            await engagement_store.open_severity(conn, p.patient_id) if work.is_campaign else None
        )
        return Situation(work, recipient, now, state, sent, cap, crisis), alert

    async def _send(
        self,
        item: outbox_store.OutboxItem,
        work: SmsWork,
        alert_id: int | None,
        phone: str,
        body: str,
        now: datetime,
        asked: Asked | None = None,
    ) -> None:
        who = _who(work)
        plan = await self._plan(item, work, phone, body, now)
        if plan is None:
            return
        try:
            options: dict[str, Any] = plan.options()
            if work.severity is Severity.CRITICAL:
                options["expires"] = False  # never dropped by Twilio's validity period
            sent = await self._channel.send(
                plan.to, body, status_callback=self._config.status_callback_url, **options
            )
        except CredentialsRefused as exc:
            held = self._claim or [item]
            await self.hold.refused(self._pool, held, now, str(exc))
            self.outcomes["held"] += len(held)
            self._claim = []
            return
        except TransientDeliveryError as exc:
            self.router.count(plan.channel, "retry")
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
            log.warning("outbox %s: attempt %d for %s failed: %s", item.id, item.attempts, who, exc)
            return
        except PermanentDeliveryError as exc:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._record(
                    conn, item, work, alert_id, None, "failed", exc.code, body, now, plan
                )
                await follow_failure(
                    conn,
                    outbox_id=item.id,
                    payload=item.payload,
                    channel=plan.channel,
                    error_code=exc.code,
                )
                if isinstance(exc, RecipientOptedOut) and work.audience == "patient":
                    assert work.patient_id is not None
                    await sms_store.opt_out(conn, [work.patient_id], now)
                reason = "recipient unsubscribed" if isinstance(exc, RecipientOptedOut) else ""
                await outbox_store.failed(conn, item.id, f"{reason} {exc}".strip())
                if alert_id is not None:  # the nurse sees it in the alert's history
                    note = f"{work.audience} {describe(plan.channel, 'refused', exc.code)}"
                    change = await alert_events.message_failed_event(
                        conn, alert_id=alert_id, note=note, at=now
                    )
                    await alert_store.notify(conn, [change] if change else [])
            self.outcomes["refused"] += 1
            self.router.count(plan.channel, "refused")
            log.warning("outbox %s: refused for %s: %s", item.id, who, exc)
            return
        self.hold.accepted()
        async with self._pool.acquire() as conn, conn.transaction():
            recorded = await self._record(
                conn, item, work, alert_id, sent.sid, sent.status, None, body, now, plan
            )
            await after_message_status(conn, recorded)  # a failure reported before this record
            if recorded.error_code == UNSUBSCRIBED and work.audience == "patient":
                assert work.patient_id is not None  # a 21610 callback came before this record
                await sms_store.opt_out(conn, [work.patient_id], now)
            await outbox_store.delivered(conn, item.id, {"sid": sent.sid, "status": sent.status})
            if asked is not None:
                await self._prompt(conn, item, work, asked, recorded.id, now)
            if work.audience == "patient":
                assert work.patient_id is not None
                kind = "alert"
                if work.is_campaign:
                    kind = "checkin" if asked is not None else "campaign"
                await engagement_store.record(
                    conn,
                    [
                        engagement_store.Interaction(
                            work.patient_id,
                            now,
                            kind,
                            plan.channel,
                            "outbound",
                            f"sms:{sent.sid}",
                            work.campaign,
                        )
                    ],
                )
        self.sent += 1
        self.outcomes["sent"] += 1
        self.router.count(plan.channel, "sent")
        log.info(
            "outbox %s: %s %s sent to %s alert=%s",
            item.id,
            plan.channel,
            sent.sid,
            who,
            work.alert_id,
            extra={
                "outbox_id": item.id,
                "alert_id": work.alert_id,
                "patient_id": work.patient_id,
                "staff_id": work.staff_id,
            },
        )

    async def _prompt(
        self,
        conn: Conn,
        item: outbox_store.OutboxItem,
        work: SmsWork,
        asked: Asked,
        sms_id: int,
        now: datetime,
    ) -> None:
        """Record the question sent as the patient's open prompt (its response started with
        the first question)."""
        assert work.patient_id is not None
        response_id = work.response_id
        if response_id is None:
            response_id = await checkin_store.start_response(
                conn,
                patient_id=work.patient_id,
                questionnaire=asked.questionnaire.id,
                version=asked.questionnaire.version,
                campaign=work.campaign,
                campaign_version=work.campaign_version,
                language=asked.language,
                at=now,
            )
        await checkin_store.open_prompt(
            conn,
            response_id=response_id,
            patient_id=work.patient_id,
            link_id=asked.question.link_id,
            sms_id=sms_id,
            outbox_id=item.id,
            at=now,
            expires_at=now + asked.window,
        )

    async def _record(
        self,
        conn: Conn,
        item: outbox_store.OutboxItem,
        work: SmsWork,
        alert_id: int | None,
        sid: str | None,
        status: str,
        error_code: int | None,
        body: str,
        now: datetime,
        plan: Send | None = None,
    ) -> sms_store.Recorded:
        return await sms_store.record_outbound(
            conn,
            outbox_id=item.id,
            patient_id=work.patient_id,
            staff_id=work.staff_id,
            alert_id=alert_id,
            sid=sid,
            status=status,
            error_code=error_code,
            body=body,
            at=now,
            channel=plan.channel if plan else CHANNEL,
            content_sid=plan.content_sid if plan else None,
        )

    async def _plan(
        self, item: outbox_store.OutboxItem, work: SmsWork, phone: str, body: str, now: datetime
    ) -> Send | None:
        """The channel this message goes out on (rpm/workers/channels.py); None when it was
        handed to a call or no channel can carry it (the item is then settled here)."""
        async with self._pool.acquire() as conn, conn.transaction():
            plan = await self.router.plan(conn, item.id, item.payload, work, phone, body, now)
            if isinstance(plan, HandOver):
                await outbox_store.delivered(
                    conn, item.id, {"channel": "voice", "call": plan.voice_key}
                )
        if isinstance(plan, Send):
            return plan
        if isinstance(plan, HandOver):
            self.router.count("voice", "handed_over")
            log.info("outbox %s: handed to a call (%s)", item.id, plan.voice_key)
            return None
        await self._fail(item, plan.reason, _who(work))
        return None

    async def _fail(self, item: outbox_store.OutboxItem, reason: str, who: str) -> None:
        async with self._pool.acquire() as conn:
            await outbox_store.failed(conn, item.id, reason)
        self.outcomes["dropped"] += 1
        log.info("outbox %s: not sent to %s: %s", item.id, who, reason)


def _who(work: SmsWork) -> str:
    """The recipient as logs name it: by id only."""
    return f"staff={work.staff_id}" if work.audience == "staff" else f"patient={work.patient_id}"
