"""What the SMS worker (``rpm.workers.sms_outbox``) is configured with and sends through:
its knobs, read from the settings, and the channel it hands messages to (``alerts.sms``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from alerts.sms import SentSms
from rpm.backoff import Backoff
from rpm.settings import ApiSettings, SmsSettings


class SmsChannel(Protocol):
    async def send(
        self,
        to: str,
        body: str,
        *,
        status_callback: str | None = None,
        from_: str | None = None,
        content_sid: str | None = None,
        content_variables: str | None = None,
        expires: bool = True,
    ) -> SentSms: ...


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """The worker's knobs: ``from_settings`` (their defaults are the settings')."""

    poll_interval_s: float
    max_attempts: int
    backoff: Backoff
    daily_cap: int
    status_callback_url: str | None  # None: Twilio reports no delivery status
    dashboard_url: str
    emergency_number: str
    service_name: str = "Home Health Monitoring"  # RPM_SMS_SERVICE_NAME
    batch: int = 50  # items claimed per pass

    @classmethod
    def from_settings(cls, sms: SmsSettings, api: ApiSettings) -> DeliveryConfig:
        """``api``: where Twilio's status callbacks and nurses' dashboard links point."""
        return cls(
            poll_interval_s=sms.outbox_poll_interval_s,
            max_attempts=sms.outbox_max_attempts,
            backoff=sms.backoff,
            daily_cap=sms.daily_cap,
            status_callback_url=api.public_url("/twilio/status"),
            dashboard_url=api.dashboard_link(),
            emergency_number=sms.emergency_number,
            service_name=sms.service_name,
        )
