"""What a production deployment must not start with: the start-up check of ``rpm serve``.

Outside local mode (``RPM_DEPLOYMENT=production``, the default) the server refuses to start
with any of these, and names every one at once so a clinic fixes them in one go:

- the demo Twilio account SID or auth token: the token also checks the signatures of
  Twilio's webhooks, so a server holding the well-known demo token accepts forged STOP and
  status callbacks;
- Twilio's magic test number as the sender of messages or calls (it works only with test
  credentials);
- callback URLs Twilio cannot reach: ``RPM_PUBLIC_BASE_URL`` unset (the API's bind address
  is used) or on a loopback or unspecified address (``0.0.0.0``, ``127.0.0.1``, ``::1``,
  ``localhost``); every real webhook would then be refused with 403, and status callbacks
  would never arrive; the same for ``RPM_DASHBOARD_URL`` (the link in nurses' SMS);
- no ``RPM_SMS_HELP_CONTACT``: the CTIA Messaging Principles and Best Practices (2023)
  expect the HELP answer and the opt-in confirmation to say how to reach the sender.

Local mode (``RPM_DEPLOYMENT=local``) is what ``rpm demo``, ``rpm simulate``, ``rpm serve
--local`` and the test fixtures run in (``rpm.local_endpoints.settings_for_local``).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from rpm.domain.errors import ConfigurationError

from . import Settings
from .care import DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, TEST_FROM_NUMBER


def _unreachable(url: str) -> str | None:
    """Why Twilio (or a nurse's phone) cannot reach ``url``, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL"
    host = parts.hostname.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return f"names {host}, which is this machine"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_loopback:
        return f"names the loopback address {host}"
    if address.is_unspecified:
        return f"names {host}, a bind address, not one anybody can call"
    return None


def problems(settings: Settings) -> list[str]:
    """What makes ``settings`` unsafe for production, one sentence each (none: safe)."""
    sms, api, channels = settings.sms, settings.api, settings.channels
    found: list[str] = []
    if sms.account_sid == DEMO_ACCOUNT_SID or not sms.account_sid:
        found.append("RPM_TWILIO_ACCOUNT_SID is the demo account: set the clinic's (AC...)")
    if sms.auth_token.get_secret_value() in (DEMO_AUTH_TOKEN, ""):
        found.append(
            "RPM_TWILIO_AUTH_TOKEN is the demo token, which also checks Twilio's webhook "
            "signatures (anybody could forge STOP and status callbacks): set the account's "
            "auth token"
        )
    if sms.messaging_service_sid is None and sms.from_number == TEST_FROM_NUMBER:
        found.append(
            f"RPM_TWILIO_FROM_NUMBER is Twilio's test number {TEST_FROM_NUMBER}: set "
            "RPM_TWILIO_MESSAGING_SERVICE_SID (US: linked to an A2P 10DLC campaign) or a "
            "number of the account"
        )
    if (channels.voice_from or sms.from_number) == TEST_FROM_NUMBER:
        found.append(
            f"calls would come from Twilio's test number {TEST_FROM_NUMBER}: set "
            "RPM_VOICE_FROM_NUMBER (or RPM_TWILIO_FROM_NUMBER) to a number of the account"
        )
    if api.public_base_url is None:
        found.append(
            "RPM_PUBLIC_BASE_URL is not set: Twilio would be told to call back "
            f"http://{api.host}:{api.port}, and every webhook would be refused (403); set the "
            "https address Twilio reaches this server at"
        )
    elif (why := _unreachable(api.public_base_url)) is not None:
        found.append(f"RPM_PUBLIC_BASE_URL {why}: set the address Twilio reaches this server at")
    if api.dashboard_url is not None and (why := _unreachable(api.dashboard_url)) is not None:
        found.append(f"RPM_DASHBOARD_URL {why}: nurses' SMS would link nowhere")
    if not sms.help_contact.strip():
        found.append(
            "RPM_SMS_HELP_CONTACT is empty: HELP answers and opt-in confirmations must say how "
            "to reach the clinic (e.g. its phone number)"
        )
    return found


def require_safe(settings: Settings) -> None:
    """Raise ConfigurationError naming every problem, unless local mode or none."""
    if settings.operations.deployment == "local":
        return
    found = problems(settings)
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise ConfigurationError(
            f"refusing to start a production deployment (RPM_DEPLOYMENT=production) with "
            f"{len(found)} problem{'s' if len(found) > 1 else ''}:\n{lines}\n"
            "(RPM_DEPLOYMENT=local runs the demo and tests without these checks)"
        )
