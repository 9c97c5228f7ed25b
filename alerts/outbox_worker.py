"""The worker that drains SMS work from the outbox, with retries and backoff.

At-least-once: an item is marked delivered after Twilio accepted it. A crash between
the two could send one message twice; nothing is ever lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg

from rpm.errors import PermanentDeliveryError, TransientDeliveryError
from rpm.storage import outbox as outbox_store
from rpm.storage import registry
from rpm.storage.pool import DATABASE_UNAVAILABLE
from rules.spec import Severity

from .sms import SentSms
from .templates import patient_alert_sms

log = logging.getLogger(__name__)


class SmsChannel(Protocol):
    async def send(self, to: str, body: str) -> SentSms: ...


def backoff(attempts: int, *, base_s: float = 2.0, cap_s: float = 300.0) -> timedelta:
    """Exponential backoff with full jitter, capped."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempts - 1))
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))  # noqa: S311 - not crypto


class SmsOutboxWorker:
    """Claims due SMS items, sends them, records the outcome."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        channel: SmsChannel,
        *,
        poll_interval_s: float = 0.5,
        max_attempts: int = 12,
        batch: int = 50,
    ) -> None:
        self._pool = pool
        self._channel = channel
        self._poll = poll_interval_s
        self._max_attempts = max_attempts
        self._batch = batch
        self.sent = 0

    async def run(self) -> None:
        while True:
            try:
                handled = await self.drain_once()
            except DATABASE_UNAVAILABLE as exc:
                log.warning("outbox: database unavailable (%s)", exc.__class__.__name__)
                handled = 0
            if handled == 0:
                await asyncio.sleep(self._poll)

    async def drain_once(self) -> int:
        """Handle the items due now; return how many were handled."""
        async with self._pool.acquire() as conn:
            items = await outbox_store.claim_due(conn, "sms", self._batch, timedelta(minutes=2))
        for item in items:
            await self._deliver(item)
        return len(items)

    async def _deliver(self, item: outbox_store.OutboxItem) -> None:
        patient_id = str(item.payload["patient_id"])
        async with self._pool.acquire() as conn:
            phone, consent = await registry.sms_contact(conn, patient_id)
            if not phone or not consent:
                reason = "no phone number" if not phone else "no SMS consent"
                await outbox_store.failed(conn, item.id, reason)
                log.info("outbox %s: not sent to patient=%s: %s", item.id, patient_id, reason)
                return
        try:
            sent = await self._channel.send(phone, _body(item.payload))
        except TransientDeliveryError as exc:
            async with self._pool.acquire() as conn:
                if item.attempts >= self._max_attempts:
                    await outbox_store.failed(conn, item.id, f"gave up: {exc}")
                else:
                    when = datetime.now(UTC) + backoff(item.attempts)
                    await outbox_store.retry_at(conn, item.id, when, str(exc))
            log.warning("outbox %s: attempt %d failed: %s", item.id, item.attempts, exc)
            return
        except PermanentDeliveryError as exc:
            async with self._pool.acquire() as conn:
                await outbox_store.failed(conn, item.id, str(exc))
            log.warning("outbox %s: refused: %s", item.id, exc)
            return
        async with self._pool.acquire() as conn:
            await outbox_store.delivered(conn, item.id, {"sid": sent.sid, "status": sent.status})
        self.sent += 1
        log.info("outbox %s: sms %s sent for patient=%s", item.id, sent.sid, patient_id)


def _body(payload: dict[str, Any]) -> str:
    if "body" in payload:
        return str(payload["body"])
    advice = payload.get("advice") or {}
    return patient_alert_sms(
        str(payload["title"]), str(advice.get("en", "")), Severity[str(payload["severity"])]
    )
