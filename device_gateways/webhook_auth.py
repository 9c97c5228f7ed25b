"""Authentication of vendor webhooks: a bearer secret, or an HMAC-SHA256 signature. Pure.

Signature scheme (``auth = 'hmac'``)::

    X-RPM-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

The timestamp is signed with the body and must be within ``tolerance_s`` of our clock,
so a captured request cannot be replayed later (and a replay within the window is
harmless: readings are idempotent). Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac

from rpm.domain.text_input import whole_number


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-RPM-Signature`` header value for ``body`` at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str, body: bytes, header: str | None, now: float, tolerance_s: int = 300
) -> str | None:
    """None when valid, else the reason it is not."""
    if not header:
        return "missing X-RPM-Signature"
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t, v1 = whole_number(parts.get("t"), max_digits=12), parts.get("v1", "")
    if t is None or not v1:
        return "malformed X-RPM-Signature"
    if abs(now - t) > tolerance_s:
        return "signature timestamp outside the allowed window"
    expected = sign(secret, body, t).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, v1):
        return "signature does not match"
    return None


def verify_bearer(secret: str, authorization: str | None) -> str | None:
    """None when ``Authorization: Bearer <secret>`` matches, else the reason."""
    if not authorization or not authorization.startswith("Bearer "):
        return "missing bearer token"
    if not hmac.compare_digest(authorization[7:].encode(), secret.encode()):
        return "bearer token does not match"
    return None
