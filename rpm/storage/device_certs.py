"""SQL for device certificates (the devices themselves: rpm/storage/registry.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from device_gateways.device_ca import IssuedCertificate, Revoked
from rpm.storage.pool import Conn

# pg_advisory_xact_lock key: one CRL writer at a time, whatever the process.
CRL_LOCK = 0x72706D_43524C


@dataclass(frozen=True, slots=True)
class Known:
    """An enrolled device, and its valid certificates: (key SHA-256, PEM) by serial."""

    device_id: str
    integration: str | None
    retired: bool
    password_login: bool
    certificates: dict[str, tuple[str, str]]


async def known(conn: Conn, device_ids: Sequence[str]) -> dict[str, Known]:
    rows = await conn.fetch(
        """SELECT d.id, d.integration, d.retired_at IS NOT NULL AS retired, d.password_login,
                  coalesce(array_agg(c.serial) FILTER (WHERE c.serial IS NOT NULL), '{}')
                      AS serials,
                  coalesce(array_agg(c.key_sha256) FILTER (WHERE c.serial IS NOT NULL), '{}')
                      AS keys,
                  coalesce(array_agg(c.pem) FILTER (WHERE c.serial IS NOT NULL), '{}') AS pems
             FROM devices d
             LEFT JOIN device_certificates c ON c.device_id = d.id AND c.revoked_at IS NULL
            WHERE d.id = ANY($1::text[])
            GROUP BY d.id""",
        list(device_ids),
    )
    return {
        r["id"]: Known(
            r["id"],
            r["integration"],
            r["retired"],
            r["password_login"],
            {s: (k, p) for s, k, p in zip(r["serials"], r["keys"], r["pems"], strict=True)},
        )
        for r in rows
    }


async def add_certificates(conn: Conn, issued: Sequence[IssuedCertificate]) -> None:
    """Store issued certificates."""
    await conn.execute(
        """INSERT INTO device_certificates (serial, device_id, key_sha256, pem, not_after)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                $5::timestamptz[])""",
        [c.serial for c in issued],
        [c.device_id for c in issued],
        [c.key_sha256 for c in issued],
        [c.pem for c in issued],
        [c.not_after for c in issued],
    )


async def revoke(conn: Conn, device_id: str, at: datetime, keep: str | None = None) -> list[str]:
    """Revoke the device's valid certificates (all but ``keep``); their serials."""
    rows = await conn.fetch(
        """UPDATE device_certificates SET revoked_at = $2
            WHERE device_id = $1 AND revoked_at IS NULL AND serial IS DISTINCT FROM $3
        RETURNING serial""",
        device_id,
        at,
        keep,
    )
    return [r["serial"] for r in rows]


async def revoked(conn: Conn, now: datetime) -> list[Revoked]:
    """Every revoked certificate not yet expired: what the CRL must name."""
    rows = await conn.fetch(
        """SELECT serial, revoked_at FROM device_certificates
            WHERE revoked_at IS NOT NULL AND not_after > $1 ORDER BY revoked_at, serial""",
        now,
    )
    return [Revoked(r["serial"], r["revoked_at"]) for r in rows]


async def lock_crl(conn: Conn) -> None:
    """Hold the CRL writers' lock until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", CRL_LOCK)
