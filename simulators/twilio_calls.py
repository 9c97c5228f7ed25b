"""Twilio's Calls resource (REST API 2010-04-01) as the sink plays it: validation of a create
against Twilio's rules and OpenAPI contract, the JSON resource, and what the call's TwiML
says and gathers. Pure: no I/O past reading the contract file."""

import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from multidict import MultiDictProxy, MultiMapping

from simulators.twilio_messages import API_VERSION, FORM_TYPE, ApiError

CALLS_PATH = "/2010-04-01/Accounts/{AccountSid}/Calls.json"
_CALL_SCHEMA = "api.v2010.account.call"
_MAX_TWIML_CHARS = 4000  # the contract: "Twiml ... Max 4000 characters."
_TIMEOUT_RANGE = range(1, 601)  # the contract: "the maximum is 600 seconds"
_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})


def _calls_error(message: str) -> ApiError:
    # https://www.twilio.com/docs/api/errors/21200: a problem with a request to Calls.
    return ApiError(400, 21200, message)


@dataclass(frozen=True, slots=True)
class CallContract:
    create_fields: frozenset[str]
    required_fields: frozenset[str]
    resource_fields: tuple[str, ...]


def load_call_contract(path: Path) -> CallContract:
    """Read the Call create form schema and the Call resource's fields."""
    document = json.loads(path.read_text(encoding="utf-8"))
    create = document["paths"][CALLS_PATH]["post"]
    schema = create["requestBody"]["content"][FORM_TYPE]["schema"]
    resource = document["components"]["schemas"][_CALL_SCHEMA]["properties"]
    return CallContract(
        frozenset(schema["properties"]), frozenset(schema.get("required", ())), tuple(resource)
    )


@dataclass(frozen=True, slots=True)
class Gather:
    action: str
    num_digits: int | None


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One Call create the sink accepted."""

    account_sid: str
    to: str
    from_: str
    twiml: str | None
    url: str | None
    status_callback: str | None
    status_callback_events: tuple[str, ...]
    form: Mapping[str, str] = field(hash=False)
    sid: str
    received_at: datetime

    @property
    def said(self) -> list[tuple[str | None, str]]:
        """(language, text) of every ``<Say>`` in the call's TwiML, in order."""
        if not self.twiml:
            return []
        return [(e.get("language"), e.text or "") for e in _parse(self.twiml).iter("Say")]

    @property
    def gathers(self) -> list[Gather]:
        if not self.twiml:
            return []
        return [
            Gather(e.get("action", ""), int(e.get("numDigits", "0")) or None)
            for e in _parse(self.twiml).iter("Gather")
        ]


def _parse(twiml: str) -> ET.Element:
    """Parse TwiML, refusing document type declarations (TwiML has none): with no entities
    to expand, the standard parser is safe on these at most 4,000 characters."""
    if "<!" in twiml:
        raise ET.ParseError("declarations are not TwiML")
    return ET.fromstring(twiml)  # noqa: S314 - no DTD or entities, bounded size (above)


def _twiml_problem(twiml: str) -> ApiError | None:
    if len(twiml) > _MAX_TWIML_CHARS:
        return _calls_error(f"Twiml is longer than {_MAX_TWIML_CHARS} characters")
    try:
        root = _parse(twiml)
    except ET.ParseError:
        # https://www.twilio.com/docs/api/errors/12100: Document parse failure.
        return ApiError(400, 12100, "Document parse failure")
    if root.tag != "Response":
        return ApiError(400, 12100, "Document parse failure: the root is not <Response>")
    return None


def validate_call(form: MultiMapping[str], contract: CallContract | None) -> ApiError | None:
    """The error Twilio would answer this Call create with, or None if it is acceptable."""
    if contract is not None:
        unknown = sorted(set(form) - contract.create_fields)
        if unknown:
            return ApiError(400, 20001, f"Unknown parameters: {', '.join(unknown)}")
        missing = sorted(contract.required_fields - set(form))
        if missing:
            return _calls_error(f"Missing required parameter {', '.join(missing)}")
    if not form.get("To") or not form.get("From"):
        return _calls_error("A call needs To and From")
    if not (form.get("Url") or form.get("Twiml") or form.get("ApplicationSid")):
        return _calls_error("A call needs Url, Twiml or ApplicationSid")
    twiml = form.get("Twiml")
    if twiml and not form.get("Url"):
        problem = _twiml_problem(twiml)
        if problem is not None:
            return problem
    timeout = form.get("Timeout", "60")
    if not timeout.isdigit() or int(timeout) not in _TIMEOUT_RANGE:
        return _calls_error("Timeout must be 1 to 600 seconds")
    events = set(form.getall("StatusCallbackEvent", []))
    if not events <= _EVENTS:
        return _calls_error(f"Unknown StatusCallbackEvent {', '.join(sorted(events - _EVENTS))}")
    return None


def record_call(account_sid: str, form: MultiDictProxy[str]) -> RecordedCall:
    return RecordedCall(
        account_sid=account_sid,
        to=form["To"],
        from_=form["From"],
        twiml=form.get("Twiml"),
        url=form.get("Url"),
        status_callback=form.get("StatusCallback"),
        status_callback_events=tuple(form.getall("StatusCallbackEvent", [])),
        form=form,
        sid="CA" + uuid.uuid4().hex,
        received_at=datetime.now(UTC).replace(microsecond=0),
    )


def call_resource(call: RecordedCall, contract: CallContract | None) -> dict[str, object]:
    """The JSON Twilio answers a Call create with (schema ``api.v2010.account.call``)."""
    uri = f"/{API_VERSION}/Accounts/{call.account_sid}/Calls/{call.sid}"
    created = format_datetime(call.received_at)
    resource: dict[str, object] = {
        "account_sid": call.account_sid,
        "annotation": None,
        "answered_by": None,
        "api_version": API_VERSION,
        "caller_name": None,
        "date_created": created,
        "date_updated": created,
        "direction": "outbound-api",
        "duration": None,
        "end_time": None,
        "forwarded_from": None,
        "from": call.from_,
        "from_formatted": call.from_,
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": None,
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": call.sid,
        "start_time": None,
        "status": "queued",
        "subresource_uris": {"notifications": f"{uri}/Notifications.json"},
        "to": call.to,
        "to_formatted": call.to,
        "trunk_sid": None,
        "uri": f"{uri}.json",
    }
    if contract is not None:  # exactly the contract's fields
        return {k: resource.get(k) for k in contract.resource_fields}
    return resource
