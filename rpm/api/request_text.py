"""ASGI middleware refusing a request whose path or query cannot be meaningful text: a
control character (NUL, which PostgreSQL text cannot hold, and the other C0 controls) or
percent-encoded bytes that are not UTF-8. Answered 400 before any route, as an
OperationOutcome under ``/fhir`` and ``{"detail": ...}`` elsewhere, so no parser, database
statement or audit row downstream ever sees such text (docs/security.md)."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from rpm.domain.text_input import has_control_character
from rpm.fhir.bundles import operation_outcome

FHIR_PREFIX = "/fhir"
REFUSED = "the request's path or query holds a control character or bytes that are not UTF-8"


def _query_is_text(raw: bytes) -> bool:
    for part in raw.replace(b"+", b" ").split(b"&"):
        try:
            text = unquote_to_bytes(part).decode("utf-8")
        except UnicodeDecodeError:
            return False
        if has_control_character(text):
            return False
    return True


def refused(scope: Scope) -> bool:
    """Whether the request's path or query string is not meaningful text."""
    raw_path: bytes = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "replace")
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return has_control_character(path) or not _query_is_text(scope.get("query_string", b""))


class RefuseControlCharacters:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not refused(scope):
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/"):
            body = orjson.dumps(operation_outcome("invalid", REFUSED))
            media = b"application/fhir+json"
        else:
            body = orjson.dumps({"detail": REFUSED})
            media = b"application/json"
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", media), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
