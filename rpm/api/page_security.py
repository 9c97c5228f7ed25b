"""Security headers of the dashboard's responses: a strict Content-Security-Policy (our own
script and styles only, no inline script), no framing, no sniffing, no referrer, no caching
of patient data; HSTS when the dashboard is served over HTTPS."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.staticfiles import PathLike
from starlette.types import Scope

# Our own script and styles only: no inline script or style, nothing from elsewhere.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# An SVG opened on its own is a document: no script, matplotlib's inline <style> only.
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
SECURITY_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # patient ids are in our URLs
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP 2
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def secure(response: Response, *, hsts: bool, cache: str = "no-store") -> Response:
    """Add the dashboard's security headers (a response may have set its own CSP)."""
    response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    response.headers.setdefault("Cache-Control", cache)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if hsts:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


class SecuredStaticFiles(StaticFiles):
    """Our script and style sheet, with the same headers as the pages; ``hsts`` says, per
    request, whether the app is served over HTTPS."""

    def __init__(self, *, directory: Path, hsts: Callable[[Scope], bool]) -> None:
        super().__init__(directory=directory)
        self._hsts = hsts

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        return secure(response, hsts=self._hsts(scope), cache="no-cache")
