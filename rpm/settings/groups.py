"""The settings groups, one per component, in the order of the settings table.

A default is written once. Where a pure core's config holds it (``MqttConfig``,
``EscalationConfig``, ``SnoozeCaps``, ``ClockPolicy``), the field's default is read from
there; otherwise it is written here and the component's config, built from its group, has
none of its own.
"""

from __future__ import annotations

from datetime import timedelta
from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator

from alerts.escalation import EscalationConfig
from alerts.policy import SnoozeCaps
from device_gateways.broker_admin import BrokerAdminConfig
from device_gateways.mqtt import MqttConfig
from rpm.backoff import Backoff
from rpm.domain import Metric, Severity
from rpm.domain.severity import SeverityField
from rpm.validation import ClockPolicy

from ._group import Group, default_of

_MINUTE = timedelta(minutes=1)
_ESCALATION = EscalationConfig()
_CLOCK = ClockPolicy()

Minutes = Annotated[float, Field(ge=0)]


def _minutes(span: timedelta | None) -> float | None:
    return None if span is None else span / _MINUTE


class DatabaseSettings(Group):
    """PostgreSQL."""

    url: SecretStr = Field(
        SecretStr("postgresql://rpm@127.0.0.1:5432/rpm"),
        validation_alias="RPM_DATABASE_URL",
        description="PostgreSQL DSN (secret)",
    )
    pool_size: int = Field(
        10, ge=1, validation_alias="RPM_DATABASE_POOL_SIZE", description="connections in the pool"
    )


class MqttSettings(Group):
    """The MQTT broker: the gateway's login and subscription, the admin login that
    provisions device logins (dynamic security), TLS, and the ingest micro-batch."""

    host: str = Field("127.0.0.1", validation_alias="RPM_MQTT_HOST", description="broker host")
    port: int = Field(1883, validation_alias="RPM_MQTT_PORT", description="broker port")
    username: str | None = Field(
        None, validation_alias="RPM_MQTT_USERNAME", description="the gateway's broker login"
    )
    password: SecretStr | None = Field(
        None, validation_alias="RPM_MQTT_PASSWORD", description="its password (secret)"
    )
    client_id: str = Field(
        "rpm-gateway",
        validation_alias="RPM_MQTT_CLIENT_ID",
        description="persistent-session identity; one per gateway process",
    )
    admin_username: str | None = Field(
        None,
        validation_alias="RPM_MQTT_ADMIN_USERNAME",
        description="dynamic-security admin login that provisions device logins",
    )
    admin_password: SecretStr | None = Field(
        None, validation_alias="RPM_MQTT_ADMIN_PASSWORD", description="its password (secret)"
    )
    topic: str = Field(
        default_of(MqttConfig, "topic"),
        validation_alias="RPM_MQTT_TOPIC",
        description="subscription",
    )
    tls_ca_file: str | None = Field(
        default_of(MqttConfig, "tls_ca_file"),
        validation_alias="RPM_MQTT_TLS_CA_FILE",
        description="connect to the broker over TLS, verifying it against this CA",
    )
    # Micro-batching of the ingest unit of work: whichever limit is reached first.
    batch_max_messages: int = Field(
        default_of(MqttConfig, "batch_max_messages"),
        ge=1,
        validation_alias="RPM_BATCH_MAX_MESSAGES",
        description="micro-batch: most messages per unit of work",
    )
    batch_max_wait_ms: int = Field(
        round(default_of(MqttConfig, "batch_max_wait_s") * 1000),
        ge=0,
        validation_alias="RPM_BATCH_MAX_WAIT_MS",
        description="micro-batch: longest wait for a batch to fill",
    )

    def gateway(self) -> MqttConfig:
        """The gateway's connection and batching."""
        return MqttConfig(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            client_id=self.client_id,
            topic=self.topic,
            batch_max_messages=self.batch_max_messages,
            batch_max_wait_s=self.batch_max_wait_ms / 1000,
            tls_ca_file=self.tls_ca_file,
        )

    def admin(self) -> BrokerAdminConfig:
        """The dynamic-security admin login (empty when none is set)."""
        password = self.admin_password.get_secret_value() if self.admin_password else ""
        return BrokerAdminConfig(self.host, self.port, self.admin_username or "", password)


class ApiSettings(Group):
    """The HTTP API and dashboard: where it listens, the address Twilio reaches it at,
    dashboard sign-in (rpm/auth.py) and staff bearer tokens."""

    host: str = Field(
        "127.0.0.1", validation_alias="RPM_API_HOST", description="HTTP API and dashboard address"
    )
    port: int = Field(
        8000, validation_alias="RPM_API_PORT", description="HTTP API and dashboard port"
    )
    public_base_url: str | None = Field(
        None,
        validation_alias="RPM_PUBLIC_BASE_URL",
        description="the address Twilio reaches this server at (status callbacks, webhook "
        "signatures)",
        json_schema_extra={"default_note": "the API's own address"},
    )
    dashboard_url: str | None = Field(
        None,
        validation_alias="RPM_DASHBOARD_URL",
        description="link in nurse escalation SMS",
        json_schema_extra={"default_note": "public base URL + `/dashboard/`"},
    )
    session_ttl_hours: float = Field(
        12.0,
        gt=0,
        validation_alias="RPM_SESSION_TTL_HOURS",
        description="dashboard sign-in lifetime",
    )
    session_cookie_secure: bool = Field(
        False,
        validation_alias="RPM_SESSION_COOKIE_SECURE",
        description="mark session cookies Secure (set when served over HTTPS)",
    )
    signin_max_failures: int = Field(
        5,
        ge=1,
        validation_alias="RPM_SIGNIN_MAX_FAILURES",
        description="failed sign-ins allowed per (name, client address) in the window",
    )
    signin_failure_window_s: int = Field(
        900, ge=1, validation_alias="RPM_SIGNIN_FAILURE_WINDOW_S", description="that window"
    )
    access_token_ttl_min: float = Field(
        15.0,
        gt=0,
        validation_alias="RPM_ACCESS_TOKEN_TTL_MIN",
        description="lifetime of staff bearer tokens (`POST /api/auth/token`)",
    )

    def public_url(self, path: str) -> str:
        """``path`` on this server as Twilio calls it."""
        base = self.public_base_url or f"http://{self.host}:{self.port}"
        return base.rstrip("/") + path

    def dashboard_link(self) -> str:
        """The dashboard's address as nurses' SMS link it."""
        return self.dashboard_url or self.public_url("/dashboard/")


class IngestSettings(Group):
    """Readings coming in: device clock sanity (rpm/validation.py), hostile input on
    POST /ingest/{format} (rpm/api/ingest.py), and webhook micro-batching
    (rpm/ingest_batcher.py), which keeps memory under about RPM_WEBHOOK_QUEUE_MAX bodies
    of RPM_INGEST_MAX_BODY_BYTES."""

    clock_skew_s: int = Field(
        int(_CLOCK.max_skew.total_seconds()),
        validation_alias="RPM_CLOCK_SKEW_S",
        description="readings further ahead of our clock are `future_timestamp`",
    )
    max_age_days: int = Field(
        _CLOCK.max_age.days,
        validation_alias="RPM_MAX_AGE_DAYS",
        description="older readings are `stale_timestamp`",
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1,
        validation_alias="RPM_INGEST_MAX_BODY_BYTES",
        description="largest webhook body (413 beyond)",
    )
    max_json_depth: int = Field(
        64,
        ge=1,
        validation_alias="RPM_INGEST_MAX_JSON_DEPTH",
        description="deepest JSON nesting in a webhook body (422, quarantined, beyond)",
    )
    rate_per_s: float = Field(
        50.0,
        ge=0,
        validation_alias="RPM_INGEST_RATE_PER_S",
        description="token bucket per integration: rate (429 with Retry-After beyond; 0: off)",
    )
    burst: int = Field(200, ge=1, validation_alias="RPM_INGEST_BURST", description="its burst")
    unauth_rate_per_s: float = Field(
        10.0,
        ge=0,
        validation_alias="RPM_INGEST_UNAUTH_RATE_PER_S",
        description="token bucket per client address for requests failing authentication (0: off)",
    )
    unauth_burst: int = Field(
        100, ge=1, validation_alias="RPM_INGEST_UNAUTH_BURST", description="its burst"
    )
    webhook_batch_max_messages: int = Field(
        100,
        ge=1,
        validation_alias="RPM_WEBHOOK_BATCH_MAX_MESSAGES",
        description="concurrent webhook bodies sharing one unit of work, at most",
    )
    webhook_batch_max_wait_ms: int = Field(
        10,
        ge=0,
        validation_alias="RPM_WEBHOOK_BATCH_MAX_WAIT_MS",
        description="how long a webhook unit of work waits to fill (whichever limit first)",
    )
    webhook_queue_max: int = Field(
        1000,
        ge=1,
        validation_alias="RPM_WEBHOOK_QUEUE_MAX",
        description="webhook bodies waiting for a unit of work, at most (503 with "
        "Retry-After: 1 beyond)",
    )

    def clock(self) -> ClockPolicy:
        return ClockPolicy(
            max_skew=timedelta(seconds=self.clock_skew_s), max_age=timedelta(days=self.max_age_days)
        )


class RuleSettings(Group):
    """The rule engine: the missing-data timer, picking up new program versions, and the
    readings kept in memory."""

    missing_data_interval_s: float = Field(
        300.0,
        gt=0,
        validation_alias="RPM_MISSING_DATA_INTERVAL_S",
        description="how often missing-data rules are evaluated",
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
        "ACdemo00000000000000000000000000",
        validation_alias="RPM_TWILIO_ACCOUNT_SID",
        description="Twilio account",
    )
    auth_token: SecretStr = Field(
        SecretStr("demo-token"),
        validation_alias="RPM_TWILIO_AUTH_TOKEN",
        description="Twilio auth token (secret)",
    )
    from_number: str = Field(
        "+15005550006", validation_alias="RPM_TWILIO_FROM_NUMBER", description="sender number"
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
    help_contact: str = Field(
        "",
        validation_alias="RPM_SMS_HELP_CONTACT",
        description="appended to the HELP reply (the clinic's phone number)",
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
        description="SMS retry backoff base (full jitter)",
    )
    outbox_backoff_cap_s: float = Field(
        300.0,
        gt=0,
        validation_alias="RPM_OUTBOX_BACKOFF_CAP_S",
        description="SMS retry backoff cap",
    )

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.outbox_backoff_base_s, self.outbox_backoff_cap_s)


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
        description="push retry backoff base (full jitter)",
    )
    backoff_cap_s: float = Field(
        600.0,
        gt=0,
        validation_alias="RPM_EHR_BACKOFF_CAP_S",
        description="push retry backoff cap",
    )
    patient_identifier_system: str = Field(
        "urn:rpm:patient",
        validation_alias="RPM_EHR_PATIENT_IDENTIFIER_SYSTEM",
        description="subject named as `Patient?identifier=<system>|<id>`",
    )

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.backoff_base_s, self.backoff_cap_s)


class OperationsSettings(Group):
    """Logging, shutdown and /metrics (rpm/logging_setup.py, rpm/server.py, rpm/metrics.py)."""

    log_format: Literal["json", "text"] = Field(
        "json",
        validation_alias="RPM_LOG_FORMAT",
        description="`json` (one object per line) or `text`, for `rpm serve`; other commands "
        "log text",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        validation_alias="RPM_LOG_LEVEL",
        description="DEBUG, INFO, WARNING or ERROR (`rpm -v serve`: DEBUG)",
    )
    access_log: bool = Field(
        True,
        validation_alias="RPM_ACCESS_LOG",
        description="one log line per HTTP request (uvicorn's access log)",
    )
    shutdown_timeout_s: float = Field(
        20.0,
        gt=0,
        validation_alias="RPM_SHUTDOWN_TIMEOUT_S",
        description="SIGTERM/SIGINT: longest wait for the batch in flight and the messages "
        "being sent",
    )
    metrics_cache_s: float = Field(
        5.0,
        ge=0,
        validation_alias="RPM_METRICS_CACHE_S",
        description="`/metrics` reuses the database's figures this long (0: query every scrape)",
    )
    metrics_db_timeout_s: float = Field(
        2.0,
        gt=0,
        validation_alias="RPM_METRICS_DB_TIMEOUT_S",
        description="timeout of those queries, and of `/readyz`'s database check",
    )


class ExportSettings(Group):
    """Pseudonymised export (`rpm export`, rpm/export.py). The same key gives the same
    pseudonyms, so exports join; keep it away from the people who receive exports."""

    key: SecretStr | None = Field(
        None,
        validation_alias="RPM_EXPORT_KEY",
        description="HMAC key of `rpm export`, at least 32 bytes (secret; or "
        "`RPM_EXPORT_KEY_FILE`)",
    )


class SimulatorSettings(Group):
    """The device-side login `rpm simulate` publishes with (development tooling)."""

    mqtt_username: str | None = Field(
        None,
        validation_alias="RPM_SIMULATOR_MQTT_USERNAME",
        description="the local services' shared fleet login, printed by `rpm services env` "
        "for publishing by hand (the server does not read it)",
    )
    mqtt_password: SecretStr | None = Field(
        None,
        validation_alias="RPM_SIMULATOR_MQTT_PASSWORD",
        description="its password (secret)",
    )
