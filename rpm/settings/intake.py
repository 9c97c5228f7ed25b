"""Settings of what comes in: the database, the broker, the HTTP API and ingest."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, SecretStr

from alerts.escalation import EscalationConfig
from device_gateways.broker_admin import BrokerAdminConfig
from device_gateways.mqtt import MqttConfig
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
        10,
        ge=2,
        validation_alias="RPM_DATABASE_POOL_SIZE",
        description="connections in the pool (at least 2: the SMS worker holds a patient's turn "
        "on one while it reads and records on another)",
    )


class MqttSettings(Group):
    """The MQTT broker: the gateway's login and subscription, the admin login that
    provisions device logins (dynamic security), TLS, and the ingest micro-batch."""

    host: str = Field(
        "127.0.0.1",
        validation_alias="RPM_MQTT_HOST",
        description="broker host (the gateway speaks MQTT 5: Mosquitto 1.6 and later, EMQX, "
        "HiveMQ, VerneMQ, RabbitMQ 3.13 and later)",
    )
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
        description="persistent-session identity (clean start off, a session that never "
        "expires); one per gateway process",
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
    share_group: str | None = Field(
        default_of(MqttConfig, "share_group"),
        pattern=r"^[^/+#$]+$",
        validation_alias="RPM_MQTT_SHARE_GROUP",
        description="several gateways: subscribe as members of this shared-subscription "
        "group ($share/<group>/<topic>), each with its own RPM_MQTT_CLIENT_ID",
    )
    tls_ca_file: str | None = Field(
        default_of(MqttConfig, "tls_ca_file"),
        validation_alias="RPM_MQTT_TLS_CA_FILE",
        description="connect to the broker over TLS, verifying it against this CA",
    )
    device_ca_dir: str | None = Field(
        None,
        validation_alias="RPM_MQTT_DEVICE_CA_DIR",
        description="the device CA (ca.key, ca.pem, crl.pem; created when absent): "
        "enrolment by certificate",
    )
    broker_pid_file: str | None = Field(
        None,
        validation_alias="RPM_MQTT_BROKER_PID_FILE",
        description="the broker's pid file: SIGHUP it to reload the CRL after a revocation",
    )
    device_crl_url: str | None = Field(
        None,
        validation_alias="RPM_MQTT_DEVICE_CRL_URL",
        pattern=r"^https?://\S+$",
        description="where brokers fetch the device CA's CRL (http://…/crl.pem), written into "
        "device certificates and the CRL: for EMQX (docs/deploy.md); leave unset for Mosquitto",
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
            share_group=self.share_group,
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
