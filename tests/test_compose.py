"""docker-compose.yml is accepted by Compose and wires the four services together.

No Docker engine is needed: `config` only parses, interpolates and validates the file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulators.runner import Pace
from simulators.simulate import SimulateOptions, add_parser

ROOT = Path(__file__).resolve().parents[1]


def compose() -> list[str]:
    if (
        shutil.which("docker")
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "neither `docker compose` nor `docker-compose` is installed: scripts/test.sh installs it"
    )


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*compose(), "--env-file", str(ROOT / "docker" / "env.example"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_compose_file_is_valid() -> None:
    result = run("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_has_database_broker_server_and_simulator() -> None:
    result = run("--profile", "demo", "config", "--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"timescaledb", "mosquitto", "server", "simulator"}


def test_missing_secrets_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run(
        [*compose(), "--env-file", str(empty), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def resolved(*args: str) -> dict[str, Any]:
    """The file as Compose resolves it (interpolated, merged)."""
    result = run(*args, "config")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = yaml.safe_load(result.stdout)
    return doc


def test_simulator_command_parses_with_rpm_simulate() -> None:
    """The simulator's command is one `rpm simulate` accepts, against the compose server."""
    simulator = resolved("--profile", "demo")["services"]["simulator"]
    command = simulator["command"]
    assert command[:2] == ["rpm", "simulate"]
    parser = argparse.ArgumentParser(prog="rpm", exit_on_error=False)
    add_parser(parser.add_subparsers(dest="command", required=True), Path(".rpm-data"))
    args = parser.parse_args(command[1:])
    opts = SimulateOptions.from_args(args)
    # Against the running stack, not services of its own (the image has none).
    assert opts.external_api_url == "http://server:8000"
    assert opts.pace == Pace(wall_seconds=60.0)
    env = simulator["environment"]
    assert env["RPM_MQTT_HOST"] == "mosquitto"
    assert env["RPM_DATABASE_URL"].endswith("@timescaledb:5432/rpm")
    assert env["RPM_MQTT_ADMIN_USERNAME"] == "rpm-broker-admin"
    assert env["RPM_MQTT_ADMIN_PASSWORD"]  # from .env, like every secret
    assert simulator["depends_on"]["server"]["condition"] == "service_healthy"


def test_broker_admin_login_is_the_brokers() -> None:
    """The admin login the server and simulator use is the one the broker creates."""
    services = resolved("--profile", "demo")["services"]
    broker = services["mosquitto"]
    created = " ".join(broker["command"])
    assert "mosquitto_ctrl dynsec init /mosquitto/data/dynamic-security.json rpm-broker-admin" in (
        created
    )
    password = services["server"]["environment"]["RPM_MQTT_ADMIN_PASSWORD"]
    assert broker["environment"]["MQTT_ADMIN_PASSWORD"] == password
    conf = (ROOT / "docker" / "mosquitto.conf").read_text()
    assert "plugin_opt_config_file /mosquitto/data/dynamic-security.json" in conf
