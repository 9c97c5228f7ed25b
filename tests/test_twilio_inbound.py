"""Twilio's webhooks (rpm/api/twilio_hooks.py) over real HTTP, called by the fake Twilio as
Twilio calls them: signed inbound SMS (keywords and free-text replies) and status callbacks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from xml.etree import ElementTree

import aiohttp
import asyncpg
import pytest

from alerts.keywords import KEYWORDS, Keyword
from rpm.api import checkin_replies
from rpm.api.twilio_hooks import POSSIBLE_OPT_OUT
from rpm.storage import alert_reads
from rpm.storage import alerts as alert_store
from rpm.storage import sms as sms_store
from rpm.storage.pool import connect
from simulators.twilio_sink import SentWebhook, TwilioSink
from tests.twilio_support import add_alert, add_patient, serve_hooks

PHONE = "+15550100001"


def reply_of(answer: SentWebhook) -> str | None:
    """The text of the TwiML ``<Message>``, or None for an empty ``<Response/>``."""
    assert answer.status == 200, answer
    root = ElementTree.fromstring(answer.body)
    assert root.tag == "Response"
    message = root.find("Message")
    return None if message is None else message.text


@pytest.fixture
async def hooks(pool: asyncpg.Pool) -> AsyncIterator[str]:
    async with serve_hooks(pool, sms={"help_contact": "+1 555 0100"}) as url:
        yield url


@pytest.fixture
async def patient(pool: asyncpg.Pool) -> str:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", PHONE)
    return "p1"


async def opted_out(pool: asyncpg.Pool, patient_id: str) -> bool:
    async with pool.acquire() as conn:
        p = await sms_store.patient(conn, patient_id)
    assert p is not None
    return p.opted_out_at is not None


# -- keywords (pure: tests/test_sms_keywords.py) ---------------------------------------------


# -- keywords over HTTP -----------------------------------------------------------------------


@pytest.mark.parametrize("word", [k for k, v in KEYWORDS.items() if v is Keyword.OPT_OUT])
async def test_stop_and_synonyms_opt_out_and_confirm(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str, word: str
) -> None:
    answer = await twilio.send_inbound(f"{hooks}/twilio/sms", from_=PHONE, body=f" {word.lower()}")

    text = reply_of(answer)
    assert text is not None
    assert "unsubscribed" in text
    assert "START" in text
    assert await opted_out(pool, patient)


@pytest.mark.parametrize(
    "body", ["Opt out", "Stop.", "stop texting me", "Please unsubscribe me!", "No más mensajes"]
)
async def test_replies_whose_intent_is_clear_opt_out_as_fcc_24_24_reads_them(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str, body: str
) -> None:
    answer = await twilio.send_inbound(f"{hooks}/twilio/sms", from_=PHONE, body=body)

    text = reply_of(answer)
    assert text is not None
    assert "unsubscribed" in text
    assert await opted_out(pool, patient)


async def test_a_revoking_word_in_free_text_asks_a_person_and_changes_nothing(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str
) -> None:
    await twilio.send_inbound(f"{hooks}/twilio/sms", from_=PHONE, body="Stop texting me, I'm fine")
    await twilio.send_inbound(f"{hooks}/twilio/sms", from_=PHONE, body="All good today")

    assert not await opted_out(pool, patient)
    async with pool.acquire() as conn:
        reasons = await conn.fetch("SELECT reason FROM inbox_items ORDER BY id")
    assert [r["reason"] for r in reasons] == [POSSIBLE_OPT_OUT, checkin_replies.NO_CHECKIN]


@pytest.mark.parametrize("word", [k for k, v in KEYWORDS.items() if v is Keyword.OPT_IN])
async def test_start_and_synonyms_opt_back_in(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str, word: str
) -> None:
    await twilio.send_inbound(f"{hooks}/twilio/sms", from_=PHONE, body="STOP")
    assert await opted_out(pool, patient)

    answer = await twilio.send_inbound(f"{hooks}/twilio/sms", from_=PHONE, body=word)

    text = reply_of(answer)
    assert text is not None
    assert "again" in text
    assert not await opted_out(pool, patient)


@pytest.mark.parametrize("word", ["HELP", "info"])
async def test_help_explains_and_changes_nothing(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str, word: str
) -> None:
    answer = await twilio.send_inbound(f"{hooks}/twilio/sms", from_=PHONE, body=word)

    text = reply_of(answer)
    assert text is not None
    assert "STOP" in text
    assert "+1 555 0100" in text
    assert not await opted_out(pool, patient)


async def test_replies_are_in_the_patients_language(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p-es", "+15550100077", language="es")

    answer = await twilio.send_inbound(f"{hooks}/twilio/sms", from_="+15550100077", body="STOP")

    text = reply_of(answer)
    assert text is not None
    assert text.startswith("Ya no recibir")
    assert await opted_out(pool, "p-es")


async def test_a_localised_keyword_matched_by_twilio_counts(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str
) -> None:
    await twilio.send_inbound(
        f"{hooks}/twilio/sms", from_=PHONE, body="BAJA", extra={"OptOutType": "STOP"}
    )

    assert await opted_out(pool, patient)


async def test_stop_opts_out_every_patient_sharing_the_number(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1-spouse", PHONE)

    await twilio.send_inbound(f"{hooks}/twilio/sms", from_=PHONE, body="STOP")

    assert await opted_out(pool, "p1")
    assert await opted_out(pool, "p1-spouse")


# -- free-text replies ------------------------------------------------------------------------


async def test_free_text_is_attached_to_the_latest_unresolved_alert_and_announced(
    pool: asyncpg.Pool, db_url: str, twilio: TwilioSink, hooks: str, patient: str
) -> None:
    async with pool.acquire() as conn:
        older = await add_alert(conn, patient, "bp.hypertensive_crisis")
        latest = await add_alert(
            conn, patient, "spo2.below_88", state="acknowledged", title="Low blood oxygen"
        )
        await add_alert(conn, patient, "news2.partial", state="resolved", severity="HIGH")
    notes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    listener = await connect(db_url)
    await listener.add_listener(
        alert_store.ALERTS_CHANNEL, lambda *args: notes.put_nowait(json.loads(args[3]))
    )
    try:
        answer = await twilio.send_inbound(
            f"{hooks}/twilio/sms", from_=PHONE, body="I feel dizzy", sid="SM" + "a" * 32
        )
        note = await asyncio.wait_for(notes.get(), timeout=5)
    finally:
        await listener.close()

    text = reply_of(answer)
    assert text is not None
    assert "care team will read" in text
    assert note == {
        "alert_id": latest,
        "patient_id": patient,
        "action": "patient_reply",
        "state": "acknowledged",
        "severity": "CRITICAL",
    }
    async with pool.acquire() as conn:
        events = await alert_reads.events(conn, latest)
        assert await alert_reads.events(conn, older) == []
        stored = await sms_store.messages(conn, alert_id=latest)
    reply = events[-1]
    assert (reply["action"], reply["actor"], reply["note"]) == (
        "patient_reply",
        "patient:p1",
        "I feel dizzy",
    )
    assert (reply["from_state"], reply["to_state"]) == ("acknowledged", "acknowledged")
    [message] = stored
    assert (message["direction"], message["status"], message["patient_id"]) == (
        "inbound",
        "received",
        patient,
    )
    assert (message["body"], message["twilio_sid"]) == ("I feel dizzy", "SM" + "a" * 32)


async def test_a_retried_webhook_is_stored_and_audited_once(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str
) -> None:
    async with pool.acquire() as conn:
        alert_id = await add_alert(conn, patient)

    for _ in range(2):
        answer = await twilio.send_inbound(
            f"{hooks}/twilio/sms", from_=PHONE, body="ok", sid="SM" + "b" * 32
        )
        assert reply_of(answer) is not None

    async with pool.acquire() as conn:
        events = await alert_reads.events(conn, alert_id)
        stored = await sms_store.messages(conn, patient_id=patient)
    assert [e["action"] for e in events] == ["patient_reply"]
    assert len(stored) == 1


async def test_a_reply_without_an_open_alert_is_stored_for_the_patient(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str
) -> None:
    await twilio.send_inbound(f"{hooks}/twilio/sms", from_=PHONE, body="All good today")

    async with pool.acquire() as conn:
        [message] = await sms_store.messages(conn, patient_id=patient)
    assert (message["alert_id"], message["body"]) == (None, "All good today")


async def test_unknown_numbers_get_a_generic_reply_and_are_stored_without_patient(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str
) -> None:
    answer = await twilio.send_inbound(f"{hooks}/twilio/sms", from_="+15550109999", body="hello?")

    text = reply_of(answer)
    assert text is not None
    assert "could not match" in text
    async with pool.acquire() as conn:
        [message] = await sms_store.messages(conn)
    assert (message["patient_id"], message["alert_id"], message["body"]) == (None, None, "hello?")


# -- signatures -------------------------------------------------------------------------------


async def test_forged_and_missing_signatures_are_refused(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str
) -> None:
    url = f"{hooks}/twilio/sms"

    forged = await twilio.send_inbound(url, from_=PHONE, body="STOP", auth_token="guessed")
    unsigned = await twilio.send_inbound(url, from_=PHONE, body="STOP", signed=False)
    other_url = await twilio.send_inbound(
        url, from_=PHONE, body="STOP", signed_url=f"{hooks}/twilio/status"
    )

    assert [forged.status, unsigned.status, other_url.status] == [403, 403, 403]
    assert not await opted_out(pool, patient)
    async with pool.acquire() as conn:
        assert await sms_store.messages(conn) == []


async def test_a_tampered_body_is_refused(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str, patient: str
) -> None:
    url = f"{hooks}/twilio/sms"
    fields = {"From": PHONE, "Body": "hello", "MessageSid": "SM" + "c" * 32}
    signature = twilio.signature(url, fields)

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data={**fields, "Body": "STOP"}, headers={"X-Twilio-Signature": signature}
        ) as response,
    ):
        assert response.status == 403
    assert not await opted_out(pool, patient)


async def test_signatures_are_checked_against_the_public_url_behind_a_proxy(
    pool: asyncpg.Pool, twilio: TwilioSink, patient: str
) -> None:
    """Twilio signs the URL it called (the proxy's), not the one this server listens on."""
    public = "https://rpm.example.org"
    async with serve_hooks(pool, api={"public_base_url": public}) as local:
        as_seen_locally = await twilio.send_inbound(f"{local}/twilio/sms", from_=PHONE, body="HELP")
        as_twilio_signs = await twilio.send_inbound(
            f"{local}/twilio/sms", from_=PHONE, body="HELP", signed_url=f"{public}/twilio/sms"
        )

    assert as_seen_locally.status == 403
    assert reply_of(as_twilio_signs) is not None


# -- status callbacks -------------------------------------------------------------------------


async def test_status_callbacks_need_a_valid_signature(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str
) -> None:
    fields = {"MessageSid": "SM" + "d" * 32, "MessageStatus": "delivered"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{hooks}/twilio/status", data=fields) as response:
            assert response.status == 403
        signature = twilio.signature(f"{hooks}/twilio/status", fields)
        async with session.post(
            f"{hooks}/twilio/status", data=fields, headers={"X-Twilio-Signature": signature}
        ) as response:
            assert response.status == 204

    async with pool.acquire() as conn:
        [placeholder] = await sms_store.messages(conn)
    assert (placeholder["twilio_sid"], placeholder["status"]) == ("SM" + "d" * 32, "delivered")


async def test_status_without_sid_is_a_bad_request(twilio: TwilioSink, hooks: str) -> None:
    fields = {"MessageStatus": "delivered"}
    signature = twilio.signature(f"{hooks}/twilio/status", fields)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{hooks}/twilio/status", data=fields, headers={"X-Twilio-Signature": signature}
        ) as response,
    ):
        assert response.status == 400
