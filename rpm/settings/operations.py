"""Settings of running the server: logs and metrics, the export, the simulator's login."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, SecretStr

from alerts.escalation import EscalationConfig
from rpm.validation import ClockPolicy

from ._group import Group

_MINUTE = timedelta(minutes=1)
_ESCALATION = EscalationConfig()
_CLOCK = ClockPolicy()

Minutes = Annotated[float, Field(ge=0)]


def _minutes(span: timedelta | None) -> float | None:
    return None if span is None else span / _MINUTE


class OperationsSettings(Group):
    """The kind of deployment, logging, shutdown and /metrics (rpm/settings/safety.py,
    rpm/logging_setup.py, rpm/server.py, rpm/metrics.py)."""

    deployment: Literal["local", "production"] = Field(
        "production",
        validation_alias="RPM_DEPLOYMENT",
        description="`production`: `rpm serve` refuses to start with demo Twilio credentials, "
        "a callback address Twilio cannot reach or no HELP contact (docs/operations.md); "
        "`local`: the demo, the simulator, the tests and `--local` (no such checks)",
    )

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


class LifecycleSettings(Group):
    """Keeping readings over years (docs/data-lifecycle.md): compression, retention,
    partitions, their packing and rollups, run by the lifecycle scheduler of the workers role
    (rpm/workers/lifecycle.py)."""

    interval_s: float = Field(
        60.0,
        gt=0,
        validation_alias="RPM_LIFECYCLE_INTERVAL_S",
        description="seconds between the scheduler's passes (rollup refresh, compression, "
        "partition maintenance, retention, packing); one process at a time runs a pass",
    )
    compress_after_days: float = Field(
        30.0,
        gt=0,
        validation_alias="RPM_LIFECYCLE_COMPRESS_AFTER_DAYS",
        description="TimescaleDB: compress a readings chunk once all its readings are older "
        "than this many days (plain PostgreSQL does not compress)",
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        validation_alias="RPM_LIFECYCLE_RETENTION_DAYS",
        description="unset (the default): readings are kept for ever. WARNING: set, the "
        "readings measured more than this many days ago are DELETED for good (whole chunks "
        "or monthly partitions); medical records must be kept for years, so set it only to "
        "what your records policy requires. Rollups are kept",
    )
    pack_after_days: float = Field(
        3.0,
        ge=0,
        validation_alias="RPM_LIFECYCLE_PACK_AFTER_DAYS",
        description="rebuild the indexes of a readings partition (a month; TimescaleDB: an "
        "uncompressed chunk) once, this many days after its range ended, packed full "
        "(REINDEX CONCURRENTLY, without blocking). Late readings that arrive after it split "
        "pages again: longer waits for more of them, shorter gets the packed size sooner",
    )
