"""Settings of what the server does with readings: rules, alerts, SMS and the EHR push.

A default is written once. Where a pure core's config holds it (``EscalationConfig``,
``SnoozeCaps``), the field's default is read from there.
"""

from __future__ import annotations

import re
from datetime import timedelta
from types import MappingProxyType
from typing import Annotated

from pydantic import Field, SecretStr, field_validator

from alerts.escalation import EscalationConfig
from alerts.policy import SnoozeCaps
from rpm.backoff import Backoff
from rpm.billing.time import TimePolicy
from rpm.domain import Metric, Severity
from rpm.domain.severity import SeverityField
from rpm.engagement import planning
from rpm.validation import ClockPolicy

from ._group import Group, default_of

_MINUTE = timedelta(minutes=1)
# The defaults that let `rpm demo` and the tests run without a Twilio account; a production
# deployment that still has them is refused at start-up (rpm/settings/safety.py).
DEMO_ACCOUNT_SID = "ACdemo00000000000000000000000000"
DEMO_AUTH_TOKEN = "demo-token"  # noqa: S105 - a placeholder, refused outside local mode
# Twilio's magic test number: valid with test credentials only
# (https://www.twilio.com/docs/iam/test-credentials#test-sms-messages-parameters-From).
TEST_FROM_NUMBER = "+15005550006"
_MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")  # the contract's pattern
_ESCALATION = EscalationConfig()
_CLOCK = ClockPolicy()

Minutes = Annotated[float, Field(ge=0)]


def _minutes(span: timedelta | None) -> float | None:
    return None if span is None else span / _MINUTE


class RuleSettings(Group):
    """The rule engine: the missing-data and confirmation timers, picking up new program
    versions, and the readings kept in memory."""

    missing_data_interval_s: float = Field(
        300.0,
        gt=0,
        validation_alias="RPM_MISSING_DATA_INTERVAL_S",
        description="how often missing-data rules are evaluated",
    )
    confirm_interval_s: float = Field(
        10.0,
        gt=0,
        validation_alias="RPM_CONFIRM_INTERVAL_S",
        description="how often confirmations before paging whose window ended are paged",
    )
    refresh_s: float = Field(
        2.0,
        ge=0,
        validation_alias="RPM_RULES_REFRESH_S",
        description="how soon a program version published by another process is used",
    )
    buffer_capacity: dict[Metric, int] = Field(
        default_factory=dict,
        validation_alias="RPM_RULE_BUFFER_CAPACITY",
        description='readings kept in memory per patient and metric, e.g. `{"spo2": 128}`',
        json_schema_extra={"default_note": "see `rules/buffers.py`"},
    )


class AlertSettings(Group):
    """Alert escalation, re-notification and snooze (alerts/escalation.py,
    alerts/policy.py). Per-severity values are JSON objects by severity name; severities
    not named keep their defaults."""

    escalation_after_min: dict[SeverityField, Minutes | None] = Field(
        default_factory=lambda: {s: _minutes(d) for s, d in _ESCALATION.delays.items()},
        validation_alias="RPM_ESCALATION_AFTER_MIN",
        description="minutes unacknowledged before the next on-call tier is texted, per "
        "severity (null: never)",
    )
    escalation_retry_min: float = Field(
        _ESCALATION.retry_after / _MINUTE,
        gt=0,
        validation_alias="RPM_ESCALATION_RETRY_MIN",
        description="minutes between tries when nobody is on call",
    )
    renotify_after_min: float = Field(
        _minutes(_ESCALATION.renotify_after) or 0.0,
        ge=0,
        validation_alias="RPM_RENOTIFY_AFTER_MIN",
        description="an acknowledged alert still firing this long after re-opens (0: never)",
    )
    snooze_cap_min: dict[SeverityField, Minutes] = Field(
        default_factory=lambda: {s: cap / _MINUTE for s, cap in SnoozeCaps().caps.items()},
        validation_alias="RPM_SNOOZE_CAP_MIN",
        description="longest snooze per severity, minutes",
    )
    timer_interval_s: float = Field(
        10.0,
        gt=0,
        validation_alias="RPM_ALERT_TIMER_INTERVAL_S",
        description="how often escalation and snooze timers run",
    )

    @field_validator("escalation_after_min")
    @classmethod
    def _escalation_over_defaults(
        cls, given: dict[Severity, float | None]
    ) -> dict[Severity, float | None]:
        return {**{s: _minutes(d) for s, d in _ESCALATION.delays.items()}, **given}

    @field_validator("snooze_cap_min")
    @classmethod
    def _caps_over_defaults(cls, given: dict[Severity, float]) -> dict[Severity, float]:
        return {**{s: cap / _MINUTE for s, cap in SnoozeCaps().caps.items()}, **given}

    def escalation(self) -> EscalationConfig:
        renotify = self.renotify_after_min
        return EscalationConfig(
            delays=MappingProxyType(
                {
                    s: None if m is None else timedelta(minutes=m)
                    for s, m in self.escalation_after_min.items()
                }
            ),
            retry_after=timedelta(minutes=self.escalation_retry_min),
            renotify_after=timedelta(minutes=renotify) if renotify > 0 else None,
        )

    def snooze_caps(self) -> SnoozeCaps:
        return SnoozeCaps(
            MappingProxyType({s: timedelta(minutes=m) for s, m in self.snooze_cap_min.items()})
        )


class SmsSettings(Group):
    """SMS through Twilio: the account, what patients are told and how often, and the SMS
    outbox worker (rpm/workers/sms_outbox.py), whose poll interval the FHIR push worker
    shares. Retries wait between half and all of min(cap, base * 2^(attempt-1)) s
    (rpm/backoff.py)."""

    account_sid: str = Field(
        DEMO_ACCOUNT_SID,
        validation_alias="RPM_TWILIO_ACCOUNT_SID",
        description="Twilio account",
    )
    auth_token: SecretStr = Field(
        SecretStr(DEMO_AUTH_TOKEN),
        validation_alias="RPM_TWILIO_AUTH_TOKEN",
        description="Twilio auth token (secret)",
    )
    from_number: str = Field(
        TEST_FROM_NUMBER,
        validation_alias="RPM_TWILIO_FROM_NUMBER",
        description="sender number (not used for messages when a Messaging Service is set)",
    )
    messaging_service_sid: str | None = Field(
        None,
        validation_alias="RPM_TWILIO_MESSAGING_SERVICE_SID",
        description="Messaging Service (`MG...`) that sends every SMS and WhatsApp message "
        "instead of `From`; US numbers need one linked to an A2P 10DLC campaign (error 30034 "
        "otherwise)",
        json_schema_extra={"default_note": "send from `RPM_TWILIO_FROM_NUMBER`"},
    )
    base_url: str | None = Field(
        None,
        validation_alias="RPM_TWILIO_BASE_URL",
        description="send Twilio's requests to another base URL (tests, demo)",
        json_schema_extra={"default_note": "Twilio itself"},
    )
    validity_period_s: int = Field(
        900,
        validation_alias="RPM_SMS_VALIDITY_PERIOD_S",
        description="drop an SMS Twilio could not deliver within this time",
    )
    daily_cap: int = Field(
        3,
        ge=0,
        validation_alias="RPM_SMS_DAILY_CAP",
        description="non-urgent patient SMS per patient per local day",
    )
    emergency_number: str = Field(
        "911",
        validation_alias="RPM_SMS_EMERGENCY_NUMBER",
        description="the number urgent SMS tell patients to call",
    )
    service_name: str = Field(
        "Home Health Monitoring",
        min_length=1,
        max_length=40,
        validation_alias="RPM_SMS_SERVICE_NAME",
        description=(
            "the service name patient texts and calls are from, for care teams without their"
            " own (care_teams.service_name)"
        ),
    )
    help_contact: str = Field(
        "",
        validation_alias="RPM_SMS_HELP_CONTACT",
        description="appended to the HELP reply and the opt-in confirmation (the clinic's "
        "phone number); required outside local mode",
    )
    outbox_poll_interval_s: float = Field(
        0.5,
        gt=0,
        validation_alias="RPM_OUTBOX_POLL_INTERVAL_S",
        description="SMS worker: sleep when the outbox is empty",
    )
    outbox_max_attempts: int = Field(
        12,
        ge=1,
        validation_alias="RPM_OUTBOX_MAX_ATTEMPTS",
        description="SMS worker: attempts before an item fails",
    )
    outbox_backoff_base_s: float = Field(
        2.0,
        gt=0,
        validation_alias="RPM_OUTBOX_BACKOFF_BASE_S",
        description="SMS retry backoff base: each wait is between half and all of its ceiling",
    )
    outbox_backoff_cap_s: float = Field(
        300.0,
        gt=0,
        validation_alias="RPM_OUTBOX_BACKOFF_CAP_S",
        description="SMS retry backoff cap: the ceiling is min(cap, base * 2^(attempt-1))",
    )

    @field_validator("messaging_service_sid")
    @classmethod
    def _service_sid(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not _MESSAGING_SERVICE_SID.fullmatch(value):
            raise ValueError("not a Messaging Service SID (MG + 32 hex digits)")
        return value

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.outbox_backoff_base_s, self.outbox_backoff_cap_s)


_CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")


class ChannelSettings(Group):
    """Channels beyond SMS (docs/channels.md): WhatsApp through Twilio's Messages API (same
    account as SMS) and voice calls for critical alerts through its Calls API. Without a
    WhatsApp sender, patients who prefer WhatsApp get their next channel."""

    whatsapp_from: str | None = Field(
        None,
        validation_alias="RPM_WHATSAPP_FROM",
        description="WhatsApp sender number, E.164 (sent as `whatsapp:+...`)",
        json_schema_extra={"default_note": "no WhatsApp"},
    )
    whatsapp_templates: dict[str, str] = Field(
        default_factory=dict,
        validation_alias="RPM_WHATSAPP_TEMPLATES",
        description="approved WhatsApp templates (ContentSid) by kind of message, outside the "
        '24-hour window: `{"alert": "HX...", "alert:es": "HX...", "campaign": "HX..."}`',
    )
    voice_from: str | None = Field(
        None,
        validation_alias="RPM_VOICE_FROM_NUMBER",
        description="caller id of voice calls, a Twilio number",
        json_schema_extra={"default_note": "`RPM_TWILIO_FROM_NUMBER`"},
    )
    voice_unacknowledged_min: float = Field(
        15.0,
        ge=0,
        validation_alias="RPM_VOICE_UNACKNOWLEDGED_MIN",
        description="call the patient about a critical alert still open (neither acknowledged "
        "nor answered by the patient) this long after it was sent (0: never)",
    )
    voice_ring_timeout_s: int = Field(
        30,
        ge=5,
        le=600,
        validation_alias="RPM_VOICE_RING_TIMEOUT_S",
        description="seconds a call rings before Twilio gives up (no-answer)",
    )

    @field_validator("whatsapp_from")
    @classmethod
    def _bare_number(cls, value: str | None) -> str | None:
        return value.removeprefix("whatsapp:") if value else None

    @field_validator("whatsapp_templates")
    @classmethod
    def _content_sids(cls, given: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k, sid in given.items() if not _CONTENT_SID.fullmatch(sid))
        if bad:
            raise ValueError(f"not a ContentSid (HX + 32 hex digits) for {', '.join(bad)}")
        return given


class EngagementSettings(Group):
    """Campaigns between the alerts (docs/engagement.md): how often the planner runs."""

    planner_interval_s: float = Field(
        60.0,
        gt=0,
        validation_alias="RPM_CAMPAIGN_PLANNER_INTERVAL_S",
        description="how often live campaigns are evaluated and their messages planned",
    )
    planner_timeout_s: float = Field(
        30.0,
        gt=0,
        validation_alias="RPM_CAMPAIGN_PLANNER_TIMEOUT_S",
        description="longest one campaign's planning may take before it is skipped for the pass",
    )
    planner_reconcile_s: float = Field(
        planning.RECONCILE_S,
        gt=0,
        validation_alias="RPM_CAMPAIGN_PLANNER_RECONCILE_S",
        description="a live campaign is evaluated over every patient at least this often, as a "
        "safety net; between, a pass looks only at the time zones whose day or trigger time "
        "came and the patients whose data changed",
    )
    planner_full_after_s: float = Field(
        planning.FULL_AFTER_S,
        gt=0,
        validation_alias="RPM_CAMPAIGN_PLANNER_FULL_AFTER_S",
        description="a campaign not planned for this long (the planner stopped, a failing "
        "campaign) is evaluated over every patient at its next pass",
    )
    planner_connections: int = Field(
        2,
        ge=1,
        le=8,
        validation_alias="RPM_CAMPAIGN_PLANNER_CONNECTIONS",
        description="database connections a pass that looks at a whole time zone (or at "
        "2,000 patients or more) plans on, side by side, each a disjoint part of the patients; "
        "taken from the pool only when free (about the database's CPU cores)",
    )


class TimeTrackingSettings(Group):
    """Time entries and timers (docs/time-tracking.md)."""

    entry_max_minutes: int = Field(
        default_of(TimePolicy, "entry_max_minutes"),
        ge=1,
        le=1440,
        validation_alias="RPM_TIME_ENTRY_MAX_MINUTES",
        description="the longest time entry; a longer manual entry is refused (422), a timer "
        "that ran longer is recorded capped to it",
    )

    def policy(self) -> TimePolicy:
        return TimePolicy(entry_max_minutes=self.entry_max_minutes)


class EhrSettings(Group):
    """Push to an EHR's FHIR endpoint (rpm/fhir/push.py); no base URL, no push.
    Authentication is a static bearer token, or OAuth 2.0 client credentials (token URL,
    client id and secret, scope). A transient failure is retried with backoff between half
    and all of min(cap, base * 2^(attempt-1)) s (rpm/backoff.py); an item that runs out of
    attempts is listed at /api/fhir/push/failures."""

    fhir_base_url: str | None = Field(
        None,
        validation_alias="RPM_EHR_FHIR_BASE_URL",
        description="the EHR's FHIR endpoint to push Observations to",
        json_schema_extra={"default_note": "no push"},
    )
    bearer_token: SecretStr | None = Field(
        None,
        validation_alias="RPM_EHR_BEARER_TOKEN",
        description="static bearer token for the EHR (secret)",
    )
    token_url: str | None = Field(
        None,
        validation_alias="RPM_EHR_TOKEN_URL",
        description="OAuth 2.0 client-credentials token URL",
    )
    client_id: str | None = Field(
        None, validation_alias="RPM_EHR_CLIENT_ID", description="OAuth client id"
    )
    client_secret: SecretStr | None = Field(
        None,
        validation_alias="RPM_EHR_CLIENT_SECRET",
        description="OAuth client secret (secret)",
    )
    scope: str | None = Field(
        "system/Observation.write", validation_alias="RPM_EHR_SCOPE", description="OAuth scope"
    )
    timeout_s: float = Field(
        10.0, gt=0, validation_alias="RPM_EHR_TIMEOUT_S", description="per request"
    )
    max_attempts: int = Field(
        24,
        ge=1,
        validation_alias="RPM_EHR_MAX_ATTEMPTS",
        description="attempts before a push item fails",
    )
    concurrency: int = Field(
        4, ge=1, validation_alias="RPM_EHR_CONCURRENCY", description="transaction Bundles in flight"
    )
    bundle_max_entries: int = Field(
        100,
        ge=1,
        validation_alias="RPM_EHR_BUNDLE_MAX_ENTRIES",
        description="Observations per Bundle",
    )
    backoff_base_s: float = Field(
        2.0,
        gt=0,
        validation_alias="RPM_EHR_BACKOFF_BASE_S",
        description="push retry backoff base: each wait is between half and all of its ceiling",
    )
    backoff_cap_s: float = Field(
        600.0,
        gt=0,
        validation_alias="RPM_EHR_BACKOFF_CAP_S",
        description="push retry backoff cap: the ceiling is min(cap, base * 2^(attempt-1))",
    )
    patient_identifier_system: str = Field(
        "urn:rpm:patient",
        validation_alias="RPM_EHR_PATIENT_IDENTIFIER_SYSTEM",
        description="subject named as `Patient?identifier=<system>|<id>`",
    )

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.backoff_base_s, self.backoff_cap_s)
