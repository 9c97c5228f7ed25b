"""SQL for the quarantine of refused payloads."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from rpm.domain import RawMessage, Rejection
from rpm.storage.pool import Conn


def fingerprint(rej: Rejection) -> bytes:
    """Same bytes from the same source refused for the same reason: one row."""
    h = hashlib.sha256()
    raw = rej.raw
    for part in (
        raw.transport,
        raw.integration or "",
        raw.device_id or "",
        rej.reason.value,
        rej.detail,
    ):
        h.update(part.encode())
        h.update(b"\0")
    h.update(rej.raw.payload)
    return h.digest()


async def insert(conn: Conn, rejections: Sequence[Rejection]) -> None:
    """Keep each rejection; a repeat bumps ``seen_count`` instead of adding a row.

    One message refused several times for the same reason (a vendor payload whose two
    readings are both stale) is one sighting: ``seen_count`` counts deliveries."""
    if not rejections:
        return
    once: dict[tuple[int, bytes], Rejection] = {}
    for r in rejections:
        once.setdefault((id(r.raw), fingerprint(r)), r)
    await conn.executemany(
        """INSERT INTO quarantine (fingerprint, transport, payload_format, device_id, topic,
                                   reason, detail, payload, received_at, integration)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           ON CONFLICT (fingerprint) DO UPDATE
              SET seen_count = quarantine.seen_count + 1, last_seen_at = now(),
                  replayed_at = NULL  -- refused again (e.g. on replay): still pending""",
        [
            (
                fp,
                r.raw.transport,
                r.raw.payload_format,
                r.device_id,
                r.raw.topic,
                r.reason.value,
                r.detail,
                r.raw.payload,
                r.raw.received_at,
                r.raw.integration,
            )
            for (_, fp), r in once.items()
        ],
    )


async def recent(
    conn: Conn, *, reason: str | None = None, replayed: bool | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id, transport, payload_format, device_id, topic, integration, reason, detail,
                  payload, received_at, seen_count, last_seen_at, replayed_at
             FROM quarantine
            WHERE ($1::text IS NULL OR reason = $1)
              AND ($3::boolean IS NULL OR (replayed_at IS NOT NULL) = $3)
            ORDER BY id DESC LIMIT $2""",
        reason,
        limit,
        replayed,
    )
    return [dict(r) for r in rows]


async def for_replay(
    conn: Conn, *, ids: Sequence[int] | None, reason: str | None, limit: int
) -> list[tuple[int, RawMessage]]:
    """Quarantined payloads not yet replayed, as the raw messages they arrived as."""
    rows = await conn.fetch(
        """SELECT id, transport, payload_format, device_id, topic, integration, payload,
                  received_at
             FROM quarantine
            WHERE replayed_at IS NULL
              AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))
              AND ($2::text IS NULL OR reason = $2)
            ORDER BY id LIMIT $3
              FOR UPDATE SKIP LOCKED""",
        list(ids) if ids is not None else None,
        reason,
        limit,
    )
    return [
        (
            r["id"],
            RawMessage(
                transport=r["transport"],
                payload_format=r["payload_format"],
                device_id=r["device_id"] if r["transport"] == "mqtt" else None,
                payload=bytes(r["payload"]),
                received_at=r["received_at"],
                topic=r["topic"],
                integration=r["integration"],
            ),
        )
        for r in rows
    ]


async def mark_replayed(conn: Conn, ids: Sequence[int]) -> None:
    await conn.execute(
        "UPDATE quarantine SET replayed_at = now() WHERE id = ANY($1::bigint[])", list(ids)
    )
