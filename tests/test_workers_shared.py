"""Several worker processes on one outbox send each message once (docs/operations.md,
"Several gateways and workers"): two SMS workers, each with its own connection pool and its
own Twilio client, as two ``rpm serve --role workers`` processes would have, drain one outbox
concurrently in small claims."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from alerts.sms import TwilioSms
from rpm.settings import ApiSettings, SmsSettings
from rpm.storage.pool import create_pool
from rpm.workers.sms_config import DeliveryConfig
from rpm.workers.sms_outbox import SmsOutboxWorker
from simulators.twilio_sink import TwilioSink
from tests.conftest import TWILIO_SID, TWILIO_TOKEN
from tests.test_sms_delivery import enqueue
from tests.twilio_support import add_patient, daytime_clock, patient_payload

PATIENTS = 60


@pytest.fixture
async def pools(db_url: str) -> AsyncIterator[list[asyncpg.Pool]]:
    made = [await create_pool(db_url, size=2) for _ in range(2)]
    try:
        yield made
    finally:
        for p in made:
            await p.close()


async def _drain(w: SmsOutboxWorker) -> int:
    handled = 0
    while n := await w.drain_once():
        handled += n
    return handled


async def test_two_sms_workers_on_one_outbox_send_each_message_once(
    pools: list[asyncpg.Pool], twilio: TwilioSink
) -> None:
    phones = {f"p{k:02d}": f"+155501{k:05d}" for k in range(PATIENTS)}
    async with pools[0].acquire() as conn:
        for patient, phone in phones.items():
            await add_patient(conn, patient, phone)
    for patient in phones:
        await enqueue(pools[0], f"sms:{patient}", patient_payload(patient, None))
    clock = daytime_clock()
    config = DeliveryConfig.from_settings(
        SmsSettings(outbox_poll_interval_s=0.05),
        ApiSettings(
            public_base_url="https://rpm.example.org", dashboard_url="https://rpm.example.org"
        ),
    )
    config = dataclasses.replace(config, batch=4)  # many small competing claims
    workers, clients = [], []
    for p in pools:
        sms = TwilioSms(
            account_sid=TWILIO_SID,
            auth_token=TWILIO_TOKEN,
            from_number="+15550009999",
            base_url=twilio.base_url,
        )
        clients.append(sms)
        workers.append(SmsOutboxWorker(p, sms, config, clock=clock))
    try:
        handled = await asyncio.gather(*(_drain(w) for w in workers))
    finally:
        for sms in clients:
            await sms.close()
    assert sum(handled) == PATIENTS, handled
    assert all(n > 0 for n in handled), f"one worker did all the work: {handled}"
    sent = Counter(m.to for m in twilio.messages)
    assert sent == Counter(phones.values())
    async with pools[0].acquire() as conn:
        undelivered = await conn.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
    assert undelivered == 0
