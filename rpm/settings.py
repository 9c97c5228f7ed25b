"""Settings, read once from the environment (prefix ``RPM_``) at the edge and passed down.

Every secret (a ``SecretStr`` setting) can instead come from a file: ``RPM_<NAME>_FILE``
names it (``RPM_DATABASE_URL_FILE=/run/secrets/db_url``), as Docker and Kubernetes secrets
are mounted. Giving both the variable and the file is an error; a trailing newline in the
file is dropped. Secrets print as ``**********`` and are never logged.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "RPM_"

# Escalation delays and snooze caps per severity, in minutes (see Settings).
_ESCALATION_AFTER_MIN: dict[str, float | None] = {
    "critical": 10.0,
    "high": 30.0,
    "medium": 240.0,
    "low": None,
}
_SNOOZE_CAP_MIN: dict[str, float] = {
    "critical": 30.0,
    "high": 240.0,
    "medium": 1440.0,
    "low": 1440.0,
}
_V = TypeVar("_V", float, float | None)


def _per_severity(
    given: dict[str, _V], defaults: dict[str, _V], *, allow_never: bool
) -> dict[str, _V]:
    """``given`` over ``defaults``: lower-case severity names, non-negative minutes."""
    merged = dict(defaults)
    for name, minutes in given.items():
        key = name.lower()
        if key not in defaults:
            raise ValueError(f"unknown severity {name!r}; known: {sorted(defaults)}")
        if minutes is None and not allow_never:
            raise ValueError(f"{key}: a number of minutes is required")
        if minutes is not None and minutes < 0:
            raise ValueError(f"{key}: minutes must not be negative")
        merged[key] = minutes
    return merged


def _is_secret(field: FieldInfo) -> bool:
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


class SecretFiles(PydanticBaseSettingsSource):
    """Secret settings read from the files that ``RPM_<NAME>_FILE`` variables name."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = f"{ENV_PREFIX}{field_name.upper()}_FILE"
        path = os.environ.get(variable)
        if path is None or not _is_secret(field):
            return None, field_name, False
        if f"{ENV_PREFIX}{field_name.upper()}" in os.environ:
            raise ValueError(f"set {ENV_PREFIX}{field_name.upper()} or {variable}, not both")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            # The path and the reason only: never the content.
            raise ValueError(f"{variable}: cannot read {path}: {exc.strerror}") from None
        return text.rstrip("\r\n"), field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _complex = self.get_field_value(field, name)
            if value is not None:
                found[key] = value
        return found


class Settings(BaseSettings):
    """Every knob of the server. Secrets are ``SecretStr`` so they never print; each can
    come from a file named by ``RPM_<NAME>_FILE``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments first, then the environment, then secret files.
        return (init_settings, env_settings, SecretFiles(settings_cls), dotenv_settings)

    database_url: SecretStr = SecretStr("postgresql://rpm@127.0.0.1:5432/rpm")
    database_pool_size: int = 10

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_client_id: str = "rpm-gateway"
    # The broker login that provisions device logins (dynamic-security admin).
    mqtt_admin_username: str | None = None
    mqtt_admin_password: SecretStr | None = None
    mqtt_topic: str = "rpm/v1/devices/+/readings"
    # PEM CA bundle: connect to the broker over TLS and verify its certificate against it.
    mqtt_tls_ca_file: str | None = None

    # Micro-batching of the ingest unit of work: whichever limit is reached first.
    batch_max_messages: int = Field(default=2000, ge=1)
    batch_max_wait_ms: int = Field(default=20, ge=0)

    # Validation: device clocks may run ahead this much; older readings are stale.
    clock_skew_s: int = 300
    max_age_days: int = 30

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    # Dashboard sign-in (rpm/auth.py): session lifetime, Secure cookies (set it when served
    # over HTTPS), and failed sign-ins allowed per (name, client address) within the window.
    session_ttl_hours: float = Field(default=12.0, gt=0)
    session_cookie_secure: bool = False
    signin_max_failures: int = Field(default=5, ge=1)
    signin_failure_window_s: int = Field(default=900, ge=1)
    # Lifetime of staff bearer tokens (POST /api/auth/token).
    access_token_ttl_min: float = Field(default=15.0, gt=0)

    twilio_account_sid: str = "ACdemo00000000000000000000000000"
    twilio_auth_token: SecretStr = SecretStr("demo-token")
    twilio_from_number: str = "+15005550006"
    # None = Twilio itself; tests and the demo point the real client at a local server.
    twilio_base_url: str | None = None
    sms_validity_period_s: int = 900

    # The device-side login the simulator publishes with (`rpm simulate`).
    simulator_mqtt_username: str | None = None
    simulator_mqtt_password: SecretStr | None = None

    # Rule engine: how often the missing-data timer runs, how soon a new program version
    # is picked up, and ring-buffer capacity per metric (e.g. {"spo2": 128}).
    missing_data_interval_s: float = Field(default=300.0, gt=0)
    rules_refresh_s: float = Field(default=2.0, ge=0)
    rule_buffer_capacity: dict[str, int] = Field(default_factory=dict)
    outbox_poll_interval_s: float = 0.5
    outbox_max_attempts: int = 12

    # Alert escalation and snooze (alerts/escalation.py, alerts/policy.py). Minutes an
    # unacknowledged alert waits before the next on-call tier gets an SMS, per severity
    # (null: never), e.g. {"high": 20} (severities not named keep their defaults); minutes
    # between tries when nobody is on call; an acknowledged alert still firing this many
    # minutes after acknowledgement re-opens (0: never); the longest snooze per severity;
    # how often the timers run.
    escalation_after_min: dict[str, float | None] = Field(
        default_factory=lambda: dict(_ESCALATION_AFTER_MIN)
    )
    escalation_retry_min: float = Field(default=5.0, gt=0)
    renotify_after_min: float = Field(default=60.0, ge=0)
    snooze_cap_min: dict[str, float] = Field(default_factory=lambda: dict(_SNOOZE_CAP_MIN))
    alert_timer_interval_s: float = Field(default=10.0, gt=0)

    @field_validator("escalation_after_min")
    @classmethod
    def _escalation_after(cls, v: dict[str, float | None]) -> dict[str, float | None]:
        return _per_severity(v, _ESCALATION_AFTER_MIN, allow_never=True)

    @field_validator("snooze_cap_min")
    @classmethod
    def _snooze_cap(cls, v: dict[str, float]) -> dict[str, float]:
        return _per_severity(v, _SNOOZE_CAP_MIN, allow_never=False)

    # SMS delivery (alerts/outbox_worker.py) and Twilio's webhooks (rpm/api/twilio_hooks.py).
    # The address Twilio reaches this server at (a proxy's, if one is in front): status
    # callbacks go to it and webhook signatures are checked against it. None = the API's own.
    public_base_url: str | None = None
    # Link in nurse escalation SMS ("/?alert=N" appended). None = public_base_url/dashboard/.
    dashboard_url: str | None = None
    # Non-urgent patient SMS per patient per local day; further ones are dropped ("daily cap").
    sms_daily_cap: int = Field(default=3, ge=0)
    sms_emergency_number: str = "911"
    # Appended to the HELP reply, e.g. the clinic's phone number (carriers expect a contact).
    sms_help_contact: str = ""
    # Retry backoff of the SMS worker: full jitter between half and all of
    # min(cap, base * 2^(attempt-1)) seconds.
    outbox_backoff_base_s: float = Field(default=2.0, gt=0)
    outbox_backoff_cap_s: float = Field(default=300.0, gt=0)

    def public_url(self, path: str) -> str:
        """``path`` on this server as Twilio calls it."""
        base = self.public_base_url or f"http://{self.api_host}:{self.api_port}"
        return base.rstrip("/") + path

    # Push to an EHR's FHIR endpoint (rpm/fhir/push.py): None = no push. Authentication is a
    # static bearer token, or OAuth 2.0 client credentials (token URL, client id and secret,
    # scope). Transactions carry at most ehr_bundle_max_entries Observations, ehr_concurrency
    # of them in flight; a transient failure is retried with full-jitter backoff between half
    # and all of min(cap, base * 2^(attempt-1)) s, and the item fails after ehr_max_attempts
    # (visible at /api/fhir/push/failures). The subject is named to the EHR as
    # Patient?identifier=<ehr_patient_identifier_system>|<our patient id>.
    ehr_fhir_base_url: str | None = None
    ehr_bearer_token: SecretStr | None = None
    ehr_token_url: str | None = None
    ehr_client_id: str | None = None
    ehr_client_secret: SecretStr | None = None
    ehr_scope: str | None = "system/Observation.write"
    ehr_timeout_s: float = Field(default=10.0, gt=0)
    ehr_max_attempts: int = Field(default=24, ge=1)
    ehr_concurrency: int = Field(default=4, ge=1)
    ehr_bundle_max_entries: int = Field(default=100, ge=1)
    ehr_backoff_base_s: float = Field(default=2.0, gt=0)
    ehr_backoff_cap_s: float = Field(default=600.0, gt=0)
    ehr_patient_identifier_system: str = "urn:rpm:patient"

    # Operations (rpm/metrics.py, rpm/logging_setup.py, rpm/server.py). Log lines of
    # `rpm serve` as JSON objects or text (`rpm demo` and the other commands log text);
    # the log level; uvicorn's access log (one line per HTTP request, at INFO); how long a
    # SIGTERM/SIGINT waits for the batch in flight and the messages being sent before the
    # rest is cancelled; how long /metrics reuses the database's figures, and its query timeout.
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = True
    shutdown_timeout_s: float = Field(default=20.0, gt=0)
    metrics_cache_s: float = Field(default=5.0, ge=0)
    metrics_db_timeout_s: float = Field(default=2.0, gt=0)
    # Pseudonymised export (`rpm export`, rpm/export.py): the HMAC-SHA256 key that turns
    # identifiers into pseudonyms (at least 32 bytes; RPM_EXPORT_KEY_FILE names a file
    # holding it, like every secret). The same key gives the same pseudonyms, so exports
    # join; keep it secret and away from the people who receive exports.
    export_key: SecretStr | None = None

    # Hostile input on POST /ingest/{format} (rpm/api/ingest.py): largest body, deepest JSON
    # nesting (arrays and objects) accepted, and token buckets answering 429 with
    # Retry-After: per integration (rate per second and burst) and, for requests that fail
    # authentication, per client address. A rate of 0 turns that bucket off.
    ingest_max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    ingest_max_json_depth: int = Field(default=64, ge=1)
    ingest_rate_per_s: float = Field(default=50.0, ge=0)
    ingest_burst: int = Field(default=200, ge=1)
    ingest_unauth_rate_per_s: float = Field(default=10.0, ge=0)
    ingest_unauth_burst: int = Field(default=100, ge=1)

    # Webhook micro-batching (rpm/ingest_batcher.py): concurrent POST /ingest/{format}
    # requests share one unit of work of at most this many bodies, or whatever arrived
    # within this wait, whichever first; at most webhook_queue_max bodies wait (503 with
    # Retry-After beyond), so memory stays under about that many ingest_max_body_bytes.
    webhook_batch_max_messages: int = Field(default=100, ge=1)
    webhook_batch_max_wait_ms: int = Field(default=10, ge=0)
    webhook_queue_max: int = Field(default=1000, ge=1)
