"""docker-compose.yml is accepted by Compose and wires its services together: the
single-machine stack (no profile), the demo simulator (`--profile demo`) and the cluster
(`--profile cluster`: EMQX, the proxy, gateways, workers and API processes).

No Docker engine is needed: `config` only parses, interpolates and validates the file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time
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


SINGLE_MACHINE = {"timescaledb", "device-ca", "mosquitto", "server"}
CLUSTER = {
    "crl",
    "emqx1",
    "emqx2",
    "emqx3",
    "proxy",
    "gateway-1",
    "gateway-2",
    "gateway-3",
    "workers",
    "api",
}


def enabled(doc: dict[str, Any], *profiles: str) -> set[str]:
    """The services Compose starts with ``--profile`` each of ``profiles``: those without
    profiles and those in one of them (docker-compose 1.29's `config --services` lists all)."""
    return {
        name
        for name, service in doc["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def in_container(value: str) -> str:
    """A value as the container gets it: `config` prints `$$` (Compose's escape) as is."""
    return value.replace("$$", "$")


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a resolved service's volumes (short or long syntax)."""
    found = {}
    for volume in service["volumes"]:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found[target] = source
    return found


def test_compose_has_database_broker_server_and_simulator() -> None:
    doc = resolved()
    assert enabled(doc) == SINGLE_MACHINE
    assert enabled(doc, "demo") == SINGLE_MACHINE | {"simulator"}


def test_the_cluster_profile_adds_the_cluster_and_nothing_to_the_default() -> None:
    """`--profile cluster` adds the EMQX nodes, the proxy and the scaled-out server
    processes; without it Compose starts what it started before the cluster existed (and the
    one-shot that makes the device CA and the broker's certificate)."""
    doc = resolved("--profile", "cluster")
    assert enabled(doc, "cluster") == SINGLE_MACHINE | CLUSTER
    for name in SINGLE_MACHINE:
        text = yaml.safe_dump(doc["services"][name])
        for cluster_word in ("emqx", "proxy", "$share"):
            assert cluster_word not in text, name
    assert doc["services"]["server"]["environment"]["RPM_MQTT_HOST"] == "mosquitto"
    assert doc["services"]["server"]["command"] == ["rpm", "serve"]


def test_cluster_gateways_share_the_device_topics_each_with_its_own_session() -> None:
    """Three gateways, one shared subscription (the topic the EMQX ACL lets the gateway
    login read), a client id each (one persistent session each); workers and API processes
    run the roles `rpm serve --role` knows, two of each."""
    from rpm.server import parse_roles

    services = resolved("--profile", "cluster")["services"]
    gateways = [services[f"gateway-{n}"] for n in (1, 2, 3)]
    from rpm.settings import Settings

    topics = {
        Settings.model_validate({"mqtt": {"share_group": g["environment"]["RPM_MQTT_SHARE_GROUP"]}})
        .mqtt.gateway()
        .subscription
        for g in gateways
    }
    assert topics == {"$share/rpm-gateways/rpm/v1/devices/+/readings"}
    acl = (ROOT / "docker" / "emqx" / "acl.conf").read_text()
    assert f'{{eq, "{topics.pop()}"}}' in acl
    assert '{username, "rpm-gateway"}' in acl
    ids = [g["environment"]["RPM_MQTT_CLIENT_ID"] for g in gateways]
    assert len(set(ids)) == 3
    for g in gateways:
        assert g["command"] == ["rpm", "serve", "--role", "gateway"]
        assert g["environment"]["RPM_MQTT_USERNAME"] == "rpm-gateway"
        assert g["environment"]["RPM_MQTT_HOST"] == "proxy"
        assert "RPM_MQTT_ADMIN_USERNAME" not in g["environment"]  # no dynamic security
    for name, role in (("workers", "workers"), ("api", "api")):
        command = services[name]["command"]
        assert command[:3] == ["rpm", "serve", "--role"]
        assert parse_roles(command[3]) == frozenset({role})
        assert services[name]["deploy"]["replicas"] == 2
    haproxy = (ROOT / "docker" / "haproxy.cfg").read_text()
    assert "server-template api 4 api:8000" in haproxy
    assert "option forwardfor" in haproxy
    # Client addresses from the proxy's header: only when nobody else can reach the API.
    assert services["api"]["environment"]["FORWARDED_ALLOW_IPS"] == "*"
    assert "ports" not in services["api"]


def test_cluster_emqx_nodes_find_each_other_and_mount_what_their_config_names() -> None:
    """Each node's name is one of the static seeds and resolves (network alias); the paths
    docker/emqx/emqx.conf reads are mounted: the device CA, the ACL, the broker's
    certificate (copied from its volume at start), a data volume of its own."""
    services = resolved("--profile", "cluster")["services"]
    conf = (ROOT / "docker" / "emqx" / "emqx.conf").read_text()
    datas = set()
    for n in (1, 2, 3):
        node = services[f"emqx{n}"]
        name = node["environment"]["EMQX_NODE__NAME"]
        assert name == f"emqx@emqx{n}.rpm.internal"
        assert f'"{name}"' in conf
        assert node["networks"]["default"]["aliases"] == [name.split("@")[1]]
        mounted = mounts(node)
        assert mounted["/opt/emqx/etc/device-ca"] == "device-ca"
        assert mounted["/opt/emqx/etc/rpm-acl.conf"].endswith("docker/emqx/acl.conf")
        assert mounted["/opt/emqx/etc/emqx.conf"].endswith("docker/emqx/emqx.conf")
        assert mounted["/broker-tls"] == "broker-tls"
        datas.add(mounted["/opt/emqx/data"])
        entry = " ".join(node["entrypoint"])
        assert "/opt/emqx/etc/certs/broker.key" in entry
        assert "rpm-gateway,%s,false" in entry  # the bootstrap login the config names
        assert node["depends_on"]["device-ca"]["condition"] == "service_completed_successfully"
    assert len(datas) == 3
    assert "/opt/emqx/data/rpm-logins.csv" in conf


def test_cluster_device_certificates_name_the_crl_that_the_crl_service_serves() -> None:
    """EMQX fetches the CRL from the URL in each device certificate: the API processes
    write that URL, and the `crl` service answers it from the device CA's volume, serving
    crl.pem and nothing else of that directory (the CA key is there)."""
    services = resolved("--profile", "cluster")["services"]
    url = services["api"]["environment"]["RPM_MQTT_DEVICE_CRL_URL"]
    assert url == "http://crl.rpm.internal/crl.pem"
    crl = services["crl"]
    assert crl["networks"]["default"]["aliases"] == ["crl.rpm.internal"]
    assert mounts(crl)["/srv/device-ca"] == "device-ca"
    conf = (ROOT / "docker" / "crl-nginx.conf").read_text()
    assert "location = /crl.pem {\n        root /srv/device-ca;" in conf
    assert "location / {\n        return 404;" in conf
    # Mosquitto reads the CRL from its file, and the single-machine server names no URL.
    assert "RPM_MQTT_DEVICE_CRL_URL" not in services["server"]["environment"]


def test_the_broker_gets_the_device_ca_and_its_certificate() -> None:
    """The one-shot `rpm devices broker-cert` (its command parses with the rpm CLI) writes
    the CA and the broker's certificate into the volumes the broker mounts where
    docker/mosquitto.conf looks; the server signs enrolments with the same CA."""
    from rpm import cli

    services = resolved()["services"]
    one_shot = services["device-ca"]
    command = one_shot["command"]
    assert command[:3] == ["rpm", "devices", "broker-cert"]
    assert command[3] == "mqtt.example.org"  # MQTT_PUBLIC_HOST of env.example
    with pytest.raises(SystemExit) as exit_:  # --help: the arguments parsed up to there
        cli.main([*command[1:], "--help"])
    assert exit_.value.code == 0
    ca_dir = one_shot["environment"]["RPM_MQTT_DEVICE_CA_DIR"]
    assert mounts(one_shot)[ca_dir] == "device-ca"
    assert mounts(one_shot)[command[-1]] == "broker-tls"
    broker = services["mosquitto"]
    assert mounts(broker)["/mosquitto/device-ca"] == "device-ca"
    assert mounts(broker)["/mosquitto/broker-tls"] == "broker-tls"
    conf = (ROOT / "docker" / "mosquitto.conf").read_text()
    assert "cafile /mosquitto/device-ca/ca.pem" in conf
    assert "crlfile /mosquitto/device-ca/crl.pem" in conf
    created = " ".join(broker["command"])
    assert "cp /mosquitto/broker-tls/broker.pem /mosquitto/broker-tls/broker.key" in created
    assert "kill -HUP 1" in created  # the CRL reload
    server = services["server"]
    assert server["environment"]["RPM_MQTT_DEVICE_CA_DIR"] == ca_dir
    assert mounts(server)[ca_dir] == "device-ca"


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


def test_the_brokers_crl_watcher_reloads_it_when_the_crl_changes(tmp_path: Path) -> None:
    """The loop in the broker's command (run by sh, as in the container, with the file
    moved and `kill -HUP 1` replaced by a line in a file): no reload while crl.pem stays
    as it is, a reload once it changed."""
    command = resolved()["services"]["mosquitto"]["command"][2]
    loop = in_container(command[command.index("{ while") : command.index("done & }") + 8])
    crl, hups = tmp_path / "crl.pem", tmp_path / "hups"
    crl.write_text("first")
    loop = loop.replace("/mosquitto/device-ca/crl.pem", str(crl))
    assert "kill -HUP 1" in loop
    loop = loop.replace("kill -HUP 1", f"echo HUP >> {hups}")
    proc = subprocess.Popen(["sh", "-c", loop + " && wait"], start_new_session=True)
    try:
        time.sleep(6)  # a turn of the loop, at least, with crl.pem as it was
        assert not hups.exists()
        crl.write_text("second")  # a revocation rewrote it
        os.utime(crl, (time.time() + 60, time.time() + 60))
        deadline = time.monotonic() + 60
        while not hups.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert hups.read_text().splitlines() == ["HUP"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
