"""Enrols a plan's patients and devices the way an operator would (in-process, not the API).

Patients get their fictional names, phones, SMS consent, programs, time zone and language;
every MQTT device gets its own broker login (dynamic-security client and role: it may
publish only on its own topic); every webhook format gets a vendor integration with HMAC
auth, and its devices are enrolled under it (stored as ``<integration>:<vendor id>``).
Idempotent: a second run against the same database reuses what exists.

Against a running deployment (``rpm simulate --external``) the plan is built with an id
prefix (``external_prefix``: every patient and device id starts ``rpmsim-<run>-``), and
``foreign_ids`` refuses a plan whose ids name patients or devices the simulator did not
create.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from device_gateways import dynsec
from device_gateways.broker_admin import BrokerAdmin
from rpm.domain.errors import ConflictError
from rpm.storage import registry, staff
from rpm.storage.pool import Conn
from simulators.traffic import Plan, Send

INTEGRATION_PREFIX = "sim-"
# Patient and device ids of a run against a shared deployment start with this.
EXTERNAL_PREFIX = "rpmsim-"
ACTOR = "simulator:rpm-simulate"
# Dynamic-security commands per admin round trip: large enough to enrol thousands of
# devices in seconds, small enough to stay far below the broker's message size limits.
PROVISION_CHUNK = 100


# Nurses see only their care teams' patients (README, Security): the fleet's team.
SIM_CARE_TEAM = "virtual-fleet"


def integration_id(payload_format: str) -> str:
    """The simulated vendor cloud that posts ``payload_format``."""
    return f"{INTEGRATION_PREFIX}{payload_format}"


def stored_device_id(device_id: str, transport: str, payload_format: str) -> str:
    """The id the server stores a device's readings under (webhook ids are namespaced)."""
    if transport == "http":
        return f"{integration_id(payload_format)}:{device_id}"
    return device_id


def send_device_id(send: Send) -> str:
    return stored_device_id(send.device_id, send.transport, send.payload_format)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the fleet needs to send: a password per MQTT device, a secret per integration."""

    mqtt: Mapping[str, str] = field(repr=False)
    integrations: Mapping[str, str] = field(repr=False)


def device_password(key: str, device_id: str) -> str:
    """A device's broker password, derived from a secret ``key`` (the broker admin's
    password): unguessable without the key, and the same on every run, so a login made
    by an earlier run needs no password reset (each change rewrites the broker's whole
    dynamic-security file)."""
    mac = hmac.new(key.encode(), f"rpm-simulate:{device_id}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:18]).decode()


async def enrol(
    conn: Conn,
    broker: BrokerAdmin,
    plan: Plan,
    *,
    since: datetime,
    password_key: str,
    care_team: str = SIM_CARE_TEAM,
    sms_consent: bool = True,
) -> Credentials:
    """Patients (in ``care_team``, whose nurses see them), devices (bound from ``since``),
    broker logins and integrations of ``plan``.

    ``sms_consent`` False enrols patients who never get a text (a shared deployment with a
    real SMS provider must not text the fictional numbers).

    Devices that only appear in sends (an unknown device, by design of the plan) get a
    broker login too, as a device provisioned at the factory but never enrolled would.
    """
    formats = {d.payload_format for p in plan.patients for d in p.devices if d.transport == "http"}
    formats |= {s.payload_format for s in plan.sends if s.transport == "http"}
    secrets_by_integration = {
        integration_id(f): await _integration(conn, f) for f in sorted(formats)
    }
    await staff.create_team(conn, care_team, "Virtual patients")
    for p in plan.patients:
        await registry.upsert_patient(
            conn,
            patient_id=p.patient_id,
            display_name=p.display_name,
            phone=p.phone,
            sms_consent=sms_consent,
            programs=p.programs,
            timezone=p.timezone,
            language=p.language,
        )
        await staff.set_patient_team(conn, p.patient_id, care_team)
        for d in p.devices:
            if d.transport == "http":
                await _webhook_device(conn, d.device_id, d.kind, d.payload_format)
            await registry.enroll_device(
                conn,
                device_id=stored_device_id(d.device_id, d.transport, d.payload_format),
                kind=d.kind,
                patient_id=p.patient_id,
                since=since,
            )
    mqtt_ids = sorted(
        {d.device_id for p in plan.patients for d in p.devices if d.transport == "mqtt"}
        | {s.device_id for s in plan.sends if s.transport == "mqtt"}
    )
    passwords = {d: device_password(password_key, d) for d in mqtt_ids}
    await provision(broker, passwords)
    return Credentials(passwords, secrets_by_integration)


async def provision(broker: BrokerAdmin, passwords: Mapping[str, str]) -> None:
    """A login and role per device, in chunks; an existing login is kept as it is."""
    items = list(passwords.items())
    for i in range(0, len(items), PROVISION_CHUNK):
        commands = [
            c
            for device_id, password in items[i : i + PROVISION_CHUNK]
            for c in dynsec.provision_device(device_id, password)
        ]
        await broker.apply(commands, tolerate=("already exists",))


async def reset_passwords(broker: BrokerAdmin, passwords: Mapping[str, str]) -> None:
    """Set (and enable) existing logins to these passwords."""
    items = list(passwords.items())
    for i in range(0, len(items), PROVISION_CHUNK):
        commands = [
            c
            for device_id, password in items[i : i + PROVISION_CHUNK]
            for c in (*dynsec.set_password(device_id, password), *dynsec.enable_device(device_id))
        ]
        await broker.apply(commands)


async def _integration(conn: Conn, payload_format: str) -> str:
    """The integration's secret, creating it (HMAC auth) on first use."""
    iid = integration_id(payload_format)
    found = await registry.integration(conn, iid)
    if found is not None:
        return found.secret
    secret = secrets.token_urlsafe(32)
    await registry.create_integration(
        conn,
        integration_id=iid,
        name=f"Simulated {payload_format} vendor cloud",
        auth="hmac",
        secret=secret,
        formats=[payload_format],
    )
    return secret


async def _webhook_device(conn: Conn, vendor_id: str, kind: str, payload_format: str) -> None:
    """Register a vendor's device under its integration (once)."""
    try:
        async with conn.transaction():
            await registry.create_device(
                conn,
                device_id=stored_device_id(vendor_id, "http", payload_format),
                kind=kind,
                vendor=f"simulated {payload_format}",
                serial=None,
                integration=integration_id(payload_format),
                actor=ACTOR,
            )
    except ConflictError:
        pass  # enrolled by an earlier run


def all_stored_ids(plan: Plan) -> list[str]:
    """Every device id the plan's readings can be stored under."""
    ids: Iterable[str] = (
        stored_device_id(d.device_id, d.transport, d.payload_format)
        for p in plan.patients
        for d in p.devices
    )
    return sorted(set(ids) | {send_device_id(s) for s in plan.sends})


def plan_integrations(plan: Plan) -> list[str]:
    """The simulated vendor integrations the plan's webhooks are posted under."""
    formats = {d.payload_format for p in plan.patients for d in p.devices if d.transport == "http"}
    formats |= {s.payload_format for s in plan.sends if s.transport == "http"}
    return sorted(integration_id(f) for f in formats)


def external_prefix(now: datetime) -> str:
    """The id prefix of one run against a shared deployment: ``rpmsim-<UTC time>-``.

    Each run enrols a fleet of its own: a rerun of the same plan into the same database
    would find its readings already stored (their times fall on the same local hours) and
    its alert episodes already open, and could not be told apart from loss.
    """
    return f"{EXTERNAL_PREFIX}{now.astimezone(UTC):%y%m%d%H%M%S}-"


async def foreign_ids(conn: Conn, plan: Plan, care_team: str = SIM_CARE_TEAM) -> list[str]:
    """Ids of the plan that already name something the simulator did not create: a patient
    outside ``care_team``, or a device bound to a patient who is not the plan's."""
    patient_ids = [p.patient_id for p in plan.patients]
    rows = await conn.fetch(
        """SELECT id FROM patients
            WHERE id = ANY($1::text[]) AND care_team IS DISTINCT FROM $2
           UNION
           SELECT device_id FROM device_bindings
            WHERE device_id = ANY($3::text[]) AND NOT patient_id = ANY($1::text[])""",
        patient_ids,
        care_team,
        all_stored_ids(plan),
    )
    return sorted(r[0] for r in rows)
