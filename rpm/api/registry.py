"""Enrollment API: patients, devices (with broker logins), bindings, integrations.

Every route is for admins. Refusals are errors of the tree (rpm/api/errors.py): a taken
id or an overlapping binding 409, an unknown patient or integration 422, a broker that did
not take a login change 503 (retry: enrolment is one transaction with the broker's change).
"""

from __future__ import annotations

import functools
import re
import secrets
import uuid
import zoneinfo
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Path, Request, Security
from pydantic import BaseModel, Field, PastDate, field_validator

from device_gateways import dynsec
from device_gateways.decoders import DECODERS
from device_gateways.mqtt import TOPIC_PREFIX
from rpm.api.fields import Instant
from rpm.domain.errors import ConflictError, DeviceNotFound, InvalidRequestError, NotFoundError
from rpm.storage import channels as channel_store
from rpm.storage import outbox as outbox_store
from rpm.storage import registry
from rpm.storage.pool import Conn

from . import device_certs
from .access import REQUIRE, CanEnrol, Permission, audit
from .deps import BrokerDep, ClockDep, PoolDep

# MQTT device ids appear in topics and broker logins: no '/', '+', '#', ':' or spaces.
MQTT_DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
VENDOR_DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
INTEGRATION_ID = r"^[a-z0-9][a-z0-9-]{0,39}$"
PATIENT_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Actor = Annotated[str, Field(min_length=1, max_length=200)]


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


# An EHR identifier goes into a search URL (``Patient?identifier=<system>|<value>``): no '|'
# (the separator), and none of '&', '#', '%' or whitespace, which would change the query.
EHR_IDENTIFIER_SYSTEM = r"^[A-Za-z][A-Za-z0-9+.-]*:[^|&#%\s]+$"  # an absolute URI
EHR_IDENTIFIER_VALUE = r"^[^|&#%\s]+$"


class EhrIdentifierIn(BaseModel):
    """How the EHR the push writes to knows the patient, e.g. the hospital's MRN:
    ``{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}``."""

    system: Annotated[str, Field(max_length=255, pattern=EHR_IDENTIFIER_SYSTEM)]
    value: Annotated[str, Field(min_length=1, max_length=64, pattern=EHR_IDENTIFIER_VALUE)]


class PatientIn(BaseModel):
    id: Annotated[str, Field(pattern=PATIENT_ID)]
    display_name: Annotated[str, Field(min_length=1, max_length=200)]
    phone: Annotated[str | None, Field(pattern=r"^\+[1-9][0-9]{6,14}$")] = None  # E.164
    sms_consent: bool = False
    programs: list[Literal["hypertension", "heart_failure", "copd", "diabetes"]] = []
    timezone: Annotated[str, Field(max_length=64)] = "UTC"  # IANA, for SMS quiet hours
    language: Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")] = "en"
    # Exported only as an age band (rpm/export.py); PHI like the name.
    birth_date: PastDate | None = None
    # The channel messages go by, and where to go when it fails (docs/channels.md). None:
    # unchanged (a new patient: SMS, then SMS and a call for a critical alert).
    preferred_channel: Literal["sms", "whatsapp", "voice"] | None = None
    channel_fallback: Annotated[
        list[Literal["sms", "whatsapp", "voice"]] | None, Field(max_length=3)
    ] = None

    # The subject of the Observations pushed to the EHR (docs/fhir.md, "Push to an EHR").
    # Omitted: unchanged (a new patient: none, pushed by our id); null: removed.
    ehr_identifier: EhrIdentifierIn | None = None

    @field_validator("channel_fallback")
    @classmethod
    def _each_once(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("each channel at most once")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        # An unknown zone would silently become UTC for quiet hours (alerts/sms_policy.py).
        if v not in _zones():
            raise ValueError("not an IANA time zone, e.g. Europe/Paris")
        return v


class DeviceIn(BaseModel):
    """A device to enroll. Without ``integration`` it publishes over MQTT with its own login;
    with one, its readings come from that integration's webhooks and ``id`` is the vendor's."""

    id: Annotated[str, Field(pattern=VENDOR_DEVICE_ID)]
    kind: Literal["bp_cuff", "pulse_oximeter", "scale", "glucometer", "thermometer", "other"]
    vendor: Annotated[str | None, Field(max_length=100)] = None
    serial: Annotated[str | None, Field(max_length=100)] = None  # serial number or IMEI
    integration: Annotated[str | None, Field(pattern=INTEGRATION_ID)] = None
    patient_id: Annotated[str | None, Field(pattern=PATIENT_ID)] = None
    bound_from: Instant | None = None
    # An MQTT device with a certificate signing request (PEM) gets a certificate from the
    # device CA instead of a password login (docs/devices.md, "Identity by certificate").
    csr: Annotated[str | None, Field(min_length=1, max_length=device_certs.CSR_MAX)] = None
    actor: Actor | None = None  # ignored: the caller's principal is the actor


class MqttCredentials(BaseModel):
    username: str
    password: str
    topic: str


class DeviceEnrolled(BaseModel):
    device_id: str
    mqtt: MqttCredentials | None = None  # shown once; store it in the device
    certificate: device_certs.CertificateOut | None = None  # when enrolled with a CSR


class BindingIn(BaseModel):
    patient_id: Annotated[str, Field(pattern=PATIENT_ID)]
    start: Instant | None = None
    end: Instant | None = None
    actor: Actor | None = None  # ignored: the caller's principal is the actor


class AtIn(BaseModel):
    at: Instant | None = None
    actor: Actor | None = None  # ignored: the caller's principal is the actor


class ActorIn(BaseModel):
    actor: Actor | None = None  # ignored: the caller's principal is the actor


class BindingOut(BaseModel):
    patient_id: str
    start: datetime
    end: datetime | None


class DeviceEventOut(BaseModel):
    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]


class DeviceOut(BaseModel):
    id: str
    kind: str
    vendor: str | None
    serial: str | None
    integration: str | None
    retired_at: datetime | None
    battery: float | None
    signal: float | None
    last_seen_at: datetime | None
    created_at: datetime
    credentials_rotated_at: datetime | None
    bindings: list[BindingOut]
    events: list[DeviceEventOut]


class IntegrationIn(BaseModel):
    id: Annotated[str, Field(pattern=INTEGRATION_ID)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    auth: Literal["hmac", "token"] = "hmac"
    formats: Annotated[list[str], Field(min_length=1)]


class IntegrationCreated(BaseModel):
    id: str
    auth: str
    formats: list[str]
    secret: str  # shown once


# Every route of this router is for admins (a route without ``who`` is covered too).
router = APIRouter(prefix="/api", dependencies=[Security(REQUIRE[Permission.ENROLMENT])])


def consent_payload(patient_id: str) -> dict[str, Any]:
    """The outbox item of the text that confirms a patient's SMS consent."""
    return {
        "recipient": "patient",
        "patient_id": patient_id,
        "template": "consent",
        "urgent": False,
    }


@router.post("/patients", status_code=201)
async def create_patient(
    request: Request, who: CanEnrol, pool: PoolDep, body: PatientIn
) -> dict[str, str]:
    audit(request, who, "create", "patient", [body.id], body.id)
    async with pool.acquire() as conn, conn.transaction():
        _, consented_before = await registry.sms_contact(conn, body.id)
        await registry.upsert_patient(
            conn,
            patient_id=body.id,
            display_name=body.display_name,
            phone=body.phone,
            sms_consent=body.sms_consent,
            programs=body.programs,
            timezone=body.timezone,
            language=body.language,
            birth_date=body.birth_date,
        )
        if "ehr_identifier" in body.model_fields_set:
            mapped = body.ehr_identifier
            await registry.set_ehr_identifier(
                conn, body.id, (mapped.system, mapped.value) if mapped else None
            )
        if body.preferred_channel is not None or body.channel_fallback is not None:
            await channel_store.set_channels(
                conn, body.id, body.preferred_channel, body.channel_fallback
            )
        if body.sms_consent and body.phone and not consented_before:
            # Consent given now: one text confirms it (template "consent"), through the SMS
            # gate like every message. A repeated request finds the consent already given.
            await outbox_store.enqueue(
                conn,
                [("sms", f"consent:{body.id}:{uuid.uuid4()}", consent_payload(body.id))],
            )
    return {"id": body.id}


# Unset fields are left out: a password device's answer is what it was before certificates.
@router.post(
    "/devices", status_code=201, response_model=DeviceEnrolled, response_model_exclude_unset=True
)
async def enroll(
    request: Request,
    who: CanEnrol,
    pool: PoolDep,
    broker: BrokerDep,
    clock: ClockDep,
    body: DeviceIn,
) -> DeviceEnrolled:
    """Enroll a device, bind it when a patient is given, and give it its broker identity:
    a certificate signed from its CSR, or else a password login."""
    if body.integration is None and not re.fullmatch(MQTT_DEVICE_ID, body.id):
        raise InvalidRequestError("an MQTT device id may hold only letters, digits, . _ -")
    if body.integration is None:
        # The login and client id of an MQTT device is its id: never one of the deployment's.
        device_certs.authority(request).check_id(body.id)
    if body.csr is not None and body.integration is not None:
        raise InvalidRequestError("a device reported by an integration takes no CSR")
    device_id = f"{body.integration}:{body.id}" if body.integration else body.id
    if body.patient_id is not None:
        audit(request, who, "bind", "device", [body.patient_id], device_id)
    if body.csr is not None:
        return await _enroll_with_csr(request, who.actor, pool, clock(), body)
    password = secrets.token_urlsafe(24)
    async with pool.acquire() as conn, conn.transaction():
        if body.integration and await registry.integration(conn, body.integration) is None:
            raise InvalidRequestError(f"no integration {body.integration!r}")
        await registry.create_device(
            conn,
            device_id=device_id,
            kind=body.kind,
            vendor=body.vendor,
            serial=body.serial,
            integration=body.integration,
            actor=who.actor,
            password_login=body.integration is None,
        )
        if body.patient_id is not None:
            await _bind(conn, device_id, body.patient_id, body.bound_from, None, who.actor)
        if body.integration is None:
            # Inside the transaction: if the broker refuses, nothing is enrolled. A retry
            # after a commit failure finds the login and only resets its password.
            await broker.apply(
                dynsec.provision_device(device_id, password), tolerate=("already exists",)
            )
            await broker.apply(
                dynsec.set_password(device_id, password) + dynsec.bind_client_id(device_id)
            )
    if body.integration is not None:
        return DeviceEnrolled(device_id=device_id, mqtt=None)
    return DeviceEnrolled(
        device_id=device_id,
        mqtt=MqttCredentials(
            username=device_id, password=password, topic=f"{TOPIC_PREFIX}{device_id}/readings"
        ),
    )


async def _enroll_with_csr(
    request: Request, actor: str, pool: asyncpg.Pool, now: datetime, body: DeviceIn
) -> DeviceEnrolled:
    auth = device_certs.authority(request)
    ca = auth.ca(now)
    assert body.csr is not None
    row = device_certs.CertDeviceIn(
        id=body.id, kind=body.kind, vendor=body.vendor, serial=body.serial, csr=body.csr
    )
    async with pool.acquire() as conn, conn.transaction():
        out = await device_certs.enroll_many(
            conn, auth.signer, ca, auth.check_id, [row], actor, now
        )
        if body.patient_id is not None and not out.already:
            await _bind(conn, body.id, body.patient_id, body.bound_from, None, actor)
    return DeviceEnrolled(device_id=body.id, certificate=out.enrolled[0])


@router.get("/devices/{device_id}", response_model=DeviceOut)
async def get_device(
    request: Request, who: CanEnrol, pool: PoolDep, device_id: str
) -> dict[str, Any]:
    """A device with its bindings (patient ids) and events; admins only."""
    async with pool.acquire() as conn:
        found = await registry.device_detail(conn, device_id)
    patients = (b["patient_id"] for b in found["bindings"]) if found else ()
    audit(request, who, "read", "device", patients, device_id)
    if found is None:
        raise DeviceNotFound("no such device")
    return found


@router.post("/devices/{device_id}/bindings", status_code=201)
async def bind(
    request: Request, who: CanEnrol, pool: PoolDep, device_id: str, body: BindingIn
) -> dict[str, str]:
    audit(request, who, "bind", "device", [body.patient_id], device_id)
    async with pool.acquire() as conn, conn.transaction():
        await _existing(conn, device_id)
        await _bind(conn, device_id, body.patient_id, body.start, body.end, who.actor)
    return {"device_id": device_id, "patient_id": body.patient_id}


@router.post("/devices/{device_id}/unbind")
async def unbind(who: CanEnrol, pool: PoolDep, device_id: str, body: AtIn) -> dict[str, int]:
    async with pool.acquire() as conn, conn.transaction():
        await _existing(conn, device_id)
        ended = await registry.unbind(
            conn, device_id=device_id, at=body.at or datetime.now(UTC), actor=who.actor
        )
    return {"ended": ended}


@router.post("/devices/{device_id}/credentials", response_model=MqttCredentials)
async def rotate(
    who: CanEnrol,
    pool: PoolDep,
    broker: BrokerDep,
    device_id: Annotated[str, Path(pattern=MQTT_DEVICE_ID)],
    body: ActorIn,
) -> MqttCredentials:
    """A new broker password; the old one stops working at once."""
    password = secrets.token_urlsafe(24)
    async with pool.acquire() as conn, conn.transaction():
        device = await _existing(conn, device_id)
        if device["integration"] or device["retired_at"]:
            raise ConflictError("only active MQTT devices have broker credentials")
        await registry.rotated(conn, device_id=device_id, actor=who.actor)
        await broker.apply(
            dynsec.set_password(device_id, password) + dynsec.bind_client_id(device_id)
        )
    return MqttCredentials(
        username=device_id, password=password, topic=f"{TOPIC_PREFIX}{device_id}/readings"
    )


@router.post("/devices/{device_id}/retire")
async def retire(
    request: Request,
    who: CanEnrol,
    pool: PoolDep,
    broker: BrokerDep,
    clock: ClockDep,
    device_id: str,
    body: AtIn,
) -> dict[str, Any]:
    """End the device's binding, refuse its readings from now on, and lock it out of the
    broker: its password login disabled, its certificates revoked (the CRL reloaded), its
    sessions disconnected now."""
    now = clock()
    async with pool.acquire() as conn, conn.transaction():
        device = await _existing(conn, device_id)
        if not device["retired_at"]:
            await registry.retire(conn, device_id=device_id, at=body.at or now, actor=who.actor)
    # After the commit; a retry (409 below) does it again, so a broker that was away
    # when the device was retired is told on the retry.
    revoked = await device_certs.revoke_all(request, pool, broker, device_id, now)
    if device["retired_at"]:
        raise ConflictError("already retired")
    return {"device_id": device_id, "state": "retired", **revoked}


@router.post("/integrations", status_code=201, response_model=IntegrationCreated)
async def create_integration(pool: PoolDep, body: IntegrationIn) -> IntegrationCreated:
    unknown = sorted(set(body.formats) - set(DECODERS))
    if unknown:
        raise InvalidRequestError(f"unknown formats {unknown}; known: {sorted(DECODERS)}")
    secret = secrets.token_urlsafe(32)
    async with pool.acquire() as conn:
        await registry.create_integration(
            conn,
            integration_id=body.id,
            name=body.name,
            auth=body.auth,
            secret=secret,
            formats=body.formats,
        )
    return IntegrationCreated(id=body.id, auth=body.auth, formats=body.formats, secret=secret)


@router.post("/integrations/{integration_id}/revoke")
async def revoke_integration(pool: PoolDep, integration_id: str) -> dict[str, str]:
    """Refuse the integration's webhooks from now on (403); its devices stay enrolled."""
    async with pool.acquire() as conn:
        if not await registry.revoke_integration(conn, integration_id):
            raise NotFoundError("no such integration")
    return {"id": integration_id, "state": "revoked"}


async def _existing(conn: Conn, device_id: str) -> dict[str, Any]:
    found = await registry.device_detail(conn, device_id)
    if found is None:
        raise DeviceNotFound("no such device")
    return found


async def _bind(
    conn: Conn,
    device_id: str,
    patient_id: str,
    start: datetime | None,
    end: datetime | None,
    actor: str,
) -> None:
    await registry.bind(
        conn,
        device_id=device_id,
        patient_id=patient_id,
        start=start or datetime.now(UTC),
        end=end,
        actor=actor,
    )
