"""Twilio's Messages resource (REST API 2010-04-01) as the sink plays it: validation of a
create against Twilio's rules and OpenAPI contract, its errors, the JSON resource and the
segment count. Pure: no I/O past reading the contract file."""

import base64
import binascii
import hmac
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from math import ceil
from pathlib import Path
from urllib.parse import parse_qsl

from multidict import MultiDict, MultiDictProxy, MultiMapping

API_VERSION = "2010-04-01"
CREATE_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
FORM_TYPE = "application/x-www-form-urlencoded"

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
    content_sid: str | None
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
class ApiError:
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


UNAUTHORIZED = ApiError(401, 20003, "Authenticate")
# https://www.twilio.com/docs/api/errors/21610
UNSUBSCRIBED = ApiError(400, 21610, "Attempt to send to unsubscribed recipient")
NOT_FOUND = ApiError(404, 20404, "The requested resource was not found")


@dataclass(frozen=True, slots=True)
class Contract:
    """What the sink needs from Twilio's OpenAPI description of Message create."""

    create_fields: frozenset[str]
    required_fields: frozenset[str]


def load_contract(path: Path) -> Contract:
    """Read the Message create form schema out of Twilio's OpenAPI document."""
    document = json.loads(path.read_text(encoding="utf-8"))
    create = document["paths"][CREATE_PATH]["post"]
    schema = create["requestBody"]["content"][FORM_TYPE]["schema"]
    return Contract(
        create_fields=frozenset(schema["properties"]),
        required_fields=frozenset(schema.get("required", ())),
    )


_CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")  # the contract's MessagingServiceSid pattern
_WHATSAPP = "whatsapp:"


def _valid_content_variables(value: str | None) -> bool:
    if value is None:
        return True
    try:
        parsed = json.loads(value)
    except ValueError:
        return False
    return isinstance(parsed, dict) and all(v not in (None, "") for v in parsed.values())


def _same_channel(f: MultiMapping[str]) -> bool:
    """A WhatsApp recipient needs a WhatsApp sender (or a Messaging Service to pick one)."""
    to_whatsapp = f.get("To", "").startswith(_WHATSAPP)
    if f.get("MessagingServiceSid") and not f.get("From"):
        return True
    return to_whatsapp == f.get("From", "").startswith(_WHATSAPP)


def _valid_validity_period(value: str) -> bool:
    return _DIGITS.fullmatch(value) is not None and int(value) in _VALIDITY_RANGE


# Checked in order; the first failing rule answers. Codes are Twilio's own for these faults.
_RULES: tuple[tuple[Callable[[MultiMapping[str]], bool], ApiError], ...] = (
    (lambda f: bool(f.get("To")), ApiError(400, 21604, "A 'To' phone number is required.")),
    (
        lambda f: bool(f.get("From") or f.get("MessagingServiceSid")),
        ApiError(400, 21603, "A 'From' phone number is required."),
    ),
    (
        lambda f: bool(f.get("Body") or f.get("MediaUrl") or f.get("ContentSid")),
        ApiError(400, 21602, "Message body is required."),
    ),
    (
        lambda f: len(f.get("Body", "")) <= _MAX_BODY_CHARS,
        ApiError(400, 21617, "The concatenated message body exceeds the 1600 character limit."),
    ),
    (
        lambda f: _valid_validity_period(f.get("ValidityPeriod", "1")),
        ApiError(400, 21624, "Invalid validity period value"),
    ),
    # https://www.twilio.com/docs/api/errors/21701: the Messaging Service does not exist.
    (
        lambda f: (
            "MessagingServiceSid" not in f
            or _SERVICE_SID.fullmatch(f["MessagingServiceSid"]) is not None
        ),
        ApiError(400, 21701, "The Messaging Service does not exist"),
    ),
    # https://www.twilio.com/docs/api/errors/21654, 21655, 21656: Content Templates.
    (
        lambda f: "ContentVariables" not in f or "ContentSid" in f,
        ApiError(400, 21654, "ContentSid Required"),
    ),
    (
        lambda f: "ContentSid" not in f or _CONTENT_SID.fullmatch(f["ContentSid"]) is not None,
        ApiError(400, 21655, "The ContentSid is Invalid"),
    ),
    (
        lambda f: _valid_content_variables(f.get("ContentVariables")),
        ApiError(400, 21656, "The ContentVariables Parameter is invalid"),
    ),
    # https://www.twilio.com/docs/api/errors/63007: no Channel with the specified From address.
    (
        _same_channel,
        ApiError(400, 63007, "Twilio could not find a Channel with the specified From address"),
    ),
)
# https://www.twilio.com/docs/api/errors/63003: the To address is not on the channel.
NOT_ON_CHANNEL = ApiError(400, 63003, "Channel could not find To address")


def validate_create(form: MultiMapping[str], contract: Contract | None) -> ApiError | None:
    """The error Twilio would answer this Message create with, or None if it is acceptable."""
    if contract is not None:
        unknown = sorted(set(form) - contract.create_fields)
        if unknown:
            return ApiError(400, 20001, f"Unknown parameters: {', '.join(unknown)}")
    for holds, error in _RULES:
        if not holds(form):
            return error
    if contract is not None:
        missing = sorted(contract.required_fields - set(form))
        if missing:
            return ApiError(400, 70002, f"Missing required parameter {', '.join(missing)}")
    return None


def injected_error(status: int) -> ApiError:
    # Twilio's generic API errors are 20000 + HTTP status (20429, 20500, 20503, ...).
    return ApiError(status, 20000 + status, HTTPStatus(status).phrase)


def count_segments(body: str) -> int:
    """How many SMS segments Twilio would bill for this body (at least 1)."""
    if all(c in _GSM_BASIC or c in _GSM_EXTENSION for c in body):
        units = sum(2 if c in _GSM_EXTENSION else 1 for c in body)
        single, multi = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
    return 1 if units <= single else ceil(units / multi)


def message_resource(message: RecordedMessage) -> dict[str, object]:
    """The JSON Twilio answers a create with (schema ``api.v2010.account.message``)."""
    uri = f"/{API_VERSION}/Accounts/{message.account_sid}/Messages/{message.sid}"
    created = format_datetime(message.received_at)  # RFC 2822, as Twilio dates are
    body = message.body or ""
    scheduled = message.form.get("ScheduleType") == "fixed"
    resource: dict[str, object] = {
        "account_sid": message.account_sid,
        "api_version": API_VERSION,
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
        "num_segments": str(count_segments(body)),
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


def parse_form(content_type: str, text: str) -> MultiDictProxy[str]:
    # Twilio reads only form-encoded bodies; anything else arrives as no parameters at all.
    pairs = parse_qsl(text, keep_blank_values=True) if content_type == FORM_TYPE else []
    return MultiDictProxy(MultiDict(pairs))


def record(account_sid: str, form: MultiDictProxy[str]) -> RecordedMessage:
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
        content_sid=form.get("ContentSid"),
        form=form,
        sid="SM" + uuid.uuid4().hex,
        received_at=datetime.now(UTC).replace(microsecond=0),
    )


def basic_credentials(header: str) -> tuple[str, str] | None:
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


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
