"""A settings group: one component's knobs, each read from its own ``RPM_*`` variable.

Every field names its variable in ``validation_alias`` (so a variable's name can be found
in the code with grep, and the names deployments use never follow a field's renaming) and
says what it means in ``description`` (the settings table is generated from it). Fields
are set by name in code (``MqttSettings(host=...)``), by variable in the environment.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "RPM_"


def env_name(field: FieldInfo) -> str:
    """The environment variable a field is read from."""
    alias = field.validation_alias
    assert isinstance(alias, str), "every settings field names its variable"
    return alias


def is_secret(field: FieldInfo) -> bool:
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def default_of(config: type[Any], name: str) -> Any:
    """The default a pure core's config dataclass gives field ``name``: written there only."""
    for f in dataclasses.fields(config):
        if f.name == name and f.default is not dataclasses.MISSING:
            return f.default
    raise LookupError(f"{config.__name__}.{name} has no plain default")


class SecretFiles(PydanticBaseSettingsSource):
    """Secret settings read from the files that ``RPM_<NAME>_FILE`` variables name."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = env_name(field)
        variable = f"{name}_FILE"
        path = os.environ.get(variable)
        if path is None or not is_secret(field):
            return None, name, False
        if name in os.environ:
            raise ValueError(f"set {name} or {variable}, not both")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            # The path and the reason only: never the content.
            raise ValueError(f"{variable}: cannot read {path}: {exc.strerror}") from None
        return text.rstrip("\r\n"), name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _complex = self.get_field_value(field, name)
            if value is not None:
                found[key] = value
        return found


class Group(BaseSettings):
    """Base of the settings groups: frozen, strict about names, secrets also from files."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            if not (isinstance(alias, str) and alias.startswith(ENV_PREFIX)):
                raise TypeError(f"{cls.__name__}.{name}: validation_alias='RPM_...' is required")
            if not field.description:
                raise TypeError(f"{cls.__name__}.{name}: a description is required")

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
