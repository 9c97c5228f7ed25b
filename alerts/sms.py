"""The SMS channel: the only module that imports twilio.

The official client makes every call. ``base_url`` replaces Twilio's host so that
tests and the demo can point the real client at a local server speaking Twilio's
REST protocol. Twilio's exceptions become ours here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from rpm.errors import PermanentDeliveryError, TransientDeliveryError

log = logging.getLogger(__name__)


class _RedirectingHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """Sends the requests twilio builds for ``*.twilio.com`` to another base URL."""

    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        parts = urlsplit(base_url)
        self._scheme, self._netloc = parts.scheme, parts.netloc

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        parts = urlsplit(url)
        if parts.hostname and parts.hostname.endswith(".twilio.com"):
            url = urlunsplit((self._scheme, self._netloc, parts.path, parts.query, ""))
        return await super().request(method, url, *args, **kwargs)


@dataclass(frozen=True, slots=True)
class SentSms:
    sid: str
    status: str


class TwilioSms:
    """Sends SMS through Twilio's Messages resource."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str | None = None,
        validity_period_s: int | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        http = (
            _RedirectingHttpClient(base_url, timeout_s)
            if base_url
            else AsyncTwilioHttpClient(timeout=timeout_s)
        )
        self._http = http
        self._client = Client(account_sid, auth_token, http_client=http, environment={})
        self._from = from_number
        self._validity = validity_period_s

    async def send(self, to: str, body: str) -> SentSms:
        """Send one message; raise Transient/PermanentDeliveryError when Twilio refuses."""
        kwargs: dict[str, Any] = {"to": to, "from_": self._from, "body": body}
        if self._validity:
            kwargs["validity_period"] = self._validity
        try:
            message = await self._client.messages.create_async(**kwargs)
        except TwilioRestException as exc:
            status = int(exc.status or 0)
            detail = f"twilio {status} code={exc.code}"
            if status == 429 or status >= 500:
                raise TransientDeliveryError(detail) from None
            raise PermanentDeliveryError(detail) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientDeliveryError(f"network: {exc.__class__.__name__}") from None
        return SentSms(str(message.sid), str(message.status))

    async def close(self) -> None:
        await self._http.close()
