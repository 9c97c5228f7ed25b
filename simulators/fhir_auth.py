"""The EHR stand-in's authentication: a static bearer token, and/or OAuth 2.0 client
credentials (RFC 6749 §4.4) issuing bearer tokens that expire."""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Mapping
from urllib.parse import unquote_plus


class FhirAuth:
    """Who may call the FHIR endpoints; no configuration: everyone."""

    def __init__(
        self, bearer_token: str | None, client: tuple[str, str] | None, token_ttl_s: float
    ) -> None:
        self._bearer = bearer_token
        self._client = client
        self._token_ttl_s = token_ttl_s
        self._tokens: dict[str, float] = {}
        self.tokens_issued = 0

    def authorized(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header lets the request in."""
        if self._bearer is None and self._client is None:
            return True
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        if self._bearer is not None and secrets.compare_digest(token, self._bearer):
            return True
        expires = self._tokens.get(token)
        return expires is not None and time.monotonic() < expires

    def token(
        self, form: Mapping[str, object], authorization: str
    ) -> tuple[int, dict[str, object]]:
        """The token endpoint's answer, status and JSON; errors per RFC 6749 §5.2."""
        if self._client is None:
            return 400, {"error": "unsupported_grant_type"}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if _basic_credentials(authorization) != self._client:
            return 401, {"error": "invalid_client"}
        token = secrets.token_urlsafe(24)
        self._tokens[token] = time.monotonic() + self._token_ttl_s
        self.tokens_issued += 1
        return 200, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self._token_ttl_s,
            "scope": str(form.get("scope", "")),
        }

    def revoke_tokens(self) -> None:
        """Forget every token issued (the next use of one gets 401)."""
        self._tokens.clear()


def _basic_credentials(header: str) -> tuple[str, str] | None:
    # Client credentials are form-encoded before Basic encoding (RFC 6749 §2.3.1).
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return unquote_plus(user), unquote_plus(password)
