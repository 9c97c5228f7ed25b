"""The broker configurations that ship in docker/: Mosquitto's (the single-machine Compose
path) run for real with its paths moved into a temporary directory, EMQX's (the cluster
profile) parsed as HOCON and held to the identity settings of docs/devices.md, and the
proxy's checked by haproxy itself. No Docker engine is needed (docs/deploy.md says what
ran where)."""

from __future__ import annotations

import asyncio
import getpass
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography import x509
from pyhocon import ConfigFactory  # type: ignore[import-untyped]

from device_gateways import device_ca, device_ca_files
from device_gateways.device_ca import DeviceCA, Revoked
from rpm.domain.errors import LocalServicesError
from simulators.cert_device import CertDevice
from simulators.localservices import free_port
from simulators.localservices.mosquitto import find_mosquitto
from simulators.localservices.processes import WAIT_S, accepts, wait_until
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
GATEWAY = ("rpm-gateway", "gateway-secret")
SHARED_TOPIC = "$share/rpm-gateways/rpm/v1/devices/+/readings"
CRL_URL = "http://crl.rpm.internal/crl.pem"


# --- EMQX (the cluster profile) ----------------------------------------------------------------


def emqx_conf() -> Any:
    return ConfigFactory.parse_file(str(DOCKER / "emqx" / "emqx.conf"))


@pytest.mark.pure
def test_emqx_devices_listener_takes_the_identity_from_the_certificate() -> None:
    """The device listener asks for a certificate from the device CA and nothing else; its
    zone makes the CN the username and the client id (Mosquitto: use_identity_as_username,
    use_username_as_clientid)."""
    conf = emqx_conf()
    devices = conf["listeners"]["ssl"]["devices"]
    ssl = devices["ssl_options"]
    assert ssl["verify"] == "verify_peer"
    assert ssl["fail_if_no_peer_cert"] is True
    assert ssl["cacertfile"] == "/opt/emqx/etc/device-ca/ca.pem"
    # Revocation: the CRL named in the certificates, fetched again every 30 s.
    assert ssl["enable_crl_check"] is True
    assert conf["crl_cache"]["refresh_interval"].seconds == 30
    assert devices["enable_authn"] is False  # the handshake is the authentication
    zone = conf["zones"][devices["zone"]]["mqtt"]
    assert zone["peer_cert_as_username"] == "cn"
    assert zone["peer_cert_as_clientid"] == "cn"
    # Only the device listener and the gateways' plain one: EMQX's default listeners are off.
    assert conf["listeners"]["ssl"]["default"]["enable"] is False
    assert conf["listeners"]["ws"]["default"]["enable"] is False
    assert conf["listeners"]["wss"]["default"]["enable"] is False


@pytest.mark.pure
def test_emqx_is_a_three_node_cluster_keeping_the_gateways_backlog() -> None:
    conf = emqx_conf()
    cluster = conf["cluster"]
    assert cluster["discovery_strategy"] == "static"
    assert cluster["static"]["seeds"] == [f"emqx@emqx{n}.rpm.internal" for n in (1, 2, 3)]
    mqtt = conf["mqtt"]
    # As Mosquitto's max_queued_messages: a gateway that is down loses nothing.
    assert mqtt["max_mqueue_len"] >= 1_000_000
    assert mqtt["max_packet_size"] == "1MB"
    assert mqtt["session_expiry_interval"].days == 7  # pyhocon reads durations


@pytest.mark.pure
def test_emqx_authorizes_from_the_file_and_denies_the_rest() -> None:
    conf = emqx_conf()
    authz = conf["authorization"]
    assert authz["no_match"] == "deny"
    [source] = authz["sources"]
    assert (source["type"], source["path"]) == ("file", "/opt/emqx/etc/rpm-acl.conf")
    [authn] = conf["authentication"]
    assert (authn["backend"], authn["user_id_type"]) == ("built_in_database", "username")


def acl_rules() -> list[str]:
    """The rules of docker/emqx/acl.conf, one string each (comments dropped)."""
    text = "\n".join(
        line
        for line in (DOCKER / "emqx" / "acl.conf").read_text().splitlines()
        if not line.lstrip().startswith("%%")
    )
    return [" ".join(rule.split()) for rule in text.split("}.") if rule.strip()]


@pytest.mark.pure
def test_emqx_acl_keeps_each_device_to_its_own_topic() -> None:
    rules = acl_rules()
    assert rules[-1] == "{deny, all"  # nothing else
    gateway, device = rules[0], rules[1]
    assert gateway.startswith('{allow, {username, "rpm-gateway"}, subscribe')
    assert f'{{eq, "{SHARED_TOPIC}"}}' in gateway
    assert device == '{allow, all, publish, ["rpm/v1/devices/${username}/#"]'


# --- the proxy -----------------------------------------------------------------------------


def test_haproxy_accepts_the_proxy_config() -> None:
    haproxy = shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin:/usr/bin")
    if haproxy is None:
        pytest.fail("haproxy is not installed: scripts/test.sh installs it")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(DOCKER / "haproxy.cfg")],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    text = (DOCKER / "haproxy.cfg").read_text()
    for node in (1, 2, 3):
        assert f"emqx{node}.rpm.internal:8883" in text  # devices' TLS, passed through
        assert f"emqx{node}.rpm.internal:1883" in text  # the gateways


# --- the device CA files that Compose's one-shot service writes ---------------------------------


@pytest.mark.pure
def test_the_broker_certificate_is_made_once_per_host(tmp_path: Path) -> None:
    now = datetime(2026, 12, 4, tzinfo=UTC)
    ca_dir, out = tmp_path / "ca", tmp_path / "tls"
    assert device_ca_files.ensure_broker_cert(ca_dir, out, "mqtt.example.org", now)
    first = (out / "broker.pem").read_bytes()
    assert (out / "broker.key").stat().st_mode & 0o777 == 0o600
    assert not device_ca_files.ensure_broker_cert(ca_dir, out, "mqtt.example.org", now)
    assert (out / "broker.pem").read_bytes() == first  # kept
    assert device_ca_files.ensure_broker_cert(ca_dir, out, "mqtt.example.net", now)


@pytest.mark.pure
def test_processes_meeting_a_missing_ca_make_one_ca(tmp_path: Path) -> None:
    """Several API processes may sign their first enrolment at once: one CA is made, and
    every one of them gets it (two written over each other would leave a key that does not
    match the certificate)."""
    now = datetime(2026, 12, 4, tzinfo=UTC)
    made: list[bytes] = []
    start = threading.Barrier(4)

    def make() -> None:
        start.wait()
        made.append(device_ca_files.ensure(tmp_path, now).cert_pem())

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 1
    kept = device_ca_files.ensure(tmp_path, now)
    assert kept.cert_pem() == made[0]


@pytest.mark.pure
def test_with_a_crl_url_certificates_and_the_crl_name_where_the_crl_is(tmp_path: Path) -> None:
    """EMQX checks a client certificate against the CRL at the distribution point the
    certificate names, and enforces a CRL only if it carries the issuing distribution point
    (docs/deploy.md): with RPM_MQTT_DEVICE_CRL_URL both say where the CRL is; without it,
    neither, as before. The broker's own certificate never names one."""
    now = datetime(2026, 12, 4, tzinfo=UTC)
    plain = device_ca_files.ensure(tmp_path, now)
    with_url = replace(plain, crl_url=CRL_URL)
    csr = device_ca.make_csr("cuff-crl1", device_ca.new_key())

    def points(pem: str | bytes) -> list[str]:
        cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
        try:
            ext = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            return []
        return [n.value for p in ext for n in p.full_name or []]

    assert points(with_url.sign_device("cuff-crl1", csr, now).pem) == [CRL_URL]
    assert points(plain.sign_device("cuff-crl1", csr, now).pem) == []
    assert points(with_url.sign_server("mqtt.example.org", device_ca.new_key(), now)) == []

    crl = x509.load_pem_x509_crl(with_url.crl([Revoked("1f", now)], now))
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical
    assert [n.value for n in idp.value.full_name or []] == [CRL_URL]
    assert idp.value.only_contains_user_certs
    plain_crl = x509.load_pem_x509_crl(plain.crl([], now))
    with pytest.raises(x509.ExtensionNotFound):
        plain_crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)


async def test_the_signing_processes_write_the_crl_url_too(tmp_path: Path) -> None:
    """A shipment large enough for the worker processes (rpm/api/signer.py) gets the same
    certificates as one signed in the API process: the URL travels to the workers."""
    from rpm.api.signer import POOL_FROM, Signer

    now = datetime.now(UTC)
    ca = replace(device_ca_files.ensure(tmp_path, now), crl_url=CRL_URL)
    key = device_ca.new_key()
    rows = [(f"cuff-w{i}", device_ca.make_csr(f"cuff-w{i}", key)) for i in range(POOL_FROM)]
    signer = Signer(workers=2)
    try:
        issued = await signer.sign(ca, rows, now)
    finally:
        signer.close()
    assert len(issued) == POOL_FROM
    for cert in issued:
        parsed = x509.load_pem_x509_certificate(cert.pem.encode())
        ext = parsed.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert [n.value for p in ext for n in p.full_name or []] == [CRL_URL]


@pytest.mark.pure
def test_the_crl_url_setting_must_be_http() -> None:
    from pydantic import ValidationError

    from rpm.settings import Settings

    assert Settings.model_validate({"mqtt": {"device_crl_url": CRL_URL}}).mqtt.device_crl_url
    with pytest.raises(ValidationError, match="device_crl_url"):
        Settings.model_validate({"mqtt": {"device_crl_url": "file:///etc/crl.pem"}})


# --- Mosquitto (the single-machine Compose path), for real ----------------------------------


def adapted_mosquitto_conf(work: Path, plugin: str, port: int, cert_port: int) -> str:
    """docker/mosquitto.conf with the container's paths moved under ``work`` and the
    listeners on loopback ports; every other line as shipped."""
    text = (DOCKER / "mosquitto.conf").read_text()
    text = text.replace("listener 1883\n", f"listener {port} 127.0.0.1\n")
    text = text.replace("listener 8883\n", f"listener {cert_port} 127.0.0.1\n")
    text = text.replace("/usr/lib/mosquitto_dynamic_security.so", plugin)
    text = text.replace("/mosquitto/config/acl", str(DOCKER / "acl"))
    text = text.replace("/mosquitto/", f"{work}/")
    # As root the broker would drop to the user `mosquitto`; the test's files are ours.
    return text + f"user {getpass.getuser()}\n"


class DockerMosquitto:
    """The shipped config in a temporary directory, with the files Compose provides."""

    def __init__(self, work: Path, crl_url: str | None = None) -> None:
        self.work = work
        self.crl_url = crl_url
        self.port, self.cert_port = free_port(), free_port()
        self.ca_dir = work / "device-ca"
        self.now = datetime.now(UTC)  # the broker judges certificates by its wall clock
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self) -> None:
        broker, plugin = find_mosquitto()
        data = self.work / "data"
        data.mkdir(parents=True)
        # What the compose service's command does before `exec mosquitto`.
        passwd = data / "passwd"
        passwd.write_text(f"{GATEWAY[0]}:{GATEWAY[1]}\n")
        passwd.chmod(0o600)
        subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, timeout=30)
        subprocess.run(
            ["mosquitto_ctrl", "dynsec", "init", str(data / "dynamic-security.json"), "admin", "x"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        device_ca_files.ensure_broker_cert(self.ca_dir, data / "tls", "127.0.0.1", self.now)
        conf = self.work / "mosquitto.conf"
        conf.write_text(adapted_mosquitto_conf(self.work, plugin, self.port, self.cert_port))
        self.broker = broker

    def start(self) -> None:
        with (self.work / "mosquitto.log").open("ab") as log:  # the broker keeps its own fd
            self.proc = subprocess.Popen(
                [self.broker, "-c", str(self.work / "mosquitto.conf")], stdout=log, stderr=log
            )
        if not wait_until(lambda: accepts(self.port) and accepts(self.cert_port), WAIT_S):
            self.stop()
            raise LocalServicesError((self.work / "mosquitto.log").read_text())

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(1)  # SIGHUP: what the compose service's CRL watcher sends

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=WAIT_S)

    def ca(self) -> DeviceCA:
        return replace(device_ca_files.ensure(self.ca_dir, self.now), crl_url=self.crl_url)

    def device(self, device_id: str, directory: Path) -> CertDevice:
        ca = self.ca()
        device = CertDevice(device_id, directory)
        device.keep(ca.sign_device(device_id, device.csr(), self.now).pem)
        return device


@pytest.fixture(params=[None, CRL_URL], ids=["no-crl-url", "crl-url"])
async def docker_mosquitto(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[DockerMosquitto]:
    """The broker; the device CA writes the CRL distribution point (for EMQX) or not:
    Mosquitto reads the CRL from its file either way."""
    broker = DockerMosquitto(tmp_path / "mosquitto", request.param)
    await asyncio.to_thread(broker.prepare)
    await asyncio.to_thread(broker.start)
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


def reading(systolic: int) -> bytes:
    return (
        b'{"metric":"blood_pressure","measured_at":"2026-12-04T08:00:00Z",'
        b'"values":{"systolic":%d,"diastolic":80}}' % systolic
    )


async def test_docker_mosquitto_takes_the_login_from_the_certificate_and_revokes_it(
    docker_mosquitto: DockerMosquitto, tmp_path: Path
) -> None:
    """docker/mosquitto.conf and docker/acl, run: a device with a certificate from the
    device CA publishes on its own topic and reaches the gateway's login (on the shared
    subscription, at the plain listener); what it publishes on another device's topic
    does not; once its serial is in the CRL and the broker got SIGHUP, its next
    connection is refused, another device's is not."""
    broker = docker_mosquitto
    a = broker.device("cuff-a1", tmp_path / "a")
    b = broker.device("cuff-b1", tmp_path / "b")
    ca_pem = broker.ca_dir / "ca.pem"
    got: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=GATEWAY[0],
        password=GATEWAY[1],
        identifier="rpm-gateway-test",
    ) as gateway:
        # The filter the cluster's gateways use: the ACL lets the gateway login share it.
        await gateway.subscribe(SHARED_TOPIC, qos=1)

        async def collect() -> None:
            async for message in gateway.messages:
                got.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]

        collector = asyncio.create_task(collect())
        try:
            async with a.client("127.0.0.1", broker.cert_port, ca_pem) as client:
                await client.publish(b.topic, reading(181), qos=1)  # the ACL drops it
                await client.publish(a.topic, reading(131), qos=1)

            async def arrived() -> list[tuple[str, bytes]] | None:
                return got or None

            # One client's messages arrive in order: once A's own reading is here, the
            # forged one was refused, not merely late.
            assert await eventually(arrived) == [(a.topic, reading(131))]
        finally:
            collector.cancel()

    ca = broker.ca()
    serial = format(x509.load_pem_x509_certificate(a.cert_file.read_bytes()).serial_number, "x")
    device_ca_files.publish_crl(broker.ca_dir, ca, [Revoked(serial, broker.now)], broker.now)
    broker.reload()

    async def refused() -> bool | None:
        try:
            async with a.client("127.0.0.1", broker.cert_port, ca_pem):
                return None
        except aiomqtt.MqttError:
            return True

    assert await eventually(refused)
    async with b.client("127.0.0.1", broker.cert_port, ca_pem) as client:
        await client.publish(b.topic, reading(132), qos=1)  # B is not revoked
