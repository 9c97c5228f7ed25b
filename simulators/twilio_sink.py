"""A local stand-in for Twilio's Messages and Calls REST API (2010-04-01), for tests and the demo.

The official ``twilio`` client is pointed at this server and talks to it exactly as it would
to api.twilio.com: HTTP Basic auth, form-encoded creates, Twilio's JSON error shape. Requests
may be checked against Twilio's own OpenAPI description (``twilio_api_v2010.json``), so a
request the real API would not understand fails here too.

The sink is deliberately stricter than Twilio in one place: real Twilio ignores unknown
parameters with warning 20001; with a contract given, the sink refuses them with that code.

WhatsApp messages are Messages with ``whatsapp:`` addresses, checked by the same rules plus
Twilio's for channels and Content Templates (``ContentSid``/``ContentVariables``);
``not_on_whatsapp`` makes a number refuse them with 63003. Calls (``POST .../Calls.json``) are
checked against the contract's Call create and Twilio's rules (instructions by ``Url``,
``Twiml`` or ``ApplicationSid``; TwiML that parses, at most 4,000 characters), recorded with
what their TwiML says, and answered on demand: ``answer`` posts the keys pressed to the call's
``<Gather action>``, ``send_call_status`` its progress to its ``StatusCallback``, both signed.

It also plays Twilio's side of the webhooks: it can post delivery status callbacks to the
``StatusCallback`` a message was created with, and inbound SMS to a webhook URL, each signed
with twilio's own ``RequestValidator`` (``X-Twilio-Signature``) as Twilio signs them. Faults
on demand: the next N creates (``fail_next``), every create for a while (``fail_for``) or
until lifted (``set_outage``), and recipients who texted STOP (``unsubscribe``: 21610).

It never logs phone numbers or bodies, only sids, lengths and counts.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import MultiDictProxy
from twilio.request_validator import RequestValidator

from simulators.local_http import listen
from simulators.twilio_calls import (
    CALLS_PATH,
    RecordedCall,
    call_resource,
    load_call_contract,
    record_call,
    validate_call,
)
from simulators.twilio_messages import (
    API_VERSION,
    CREATE_PATH,
    NOT_FOUND,
    NOT_ON_CHANNEL,
    UNAUTHORIZED,
    UNSUBSCRIBED,
    ApiError,
    RecordedMessage,
    SentWebhook,
    basic_credentials,
    count_segments,
    injected_error,
    load_contract,
    message_resource,
    parse_form,
    record,
    same,
    validate_create,
)

__all__ = ["RecordedCall", "RecordedMessage", "SentWebhook", "TwilioSink"]

_log = logging.getLogger(__name__)


class TwilioSink:
    """An aiohttp server speaking Twilio's Messages API, recording what it accepts."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        contract_path: Path | None = None,
    ) -> None:
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._host = host
        self._port = port
        self._contract = load_contract(contract_path) if contract_path is not None else None
        self._call_contract = (
            load_call_contract(contract_path) if contract_path is not None else None
        )
        self._calls: list[RecordedCall] = []
        self._off_whatsapp: set[str] = set()
        self._messages: list[RecordedMessage] = []
        self._resources: dict[str, dict[str, object]] = {}
        self._rejected: list[tuple[int, Mapping[str, str]]] = []
        self._fail_count = 0
        self._fail_status = 503
        self._outage_status: int | None = None
        self._outage_until: float | None = None  # time.monotonic() deadline of fail_for
        self._unsubscribed: set[str] = set()
        self._webhooks: list[SentWebhook] = []
        self._arrived = asyncio.Event()
        self._gate: asyncio.Event | None = None  # hold(): creates wait here before answering
        self.holding = 0  # creates waiting at the gate now
        self._runner: web.AppRunner | None = None
        self.base_url: str | None = None

    async def start(self) -> str:
        """Start listening; return the base URL, e.g. ``http://127.0.0.1:54321``."""
        if self._runner is not None:
            raise RuntimeError("TwilioSink is already started")
        app = web.Application()
        app.router.add_post(CREATE_PATH.replace("AccountSid", "account_sid"), self._create)
        app.router.add_get("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json", self._fetch)
        app.router.add_post(CALLS_PATH.replace("AccountSid", "account_sid"), self._create_call)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner, url = await listen(app, self._host, self._port)
        self.base_url = url
        _log.info("twilio sink listening on %s", url)
        return url

    async def stop(self) -> None:
        """Stop listening; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def messages(self) -> list[RecordedMessage]:
        """Accepted messages, oldest first (a copy)."""
        return list(self._messages)

    @property
    def rejected(self) -> list[tuple[int, Mapping[str, str]]]:
        """(HTTP status, form) of every refused create, oldest first (a copy)."""
        return list(self._rejected)

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` authenticated creates with ``status`` and a Twilio error."""
        _check_error_status(status)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._fail_count = count
        self._fail_status = status

    def set_outage(self, down: bool, status: int = 503) -> None:
        """While down, answer every authenticated create with ``status``."""
        _check_error_status(status)
        self._outage_status = status if down else None
        self._outage_until = None

    def fail_for(self, seconds: float, status: int = 503) -> None:
        """Answer every authenticated create with ``status`` for the next ``seconds``."""
        _check_error_status(status)
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self._outage_status = status
        self._outage_until = time.monotonic() + seconds

    def hold(self) -> None:
        """Keep every message create waiting, unanswered, until ``release``: a slow Twilio,
        so that a test can have several sends in flight at once (``holding`` counts them)."""
        if self._gate is None:
            self._gate = asyncio.Event()

    def release(self) -> None:
        """Answer the creates held by ``hold``, and answer the next ones at once."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    def rotate_auth_token(self, auth_token: str) -> None:
        """The account's auth token becomes ``auth_token`` (as when someone rotates it in the
        console): requests with the old one are refused with 401, error 20003."""
        self._auth_token = auth_token

    def unsubscribe(self, number: str) -> None:
        """``number`` texted STOP: creates to it are refused with 21610 until resubscribed."""
        self._unsubscribed.add(number)

    def resubscribe(self, number: str) -> None:
        self._unsubscribed.discard(number)

    def not_on_whatsapp(self, number: str) -> None:
        """``number`` has no WhatsApp: messages to ``whatsapp:number`` are refused (63003)."""
        self._off_whatsapp.add(number)

    @property
    def calls(self) -> list[RecordedCall]:
        """Accepted calls, oldest first (a copy)."""
        return list(self._calls)

    async def wait_for_calls(
        self,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[RecordedCall]:
        """Wait until at least ``count`` calls were accepted; return all accepted so far."""
        try:
            async with asyncio.timeout(timeout):
                while len(self._calls) < count:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{len(self._calls)} of {count} calls arrived within {timeout}s"
            ) from None
        return list(self._calls)

    def _call(self, sid: str) -> RecordedCall:
        call = next((c for c in self._calls if c.sid == sid), None)
        if call is None:
            raise KeyError(f"no accepted call {sid}")
        return call

    def _call_fields(self, call: RecordedCall, status: str) -> dict[str, str]:
        return {
            "AccountSid": call.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": status,
            "Called": call.to,
            "Caller": call.from_,
            "Direction": "outbound-api",
            "From": call.from_,
            "To": call.to,
        }

    async def answer(
        self, sid: str, digits: str, *, gather: int = 0, signed: bool = True
    ) -> SentWebhook:
        """The callee pressed ``digits`` at the call's ``gather``-th ``<Gather>``: post them
        to its ``action``, signed, as Twilio does (the answer is the TwiML we got back)."""
        call = self._call(sid)
        action = call.gathers[gather].action
        fields = {**self._call_fields(call, "in-progress"), "Digits": digits, "FinishedOnKey": ""}
        return await self._post_webhook(action, fields, signed=signed)

    async def send_call_status(
        self, sid: str, status: str, *, duration_s: int | None = None, error_code: int | None = None
    ) -> SentWebhook:
        """Post a call progress callback (``CallStatus``) to the call's ``StatusCallback``."""
        call = self._call(sid)
        if not call.status_callback:
            raise ValueError(f"call {sid} was created without a StatusCallback")
        fields = {**self._call_fields(call, status), "CallbackSource": "call-progress-events"}
        if duration_s is not None:
            fields["CallDuration"] = str(duration_s)
        if error_code is not None:
            fields["ErrorCode"] = str(error_code)
        return await self._post_webhook(call.status_callback, fields)

    @property
    def webhooks(self) -> list[SentWebhook]:
        """Status callbacks and inbound SMS the sink posted, oldest first (a copy)."""
        return list(self._webhooks)

    def signature(self, url: str, fields: Mapping[str, str], auth_token: str | None = None) -> str:
        """``X-Twilio-Signature`` of a webhook to ``url`` with ``fields``, as Twilio signs it."""
        validator = RequestValidator(auth_token if auth_token is not None else self._auth_token)
        return str(validator.compute_signature(url, dict(fields)))

    async def send_status(
        self,
        sid: str,
        status: str,
        *,
        error_code: int | None = None,
        url: str | None = None,
        signed_url: str | None = None,
    ) -> SentWebhook:
        """Post a status callback for message ``sid`` to its ``StatusCallback`` (or ``url``).

        The callback is signed for ``signed_url`` when given (a proxy in front of ``url``).
        """
        message = next((m for m in self._messages if m.sid == sid), None)
        if message is None:
            raise KeyError(f"no accepted message {sid}")
        target = url or message.status_callback
        if not target:
            raise ValueError(f"message {sid} was created without a StatusCallback")
        fields = {
            "AccountSid": message.account_sid,
            "ApiVersion": API_VERSION,
            "From": message.from_ or "",
            "MessageSid": sid,
            "MessageStatus": status,
            "SmsSid": sid,
            "SmsStatus": status,
            "To": message.to,
        }
        if error_code is not None:
            fields["ErrorCode"] = str(error_code)
        if message.messaging_service_sid:
            fields["MessagingServiceSid"] = message.messaging_service_sid
        resource = self._resources[sid]
        resource["status"] = status
        resource["error_code"] = error_code
        return await self._post_webhook(target, fields, signed_url=signed_url)

    async def send_inbound(
        self,
        url: str,
        *,
        from_: str,
        body: str,
        to: str = "+15005550006",
        sid: str | None = None,
        extra: Mapping[str, str] | None = None,
        signed: bool = True,
        auth_token: str | None = None,
        signed_url: str | None = None,
    ) -> SentWebhook:
        """Post an inbound SMS to the webhook ``url``, signed unless ``signed`` is False.

        ``auth_token`` signs with another token, as a forger would; ``signed_url`` signs for
        another URL, as Twilio does when a proxy forwards its request to ``url``.
        """
        sid = sid or "SM" + uuid.uuid4().hex
        fields = {
            "AccountSid": self._account_sid,
            "ApiVersion": API_VERSION,
            "Body": body,
            "From": from_,
            "MessageSid": sid,
            "NumMedia": "0",
            "NumSegments": str(count_segments(body)),
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "SmsStatus": "received",
            "To": to,
            **(extra or {}),
        }
        return await self._post_webhook(
            url, fields, signed=signed, auth_token=auth_token, signed_url=signed_url
        )

    async def _post_webhook(
        self,
        url: str,
        fields: Mapping[str, str],
        *,
        signed: bool = True,
        auth_token: str | None = None,
        signed_url: str | None = None,
    ) -> SentWebhook:
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if signed:
            headers["X-Twilio-Signature"] = self.signature(signed_url or url, fields, auth_token)
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=dict(fields), headers=headers) as response,
        ):
            sent = SentWebhook(url, dict(fields), response.status, await response.text())
        self._webhooks.append(sent)
        _log.info("webhook %s for %s: HTTP %d", url, fields.get("MessageSid"), sent.status)
        return sent

    # The timeout parameter is part of the API other modules code against.
    async def wait_for(
        self,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[RecordedMessage]:
        """Wait until at least ``count`` messages were accepted; return all accepted so far."""
        try:
            async with asyncio.timeout(timeout):
                while len(self._messages) < count:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{len(self._messages)} of {count} messages arrived within {timeout}s"
            ) from None
        return list(self._messages)

    async def accepted(self) -> AsyncIterator[RecordedMessage]:
        """Each message as it is accepted, from the first on (until the caller stops)."""
        seen = 0
        while True:
            while len(self._messages) <= seen:
                self._arrived.clear()
                await self._arrived.wait()
            for message in self._messages[seen:]:
                yield message
            seen = len(self._messages)

    # -- handlers ---------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        form = parse_form(request.content_type, await request.text())
        if (gate := self._gate) is not None:
            self.holding += 1
            try:
                await gate.wait()
            finally:
                self.holding -= 1
        error = self._refusal(request, form)
        if error is not None:
            self._rejected.append((error.status, form))
            _log.info(
                "refused message create: HTTP %d, code %d (%d refused so far)",
                error.status,
                error.code,
                len(self._rejected),
            )
            return web.json_response(error.as_json(), status=error.status)
        message = record(self._account_sid, form)
        resource = message_resource(message)
        self._messages.append(message)
        self._resources[message.sid] = resource
        self._arrived.set()
        _log.info(
            "accepted message %s (%d body chars, %d accepted so far)",
            message.sid,
            len(message.body or ""),
            len(self._messages),
        )
        return web.json_response(resource, status=201)

    async def _create_call(self, request: web.Request) -> web.Response:
        form = parse_form(request.content_type, await request.text())
        error = self._fault(request) or validate_call(form, self._call_contract)
        if error is not None:
            self._rejected.append((error.status, form))
            _log.info("refused call create: HTTP %d, code %d", error.status, error.code)
            return web.json_response(error.as_json(), status=error.status)
        call = record_call(self._account_sid, form)
        self._calls.append(call)
        self._arrived.set()
        _log.info("accepted call %s (%d calls so far)", call.sid, len(self._calls))
        return web.json_response(call_resource(call, self._call_contract), status=201)

    async def _fetch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response(UNAUTHORIZED.as_json(), status=401)
        resource = self._resources.get(request.match_info["sid"])
        if resource is None:
            return await self._not_found(request)
        return web.json_response(resource)

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response(NOT_FOUND.as_json(), status=404)

    def _refusal(self, request: web.Request, form: MultiDictProxy[str]) -> ApiError | None:
        """Why this create is refused, or None. Auth first, then injected faults, then rules."""
        fault = self._fault(request)
        if fault is not None:
            return fault
        invalid = validate_create(form, self._contract)
        to = form.get("To", "")
        if invalid is None and to in self._unsubscribed:
            return UNSUBSCRIBED
        if invalid is None and to.startswith("whatsapp:") and to[9:] in self._off_whatsapp:
            return NOT_ON_CHANNEL
        return invalid

    def _fault(self, request: web.Request) -> ApiError | None:
        """Refused credentials, or a fault injected on every create (messages and calls)."""
        if not self._authorized(request):
            return UNAUTHORIZED
        if self._outage_until is not None and time.monotonic() >= self._outage_until:
            self._outage_status = self._outage_until = None
        if self._outage_status is not None:
            return injected_error(self._outage_status)
        if self._fail_count > 0:
            self._fail_count -= 1
            return injected_error(self._fail_status)
        return None

    def _authorized(self, request: web.Request) -> bool:
        credentials = basic_credentials(request.headers.get("Authorization", ""))
        if credentials is None:
            return False
        login, password = credentials
        # Evaluate all three so timing does not tell which one was wrong.
        checks = (
            same(login, self._account_sid),
            same(password, self._auth_token),
            same(request.match_info["account_sid"], self._account_sid),
        )
        return all(checks)


def _check_error_status(status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
