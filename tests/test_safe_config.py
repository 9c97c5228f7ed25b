"""Outside local mode the server refuses to start with demo secrets or callback URLs Twilio
cannot reach, and says everything that is wrong at once (rpm/settings/safety.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from rpm.domain.errors import ConfigurationError
from rpm.local_endpoints import ServiceEndpoints, settings_for_local
from rpm.server import Server
from rpm.settings import ApiSettings, ChannelSettings, OperationsSettings, Settings, SmsSettings
from rpm.settings.safety import problems, require_safe

ROOT = Path(__file__).resolve().parents[1]
SID = "AC0123456789abcdef0123456789abcdef"
SERVICE = "MG0123456789abcdef0123456789abcdef"


def production(*, api: dict[str, object] | None = None, **sms: object) -> Settings:
    """A production deployment that is safe, with some fields changed."""
    return Settings(
        api=ApiSettings(**{"public_base_url": "https://rpm.clinic.example", **(api or {})}),
        sms=SmsSettings(
            **{
                "account_sid": SID,
                "auth_token": SecretStr("a-real-looking-token"),
                "messaging_service_sid": SERVICE,
                "help_contact": "+1 541 754 3011",
                **sms,
            }
        ),
        channels=ChannelSettings(voice_from="+15417543010"),
        operations=OperationsSettings(deployment="production"),
    )


def test_a_complete_production_configuration_is_accepted() -> None:
    assert problems(production()) == []
    require_safe(production())


def test_production_is_the_default_and_the_demo_defaults_are_all_named() -> None:
    settings = Settings()
    assert settings.operations.deployment == "production"
    with pytest.raises(ConfigurationError) as refused:
        require_safe(settings)
    text = str(refused.value)
    for name in (
        "RPM_TWILIO_ACCOUNT_SID",
        "RPM_TWILIO_AUTH_TOKEN",
        "RPM_TWILIO_FROM_NUMBER",
        "RPM_VOICE_FROM_NUMBER",
        "RPM_PUBLIC_BASE_URL is not set",
        "RPM_SMS_HELP_CONTACT",
    ):
        assert name in text
    assert "6 problems" in text


@pytest.mark.parametrize(
    "url",
    [
        "http://0.0.0.0:8000",  # docker-compose's bind address
        "http://127.0.0.1:8000",
        "http://localhost:8000",
        "https://rpm.localhost",
        "http://[::1]:8000",
        "rpm.clinic.example",  # no scheme
    ],
)
def test_callback_urls_on_bind_or_loopback_addresses_are_refused(url: str) -> None:
    found = problems(production(api={"public_base_url": url}))
    assert len(found) == 1
    assert found[0].startswith("RPM_PUBLIC_BASE_URL")
    found = problems(production(api={"dashboard_url": url.replace("8000", "8000/dashboard/")}))
    assert [p.split()[0] for p in found] == ["RPM_DASHBOARD_URL"]


def test_the_test_number_is_fine_as_from_when_a_messaging_service_sends() -> None:
    assert problems(production(from_number="+15005550006")) == []
    found = problems(production(from_number="+15005550006", messaging_service_sid=None))
    assert [p.split()[0] for p in found] == ["RPM_TWILIO_FROM_NUMBER"]


def test_local_mode_checks_nothing_and_is_what_the_local_services_give() -> None:
    endpoints = ServiceEndpoints(
        database_url="postgresql://rpm:pw@127.0.0.1:5432/rpm",
        mqtt_host="127.0.0.1",
        mqtt_port=1883,
        mqtt_gateway_username="g",
        mqtt_gateway_password="g",
        mqtt_device_username="d",
        mqtt_device_password="d",
        mqtt_admin_username="a",
        mqtt_admin_password="a",
        timescaledb=False,
        root="/tmp/x",
    )
    local = settings_for_local(endpoints)
    assert local.operations.deployment == "local"
    assert problems(local)  # the demo values are there...
    require_safe(local)  # ...and allowed


async def test_the_server_refuses_before_touching_anything() -> None:
    """No database at that address: the refusal comes first."""
    settings = Settings(database={"url": SecretStr("postgresql://nobody@127.0.0.1:1/none")})
    with pytest.raises(ConfigurationError, match="refusing to start"):
        await Server(settings).start()


def test_rpm_serve_prints_every_problem_and_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env |= {"RPM_API_HOST": "0.0.0.0", "RPM_PUBLIC_BASE_URL": "http://0.0.0.0:8000"}
    result = subprocess.run(
        [sys.executable, "-m", "rpm.cli", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "rpm serve: refusing to start" in result.stderr
    assert "RPM_PUBLIC_BASE_URL names 0.0.0.0" in result.stderr
    assert "RPM_TWILIO_AUTH_TOKEN" in result.stderr
    assert "demo-token" not in result.stderr  # names the setting, never a secret's value
    assert "Traceback" not in result.stderr
