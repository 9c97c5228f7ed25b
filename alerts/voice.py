"""The voice channel: calls through Twilio's Calls resource, and the TwiML they run.

With ``alerts/sms.py`` (whose client set-up and error conversion it shares) the only modules
that import twilio. A call carries its TwiML inline (``Twiml``, at most 4,000 characters per
Twilio's API description), so Twilio fetches nothing from us to start it: the message in the
patient's language, then ``<Gather numDigits="1">`` asking to press 1, whose answer Twilio
posts to ``gather_url``. Without an answer the call says so and hangs up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.twiml.voice_response import VoiceResponse

from alerts.sms import delivery_error, twilio_client
from alerts.voice_script import Script
from rpm.domain.errors import PermanentDeliveryError, TransientDeliveryError

MAX_TWIML_CHARS = 4000  # Calls API: "Twiml ... Max 4000 characters."
GATHER_TIMEOUT_S = 8
# Call progress events reported to the status callback (Calls API ``StatusCallbackEvent``).
STATUS_EVENTS: Sequence[str] = ("initiated", "ringing", "answered", "completed")


@dataclass(frozen=True, slots=True)
class PlacedCall:
    sid: str
    status: str


def call_twiml(script: Script, gather_url: str) -> str:
    """The call: the message and the prompt inside a one-digit Gather, said twice at most."""
    response = VoiceResponse()
    gather = response.gather(
        num_digits=1, action=gather_url, method="POST", timeout=GATHER_TIMEOUT_S
    )
    gather.say(script.message, language=script.say_language)
    gather.say(script.prompt, language=script.say_language)
    again = response.gather(
        num_digits=1, action=gather_url, method="POST", timeout=GATHER_TIMEOUT_S
    )
    again.say(script.prompt, language=script.say_language)
    response.say(script.not_confirmed, language=script.say_language)
    response.hangup()
    return str(response.to_xml())


def say_twiml(text: str, language: str) -> str:
    """A TwiML answer that says ``text`` and hangs up."""
    response = VoiceResponse()
    response.say(text, language=language)
    response.hangup()
    return str(response.to_xml())


class TwilioVoice:
    """Places calls through Twilio's Calls resource."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str | None = None,
        ring_timeout_s: int = 30,
        timeout_s: float = 10.0,
    ) -> None:
        self._client, self._http = twilio_client(account_sid, auth_token, base_url, timeout_s)
        self._calls = self._client.calls  # import the REST modules now, not on the event loop
        self._from = from_number
        self._ring = ring_timeout_s

    async def call(self, to: str, twiml: str, *, status_callback: str | None = None) -> PlacedCall:
        """Place one call; raise Transient/PermanentDeliveryError when Twilio refuses."""
        if len(twiml) > MAX_TWIML_CHARS:
            raise PermanentDeliveryError(f"TwiML of {len(twiml)} characters is too long")
        kwargs: dict[str, Any] = {
            "to": to,
            "from_": self._from,
            "twiml": twiml,
            "timeout": self._ring,
        }
        if status_callback:
            kwargs["status_callback"] = status_callback
            kwargs["status_callback_event"] = list(STATUS_EVENTS)
            kwargs["status_callback_method"] = "POST"
        try:
            call = await self._calls.create_async(**kwargs)
        except TwilioRestException as exc:
            raise delivery_error(exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientDeliveryError(f"network: {exc.__class__.__name__}") from None
        return PlacedCall(str(call.sid), str(call.status))

    async def close(self) -> None:
        await self._http.close()
