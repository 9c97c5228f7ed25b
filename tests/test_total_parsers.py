"""Every input parser is total: hostile values in every path parameter, query parameter,
header and form field of the running server get a 4xx, never a 500 and never a traceback
in the log.

The hostile values are what a prober sends to break a parser that trusts ``str.isdigit``
or ``int``: digits outside ASCII (superscripts, Arabic-Indic, full-width), numbers of 40 and
5,000 digits (past 64 bits, past Python's int-from-text limit), NUL and other control bytes
(PostgreSQL text cannot hold NUL), 5,000-character values, signs, exponents and dates out of
range. Routes come from the app itself, so a new route is probed without being listed here;
the FHIR search parameters from the server's own CapabilityStatement."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from twilio.request_validator import RequestValidator

from device_gateways.webhook_auth import sign
from rpm.api.request_text import REFUSED
from rpm.domain.text_input import whole_number
from rpm.server import Server
from tests.conftest import TWILIO_TOKEN
from tests.helpers import staff_headers

HOSTILE = (
    "²",  # a superscript two: str.isdigit() says yes, int() says no
    "٣",  # Arabic-Indic three: int() takes it, a database id should not
    "\uff11\uff12",  # full-width digits
    "9" * 40,  # past 64 bits
    "1" * 5000,  # past Python's limit for int() of a string (4,300 digits)
    "x" * 5000,
    "a\x00b",  # NUL: PostgreSQL text cannot store it
    "\x00",
    "\x1b[31m",
    "-1",
    "1e309",
    "NaN",
    "2026-13-45T99:99:99Z",
    "ge2026-02-30",
    "",
)
# Streams that never end: probing them would hang; their parameters are the others' too.
ENDLESS = ("/stream",)


def _fill(path: str, name: str, value: str) -> str:
    """``path`` with its parameter ``name`` set to ``value`` and any other set to 1."""
    return re.sub(
        r"\{([^}]+)\}",
        lambda m: quote(value if m.group(1) == name else "1", safe=""),
        path,
    )


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{server.settings.api.port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield client


class Failures:
    def __init__(self) -> None:
        self.found: list[str] = []

    def check(self, what: str, response: httpx.Response) -> None:
        if response.status_code >= 500:
            self.found.append(f"{what}: {response.status_code} {response.text[:200]!r}")


async def _fhir_search_params(http: httpx.AsyncClient, headers: dict[str, str]) -> set[str]:
    statement = (await http.get("/fhir/metadata", headers=headers)).json()
    names = {"_count", "_summary", "_sort", "_total", "_cursor", "_lastUpdated", "_id"}
    for rest in statement["rest"]:
        for resource in rest.get("resource", ()):
            names |= {p["name"] for p in resource.get("searchParam", ())}
    return names


async def test_hostile_path_and_query_values_get_4xx_and_no_traceback(
    server: Server, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    pool = server.pool
    assert pool is not None
    headers = await staff_headers(pool)
    fhir_params = await _fhir_search_params(http, headers)
    failures = Failures()
    caplog.set_level(logging.ERROR)
    schema = (await http.get("/openapi.json")).json()
    assert len(schema["paths"]) > 80  # the whole API, not a handful
    probed = 0
    for path, operations in schema["paths"].items():
        if path.endswith(ENDLESS):
            continue
        for method, operation in operations.items():
            params = operation.get("parameters", [])
            for param in params:
                if param["in"] not in ("path", "query", "header"):
                    continue
                for value in HOSTILE:
                    where = {"path": {}, "query": {}, "header": {}}
                    target = path
                    if param["in"] == "path":
                        target = _fill(path, param["name"], value)
                    elif param["in"] == "query":
                        where["query"] = {param["name"]: value}
                    elif value.isprintable():  # a header holds no control character
                        where["header"] = {param["name"]: value.encode()}
                    response = await http.request(
                        method.upper(),
                        _fill(target, "", ""),
                        params=where["query"],
                        headers={**headers, **where["header"]},
                    )
                    probed += 1
                    failures.check(f"{method} {path} {param['name']}={value[:12]!r}", response)
            if path.startswith("/fhir/") and method == "get" and "{" not in path:
                for name in sorted(fhir_params):
                    for value in HOSTILE:
                        response = await http.get(
                            path, params={"patient": "p1", name: value}, headers=headers
                        )
                        probed += 1
                        failures.check(f"GET {path} ?{name}={value[:12]!r}", response)
    assert probed > 1000
    tracebacks = [r.getMessage()[:200] for r in caplog.records if r.exc_info]
    assert failures.found == [], "\n".join(failures.found[:60])
    assert tracebacks == []


def _twilio_signed(url: str, form: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, form)}


async def test_hostile_twilio_form_fields_get_4xx_and_no_traceback(
    server: Server, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    failures = Failures()
    base = str(http.base_url).rstrip("/")
    forms: dict[str, dict[str, str]] = {
        "/twilio/status": {"MessageSid": "SM" + "0" * 32, "MessageStatus": "failed"},
        "/twilio/sms": {"MessageSid": "SM" + "1" * 32, "From": "+15550100", "Body": "hi"},
        "/twilio/voice/status": {"CallSid": "CA" + "0" * 32, "CallStatus": "failed"},
        "/twilio/voice/gather": {"CallSid": "CA" + "0" * 32, "Digits": "1"},
    }
    for path, form in forms.items():
        fields = [
            *form,
            "ErrorCode",
            "NumMedia",
            "MediaUrl0",
            "MediaContentType0",
            "To",
            "AnsweredBy",
        ]
        for field in fields:
            for value in HOSTILE:
                data: dict[str, Any] = {**form, field: value}
                response = await http.post(
                    path, data=data, headers=_twilio_signed(base + path, data)
                )
                failures.check(f"POST {path} {field}={value[:12]!r}", response)
    tracebacks = [r.getMessage()[:200] for r in caplog.records if r.exc_info]
    assert failures.found == [], "\n".join(failures.found[:60])
    assert tracebacks == []


async def test_hostile_webhook_signatures_get_4xx(
    server: Server, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    pool = server.pool
    assert pool is not None
    made = await http.post(
        "/api/integrations",
        json={"id": "probe-cloud", "name": "probe", "auth": "hmac", "formats": ["canonical"]},
        headers=await staff_headers(pool),
    )
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    caplog.set_level(logging.ERROR)
    failures = Failures()
    body = b"[]"
    good = sign(secret, body, int(time.time()))
    for value in (v for v in HOSTILE if v.isprintable()):  # a header holds no control character
        for header in (f"t={value},v1=00", f"t=1,v1={value}", value, good + "," + value):
            response = await http.post(
                "/ingest/canonical",
                content=body,
                headers={
                    "X-RPM-Integration": "probe-cloud",
                    "X-RPM-Signature": header.encode(),
                    "Content-Type": "application/json",
                },
            )
            failures.check(f"X-RPM-Signature {header[:20]!r}", response)
            assert response.status_code == 401 or header.startswith(good), response.text
    tracebacks = [r.getMessage()[:200] for r in caplog.records if r.exc_info]
    assert failures.found == [], "\n".join(failures.found[:60])
    assert tracebacks == []


@pytest.mark.pure
@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("0", 0),
        ("42", 42),
        ("9" * 18, 10**18 - 1),  # fits bigint
        ("9" * 19, None),  # might not
        ("²", None),
        ("٣", None),
        ("\uff11", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1_000", None),
        ("", None),
        (None, None),
        ("1" * 5000, None),
    ],
)
def test_whole_number_takes_ascii_digits_only(text: str | None, number: int | None) -> None:
    assert whole_number(text) == number


@pytest.mark.pure
def test_whole_number_bounds_its_digits() -> None:
    assert whole_number("12345", max_digits=5) == 12345
    assert whole_number("123456", max_digits=5) is None


async def test_a_control_character_is_refused_before_any_route(
    server: Server, http: httpx.AsyncClient
) -> None:
    pool = server.pool
    assert pool is not None
    headers = await staff_headers(pool)
    fhir = await http.get("/fhir/Observation", params={"patient": "a\x00b"}, headers=headers)
    assert fhir.status_code == 400
    assert fhir.headers["content-type"] == "application/fhir+json"
    assert fhir.json()["issue"][0]["code"] == "invalid"
    api = await http.get("/api/teams/a%00b/on-call", headers=headers)
    assert (api.status_code, api.json()) == (400, {"detail": REFUSED})
    assert api.headers["x-content-type-options"] == "nosniff"  # the guard's headers too
    not_utf8 = await http.get("/api/alerts?state=%FF", headers=headers)
    assert not_utf8.status_code == 400
    fine = await http.get("/api/alerts", params={"state": "open"}, headers=headers)
    assert fine.status_code == 200
