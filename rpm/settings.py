"""Settings, read once from the environment (prefix ``RPM_``) at the edge and passed down."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the server. Secrets are ``SecretStr`` so they never print."""

    model_config = SettingsConfigDict(env_prefix="RPM_", frozen=True, extra="ignore")

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
