"""SQL for the registry: patients, devices and their bindings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import asyncpg

from rpm.domain import Binding, DeviceRecord
from rpm.domain.errors import ConflictError, InvalidRequestError
from rpm.storage.pool import Conn
from rules.engine import PatientContext


async def device_records(conn: Conn, device_ids: Iterable[str]) -> dict[str, DeviceRecord]:
    """Devices by id with their bindings; unknown ids are absent."""
    rows = await conn.fetch(
        """SELECT d.id, d.retired_at IS NOT NULL AS retired,
                  coalesce(array_agg(b.patient_id) FILTER (WHERE b.patient_id IS NOT NULL), '{}')
                      AS patients,
                  coalesce(array_agg(lower(b.during)) FILTER (WHERE b.patient_id IS NOT NULL), '{}')
                      AS starts,
                  coalesce(array_agg(upper(b.during)) FILTER (WHERE b.patient_id IS NOT NULL), '{}')
                      AS ends
             FROM devices d LEFT JOIN device_bindings b ON b.device_id = d.id
            WHERE d.id = ANY($1::text[])
            GROUP BY d.id""",
        list(set(device_ids)),
    )
    return {
        r["id"]: DeviceRecord(
            r["id"],
            r["retired"],
            tuple(
                Binding(p, s, e)
                for p, s, e in zip(r["patients"], r["starts"], r["ends"], strict=True)
            ),
        )
        for r in rows
    }


async def patient_contexts(conn: Conn, patient_ids: Iterable[str]) -> dict[str, PatientContext]:
    rows = await conn.fetch(
        "SELECT id, programs, rule_overrides FROM patients WHERE id = ANY($1::text[])",
        list(set(patient_ids)),
    )
    return {
        r["id"]: PatientContext(r["id"], tuple(r["programs"]), r["rule_overrides"] or {})
        for r in rows
    }


async def update_device_status(
    conn: Conn, seen: Mapping[str, tuple[datetime, Mapping[str, float]]]
) -> None:
    """Record last-seen time and battery/signal when the payload carried them.

    Last-seen moves in steps of 30 s: a device reporting every second does not cost a
    row update per batch.
    """
    if not seen:
        return
    ids = list(seen)
    await conn.execute(
        """UPDATE devices d
              SET last_seen_at = greatest(d.last_seen_at, s.seen),
                  battery = coalesce(s.battery, d.battery),
                  signal = coalesce(s.signal, d.signal)
             FROM unnest($1::text[], $2::timestamptz[], $3::real[], $4::real[])
                  AS s(id, seen, battery, signal)
            WHERE d.id = s.id
              AND (d.last_seen_at IS NULL OR s.seen > d.last_seen_at + interval '30 seconds'
                   OR (s.battery IS NOT NULL AND s.battery IS DISTINCT FROM d.battery)
                   OR (s.signal IS NOT NULL AND s.signal IS DISTINCT FROM d.signal))""",
        ids,
        [seen[i][0] for i in ids],
        [seen[i][1].get("battery") for i in ids],
        [seen[i][1].get("signal") for i in ids],
    )


async def upsert_patient(
    conn: Conn,
    *,
    patient_id: str,
    display_name: str,
    phone: str | None,
    sms_consent: bool,
    programs: Iterable[str] = (),
    timezone: str = "UTC",
    language: str = "en",
    birth_date: date | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO patients (id, display_name, phone, sms_consent, programs, timezone, language,
                                 birth_date)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name,
               phone = excluded.phone, sms_consent = excluded.sms_consent,
               programs = excluded.programs, timezone = excluded.timezone,
               language = excluded.language, birth_date = excluded.birth_date""",
        patient_id,
        display_name,
        phone,
        sms_consent,
        list(programs),
        timezone,
        language,
        birth_date,
    )


async def set_ehr_identifier(
    conn: Conn, patient_id: str, identifier: tuple[str, str] | None
) -> None:
    """How the EHR knows the patient (``(system, value)``, e.g. its MRN), or ``None``: by our
    id (docs/fhir.md, "Push to an EHR"). ``ConflictError`` when another patient has it. The value
    is PHI-adjacent: it is in no message and no log."""
    system, value = identifier if identifier is not None else (None, None)
    try:
        await conn.execute(
            """UPDATE patients SET ehr_identifier_system = $2, ehr_identifier_value = $3
                WHERE id = $1""",
            patient_id,
            system,
            value,
        )
    except asyncpg.UniqueViolationError:
        raise ConflictError("another patient has this EHR identifier") from None


async def enroll_device(
    conn: Conn,
    *,
    device_id: str,
    kind: str,
    patient_id: str | None,
    since: datetime,
    vendor: str | None = None,
    serial: str | None = None,
) -> None:
    """Register a device and, when a patient is given, bind it from ``since`` on."""
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO devices (id, kind, vendor, serial) VALUES ($1, $2, $3, $4)
               ON CONFLICT (id) DO NOTHING""",
            device_id,
            kind,
            vendor,
            serial,
        )
        if patient_id is not None:
            await conn.execute(
                """INSERT INTO device_bindings (device_id, patient_id, during)
                   SELECT $1, $2, tstzrange($3, NULL)
                    WHERE NOT EXISTS (SELECT 1 FROM device_bindings
                                       WHERE device_id = $1 AND patient_id = $2
                                         AND during @> $3::timestamptz)""",
                device_id,
                patient_id,
                since,
            )


async def sms_contact(conn: Conn, patient_id: str) -> tuple[str | None, bool]:
    """The patient's phone number (PHI: never log it) and SMS consent."""
    row = await conn.fetchrow("SELECT phone, sms_consent FROM patients WHERE id = $1", patient_id)
    if row is None:
        return None, False
    return row["phone"], bool(row["sms_consent"])


async def device_event(
    conn: Conn, device_id: str, actor: str, action: str, detail: Mapping[str, object]
) -> None:
    await conn.execute(
        "INSERT INTO device_events (device_id, actor, action, detail) VALUES ($1, $2, $3, $4)",
        device_id,
        actor,
        action,
        dict(detail),
    )


async def create_device(
    conn: Conn,
    *,
    device_id: str,
    kind: str,
    vendor: str | None,
    serial: str | None,
    integration: str | None,
    actor: str,
    password_login: bool = False,
) -> None:
    """Register a device; ``ConflictError`` when the id is taken."""
    try:
        await conn.execute(
            """INSERT INTO devices (id, kind, vendor, serial, integration, password_login)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            device_id,
            kind,
            vendor,
            serial,
            integration,
            password_login,
        )
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"device {device_id!r} is already enrolled") from None
    await device_event(
        conn, device_id, actor, "enroll", {"kind": kind, "vendor": vendor, "serial": serial}
    )


@dataclass(frozen=True, slots=True)
class NewDevice:
    device_id: str
    kind: str
    vendor: str | None
    serial: str | None


async def create_devices(conn: Conn, devices: Sequence[NewDevice], actor: str) -> None:
    """Insert devices and their ``enroll`` events: two statements for the whole batch;
    ``ConflictError`` when an id is taken (by a request running beside this one)."""
    try:
        await conn.execute(
            """INSERT INTO devices (id, kind, vendor, serial)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])""",
            [d.device_id for d in devices],
            [d.kind for d in devices],
            [d.vendor for d in devices],
            [d.serial for d in devices],
        )
    except asyncpg.UniqueViolationError as exc:
        raise ConflictError(f"a device of the request is already enrolled: {exc.detail}") from None
    await conn.execute(
        """INSERT INTO device_events (device_id, actor, action, detail)
           SELECT id, $5, 'enroll',
                  jsonb_build_object('kind', kind, 'vendor', vendor, 'serial', serial,
                                     'identity', 'certificate')
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                  AS t(id, kind, vendor, serial)""",
        [d.device_id for d in devices],
        [d.kind for d in devices],
        [d.vendor for d in devices],
        [d.serial for d in devices],
        actor,
    )


async def set_password_login(conn: Conn, device_id: str, present: bool) -> None:
    await conn.execute("UPDATE devices SET password_login = $2 WHERE id = $1", device_id, present)


async def password_logins(conn: Conn) -> list[str]:
    """The devices that have a password login in the broker, by id."""
    rows = await conn.fetch("SELECT id FROM devices WHERE password_login ORDER BY id")
    return [r["id"] for r in rows]


async def bind(
    conn: Conn,
    *,
    device_id: str,
    patient_id: str,
    start: datetime,
    end: datetime | None,
    actor: str,
) -> None:
    """Lend a device to a patient for [start, end): ``ConflictError`` when the device is
    bound in part of that period, ``InvalidRequestError`` for an unknown patient or a bad
    period."""
    try:
        await conn.execute(
            "INSERT INTO device_bindings (device_id, patient_id, during) "
            "VALUES ($1, $2, tstzrange($3, $4))",
            device_id,
            patient_id,
            start,
            end,
        )
    except asyncpg.ExclusionViolationError:
        raise ConflictError("the device is bound to a patient in that period") from None
    except asyncpg.ForeignKeyViolationError:
        raise InvalidRequestError(f"no patient {patient_id!r}") from None
    except asyncpg.DataError as exc:
        raise InvalidRequestError(f"bad period: {exc}") from None
    await device_event(
        conn,
        device_id,
        actor,
        "bind",
        {"patient_id": patient_id, "start": start.isoformat(), "end": end and end.isoformat()},
    )


async def unbind(conn: Conn, *, device_id: str, at: datetime, actor: str) -> int:
    """End the binding open at ``at``; return how many were ended (0 or 1)."""
    status = await conn.execute(
        """UPDATE device_bindings SET during = tstzrange(lower(during), $2)
            WHERE device_id = $1 AND during @> $2::timestamptz""",
        device_id,
        at,
    )
    ended = int(status.split()[-1])
    if ended:
        await device_event(conn, device_id, actor, "unbind", {"at": at.isoformat()})
    return ended


async def retire(conn: Conn, *, device_id: str, at: datetime, actor: str) -> None:
    await unbind(conn, device_id=device_id, at=at, actor=actor)
    await conn.execute("UPDATE devices SET retired_at = $2 WHERE id = $1", device_id, at)
    await device_event(conn, device_id, actor, "retire", {"at": at.isoformat()})


async def rotated(conn: Conn, *, device_id: str, actor: str) -> None:
    await conn.execute("UPDATE devices SET credentials_rotated_at = now() WHERE id = $1", device_id)
    await device_event(conn, device_id, actor, "rotate_credentials", {})


async def device_detail(conn: Conn, device_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        """SELECT id, kind, vendor, serial, integration, retired_at, battery, signal,
                  last_seen_at, created_at, credentials_rotated_at
             FROM devices WHERE id = $1""",
        device_id,
    )
    if row is None:
        return None
    out = dict(row)
    out["bindings"] = [
        {"patient_id": b["patient_id"], "start": b["start"], "end": b["end"]}
        for b in await conn.fetch(
            """SELECT patient_id, lower(during) AS start, upper(during) AS end
                 FROM device_bindings WHERE device_id = $1 ORDER BY lower(during)""",
            device_id,
        )
    ]
    out["events"] = [
        dict(e)
        for e in await conn.fetch(
            "SELECT at, actor, action, detail FROM device_events WHERE device_id = $1 ORDER BY id",
            device_id,
        )
    ]
    return out


async def create_integration(
    conn: Conn, *, integration_id: str, name: str, auth: str, secret: str, formats: list[str]
) -> None:
    """Register a vendor integration; ``ConflictError`` when the id is taken."""
    try:
        await conn.execute(
            """INSERT INTO integrations (id, name, auth, secret, formats)
               VALUES ($1, $2, $3, $4, $5)""",
            integration_id,
            name,
            auth,
            secret,
            formats,
        )
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"integration {integration_id!r} exists") from None


@dataclass(frozen=True, slots=True)
class Integration:
    id: str
    auth: str
    secret: str = field(repr=False)
    formats: tuple[str, ...]
    revoked: bool


async def integration(conn: Conn, integration_id: str) -> Integration | None:
    row = await conn.fetchrow(
        "SELECT id, auth, secret, formats, revoked_at IS NOT NULL AS revoked "
        "FROM integrations WHERE id = $1",
        integration_id,
    )
    if row is None:
        return None
    return Integration(row["id"], row["auth"], row["secret"], tuple(row["formats"]), row["revoked"])


async def revoke_integration(conn: Conn, integration_id: str) -> bool:
    """Refuse the integration's requests from now on; False when it does not exist."""
    status = await conn.execute(
        "UPDATE integrations SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
        integration_id,
    )
    return status.endswith(" 1")
