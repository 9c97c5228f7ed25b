"""Secrets from files (``RPM_<NAME>_FILE``, rpm/settings.py): read, refused when ambiguous,
never printed, and used: ``rpm migrate`` reaches the database named only in a file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from pydantic import ValidationError

from rpm.local_endpoints import ServiceEndpoints
from rpm.settings import Settings
from rpm.storage.migrate import available
from tests.conftest import with_database

REPO = Path(__file__).resolve().parent.parent


def test_a_secret_comes_from_the_file_its_variable_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "twilio_token"
    secret.write_text("from-a-file-1234\n", encoding="utf-8")  # editors add a newline
    monkeypatch.setenv("RPM_TWILIO_AUTH_TOKEN_FILE", str(secret))
    monkeypatch.delenv("RPM_TWILIO_AUTH_TOKEN", raising=False)
    s = Settings()
    assert s.sms.auth_token.get_secret_value() == "from-a-file-1234"
    assert "from-a-file-1234" not in repr(s)
    assert "from-a-file-1234" not in str(s.model_dump())


def test_both_a_variable_and_a_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "ehr"
    secret.write_text("file-value", encoding="utf-8")
    monkeypatch.setenv("RPM_EHR_CLIENT_SECRET_FILE", str(secret))
    monkeypatch.setenv("RPM_EHR_CLIENT_SECRET", "env-value")
    with pytest.raises(ValueError, match="not both"):
        Settings()


def test_an_unreadable_file_names_the_path_not_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPM_MQTT_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"RPM_MQTT_PASSWORD_FILE: cannot read .*missing"):
        Settings()


def test_only_secrets_come_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = tmp_path / "host"
    host.write_text("10.9.9.9", encoding="utf-8")
    monkeypatch.setenv("RPM_API_HOST_FILE", str(host))
    assert Settings().api.host == "127.0.0.1"
    monkeypatch.setenv("RPM_API_PORT", "not-a-port")
    with pytest.raises(ValidationError):
        Settings()


async def test_rpm_migrate_uses_the_database_url_from_a_file(
    tmp_path: Path, services: ServiceEndpoints
) -> None:
    name = f"secret_file_{os.getpid()}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = with_database(services.database_url, name)
    secret = tmp_path / "database_url"
    secret.write_text(url + "\n", encoding="utf-8")
    secret.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env["RPM_DATABASE_URL_FILE"] = str(secret)
    done = subprocess.run(  # noqa: ASYNC221 - a short child process, awaited on purpose
        [sys.executable, "-m", "rpm.cli", "migrate"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "applied: 0001_core" in done.stdout
    assert url not in done.stdout + done.stderr
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(available())
        assert await conn.fetchval("SELECT to_regclass('audit_log') IS NOT NULL")
    finally:
        await conn.close()
        admin = await asyncpg.connect(services.database_url)
        try:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        finally:
            await admin.close()
