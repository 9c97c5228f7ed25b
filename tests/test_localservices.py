"""simulators.localservices against the real PostgreSQL 15 and Mosquitto, in a temporary directory.

This module runs its own instance (not the session-wide one in conftest.py) because its last
test stops and restarts it; keep that test last.
"""

from __future__ import annotations

import asyncio
import socket
import stat
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from rpm.domain.errors import LocalServicesError
from simulators.localservices import (
    LocalServices,
    ServiceEndpoints,
    parse_postmaster_pid,
    render_mosquitto_conf,
    render_pg_settings,
)

SAMPLE = ServiceEndpoints(
    database_url="postgresql://rpm:pg-secret@127.0.0.1:5999/rpm",
    mqtt_host="127.0.0.1",
    mqtt_port=1999,
    mqtt_gateway_username="rpm-gateway",
    mqtt_gateway_password="gw-secret",
    mqtt_device_username="rpm-fleet",
    mqtt_device_password="dev-secret",
    mqtt_admin_username="rpm-broker-admin",
    mqtt_admin_password="admin-secret",
    timescaledb=False,
    root="/srv/rpm",
)


# --- pure parts --------------------------------------------------------------------------------


@pytest.mark.pure
def test_endpoints_round_trip_through_json() -> None:
    assert ServiceEndpoints.from_json(SAMPLE.to_json()) == SAMPLE


@pytest.mark.pure
def test_the_certificate_listener_port_is_kept_and_older_files_have_none() -> None:
    with_listener = replace(SAMPLE, mqtt_device_cert_port=8883)
    assert ServiceEndpoints.from_json(with_listener.to_json()).mqtt_device_cert_port == 8883
    older = SAMPLE.to_json().replace('  "mqtt_device_cert_port": null,\n', "")
    assert "mqtt_device_cert_port" not in older
    assert ServiceEndpoints.from_json(older) == SAMPLE
    with pytest.raises(ValueError, match="mqtt_device_cert_port"):
        replace(SAMPLE, mqtt_device_cert_port=70000)


@pytest.mark.pure
def test_endpoints_repr_hides_passwords() -> None:
    text = repr(SAMPLE)
    assert "secret" not in text
    assert "127.0.0.1:5999" in text


@pytest.mark.pure
def test_endpoints_validate_on_construction() -> None:
    assert replace(SAMPLE, mqtt_port=1883).mqtt_port == 1883
    with pytest.raises(ValueError, match="mqtt_port"):
        replace(SAMPLE, mqtt_port=0)


@pytest.mark.pure
@pytest.mark.parametrize(
    "text",
    [
        "[]",
        SAMPLE.to_json().replace('"root"', '"rooot"'),
        SAMPLE.to_json().replace("1999", "true"),
        SAMPLE.to_json().replace("1999", '"1999"'),
        SAMPLE.to_json().replace("postgresql://", "mysql://"),
    ],
)
def test_endpoints_from_json_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several distinct messages
        ServiceEndpoints.from_json(text)


@pytest.mark.pure
def test_parse_postmaster_pid() -> None:
    text = "4242\n/srv/pg\n1700000000\n5433\n/srv/pg\n127.0.0.1\n  1234 5678\nready   \n"
    assert parse_postmaster_pid(text) == (4242, 5433, "ready")
    assert parse_postmaster_pid("4242\n/srv/pg\n") is None


@pytest.mark.pure
def test_rendered_configs_listen_on_loopback_only() -> None:
    pg = render_pg_settings(5433, Path("/srv/pg"), timescaledb=True)
    assert "listen_addresses = '127.0.0.1'" in pg
    assert "fsync = on" in pg
    assert "shared_preload_libraries = 'timescaledb'" in pg
    assert "timescaledb" not in render_pg_settings(5433, Path("/srv/pg"), timescaledb=False)
    conf = render_mosquitto_conf(1883, Path("/srv/mqtt"))
    assert "listener 1883 127.0.0.1\n" in conf
    assert "allow_anonymous false\n" in conf
    assert [ln for ln in conf.splitlines() if ln.startswith("listener")] == [
        "listener 1883 127.0.0.1"
    ]
    assert "plugin_opt_config_file /srv/mqtt/dynamic-security.json" in conf


# --- against the real servers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def log_lines() -> list[str]:
    return []


@pytest.fixture(scope="module")
def own_services(
    tmp_path_factory: pytest.TempPathFactory, log_lines: list[str]
) -> Iterator[tuple[LocalServices, ServiceEndpoints]]:
    local = LocalServices(tmp_path_factory.mktemp("services"), log=log_lines.append)
    endpoints = local.start()
    yield local, endpoints
    local.stop()


async def mqtt(
    tool: str, endpoints: ServiceEndpoints, login: tuple[str, str] | None, *args: str
) -> tuple[int, str, str]:
    """Run mosquitto_pub or mosquitto_sub against the broker; (returncode, stdout, stderr)."""
    argv = [tool, "-h", endpoints.mqtt_host, "-p", str(endpoints.mqtt_port), "-V", "mqttv311"]
    if login is not None:
        argv += ["-u", login[0], "-P", login[1]]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def gateway(endpoints: ServiceEndpoints) -> tuple[str, str]:
    return endpoints.mqtt_gateway_username, endpoints.mqtt_gateway_password


def device(endpoints: ServiceEndpoints) -> tuple[str, str]:
    return endpoints.mqtt_device_username, endpoints.mqtt_device_password


def pids(endpoints: ServiceEndpoints) -> tuple[int, int]:
    """(postmaster pid, broker pid) from the files the servers wrote."""
    root = Path(endpoints.root)
    parsed = parse_postmaster_pid((root / "pg" / "postmaster.pid").read_text())
    assert parsed is not None
    return parsed[0], int((root / "mqtt" / "mosquitto.pid").read_text())


def pg_port(endpoints: ServiceEndpoints) -> int:
    return int(endpoints.database_url.rsplit(":", 1)[1].split("/")[0])


def assert_port_free(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_start_saves_endpoints_and_logs_no_secret(
    own_services: tuple[LocalServices, ServiceEndpoints], log_lines: list[str]
) -> None:
    _, endpoints = own_services
    saved = Path(endpoints.root) / "endpoints.json"
    assert ServiceEndpoints.from_json(saved.read_text()) == endpoints
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert endpoints.database_url.startswith("postgresql://rpm:")
    assert endpoints.database_url.endswith("/rpm")
    assert (endpoints.mqtt_host, endpoints.mqtt_device_username) == ("127.0.0.1", "rpm-fleet")
    assert endpoints.mqtt_gateway_username == "rpm-gateway"
    flavour = "PostgreSQL 15 with TimescaleDB " if endpoints.timescaledb else "plain PostgreSQL 15"
    assert sum(flavour in line for line in log_lines) == 1, log_lines
    secrets = [endpoints.mqtt_gateway_password, endpoints.mqtt_device_password]
    secrets.append(endpoints.database_url.split(":")[2].split("@")[0])
    for line in log_lines:
        assert not any(secret in line for secret in secrets)


def test_without_timescaledb_runs_plain_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "simulators.localservices.postgres.timescaledb_installed", lambda _bindir: False
    )
    with pytest.raises(LocalServicesError, match="required"):
        LocalServices(tmp_path / "required", timescaledb=True).start()
    lines: list[str] = []
    local = LocalServices(tmp_path / "plain", log=lines.append)
    try:
        endpoints = local.start()
        assert endpoints.timescaledb is False
        assert (
            "shared_preload_libraries" not in (tmp_path / "plain" / "pg" / "rpm.conf").read_text()
        )
        assert "plain PostgreSQL 15 (TimescaleDB extension not installed)" in lines[-1]
    finally:
        local.stop()


async def test_postgres_accepts_the_generated_login_over_tcp(
    own_services: tuple[LocalServices, ServiceEndpoints],
) -> None:
    _, endpoints = own_services
    conn = await asyncpg.connect(endpoints.database_url, timeout=5)
    try:
        row = await conn.fetchrow(
            "SELECT current_user AS who, current_database() AS db,"
            " host(inet_server_addr()) AS addr,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,"
            " current_setting('listen_addresses') AS listen, current_setting('fsync') AS fsync,"
            " current_setting('shared_preload_libraries') AS preload"
        )
    finally:
        await conn.close()
    assert row is not None
    assert (row["who"], row["db"], row["addr"]) == ("rpm", "rpm", "127.0.0.1")
    assert row["superuser"] is True
    assert (row["listen"], row["fsync"]) == ("127.0.0.1", "on")
    assert ("timescaledb" in row["preload"]) is endpoints.timescaledb


async def test_postgres_refuses_a_wrong_password(
    own_services: tuple[LocalServices, ServiceEndpoints],
) -> None:
    _, endpoints = own_services
    wrong = endpoints.database_url.replace("rpm:", "rpm:x", 1)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong, timeout=5)


async def test_broker_refuses_anonymous_and_wrong_passwords(
    own_services: tuple[LocalServices, ServiceEndpoints],
) -> None:
    _, endpoints = own_services
    for login in (None, ("rpm-gateway", "wrong"), ("nobody", "nothing")):
        code, _, err = await mqtt("mosquitto_pub", endpoints, login, "-t", "rpm/x", "-m", "hi")
        assert code != 0
        assert "not authori" in err.lower(), err


async def test_broker_carries_qos1_from_device_to_an_offline_gateway(
    own_services: tuple[LocalServices, ServiceEndpoints],
) -> None:
    _, endpoints = own_services
    session = ["-i", f"gw-{uuid.uuid4().hex[:8]}", "-c", "-q", "1", "-t", "rpm/#"]
    # The gateway subscribes in a persistent session, then goes away.
    code, _, err = await mqtt("mosquitto_sub", endpoints, gateway(endpoints), *session, "-E")
    assert code == 0, err
    # The device login may not publish outside rpm/v1/devices/ (MQTT 3.1.1 drops it silently).
    code, _, err = await mqtt(
        "mosquitto_pub", endpoints, device(endpoints), "-q", "1", "-t", "rpm/v1/alerts", "-m", "x"
    )
    assert code == 0, err
    reading = '{"hr": 72}'
    topic = "rpm/v1/devices/dev-1/readings"
    code, _, err = await mqtt(
        "mosquitto_pub", endpoints, device(endpoints), "-q", "1", "-t", topic, "-m", reading
    )
    assert code == 0, err
    # Back online, the gateway gets the queued reading, at QoS 1, and nothing else first.
    code, out, err = await mqtt(
        "mosquitto_sub",
        endpoints,
        gateway(endpoints),
        *session,
        "-C",
        "1",
        "-W",
        "5",
        "-F",
        "%q %t %p",
    )
    assert code == 0, err
    assert out == f"1 {topic} {reading}\n"


async def test_start_twice_reuses_the_running_instance(
    own_services: tuple[LocalServices, ServiceEndpoints], log_lines: list[str]
) -> None:
    local, endpoints = own_services
    before = pids(endpoints)
    again = LocalServices(Path(endpoints.root), log=log_lines.append)
    assert await asyncio.to_thread(again.start) == endpoints
    assert local.running() == endpoints
    assert pids(endpoints) == before
    assert "reused" in log_lines[-1]
    with pytest.raises(LocalServicesError, match="stop"):
        LocalServices(Path(endpoints.root), mqtt_port=endpoints.mqtt_port + 1).start()
    with pytest.raises(LocalServicesError, match="stop"):
        LocalServices(Path(endpoints.root), timescaledb=not endpoints.timescaledb).start()


async def test_stop_frees_both_ports_and_a_restart_keeps_data_and_queued_messages(
    own_services: tuple[LocalServices, ServiceEndpoints],
) -> None:
    local, endpoints = own_services
    conn = await asyncpg.connect(endpoints.database_url, timeout=5)
    try:
        await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
    finally:
        await conn.close()
    session = ["-i", f"gw-{uuid.uuid4().hex[:8]}", "-c", "-q", "1", "-t", "rpm/#"]
    code, _, err = await mqtt("mosquitto_sub", endpoints, gateway(endpoints), *session, "-E")
    assert code == 0, err
    topic = "rpm/v1/devices/dev-2/readings"
    code, _, err = await mqtt(
        "mosquitto_pub", endpoints, device(endpoints), "-q", "1", "-t", topic, "-m", "queued"
    )
    assert code == 0, err

    await asyncio.to_thread(local.stop)
    assert_port_free(pg_port(endpoints))
    assert_port_free(endpoints.mqtt_port)
    assert local.running() is None
    await asyncio.to_thread(local.stop)  # idempotent

    restarted = await asyncio.to_thread(local.start)
    assert restarted == endpoints
    conn = await asyncpg.connect(endpoints.database_url, timeout=5)
    try:
        assert await conn.fetchval("SELECT n FROM kept") == 7
    finally:
        await conn.close()
    code, out, err = await mqtt(
        "mosquitto_sub", endpoints, gateway(endpoints), *session, "-C", "1", "-W", "5", "-v"
    )
    assert code == 0, err
    assert out == f"{topic} queued\n"
