"""SQL for the audit log (``audit_log``, migration 0010): append and query, nothing else.

The table refuses UPDATE, DELETE and TRUNCATE (a trigger), so this module has no way to
change a row, and neither has anyone else short of dropping the trigger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rpm.storage.pool import Conn


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One access to or change of patient data."""

    actor: str
    role: str
    action: str
    resource: str
    resource_id: str | None
    route: str
    patient_ids: tuple[str, ...]
    client_addr: str | None
    user_agent: str | None
    status: int


async def append(conn: Conn, entries: Sequence[AuditEntry]) -> None:
    await conn.executemany(
        """INSERT INTO audit_log (actor, role, action, resource, resource_id, route,
                                  patient_ids, client_addr, user_agent, status)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        [
            (
                e.actor,
                e.role,
                e.action,
                e.resource,
                e.resource_id,
                e.route,
                list(e.patient_ids),
                e.client_addr,
                e.user_agent,
                e.status,
            )
            for e in entries
        ],
    )


async def append_cli(
    conn: Conn,
    *,
    actor: str,
    command: str,
    action: str,
    resource: str,
    resource_id: str | None,
    patient_ids: Sequence[str] = (),
) -> None:
    """Audit a change made by an ``rpm`` command (``command``: e.g. ``rpm time add``), with
    role ``cli`` and status 200: the command succeeded (failures change nothing and are
    not logged)."""
    await append(
        conn,
        [
            AuditEntry(
                actor=actor,
                role="cli",
                action=action,
                resource=resource,
                resource_id=resource_id,
                route=f"CLI {command}",
                patient_ids=tuple(patient_ids),
                client_addr=None,
                user_agent=None,
                status=200,
            )
        ],
    )


async def query(
    conn: Conn,
    *,
    patient_id: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Entries matching every filter given, newest first; page with ``before_id``."""
    rows = await conn.fetch(
        """SELECT id, at, actor, role, action, resource, resource_id, route, patient_ids,
                  client_addr, user_agent, status
             FROM audit_log
            WHERE ($1::text IS NULL OR patient_ids @> ARRAY[$1::text])
              AND ($2::text IS NULL OR actor = $2)
              AND ($3::text IS NULL OR action = $3)
              AND ($4::timestamptz IS NULL OR at >= $4)
              AND ($5::timestamptz IS NULL OR at < $5)
              AND ($6::bigint IS NULL OR id < $6)
            ORDER BY id DESC
            LIMIT $7""",
        patient_id,
        actor,
        action,
        since,
        until,
        before_id,
        limit,
    )
    return [dict(r) for r in rows]
