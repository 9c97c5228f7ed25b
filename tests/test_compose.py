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


def test_the_demo_fleet_login_exists_only_when_asked_for() -> None:
    """rpm-fleet may publish as any device with any client id (docs/security.md, threat
    model): the example .env leaves it out, and the broker writes it only when set."""
    broker = resolved("--profile", "demo")["services"]["mosquitto"]
    assert broker["environment"]["MQTT_FLEET_PASSWORD"] in ("", None)
    created = " ".join(broker["command"])
    assert '[ -z "$$MQTT_FLEET_PASSWORD" ] ||' in created or '[ -z "$MQTT_FLEET_PASSWORD" ] ||' in (
        created
    )
    example = (ROOT / "docker" / "env.example").read_text().splitlines()
    assert not any(line.startswith("MQTT_FLEET_PASSWORD=") for line in example)


def test_the_server_gets_a_public_url_and_the_production_checks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With env.example as it is (no Twilio account yet) the compose server would refuse to
    start, naming the Twilio values and the HELP contact but not the public URL; with them
    set, it starts."""
    from rpm.settings import Settings
    from rpm.settings.safety import problems, require_safe

    def server_settings(env_file: Path) -> Settings:
        result = subprocess.run(
            [*compose(), "--env-file", str(env_file), "config"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        env = yaml.safe_load(result.stdout)["services"]["server"]["environment"]
        for name in [n for n in list(__import__("os").environ) if n.startswith("RPM_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return Settings()

    example = ROOT / "docker" / "env.example"
    settings = server_settings(example)
    assert settings.api.public_base_url == "https://rpm.example.org"
    assert settings.operations.deployment == "production"
    found = " ".join(problems(settings))
    assert "RPM_TWILIO_AUTH_TOKEN" in found
    assert "RPM_SMS_HELP_CONTACT" in found
    assert "RPM_PUBLIC_BASE_URL" not in found

    real = tmp_path / "real.env"
    real.write_text(
        example.read_text()
        + "TWILIO_ACCOUNT_SID=AC0123456789abcdef0123456789abcdef\n"
        + "TWILIO_AUTH_TOKEN=0123456789abcdef0123456789abcdef\n"
        + "TWILIO_MESSAGING_SERVICE_SID=MG0123456789abcdef0123456789abcdef\n"
        + "TWILIO_FROM_NUMBER=+15417543010\n"
        + "SMS_HELP_CONTACT=+15417543011\n"
    )
    require_safe(server_settings(real))  # no exception: it would start
