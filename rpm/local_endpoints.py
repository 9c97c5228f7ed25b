"""Where the project-local services listen (``endpoints.json``), and settings that use them.

``rpm services start`` (development tooling, ``simulators.localservices``) starts a loopback
PostgreSQL and Mosquitto and saves their addresses and logins in ``<dir>/endpoints.json``
(mode 0600). The server only reads that file: ``rpm serve --local`` and friends.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from rpm.settings import Settings

ADMIN_USERNAME = "rpm-broker-admin"
ENDPOINTS_FILE = "endpoints.json"
DEVICE_CA_DIR = "device-ca"  # where the local services keep the device CA, when asked to


@dataclass(frozen=True, slots=True, repr=False)
class ServiceEndpoints:
    """Where the local services listen and how to log in to them."""

    database_url: str
    mqtt_host: str
    mqtt_port: int
    mqtt_gateway_username: str
    mqtt_gateway_password: str
    mqtt_device_username: str
    mqtt_device_password: str
    mqtt_admin_username: str  # may provision device logins (dynamic security)
    mqtt_admin_password: str
    timescaledb: bool
    root: str
    # The broker's listener for devices with certificates (``rpm services start
    # --device-cert-port``), kept so that later starts keep it; None when there is none.
    mqtt_device_cert_port: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            wanted = _FIELD_TYPES[f.name]
            if f.name in _OPTIONAL and value is None:
                continue
            if type(value) is not wanted:  # exact: a bool is not a port
                raise ValueError(f"{f.name} must be {wanted.__name__}, not {type(value).__name__}")
        for name in ("mqtt_port", "mqtt_device_cert_port"):
            port = getattr(self, name)
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"{name} out of range: {port}")
        url = urlsplit(self.database_url)
        if url.scheme != "postgresql" or url.hostname is None or url.port is None:
            raise ValueError("database_url must be postgresql://user:password@host:port/db")

    def __repr__(self) -> str:
        return (
            f"ServiceEndpoints(database={_redact_url(self.database_url)!r}, "
            f"mqtt={self.mqtt_host}:{self.mqtt_port}, timescaledb={self.timescaledb}, "
            f"root={self.root!r})"
        )

    def to_json(self) -> str:
        """The endpoints as a JSON object (passwords included: store it 0600)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ServiceEndpoints:
        """Parse what :meth:`to_json` wrote; ValueError when it is not exactly that."""
        data: Any = json.loads(text)
        if isinstance(data, dict) and "mqtt_admin_username" not in data:
            # Written before the broker had an admin login: give it one now.
            data["mqtt_admin_username"] = ADMIN_USERNAME
            data["mqtt_admin_password"] = secrets.token_urlsafe(24)
        if isinstance(data, dict):
            # Written before the certificate listener was kept: there was none to keep.
            data.setdefault("mqtt_device_cert_port", None)
        if not isinstance(data, dict) or set(data) != set(_FIELD_TYPES):
            raise ValueError(f"endpoints JSON must be an object with keys {sorted(_FIELD_TYPES)}")
        return cls(**data)


_FIELD_TYPES: dict[str, type] = {
    "database_url": str,
    "mqtt_host": str,
    "mqtt_port": int,
    "mqtt_gateway_username": str,
    "mqtt_gateway_password": str,
    "mqtt_device_username": str,
    "mqtt_device_password": str,
    "mqtt_admin_username": str,
    "mqtt_admin_password": str,
    "timescaledb": bool,
    "root": str,
    "mqtt_device_cert_port": int,
}
_OPTIONAL = frozenset({"mqtt_device_cert_port"})


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def load(root: Path) -> ServiceEndpoints | None:
    """The endpoints saved in ``root``, or None when there are none."""
    try:
        text = (root / ENDPOINTS_FILE).read_text()
    except FileNotFoundError:
        return None
    return ServiceEndpoints.from_json(text)


def settings_for_local(endpoints: ServiceEndpoints, **overrides: Mapping[str, object]) -> Settings:
    """Settings that point at the project-local services, in local mode (no production
    start-up checks: rpm/settings/safety.py); ``overrides`` by group, e.g.
    ``settings_for_local(e, api={"port": 0}, mqtt={"client_id": "x"})``. The rest comes
    from the environment, as ``Settings()`` reads it."""
    groups: dict[str, dict[str, object]] = {
        "operations": {"deployment": "local"},
        "database": {"url": SecretStr(endpoints.database_url)},
        "mqtt": {
            "host": endpoints.mqtt_host,
            "port": endpoints.mqtt_port,
            "username": endpoints.mqtt_gateway_username,
            "password": SecretStr(endpoints.mqtt_gateway_password),
            "admin_username": endpoints.mqtt_admin_username,
            "admin_password": SecretStr(endpoints.mqtt_admin_password),
        },
    }
    if endpoints.mqtt_device_cert_port is not None:
        # The services run a certificate listener (docs/devices.md), with the CA it trusts.
        groups["mqtt"]["device_ca_dir"] = str(Path(endpoints.root) / DEVICE_CA_DIR)
        groups["mqtt"]["broker_pid_file"] = str(Path(endpoints.root) / "mqtt" / "mosquitto.pid")
    for name, changes in overrides.items():
        groups[name] = {**groups.get(name, {}), **changes}
    return Settings.model_validate(groups)
