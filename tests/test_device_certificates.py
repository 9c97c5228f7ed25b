"""Device identity by certificate, end to end against a real Mosquitto with a certificate
listener and a real PostgreSQL: bulk enrolment with CSRs, the broker taking the login from
the certificate and keeping each device to its own topic, revocation (refused at the next
connection, and a connected device disconnected), and a password device moving over."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import httpx
import pytest
from cryptography import x509

from device_gateways import device_ca_files
from rpm import device_cli
from rpm.domain.errors import LocalServicesError
from rpm.local_endpoints import ServiceEndpoints, settings_for_local
from rpm.server import Server
from simulators.cert_device import CertDevice
from simulators.localservices import LocalServices, free_port
from tests.helpers import eventually, mosquitto_pub, staff_headers

_ids = itertools.count()


@pytest.fixture(scope="module")
def cert_services(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServiceEndpoints, int]]:
    """Local services whose broker also has the certificate listener (and the device CA)."""
    port = free_port()
    local = LocalServices(
        tmp_path_factory.mktemp("certs") / "services", device_cert_port=port, log=lambda _: None
    )
    endpoints = local.start()
    try:
        yield endpoints, port
    finally:
        local.stop()


@pytest.fixture
async def cert_server(cert_services: tuple[ServiceEndpoints, int]) -> AsyncIterator[Server]:
    endpoints, _ = cert_services
    settings = settings_for_local(
        endpoints,
        api={"port": free_port()},
        mqtt={"client_id": f"rpm-cert-test-{next(_ids)}", "batch_max_wait_ms": 5},
    )
    assert settings.mqtt.device_ca_dir is not None  # found by settings_for_local
    server = Server(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def api(cert_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    assert cert_server.pool is not None
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{cert_server.settings.api.port}",
        timeout=30,
        headers=await staff_headers(cert_server.pool),
    ) as client:
        yield client


def ca_file(endpoints: ServiceEndpoints) -> Path:
    return Path(endpoints.root) / "device-ca" / "ca.pem"


def reading(systolic: int) -> bytes:
    """A blood pressure measured ``systolic - 100`` minutes ago: one time per value."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=systolic - 100)
    return json.dumps(
        {
            "metric": "blood_pressure",
            "measured_at": at.isoformat(),
            "values": {"systolic": systolic, "diastolic": 80},
        }
    ).encode()


async def enrol(api: httpx.AsyncClient, devices: list[CertDevice], patient: str | None) -> None:
    r = await api.post("/api/devices/bulk", json={"devices": [d.enrol_row() for d in devices]})
    assert r.status_code == 201, r.text
    by_id = {e["device_id"]: e for e in r.json()["enrolled"]}
    for d in devices:
        d.keep(by_id[d.device_id]["certificate"])
        if patient is not None:
            start = (datetime.now(UTC) - timedelta(days=1)).isoformat()
            b = await api.post(
                f"/api/devices/{d.device_id}/bindings", json={"patient_id": patient, "start": start}
            )
            assert b.status_code == 201, b.text


async def stored_systolics(server: Server, device_id: str) -> list[int]:
    assert server.pool is not None
    async with server.pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT v1::int AS s  -- systolic: blood pressure's slot 1
                 FROM readings WHERE device_id = $1""",
            device_id,
        )
    return sorted(r["s"] for r in rows)


async def stored_count(server: Server, device_id: str, n: int) -> list[int] | None:
    """The device's stored values once there are ``n`` of them, else None."""
    found = await stored_systolics(server, device_id)
    return found if len(found) >= n else None


async def new_patient(api: httpx.AsyncClient) -> str:
    pid = f"pat-c{next(_ids)}"
    r = await api.post("/api/patients", json={"id": pid, "display_name": "P"})
    assert r.status_code == 201
    return pid


async def test_a_certificate_is_the_login_and_a_device_publishes_only_as_itself(
    api: httpx.AsyncClient,
    cert_server: Server,
    cert_services: tuple[ServiceEndpoints, int],
    tmp_path: Path,
) -> None:
    endpoints, port = cert_services
    n = next(_ids)
    a, b = CertDevice(f"cuff-x{n}", tmp_path), CertDevice(f"cuff-y{n}", tmp_path)
    patient = await new_patient(api)
    await enrol(api, [a, b], patient)

    async with a.client("127.0.0.1", port, ca_file(endpoints)) as client:
        await client.publish(b.topic, reading(181), qos=1)  # the ACL drops it
        await client.publish(a.topic, reading(131), qos=1)
    # One client's messages reach the gateway in order: once A's own reading is stored, the
    # forged one has been refused by the broker, not merely delayed.
    assert await eventually(lambda: stored_systolics(cert_server, a.device_id)) == [131]
    assert await stored_systolics(cert_server, b.device_id) == []

    # No certificate: the listener refuses, whatever the username says.
    refused = await asyncio.to_thread(
        mosquitto_pub,
        port,
        a.device_id,
        "x",
        a.topic,
        reading(140),
        "--cafile",
        str(ca_file(endpoints)),
    )
    assert refused.returncode != 0


async def test_a_retry_of_a_shipment_stores_nothing_twice_and_bad_rows_store_nothing(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    n = next(_ids)
    devices = [CertDevice(f"scale-{n}-{i}", tmp_path) for i in range(3)]
    body = {"devices": [d.enrol_row("scale") for d in devices]}
    first = await api.post("/api/devices/bulk", json=body)
    assert first.status_code == 201
    again = await api.post("/api/devices/bulk", json=body)
    assert again.status_code == 201
    assert again.json()["already"] == 3
    assert {e["serial"] for e in again.json()["enrolled"]} == {
        e["serial"] for e in first.json()["enrolled"]
    }
    # The same id with another key is another device: refused.
    other = CertDevice(devices[0].device_id, tmp_path / "other")
    taken = await api.post("/api/devices/bulk", json={"devices": [other.enrol_row()]})
    assert taken.status_code == 409
    # A CSR that is not one: 422, and nothing of the request is stored.
    fresh = CertDevice(f"scale-{n}-new", tmp_path)
    bad = {"devices": [fresh.enrol_row(), {"id": f"scale-{n}-bad", "kind": "scale", "csr": "x"}]}
    r = await api.post("/api/devices/bulk", json=bad)
    assert r.status_code == 422
    assert "scale-" in r.json()["detail"]
    assert (await api.get(f"/api/devices/{fresh.device_id}")).status_code == 404
    # The deployment's own logins are never a certificate's CN.
    reserved = CertDevice("rpm-gateway", tmp_path)
    assert (
        await api.post("/api/devices/bulk", json={"devices": [reserved.enrol_row()]})
    ).status_code == 422


async def until_disconnected(client: aiomqtt.Client) -> None:
    """Return when the broker ends the session (the message loop raises)."""
    try:
        async for _ in client.messages:
            pass
    except aiomqtt.MqttError:
        return


async def test_retiring_a_device_disconnects_it_and_refuses_its_next_connection(
    api: httpx.AsyncClient,
    cert_server: Server,
    cert_services: tuple[ServiceEndpoints, int],
    tmp_path: Path,
) -> None:
    endpoints, port = cert_services
    n = next(_ids)
    gone, stays = CertDevice(f"oxi-g{n}", tmp_path), CertDevice(f"oxi-s{n}", tmp_path)
    await enrol(api, [gone, stays], await new_patient(api))
    ca = ca_file(endpoints)

    async with gone.client("127.0.0.1", port, ca, keepalive=5) as client:
        watch = asyncio.create_task(until_disconnected(client))
        r = await api.post(f"/api/devices/{gone.device_id}/retire", json={})
        assert r.status_code == 200, r.text
        assert r.json()["revoked_certificates"] == 1
        # The requirement is "within 60 s"; the broker's kick makes it immediate.
        await asyncio.wait_for(watch, 60)

    with pytest.raises(aiomqtt.MqttError):  # the CRL, reloaded by the broker
        async with gone.client("127.0.0.1", port, ca, timeout=5):
            pass
    async with stays.client("127.0.0.1", port, ca) as client:  # others are not affected
        await client.publish(stays.topic, reading(122), qos=1)
    assert await eventually(lambda: stored_systolics(cert_server, stays.device_id)) == [122]

    crl = x509.load_pem_x509_crl((ca.parent / "crl.pem").read_bytes())
    detail = (await api.get(f"/api/devices/{gone.device_id}")).json()
    assert detail["retired_at"] is not None
    assert len(list(crl)) >= 1
    # A retry of the retirement: 409, and the CRL and the kick are done again.
    assert (await api.post(f"/api/devices/{gone.device_id}/retire", json={})).status_code == 409


async def test_a_password_device_moves_to_a_certificate_and_then_loses_its_password(
    api: httpx.AsyncClient,
    cert_server: Server,
    cert_services: tuple[ServiceEndpoints, int],
    tmp_path: Path,
) -> None:
    endpoints, port = cert_services
    device_id = f"cuff-m{next(_ids)}"
    patient = await new_patient(api)
    start = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    r = await api.post(
        "/api/devices",
        json={"id": device_id, "kind": "bp_cuff", "patient_id": patient, "bound_from": start},
    )
    assert r.status_code == 201, r.text
    password = r.json()["mqtt"]["password"]

    def by_password(systolic: int) -> int:
        return mosquitto_pub(
            endpoints.mqtt_port,
            device_id,
            password,
            f"rpm/v1/devices/{device_id}/readings",
            reading(systolic),
            "-i",
            device_id,
        ).returncode

    assert await asyncio.to_thread(by_password, 120) == 0
    # Removing the password before the device has a certificate would lock it out.
    assert (await api.delete(f"/api/devices/{device_id}/credentials")).status_code == 409

    device = CertDevice(device_id, tmp_path)
    r = await api.post(f"/api/devices/{device_id}/certificates", json={"csr": device.csr()})
    assert r.status_code == 201, r.text
    device.keep(r.json()["certificate"])
    async with device.client("127.0.0.1", port, ca_file(endpoints)) as client:
        await client.publish(device.topic, reading(121), qos=1)
    assert await eventually(lambda: stored_count(cert_server, device_id, 2)) == [120, 121]

    r = await api.delete(f"/api/devices/{device_id}/credentials")
    assert r.status_code == 200, r.text
    assert await asyncio.to_thread(by_password, 125) != 0  # the broker forgot the login
    events = [e["action"] for e in (await api.get(f"/api/devices/{device_id}")).json()["events"]]
    assert events[-2:] == ["certificate", "remove_password"]


async def test_a_shipment_csv_is_enrolled_and_its_certificates_connect(
    api: httpx.AsyncClient,
    cert_server: Server,
    cert_services: tuple[ServiceEndpoints, int],
    tmp_path: Path,
) -> None:
    endpoints, port = cert_services
    n = next(_ids)
    devices = [CertDevice(f"ship-{n}-{i}", tmp_path / "keys") for i in range(3)]
    shipment = tmp_path / "shipment.csv"
    with shipment.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "kind", "vendor", "serial", "csr"])
        for i, d in enumerate(devices):
            writer.writerow([d.device_id, "thermometer", "Acme", f"SN-{i}", d.csr()])
    out = tmp_path / "certs.csv"
    rows = device_cli.parse_shipment(shipment.read_text(), tmp_path)
    assert await device_cli.import_rows(rows, out, cert_server.settings) == 0
    assert await device_cli.import_rows(rows, out, cert_server.settings) == 0  # a retry
    with out.open(newline="") as handle:
        issued = {r["device_id"]: r["certificate"] for r in csv.DictReader(handle)}
    assert sorted(issued) == [d.device_id for d in devices]
    devices[2].keep(issued[devices[2].device_id])
    async with devices[2].client("127.0.0.1", port, ca_file(endpoints)):
        pass  # the broker accepts the certificate
    detail = (await api.get(f"/api/devices/{devices[0].device_id}")).json()
    assert detail["serial"] == "SN-0"
    assert detail["events"][0]["action"] == "enroll"


async def test_a_new_key_after_a_compromise_locks_the_old_certificate_out(
    api: httpx.AsyncClient, cert_services: tuple[ServiceEndpoints, int], tmp_path: Path
) -> None:
    endpoints, port = cert_services
    ca = ca_file(endpoints)
    stolen = CertDevice(f"glu-{next(_ids)}", tmp_path / "old")
    await enrol(api, [stolen], None)
    async with stolen.client("127.0.0.1", port, ca, keepalive=5) as client:
        watch = asyncio.create_task(until_disconnected(client))
        renewed = CertDevice(stolen.device_id, tmp_path / "new")
        r = await api.post(
            f"/api/devices/{stolen.device_id}/certificates", json={"csr": renewed.csr()}
        )
        assert r.status_code == 201, r.text
        renewed.keep(r.json()["certificate"])
        await asyncio.wait_for(watch, 60)  # the old key's session is ended
    with pytest.raises(aiomqtt.MqttError):
        async with stolen.client("127.0.0.1", port, ca, timeout=5):
            pass
    async with renewed.client("127.0.0.1", port, ca):
        pass  # the device with its new key connects


async def test_a_start_without_the_option_keeps_the_certificate_listener(
    cert_services: tuple[ServiceEndpoints, int], tmp_path: Path
) -> None:
    """`rpm services start --device-cert-port P` once, then plain `rpm services start`: the
    broker's config is written again with the listener (the port is kept in endpoints.json),
    the server still finds the CA, and a device with a certificate still connects. Asking for
    another port while the broker runs is refused. (Last: it restarts the broker.)"""
    endpoints, port = cert_services
    root = Path(endpoints.root)
    local = LocalServices(root, log=lambda _: None)
    await asyncio.to_thread(local.stop_broker)
    again = await asyncio.to_thread(local.start)  # rewrites mosquitto.conf, starts the broker
    assert again == endpoints
    assert again.mqtt_device_cert_port == port
    saved = ServiceEndpoints.from_json((root / "endpoints.json").read_text())
    assert saved.mqtt_device_cert_port == port
    assert settings_for_local(again).mqtt.device_ca_dir == str(root / "device-ca")

    device = CertDevice(f"cuff-kept{next(_ids)}", tmp_path)
    ca = device_ca_files.ensure(root / "device-ca", datetime.now(UTC))
    device.keep(ca.sign_device(device.device_id, device.csr(), datetime.now(UTC)).pem)
    async with device.client("127.0.0.1", port, ca_file(endpoints)) as client:
        await client.publish(device.topic, reading(132), qos=1)  # connected: the listener is up

    with pytest.raises(LocalServicesError, match="certificate listener"):
        LocalServices(root, device_cert_port=free_port(), log=lambda _: None).start()
