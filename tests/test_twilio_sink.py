"""The Twilio Messages sink, driven by the official twilio client as production drives Twilio."""

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.rest.api.v2010.account.message import MessageInstance

from simulators.twilio_messages import count_segments
from simulators.twilio_sink import TwilioSink

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "sink-test-token"
PATIENT = "+15005550006"
SENDER = "+15005550001"
SERVICE = "MG" + "fedcba9876543210" * 2
BODY = "BP 182/110 at 07:42. Please call the clinic."
REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACT = REPO_ROOT.parent / "shared" / "contracts" / "twilio_api_v2010.json"
CREATE_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
SID = re.compile(r"SM[0-9a-f]{32}")


class SinkHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """Sends what the twilio client addresses to *.twilio.com to the sink instead."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self._base = urlsplit(base_url)

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        parts = urlsplit(url)
        # Client(environment={}) still falls back to os.environ, so TWILIO_EDGE or
        # TWILIO_REGION may turn api.twilio.com into api.<edge>.<region>.twilio.com.
        if parts.hostname == "twilio.com" or (parts.hostname or "").endswith(".twilio.com"):
            url = urlunsplit((self._base.scheme, self._base.netloc, *parts[2:]))
        return await super().request(method, url, *args, **kwargs)


@dataclass
class Running:
    sink: TwilioSink
    url: str


@asynccontextmanager
async def running_sink(contract_path: Path | None = None) -> AsyncIterator[Running]:
    sink = TwilioSink(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, contract_path=contract_path)
    url = await sink.start()
    try:
        yield Running(sink, url)
    finally:
        await sink.stop()


@asynccontextmanager
async def twilio_client(
    url: str, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN
) -> AsyncIterator[Client]:
    http_client = SinkHttpClient(url)
    try:
        yield Client(account_sid, auth_token, http_client=http_client, environment={})
    finally:
        await http_client.close()


@pytest.fixture
def contract_path() -> Path:
    if not CONTRACT.is_file():
        pytest.skip(f"Twilio contract not found at {CONTRACT}")
    return CONTRACT


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    async with running_sink() as r:
        yield r


@pytest.fixture
async def contract_running(contract_path: Path) -> AsyncIterator[Running]:
    async with running_sink(contract_path) as r:
        yield r


@pytest.fixture
async def client(running: Running) -> AsyncIterator[Client]:
    async with twilio_client(running.url) as c:
        yield c


async def post_raw(
    url: str, form: dict[str, str], *, path: str = CREATE_PATH, password: str = AUTH_TOKEN
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": aiohttp.encode_basic_auth(ACCOUNT_SID, password)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, data=form, headers=headers) as response,
    ):
        return response.status, await response.json()


def valid_form(**extra: str) -> dict[str, str]:
    return {"To": PATIENT, "From": SENDER, "Body": BODY, **extra}


# -- accepted creates -------------------------------------------------------------------------


async def test_valid_create_is_recorded_and_answered(running: Running, client: Client) -> None:
    instance = await client.messages.create_async(
        to=PATIENT,
        from_=SENDER,
        body=BODY,
        validity_period=600,
        status_callback="https://rpm.example.org/twilio/status",
    )

    assert isinstance(instance, MessageInstance)
    [recorded] = running.sink.messages
    assert SID.fullmatch(recorded.sid)
    assert instance.sid == recorded.sid
    assert (recorded.account_sid, recorded.to, recorded.from_) == (ACCOUNT_SID, PATIENT, SENDER)
    assert recorded.messaging_service_sid is None
    assert recorded.body == BODY
    assert recorded.validity_period == 600
    assert recorded.status_callback == "https://rpm.example.org/twilio/status"
    assert dict(recorded.form) == {
        "To": PATIENT,
        "From": SENDER,
        "Body": BODY,
        "ValidityPeriod": "600",
        "StatusCallback": "https://rpm.example.org/twilio/status",
    }
    assert recorded.received_at.tzinfo is not None
    assert running.sink.rejected == []
    # The client parsed the answer like a real one: RFC 2822 dates, enums, strings.
    assert (instance.to, instance.from_, instance.body) == (PATIENT, SENDER, BODY)
    assert instance.status == "queued"
    assert instance.direction == "outbound-api"
    assert instance.num_segments == "1"
    assert instance.account_sid == ACCOUNT_SID
    assert isinstance(instance.date_created, datetime)
    assert instance.date_created == recorded.received_at


async def test_messaging_service_stands_in_for_from(running: Running, client: Client) -> None:
    instance = await client.messages.create_async(
        to=PATIENT, messaging_service_sid=SERVICE, body=BODY
    )

    [recorded] = running.sink.messages
    assert (recorded.from_, recorded.messaging_service_sid) == (None, SERVICE)
    assert instance.messaging_service_sid == SERVICE
    assert instance.from_ is None


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"body": "x" * 1600}, id="body-at-limit"),
        pytest.param({"validity_period": 1}, id="validity-min"),
        pytest.param({"validity_period": 36000}, id="validity-max"),
        pytest.param({"body": None, "media_url": ["https://rpm.example.org/c.png"]}, id="media"),
    ],
)
async def test_boundary_creates_are_accepted(
    running: Running, client: Client, extra: dict[str, Any]
) -> None:
    kwargs: dict[str, Any] = {"to": PATIENT, "from_": SENDER, "body": BODY, **extra}
    if kwargs["body"] is None:
        del kwargs["body"]

    await client.messages.create_async(**kwargs)

    assert len(running.sink.messages) == 1


async def test_media_only_message_counts_its_media(running: Running, client: Client) -> None:
    urls = ["https://rpm.example.org/a.png", "https://rpm.example.org/b.png"]

    instance = await client.messages.create_async(to=PATIENT, from_=SENDER, media_url=urls)

    assert instance.num_media == "2"
    [recorded] = running.sink.messages
    assert recorded.body is None
    assert recorded.form.getall("MediaUrl") == urls  # type: ignore[attr-defined]


async def test_fetch_returns_the_stored_message(running: Running, client: Client) -> None:
    created = await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)

    fetched = await client.messages(created.sid).fetch_async()

    assert (fetched.sid, fetched.to, fetched.body) == (created.sid, PATIENT, BODY)
    with pytest.raises(TwilioRestException) as raised:
        await client.messages("SM" + "0" * 32).fetch_async()
    assert (raised.value.status, raised.value.code) == (404, 20404)


# -- refused creates --------------------------------------------------------------------------


async def test_missing_to_is_refused_with_21604(running: Running, client: Client) -> None:
    with pytest.raises(TwilioRestException) as raised:
        await client.messages.create_async(to="", from_=SENDER, body=BODY)

    assert (raised.value.status, raised.value.code) == (400, 21604)
    assert running.sink.messages == []
    [(status, form)] = running.sink.rejected
    assert status == 400
    assert form["Body"] == BODY


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        pytest.param({"to": PATIENT, "body": BODY}, 21603, id="no-from"),
        pytest.param({"to": PATIENT, "from_": SENDER}, 21602, id="no-body"),
        pytest.param({"to": PATIENT, "from_": SENDER, "body": ""}, 21602, id="empty-body"),
        pytest.param({"to": PATIENT, "from_": SENDER, "body": "x" * 1601}, 21617, id="long-body"),
        pytest.param(
            {"to": PATIENT, "from_": SENDER, "body": BODY, "validity_period": 0},
            21624,
            id="validity-zero",
        ),
        pytest.param(
            {"to": PATIENT, "from_": SENDER, "body": BODY, "validity_period": 36001},
            21624,
            id="validity-too-long",
        ),
        pytest.param(
            {"to": PATIENT, "from_": SENDER, "body": BODY, "validity_period": "ten"},
            21624,
            id="validity-not-integer",
        ),
    ],
)
async def test_invalid_creates_are_refused_with_twilio_codes(
    running: Running, client: Client, kwargs: dict[str, Any], code: int
) -> None:
    with pytest.raises(TwilioRestException) as raised:
        await client.messages.create_async(**kwargs)

    assert (raised.value.status, raised.value.code) == (400, code)
    assert running.sink.messages == []
    assert [status for status, _ in running.sink.rejected] == [400]


async def test_wrong_token_is_refused_with_401(running: Running) -> None:
    async with twilio_client(running.url, auth_token="not-the-token") as client:
        with pytest.raises(TwilioRestException) as raised:
            await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)

    assert (raised.value.status, raised.value.code) == (401, 20003)
    assert running.sink.messages == []
    assert [status for status, _ in running.sink.rejected] == [401]


@pytest.mark.parametrize(
    ("path", "password"),
    [
        pytest.param(CREATE_PATH, "not-the-token", id="wrong-token"),
        pytest.param(
            CREATE_PATH.replace(ACCOUNT_SID, "AC" + "1" * 32), AUTH_TOKEN, id="other-acct"
        ),
    ],
)
async def test_refused_auth_answers_twilio_error_shape(
    running: Running, path: str, password: str
) -> None:
    status, body = await post_raw(running.url, valid_form(), path=path, password=password)

    assert status == 401
    assert body == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }


async def test_missing_credentials_are_refused(running: Running) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(running.url + CREATE_PATH, data=valid_form()) as response,
    ):
        assert response.status == 401
        assert (await response.json())["code"] == 20003


# -- injected faults --------------------------------------------------------------------------


async def test_fail_next_fails_that_many_then_recovers(running: Running, client: Client) -> None:
    running.sink.fail_next(2, status=503)

    for _ in range(2):
        with pytest.raises(TwilioRestException) as raised:
            await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)
        assert (raised.value.status, raised.value.code) == (503, 20503)
    await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)

    assert len(running.sink.messages) == 1
    assert [status for status, _ in running.sink.rejected] == [503, 503]


async def test_outage_fails_every_create_until_lifted(running: Running, client: Client) -> None:
    running.sink.set_outage(True, status=429)
    for _ in range(3):
        with pytest.raises(TwilioRestException) as raised:
            await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)
        assert (raised.value.status, raised.value.code) == (429, 20429)

    running.sink.set_outage(False)
    await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)

    assert len(running.sink.messages) == 1
    assert [status for status, _ in running.sink.rejected] == [429, 429, 429]


@pytest.mark.parametrize("status", [200, 302, 600])
def test_injected_status_must_be_an_error(status: int) -> None:
    sink = TwilioSink(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    with pytest.raises(ValueError, match="HTTP error status"):
        sink.fail_next(1, status=status)
    with pytest.raises(ValueError, match="HTTP error status"):
        sink.set_outage(True, status=status)


# -- the contract -----------------------------------------------------------------------------


def contract_schemas(path: Path) -> tuple[set[str], set[str]]:
    """(Message create form fields, message resource keys) as Twilio's OpenAPI document has them."""
    document = json.loads(path.read_text(encoding="utf-8"))
    create = document["paths"]["/2010-04-01/Accounts/{AccountSid}/Messages.json"]["post"]
    form = create["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    resource = document["components"]["schemas"]["api.v2010.account.message"]
    return set(form["properties"]), set(resource["properties"])


async def test_unknown_field_is_refused_with_contract(
    contract_running: Running, running: Running
) -> None:
    form = valid_form(Bogus="1")

    status, body = await post_raw(contract_running.url, form)
    assert status == 400
    assert body["code"] == 20001
    assert "Bogus" in body["message"]
    assert contract_running.sink.messages == []
    assert contract_running.sink.rejected[0][0] == 400

    status, _ = await post_raw(running.url, form)  # the same form passes without a contract
    assert status == 201


async def test_success_body_keys_are_in_contract_message_schema(
    contract_running: Running, contract_path: Path
) -> None:
    _, resource_keys = contract_schemas(contract_path)

    status, body = await post_raw(contract_running.url, valid_form())

    assert status == 201
    assert set(body) <= resource_keys
    assert SID.fullmatch(body["sid"])
    assert body["account_sid"] == ACCOUNT_SID
    assert (body["to"], body["from"], body["body"]) == (PATIENT, SENDER, BODY)
    assert (body["status"], body["direction"], body["num_segments"]) == (
        "queued",
        "outbound-api",
        "1",
    )
    assert parsedate_to_datetime(body["date_created"]).tzinfo is not None
    assert body["uri"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{body['sid']}.json"


async def test_official_client_requests_pass_the_contract(contract_running: Running) -> None:
    async with twilio_client(contract_running.url) as client:
        await client.messages.create_async(
            to=PATIENT,
            from_=SENDER,
            body=BODY,
            validity_period=3600,
            status_callback="https://rpm.example.org/twilio/status",
            provide_feedback=True,
        )

    [recorded] = contract_running.sink.messages
    assert recorded.form["ProvideFeedback"] == "true"


# -- waiting, logging, listening --------------------------------------------------------------


async def test_wait_for_returns_once_enough_arrived(running: Running, client: Client) -> None:
    waiter = asyncio.create_task(running.sink.wait_for(2, timeout=5))
    await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)
    assert not waiter.done()
    await client.messages.create_async(to=PATIENT, from_=SENDER, body="second")

    messages = await waiter

    assert [m.body for m in messages] == [BODY, "second"]


async def test_wait_for_times_out_with_counts(running: Running) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 messages"):
        await running.sink.wait_for(1, timeout=0.05)


async def test_logs_carry_sids_but_no_numbers_or_bodies(
    running: Running, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="simulators.twilio_sink")

    instance = await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)
    with pytest.raises(TwilioRestException):
        await client.messages.create_async(to=PATIENT, body=BODY)

    sink_log = "\n".join(
        r.getMessage() for r in caplog.records if r.name == "simulators.twilio_sink"
    )
    assert instance.sid in sink_log
    assert "refused" in sink_log
    for secret in (PATIENT, SENDER, BODY, AUTH_TOKEN):
        assert secret not in sink_log


async def test_listens_on_the_given_host_and_a_free_port(running: Running) -> None:
    parts = urlsplit(running.url)
    assert (parts.scheme, parts.hostname) == ("http", "127.0.0.1")
    assert parts.port is not None
    assert parts.port > 0


async def test_command_line_prints_sid_and_length_only() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.twilio_sink_cli",
        "--port",
        "0",
        "--account-sid",
        ACCOUNT_SID,
        "--auth-token",
        AUTH_TOKEN,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    assert process.stdout is not None
    try:
        ready = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        url = ready.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:")

        status, body = await post_raw(url, valid_form())
        assert status == 201

        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip()
        assert line == f"accepted {body['sid']} body_len={len(BODY)}"
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0
    assert PATIENT.encode() not in rest


# -- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension-table characters take two septets
        ("€" * 81, 2),
        ("é" * 160, 1),  # in the GSM basic alphabet
        ("ł" * 70, 1),  # not GSM: UCS-2, 70 per single segment
        ("ł" * 71, 2),
        ("😀" * 35, 1),  # outside the BMP: two UTF-16 units each
        ("😀" * 36, 2),
    ],
)
def test_segment_count_follows_gsm7_and_ucs2(body: str, segments: int) -> None:
    assert count_segments(body) == segments


# -- outages in time, unsubscribed recipients, webhooks to the server under test -------------


async def test_fail_for_fails_creates_for_a_time_then_recovers(
    running: Running, client: Client
) -> None:
    running.sink.fail_for(0.3, status=503)

    with pytest.raises(TwilioRestException) as raised:
        await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)
    assert (raised.value.status, raised.value.code) == (503, 20503)
    await asyncio.sleep(0.35)
    await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)

    assert len(running.sink.messages) == 1


async def test_unsubscribed_recipient_is_refused_with_21610(
    running: Running, client: Client
) -> None:
    running.sink.unsubscribe(PATIENT)

    with pytest.raises(TwilioRestException) as raised:
        await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)
    assert (raised.value.status, raised.value.code) == (400, 21610)

    running.sink.resubscribe(PATIENT)
    await client.messages.create_async(to=PATIENT, from_=SENDER, body=BODY)
    assert len(running.sink.messages) == 1


@asynccontextmanager
async def receiver() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, str], str]]]]:
    """A tiny HTTP server recording (path, form, X-Twilio-Signature) of what it receives."""
    received: list[tuple[str, dict[str, str], str]] = []

    async def record(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        received.append((request.path, form, request.headers.get("X-Twilio-Signature", "")))
        return web.Response(text="<Response/>", content_type="application/xml")

    app = web.Application()
    app.router.add_post("/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    finally:
        await runner.cleanup()


async def test_status_callbacks_go_to_the_status_callback_url_signed(
    running: Running, client: Client
) -> None:
    async with receiver() as (url, received):
        created = await client.messages.create_async(
            to=PATIENT, from_=SENDER, body=BODY, status_callback=f"{url}/twilio/status"
        )
        answer = await running.sink.send_status(created.sid, "undelivered", error_code=30003)
        fetched = await client.messages(created.sid).fetch_async()

    assert answer.status == 200
    [(path, form, signature)] = received
    assert path == "/twilio/status"
    assert (form["MessageSid"], form["MessageStatus"], form["ErrorCode"]) == (
        created.sid,
        "undelivered",
        "30003",
    )
    assert form["To"] == PATIENT
    assert RequestValidator(AUTH_TOKEN).validate(f"{url}/twilio/status", form, signature)
    assert fetched.status == "undelivered"
    assert running.sink.webhooks == [answer]


async def test_inbound_sms_is_signed_like_twilio(running: Running) -> None:
    async with receiver() as (url, received):
        answer = await running.sink.send_inbound(f"{url}/twilio/sms", from_=PATIENT, body="STOP")
        await running.sink.send_inbound(f"{url}/twilio/sms", from_=PATIENT, body="x", signed=False)

    assert answer.body == "<Response/>"
    [(_, form, signature), (_, _, unsigned)] = received
    assert (form["From"], form["Body"], form["SmsStatus"]) == (PATIENT, "STOP", "received")
    assert SID.fullmatch(form["MessageSid"])
    assert RequestValidator(AUTH_TOKEN).validate(f"{url}/twilio/sms", form, signature)
    assert not RequestValidator("other").validate(f"{url}/twilio/sms", form, signature)
    assert unsigned == ""
