"""ASGI middleware around the whole app: the audit log's writer and the API's security headers.

Routes note accesses to patient data (``rpm.api.access.audit``); this middleware writes
those notes, with the status of the answer, *before* the answer's first byte leaves. If the
audit row cannot be written the request fails (500): no patient data leaves unaudited.
Webhook ingest by devices is not access by a person and notes nothing, so the hot path
pays nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rpm.storage import audit as audit_store

from .access import AUDIT_SCOPE_KEY, entries_with_status
from .page_security import SECURITY_HEADERS

# JSON and FHIR answers are never rendered as pages: nothing may load, nothing may frame them.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
_API_PREFIXES = ("/api/", "/fhir")


class Guard:
    """Audit writer for every request, security headers for ``/api`` and ``/fhir``."""

    def __init__(self, app: ASGIApp, pool: asyncpg.Pool, *, hsts: bool) -> None:
        self.app = app
        self.pool = pool
        headers = {**SECURITY_HEADERS, "Content-Security-Policy": API_CSP}
        if hsts:
            headers["Strict-Transport-Security"] = "max-age=31536000"
        self._headers: Mapping[bytes, bytes] = {
            k.lower().encode(): v.encode() for k, v in headers.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        notes: dict[str, Any] = {}
        scope[AUDIT_SCOPE_KEY] = notes
        path: str = scope.get("path", "")
        api = path.startswith(_API_PREFIXES)

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entries = entries_with_status(notes, int(message["status"]))
                if entries:
                    async with self.pool.acquire() as conn:
                        await audit_store.append(conn, entries)
                if api:
                    message["headers"] = self._with_headers(message.get("headers", []))
            await send(message)

        await self.app(scope, receive, guarded_send)

    def _with_headers(self, raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        present = {k.lower() for k, _ in raw}
        out = list(raw)
        out += [(k, v) for k, v in self._headers.items() if k not in present]
        if b"cache-control" not in present:
            out.append((b"cache-control", b"no-store"))  # patient data: never in a cache
        return out
