"""docker-compose.yml is accepted by Compose and wires the four services together.

No Docker engine is needed: `config` only parses, interpolates and validates the file.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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
