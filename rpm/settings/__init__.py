"""Settings, read once from the environment at the edge (``Settings()`` in the CLI) and
passed down, each component receiving its own group.

Every variable keeps its flat name (``RPM_MQTT_HOST``, ``RPM_ESCALATION_AFTER_MIN``); in
code the settings are grouped by component: ``settings.mqtt.host``. Every secret (a
``SecretStr`` setting) can instead come from a file: ``RPM_<NAME>_FILE`` names it
(``RPM_DATABASE_URL_FILE=/run/secrets/db_url``), as Docker and Kubernetes secrets are
mounted. Giving both the variable and the file is an error; a trailing newline in the
file is dropped. Secrets print as ``**********`` and are never logged.

In code: ``Settings(mqtt=MqttSettings(host="broker"))`` (a group given as a dict is read
the same way: ``Settings.model_validate({"mqtt": {"host": "broker"}})``); groups not given,
and fields of a group not given, come from the environment or their defaults.
``settings.updated(api={"port": 0})`` is a copy with some fields of some groups changed.
``python -m rpm.settings`` prints the settings table (docs/configuration.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from ._group import Group, env_name
from .care import (
    AlertSettings,
    ChannelSettings,
    EhrSettings,
    EngagementSettings,
    RuleSettings,
    SmsSettings,
    TimeTrackingSettings,
)
from .intake import ApiSettings, DatabaseSettings, IngestSettings, MqttSettings
from .operations import (
    ExportSettings,
    LifecycleSettings,
    OperationsSettings,
    SimulatorSettings,
)

__all__ = [
    "AlertSettings",
    "ApiSettings",
    "ChannelSettings",
    "DatabaseSettings",
    "EhrSettings",
    "EngagementSettings",
    "ExportSettings",
    "Group",
    "IngestSettings",
    "LifecycleSettings",
    "MqttSettings",
    "OperationsSettings",
    "RuleSettings",
    "Settings",
    "SimulatorSettings",
    "SmsSettings",
    "TimeTrackingSettings",
    "env_name",
]


class Settings(BaseModel):
    """Every knob of the server, by component."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    rules: RuleSettings = Field(default_factory=RuleSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    sms: SmsSettings = Field(default_factory=SmsSettings)
    channels: ChannelSettings = Field(default_factory=ChannelSettings)
    engagement: EngagementSettings = Field(default_factory=EngagementSettings)
    time_tracking: TimeTrackingSettings = Field(default_factory=TimeTrackingSettings)
    ehr: EhrSettings = Field(default_factory=EhrSettings)
    operations: OperationsSettings = Field(default_factory=OperationsSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)

    @classmethod
    def groups(cls) -> dict[str, type[Group]]:
        """Each group's attribute name and model, in table order."""
        found: dict[str, type[Group]] = {}
        for name, field in cls.model_fields.items():
            model = field.annotation
            assert isinstance(model, type)
            assert issubclass(model, Group)
            found[name] = model
        return found

    def updated(self, **changes: Mapping[str, object]) -> Settings:
        """A copy with the named fields of the named groups changed (and validated):
        ``settings.updated(api={"port": 0}, ehr={"timeout_s": 2.0})``."""
        groups: dict[str, Group] = {}
        for name, fields in changes.items():
            if name not in type(self).model_fields:
                raise TypeError(f"no settings group {name!r}; groups: {sorted(self.groups())}")
            group: Group = getattr(self, name)
            groups[name] = type(group).model_validate({**dict(group), **fields})
        return self.model_copy(update=groups)
