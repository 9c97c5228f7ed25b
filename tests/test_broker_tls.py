"""TLS on the broker listener, with a CA generated here: clients that trust the CA connect,
others are refused, and the gateway consumes readings over TLS."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from device_gateways.mqtt import MqttConfig, MqttGateway
from rpm.domain import RawMessage
from rpm.local_endpoints import ServiceEndpoints
from simulators.localservices import LocalServices, MqttTls, free_port
from tests.helpers import mosquitto_pub


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_services(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServiceEndpoints, MqttTls]]:
    root = tmp_path_factory.mktemp("tls")
    pki = root / "pki"
    pki.mkdir()
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=RPM test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=pki,
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=pki,
    )
    (pki / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
        cwd=pki,
    )
    for f in pki.iterdir():  # the broker reads them as its own user
        f.chmod(0o644)
    pki.chmod(0o755)
    tls = MqttTls(free_port(), pki / "ca.pem", pki / "server.pem", pki / "server.key")
    local = LocalServices(root / "services", mqtt_tls=tls, log=lambda line: None)
    endpoints = local.start()
    try:
        yield endpoints, tls
    finally:
        local.stop()


def pub(
    endpoints: ServiceEndpoints, port: int, *tls_args: str
) -> subprocess.CompletedProcess[bytes]:
    return mosquitto_pub(
        port,
        endpoints.mqtt_device_username,
        endpoints.mqtt_device_password,
        "rpm/v1/devices/tls-dev/readings",
        b"{}",
        *tls_args,
    )


def test_clients_that_trust_the_ca_connect_over_tls(
    tls_services: tuple[ServiceEndpoints, MqttTls],
) -> None:
    endpoints, tls = tls_services
    assert pub(endpoints, tls.port, "--cafile", str(tls.cafile)).returncode == 0


def test_clients_that_do_not_trust_the_ca_are_refused(
    tls_services: tuple[ServiceEndpoints, MqttTls],
) -> None:
    endpoints, tls = tls_services
    refused = pub(endpoints, tls.port, "--capath", "/etc/ssl/certs")
    assert refused.returncode != 0
    plaintext = pub(endpoints, tls.port)  # speaking plain MQTT to the TLS port
    assert plaintext.returncode != 0


async def test_the_gateway_consumes_over_tls(
    tls_services: tuple[ServiceEndpoints, MqttTls],
) -> None:
    endpoints, tls = tls_services
    got: list[RawMessage] = []
    arrived = asyncio.Event()

    async def process(batch: Sequence[RawMessage]) -> None:
        got.extend(batch)
        arrived.set()

    gateway = MqttGateway(
        MqttConfig(
            host="127.0.0.1",
            port=tls.port,
            username=endpoints.mqtt_gateway_username,
            password=endpoints.mqtt_gateway_password,
            client_id="rpm-tls-test",
            tls_ca_file=str(tls.cafile),
        ),
        process,
    )
    task = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(gateway.connected.wait(), 10)
        result = await asyncio.to_thread(pub, endpoints, tls.port, "--cafile", str(tls.cafile))
        assert result.returncode == 0, result.stderr
        await asyncio.wait_for(arrived.wait(), 10)
        assert got[0].device_id == "tls-dev"
        assert got[0].transport == "mqtt"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
