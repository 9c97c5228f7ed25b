"""The SMS and WhatsApp channel: with its sibling ``alerts/voice.py``, the only modules that
import twilio.

The official client makes every call. ``base_url`` replaces Twilio's host so that
tests and the demo can point the real client at a local server speaking Twilio's
REST protocol. Twilio's exceptions become ours here. Webhook signatures are checked and
TwiML replies written here too, with twilio's own ``RequestValidator`` and
``MessagingResponse``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from multidict import MultiDict
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse

from rpm.domain.errors import (
    CredentialsRefused,
    PermanentDeliveryError,
    RecipientOptedOut,
    TransientDeliveryError,
)

log = logging.getLogger(__name__)

# https://www.twilio.com/docs/api/errors/21610: "Attempt to send to unsubscribed recipient".
UNSUBSCRIBED = 21610
# https://www.twilio.com/docs/api/errors/20003: "Authentication Error - invalid username" (401).
AUTHENTICATION_FAILED = 20003
SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"


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
    """Sends SMS, and WhatsApp messages, through Twilio's Messages resource."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        messaging_service_sid: str | None = None,
        base_url: str | None = None,
        validity_period_s: int | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        """``messaging_service_sid``: send through that Messaging Service (its sender pool
        picks the number) instead of ``From``; US long codes must, with the service linked
        to an A2P 10DLC campaign, or carriers block every message (Twilio error 30034)."""
        self._client, self._http = twilio_client(account_sid, auth_token, base_url, timeout_s)
        # The client imports its REST modules on first use (about half a second of CPU):
        # do it now, at start-up, not on the event loop in the middle of ingest.
        self._messages = self._client.messages
        self._from = from_number
        self._service = messaging_service_sid
        self._validity = validity_period_s

    async def send(
        self,
        to: str,
        body: str,
        *,
        status_callback: str | None = None,
        from_: str | None = None,
        content_sid: str | None = None,
        content_variables: str | None = None,
    ) -> SentSms:
        """Send one message; raise Transient/PermanentDeliveryError when Twilio refuses.

        ``from_`` replaces the SMS sender (a ``whatsapp:`` address for WhatsApp); with a
        Messaging Service an SMS carries ``MessagingServiceSid`` and no ``From``, and a
        WhatsApp message both (the service's WhatsApp sender). With
        ``content_sid`` the message is that approved template, filled with
        ``content_variables`` (a JSON object), and carries no ``Body``: Twilio refuses a
        WhatsApp template sent as ``Body`` outside the 24-hour window (error 63016).
        """
        kwargs: dict[str, Any] = {"to": to}
        if self._service:
            kwargs["messaging_service_sid"] = self._service
            if from_:
                kwargs["from_"] = from_
        else:
            kwargs["from_"] = from_ or self._from
        if content_sid:
            kwargs["content_sid"] = content_sid
            if content_variables is not None:
                kwargs["content_variables"] = content_variables
        else:
            kwargs["body"] = body
        if self._validity:
            kwargs["validity_period"] = self._validity
        if status_callback:
            kwargs["status_callback"] = status_callback
        try:
            message = await self._messages.create_async(**kwargs)
        except TwilioRestException as exc:
            raise delivery_error(exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientDeliveryError(f"network: {exc.__class__.__name__}") from None
        return SentSms(str(message.sid), str(message.status))

    async def close(self) -> None:
        await self._http.close()


def delivery_error(
    exc: TwilioRestException,
) -> TransientDeliveryError | PermanentDeliveryError | CredentialsRefused:
    """Twilio's refusal as our error: 429 and 5xx may be retried, refused credentials hold
    the work until they are fixed, the rest may not be retried."""
    status = int(exc.status or 0)
    code = int(exc.code) if isinstance(exc.code, int) else None
    detail = f"twilio {status} code={exc.code}"
    if status == 401 or code == AUTHENTICATION_FAILED:
        return CredentialsRefused(detail)
    if status == 429 or status >= 500:
        return TransientDeliveryError(detail)
    if code == UNSUBSCRIBED:
        return RecipientOptedOut(detail, code=code)
    return PermanentDeliveryError(detail, code=code)


def twilio_client(
    account_sid: str, auth_token: str, base_url: str | None, timeout_s: float
) -> tuple[Client, AsyncTwilioHttpClient]:
    """The official client (and its HTTP client, to close), sent to ``base_url`` if given."""
    http = (
        _RedirectingHttpClient(base_url, timeout_s)
        if base_url
        else AsyncTwilioHttpClient(timeout=timeout_s)
    )
    return Client(account_sid, auth_token, http_client=http, environment={}), http


def signature_valid(
    auth_token: str,
    url: str,
    params: Sequence[tuple[str, str]],
    signature: str | None,
    signature_settings: str | None = None,
) -> bool:
    """Whether ``signature`` is Twilio's for a webhook to ``url`` with these form fields."""
    if not signature:
        return False
    validator = RequestValidator(auth_token)
    algorithm = get_signature_algorithm(signature_settings)
    return bool(validator.validate(url, MultiDict(params), signature, algorithm))


def twiml_message(text: str | None) -> str:
    """A TwiML ``<Response>`` replying with ``text``, or replying with nothing."""
    response = MessagingResponse()
    if text:
        response.message(text)
    return str(response.to_xml())
