"""Device identity by certificate: bulk enrolment with CSRs, rotation, revocation.

The device (or its manufacturer) makes its key and sends a CSR; we sign a certificate with
``CN=<device id>`` from the deployment's device CA (``RPM_MQTT_DEVICE_CA_DIR``). The broker
trusts the CA, takes the CN as the login and lets the device publish only under its own
topic (a pattern ACL): it keeps nothing per device, so the 100,000th enrolment costs what
the first did. Revoking (retire, or a new certificate for a compromised key) rewrites the
CRL, makes the broker reload it (SIGHUP, ``RPM_MQTT_BROKER_PID_FILE``) and disconnects the
device's sessions at once through the dynamic-security plugin. docs/devices.md.
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Path, Request, Security
from pydantic import BaseModel, Field

from device_gateways import device_ca_files, dynsec
from device_gateways.broker_admin import BrokerAdmin
from device_gateways.device_ca import DeviceCA, csr_key_sha256
from device_gateways.mqtt import TOPIC_PREFIX
from rpm.domain.errors import ConflictError, DeviceNotFound, InvalidRequestError
from rpm.settings import Settings
from rpm.storage import device_certs as store
from rpm.storage import registry as registry_store
from rpm.storage.pool import Conn

from .access import REQUIRE, CanEnrol, Permission
from .deps import BrokerDep, ClockDep, PoolDep, held
from .signer import Signer

MQTT_DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
BULK_MAX = 1000
CSR_MAX = 16_384  # a PEM CSR with an RSA-4096 key is about 1.7 kB
# The broker logins of the deployment itself: a certificate never carries one of them.
RESERVED_PREFIX = "rpm-"


class DeviceAuthority:
    """The device CA of a deployment, loaded on first use, and the broker's CRL reload."""

    def __init__(
        self,
        ca_dir: str | None,
        pid_file: str | None,
        logins: Sequence[str],
        crl_url: str | None = None,
    ) -> None:
        self._dir = pathlib.Path(ca_dir) if ca_dir else None
        self._crl_url = crl_url
        self._pid_file = pathlib.Path(pid_file) if pid_file else None
        self._reserved = frozenset(x for x in logins if x)
        self._ca: DeviceCA | None = None
        self.signer = Signer()

    @classmethod
    def from_settings(cls, s: Settings) -> DeviceAuthority:
        m = s.mqtt
        logins = [m.username or "", m.admin_username or ""]
        return cls(m.device_ca_dir, m.broker_pid_file, logins, m.device_crl_url)

    def ca(self, now: datetime) -> DeviceCA:
        if self._dir is None:
            raise ConflictError("enrolment by certificate is off: set RPM_MQTT_DEVICE_CA_DIR")
        if self._ca is None:
            self._ca = replace(device_ca_files.ensure(self._dir, now), crl_url=self._crl_url)
        return self._ca

    async def start(self, now: datetime) -> None:
        """Load the CA and start the signing processes, when enrolment by certificate is
        on; nothing otherwise."""
        if self._dir is not None:
            await self.signer.start(self.ca(now))

    def check_id(self, device_id: str) -> None:
        if not re.fullmatch(MQTT_DEVICE_ID, device_id):
            raise InvalidRequestError(
                f"{device_id!r}: a device id holds only letters, digits, . _ -"
            )
        if device_id.startswith(RESERVED_PREFIX) or device_id in self._reserved:
            raise InvalidRequestError(f"{device_id!r} is reserved for the deployment's logins")

    async def publish_crl(self, pool: asyncpg.Pool, now: datetime) -> None:
        """Write the CRL from the database and have the broker reload it. Writers take a
        database lock, so the last file written holds every committed revocation."""
        ca = self.ca(now)
        assert self._dir is not None
        async with pool.acquire() as conn, conn.transaction():
            await store.lock_crl(conn)
            revoked = await store.revoked(conn, now)
            await asyncio.to_thread(device_ca_files.publish_crl, self._dir, ca, revoked, now)
        if self._pid_file is not None:
            device_ca_files.reload_broker(self._pid_file)


class CertDeviceIn(BaseModel):
    id: Annotated[str, Field(pattern=MQTT_DEVICE_ID)]
    kind: Literal["bp_cuff", "pulse_oximeter", "scale", "glucometer", "thermometer", "other"]
    vendor: Annotated[str | None, Field(max_length=100)] = None
    serial: Annotated[str | None, Field(max_length=100)] = None
    csr: Annotated[str, Field(min_length=1, max_length=CSR_MAX)]  # PEM, CN is ignored


class BulkIn(BaseModel):
    devices: Annotated[list[CertDeviceIn], Field(min_length=1, max_length=BULK_MAX)]


class CertificateOut(BaseModel):
    device_id: str
    serial: str  # hex
    certificate: str  # PEM; the device keeps its own key
    topic: str


class BulkOut(BaseModel):
    enrolled: list[CertificateOut]
    already: int  # a retry: devices enrolled before with the same key, answered again


class CsrIn(BaseModel):
    csr: Annotated[str, Field(min_length=1, max_length=CSR_MAX)]


def authority(request: Request) -> DeviceAuthority:
    return held(request, "device_authority")  # type: ignore[no-any-return]


def _out(device_id: str, serial: str, pem: str) -> CertificateOut:
    return CertificateOut(
        device_id=device_id,
        serial=serial,
        certificate=pem,
        topic=f"{TOPIC_PREFIX}{device_id}/readings",
    )


async def enroll_many(
    conn: Conn,
    signer: Signer,
    ca: DeviceCA,
    check_id: Callable[[str], None],
    rows: Sequence[CertDeviceIn],
    actor: str,
    now: datetime,
) -> BulkOut:
    """Enroll ``rows`` in one transaction of ``conn``: 422 for a bad row (nothing stored),
    409 for an id taken by another device; a device enrolled before with the same key is
    answered with its certificate again, so a retried shipment stores nothing twice."""
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        raise InvalidRequestError("a device id appears twice in the request")
    for device_id in ids:
        check_id(device_id)
    found = await store.known(conn, ids)
    again: list[CertificateOut] = []
    fresh = [r for r in rows if r.id not in found]
    seen = [r for r in rows if r.id in found]
    # A retry: the keys of the CSRs tell whether these are the devices enrolled before.
    keys = await asyncio.to_thread(lambda: [csr_key_sha256(r.csr) for r in seen])
    for row, key in zip(seen, keys, strict=True):
        k = found[row.id]
        same = [(s, pem) for s, (h, pem) in k.certificates.items() if h == key]
        if k.retired or not same:
            raise ConflictError(f"device {row.id!r} is already enrolled")
        again.append(_out(row.id, *same[0]))
    # Signing is CPU work (about 0.35 ms a device): off the event loop, on every core.
    issued = await signer.sign(ca, [(r.id, r.csr) for r in fresh], now)
    if fresh:
        news = [registry_store.NewDevice(r.id, r.kind, r.vendor, r.serial) for r in fresh]
        await registry_store.create_devices(conn, news, actor)
        await store.add_certificates(conn, issued)
    enrolled = [_out(c.device_id, c.serial, c.pem) for c in issued]
    return BulkOut(enrolled=enrolled + again, already=len(again))


router = APIRouter(prefix="/api", dependencies=[Security(REQUIRE[Permission.ENROLMENT])])


@router.post("/devices/bulk", status_code=201, response_model=BulkOut)
async def enroll_bulk(
    request: Request, who: CanEnrol, pool: PoolDep, clock: ClockDep, body: BulkIn
) -> BulkOut:
    """Enroll up to 1,000 MQTT devices with their CSRs in one transaction."""
    auth = authority(request)
    now = clock()
    ca = auth.ca(now)
    async with pool.acquire() as conn, conn.transaction():
        return await enroll_many(conn, auth.signer, ca, auth.check_id, body.devices, who.actor, now)


async def kick(broker: BrokerAdmin, device_id: str, password_login: bool, *, retire: bool) -> None:
    """Disconnect every session of the device now (the broker kicks by login)."""
    if password_login:
        commands = dynsec.disable_device(device_id)
        if not retire:
            commands += dynsec.enable_device(device_id)
    else:
        commands = dynsec.kick(device_id, secrets.token_urlsafe(24))
    await broker.apply(commands, tolerate=("already exists", "not found"))


@router.post("/devices/{device_id}/certificates", status_code=201, response_model=CertificateOut)
async def new_certificate(
    request: Request,
    who: CanEnrol,
    pool: PoolDep,
    broker: BrokerDep,
    clock: ClockDep,
    device_id: Annotated[str, Path(pattern=MQTT_DEVICE_ID)],
    body: CsrIn,
) -> CertificateOut:
    """A certificate for an enrolled MQTT device (a password device moving to certificates,
    or a new key after a compromise): its other certificates are revoked at once."""
    auth = authority(request)
    now = clock()
    ca = auth.ca(now)
    auth.check_id(device_id)
    async with pool.acquire() as conn, conn.transaction():
        k = (await store.known(conn, [device_id])).get(device_id)
        if k is None:
            raise DeviceNotFound("no such device")
        if k.integration or k.retired:
            raise ConflictError("only active MQTT devices have broker credentials")
        issued = ca.sign_device(device_id, body.csr, now)
        await store.add_certificates(conn, [issued])
        await registry_store.device_event(
            conn, device_id, who.actor, "certificate", {"serial": issued.serial}
        )
        revoked = await store.revoke(conn, device_id, now, keep=issued.serial)
    if revoked:
        await auth.publish_crl(pool, now)
        await kick(broker, device_id, k.password_login, retire=False)
    return _out(device_id, issued.serial, issued.pem)


async def revoke_all(
    request: Request, pool: asyncpg.Pool, broker: BrokerAdmin, device_id: str, now: datetime
) -> dict[str, Any]:
    """After a retirement is committed: revoke the device's certificates, reload the CRL,
    disconnect it. Called again by a retry, it revokes nothing more and kicks again."""
    async with pool.acquire() as conn:
        k = (await store.known(conn, [device_id])).get(device_id)
        revoked = await store.revoke(conn, device_id, now)
    if revoked:
        await authority(request).publish_crl(pool, now)
    if k is not None and k.integration is None:
        await kick(broker, device_id, k.password_login, retire=True)
    return {"revoked_certificates": len(revoked)}


@router.delete("/devices/{device_id}/credentials")
async def remove_password_login(
    who: CanEnrol,
    pool: PoolDep,
    broker: BrokerDep,
    device_id: Annotated[str, Path(pattern=MQTT_DEVICE_ID)],
) -> dict[str, str]:
    """The last step of moving a device to certificates: delete its password login (the
    broker forgets it and ends its sessions). Refused while it has no valid certificate."""
    async with pool.acquire() as conn, conn.transaction():
        k = (await store.known(conn, [device_id])).get(device_id)
        if k is None:
            raise DeviceNotFound("no such device")
        if not k.certificates:
            raise ConflictError("the device has no valid certificate: it would be locked out")
        if k.password_login:
            await registry_store.set_password_login(conn, device_id, False)
            await registry_store.device_event(conn, device_id, who.actor, "remove_password", {})
            await broker.apply(dynsec.remove_device(device_id), tolerate=("not found",))
    return {"device_id": device_id, "password_login": "removed"}
