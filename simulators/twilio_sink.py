"""A local stand-in for Twilio's Messages REST API (2010-04-01), for tests and the demo.

The official ``twilio`` client is pointed at this server and talks to it exactly as it would
to api.twilio.com: HTTP Basic auth, form-encoded creates, Twilio's JSON error shape. Requests
may be checked against Twilio's own OpenAPI description (``twilio_api_v2010.json``), so a
request the real API would not understand fails here too.

The sink is deliberately stricter than Twilio in one place: real Twilio ignores unknown
parameters with warning 20001; with a contract given, the sink refuses them with that code.

It also plays Twilio's side of the webhooks: it can post delivery status callbacks to the
``StatusCallback`` a message was created with, and inbound SMS to a webhook URL, each signed
with twilio's own ``RequestValidator`` (``X-Twilio-Signature``) as Twilio signs them. Faults
on demand: the next N creates (``fail_next``), every create for a while (``fail_for``) or
until lifted (``set_outage``), and recipients who texted STOP (``unsubscribe``: 21610).

It never logs phone numbers or bodies, only sids, lengths and counts.
"""

import argparse
import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import re
import signal
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from math import ceil
from pathlib import Path
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from multidict import MultiDict, MultiDictProxy, MultiMapping
from twilio.request_validator import RequestValidator

from simulators.local_http import listen

__all__ = ["RecordedMessage", "SentWebhook", "TwilioSink", "main", "run_forever"]

_log = logging.getLogger(__name__)

_API_VERSION = "2010-04-01"
_CREATE_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
_FORM_TYPE = "application/x-www-form-urlencoded"

# Twilio's documented limits for a Message create: Body up to 1,600 characters (error 21617);
# ValidityPeriod an integer from 1 to 36,000 seconds (contract description; error 21624).
_MAX_BODY_CHARS = 1600
_VALIDITY_RANGE = range(1, 36_001)

# GSM 03.38 default alphabet and its extension table (escape + char = 2 septets); anything
# else forces UCS-2. Segment sizes per 3GPP TS 23.040: 160/153 septets, 70/67 UTF-16 units.
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = frozenset("^{}\\[~]|€\f")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class RecordedMessage:
    """One Message create the sink accepted."""

    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str | None
    validity_period: int | None
    status_callback: str | None
    form: Mapping[str, str] = field(hash=False)  # all form fields as received (a MultiDictProxy)
    sid: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class SentWebhook:
    """A webhook request the sink made to the server under test, and the answer."""

    url: str
    fields: Mapping[str, str]
    status: int
    body: str


@dataclass(frozen=True, slots=True)
class _ApiError:
    """An answer in Twilio's REST error shape."""

    status: int
    code: int
    message: str

    def as_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


_UNAUTHORIZED = _ApiError(401, 20003, "Authenticate")
# https://www.twilio.com/docs/api/errors/21610
_UNSUBSCRIBED = _ApiError(400, 21610, "Attempt to send to unsubscribed recipient")
_NOT_FOUND = _ApiError(404, 20404, "The requested resource was not found")


@dataclass(frozen=True, slots=True)
class _Contract:
    """What the sink needs from Twilio's OpenAPI description of Message create."""

    create_fields: frozenset[str]
    required_fields: frozenset[str]


# ---------------------------------------------------------------------------------------------
# Pure core: contract loading, validation, the message resource. No I/O past reading the file.


def _load_contract(path: Path) -> _Contract:
    """Read the Message create form schema out of Twilio's OpenAPI document."""
    document = json.loads(path.read_text(encoding="utf-8"))
    create = document["paths"][_CREATE_PATH]["post"]
    schema = create["requestBody"]["content"][_FORM_TYPE]["schema"]
    return _Contract(
        create_fields=frozenset(schema["properties"]),
        required_fields=frozenset(schema.get("required", ())),
    )


def _valid_validity_period(value: str) -> bool:
    return _DIGITS.fullmatch(value) is not None and int(value) in _VALIDITY_RANGE


# Checked in order; the first failing rule answers. Codes are Twilio's own for these faults.
_RULES: tuple[tuple[Callable[[MultiMapping[str]], bool], _ApiError], ...] = (
    (lambda f: bool(f.get("To")), _ApiError(400, 21604, "A 'To' phone number is required.")),
    (
        lambda f: bool(f.get("From") or f.get("MessagingServiceSid")),
        _ApiError(400, 21603, "A 'From' phone number is required."),
    ),
    (
        lambda f: bool(f.get("Body") or f.get("MediaUrl") or f.get("ContentSid")),
        _ApiError(400, 21602, "Message body is required."),
    ),
    (
        lambda f: len(f.get("Body", "")) <= _MAX_BODY_CHARS,
        _ApiError(400, 21617, "The concatenated message body exceeds the 1600 character limit."),
    ),
    (
        lambda f: _valid_validity_period(f.get("ValidityPeriod", "1")),
        _ApiError(400, 21624, "Invalid validity period value"),
    ),
)


def _validate_create(form: MultiMapping[str], contract: _Contract | None) -> _ApiError | None:
    """The error Twilio would answer this Message create with, or None if it is acceptable."""
    if contract is not None:
        unknown = sorted(set(form) - contract.create_fields)
        if unknown:
            return _ApiError(400, 20001, f"Unknown parameters: {', '.join(unknown)}")
    for holds, error in _RULES:
        if not holds(form):
            return error
    if contract is not None:
        missing = sorted(contract.required_fields - set(form))
        if missing:
            return _ApiError(400, 70002, f"Missing required parameter {', '.join(missing)}")
    return None


def _injected_error(status: int) -> _ApiError:
    # Twilio's generic API errors are 20000 + HTTP status (20429, 20500, 20503, ...).
    return _ApiError(status, 20000 + status, HTTPStatus(status).phrase)


def _count_segments(body: str) -> int:
    """How many SMS segments Twilio would bill for this body (at least 1)."""
    if all(c in _GSM_BASIC or c in _GSM_EXTENSION for c in body):
        units = sum(2 if c in _GSM_EXTENSION else 1 for c in body)
        single, multi = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
    return 1 if units <= single else ceil(units / multi)


def _message_resource(message: RecordedMessage) -> dict[str, object]:
    """The JSON Twilio answers a create with (schema ``api.v2010.account.message``)."""
    uri = f"/{_API_VERSION}/Accounts/{message.account_sid}/Messages/{message.sid}"
    created = format_datetime(message.received_at)  # RFC 2822, as Twilio dates are
    body = message.body or ""
    scheduled = message.form.get("ScheduleType") == "fixed"
    resource: dict[str, object] = {
        "account_sid": message.account_sid,
        "api_version": _API_VERSION,
        "body": body,
        "date_created": created,
        "date_sent": None,
        "date_updated": created,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": message.from_,
        "messaging_service_sid": message.messaging_service_sid,
        "num_media": str(_media_count(message.form)),
        "num_segments": str(_count_segments(body)),
        "price": None,
        "price_unit": None,
        "sid": message.sid,
        "status": "scheduled" if scheduled else "queued",
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": message.to,
        "uri": f"{uri}.json",
    }
    return resource


def _media_count(form: Mapping[str, str]) -> int:
    if isinstance(form, MultiMapping):
        return len(form.getall("MediaUrl", []))
    return 1 if "MediaUrl" in form else 0


def _parse_form(content_type: str, text: str) -> MultiDictProxy[str]:
    # Twilio reads only form-encoded bodies; anything else arrives as no parameters at all.
    pairs = parse_qsl(text, keep_blank_values=True) if content_type == _FORM_TYPE else []
    return MultiDictProxy(MultiDict(pairs))


def _record(account_sid: str, form: MultiDictProxy[str]) -> RecordedMessage:
    """A RecordedMessage for a form that passed validation."""
    validity = form.get("ValidityPeriod")
    return RecordedMessage(
        account_sid=account_sid,
        to=form["To"],
        from_=form.get("From"),
        messaging_service_sid=form.get("MessagingServiceSid"),
        body=form.get("Body"),
        validity_period=int(validity) if validity is not None else None,
        status_callback=form.get("StatusCallback"),
        form=form,
        sid="SM" + uuid.uuid4().hex,
        received_at=datetime.now(UTC).replace(microsecond=0),
    )


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """(login, password) from an HTTP Basic ``Authorization`` header (RFC 7617), or None."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        return None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        decoded = raw.decode("latin-1")  # what aiohttp's old BasicAuth, used by twilio, sends
    login, colon, password = decoded.partition(":")
    return (login, password) if colon else None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# ---------------------------------------------------------------------------------------------
# The HTTP shell.


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
        self._contract = _load_contract(contract_path) if contract_path is not None else None
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
        self._runner: web.AppRunner | None = None
        self.base_url: str | None = None

    async def start(self) -> str:
        """Start listening; return the base URL, e.g. ``http://127.0.0.1:54321``."""
        if self._runner is not None:
            raise RuntimeError("TwilioSink is already started")
        app = web.Application()
        app.router.add_post(_CREATE_PATH.replace("AccountSid", "account_sid"), self._create)
        app.router.add_get("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json", self._fetch)
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

    def unsubscribe(self, number: str) -> None:
        """``number`` texted STOP: creates to it are refused with 21610 until resubscribed."""
        self._unsubscribed.add(number)

    def resubscribe(self, number: str) -> None:
        self._unsubscribed.discard(number)

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
            "ApiVersion": _API_VERSION,
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
            "ApiVersion": _API_VERSION,
            "Body": body,
            "From": from_,
            "MessageSid": sid,
            "NumMedia": "0",
            "NumSegments": str(_count_segments(body)),
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

    # -- handlers ---------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        form = _parse_form(request.content_type, await request.text())
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
        message = _record(self._account_sid, form)
        resource = _message_resource(message)
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

    async def _fetch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response(_UNAUTHORIZED.as_json(), status=401)
        resource = self._resources.get(request.match_info["sid"])
        if resource is None:
            return await self._not_found(request)
        return web.json_response(resource)

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response(_NOT_FOUND.as_json(), status=404)

    def _refusal(self, request: web.Request, form: MultiDictProxy[str]) -> _ApiError | None:
        """Why this create is refused, or None. Auth first, then injected faults, then rules."""
        if not self._authorized(request):
            return _UNAUTHORIZED
        if self._outage_until is not None and time.monotonic() >= self._outage_until:
            self._outage_status = self._outage_until = None
        if self._outage_status is not None:
            return _injected_error(self._outage_status)
        if self._fail_count > 0:
            self._fail_count -= 1
            return _injected_error(self._fail_status)
        invalid = _validate_create(form, self._contract)
        if invalid is None and form.get("To") in self._unsubscribed:
            return _UNSUBSCRIBED
        return invalid

    def _authorized(self, request: web.Request) -> bool:
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        if credentials is None:
            return False
        login, password = credentials
        # Evaluate all three so timing does not tell which one was wrong.
        checks = (
            _same(login, self._account_sid),
            _same(password, self._auth_token),
            _same(request.match_info["account_sid"], self._account_sid),
        )
        return all(checks)


def _check_error_status(status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError(f"status must be an HTTP error status (400-599), got {status}")


# ---------------------------------------------------------------------------------------------
# Command line, for the demo: python -m simulators.twilio_sink --port N --account-sid ...


async def run_forever(
    *,
    account_sid: str,
    auth_token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    contract_path: Path | None = None,
    emit: Callable[[str], object] | None = None,
) -> None:
    """Serve until cancelled, emitting one line per accepted message (sid and body length)."""
    sink = TwilioSink(
        account_sid=account_sid,
        auth_token=auth_token,
        host=host,
        port=port,
        contract_path=contract_path,
    )
    emit = emit or _print_line
    emit(f"twilio sink listening on {await sink.start()}")
    try:
        seen = 0
        while True:
            try:
                messages = await sink.wait_for(seen + 1, timeout=3600)
            except TimeoutError:
                continue
            for message in messages[seen:]:
                emit(f"accepted {message.sid} body_len={len(message.body or '')}")
            seen = len(messages)
    finally:
        await sink.stop()


def _print_line(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m simulators.twilio_sink``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument(
        "--contract", type=Path, default=None, help="twilio_api_v2010.json to validate against"
    )
    args = parser.parse_args(argv)

    async def serve() -> None:
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await run_forever(
            account_sid=args.account_sid,
            auth_token=args.auth_token,
            host=args.host,
            port=args.port,
            contract_path=args.contract,
        )

    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
