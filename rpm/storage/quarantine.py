"""SQL for the quarantine of refused payloads."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from rpm.domain import Rejection
from rpm.storage.pool import Conn


def fingerprint(rej: Rejection) -> bytes:
    """Same bytes from the same source refused for the same reason: one row."""
    h = hashlib.sha256()
    for part in (rej.raw.transport, rej.raw.device_id or "", rej.reason.value, rej.detail):
        h.update(part.encode())
        h.update(b"\0")
    h.update(rej.raw.payload)
    return h.digest()


async def insert(conn: Conn, rejections: Sequence[Rejection]) -> None:
    """Keep each rejection; a repeat bumps ``seen_count`` instead of adding a row."""
    if not rejections:
        return
    await conn.executemany(
        """INSERT INTO quarantine (fingerprint, transport, payload_format, device_id, topic,
                                   reason, detail, payload, received_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (fingerprint) DO UPDATE
              SET seen_count = quarantine.seen_count + 1, last_seen_at = now()""",
        [
            (
                fingerprint(r),
                r.raw.transport,
                r.raw.payload_format,
                r.raw.device_id,
                r.raw.topic,
                r.reason.value,
                r.detail,
                r.raw.payload,
                r.raw.received_at,
            )
            for r in rejections
        ],
    )


async def recent(
    conn: Conn, *, reason: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id, transport, payload_format, device_id, topic, reason, detail, payload,
                  received_at, seen_count, last_seen_at, replayed_at
             FROM quarantine WHERE ($1::text IS NULL OR reason = $1)
            ORDER BY id DESC LIMIT $2""",
        reason,
        limit,
    )
    return [dict(r) for r in rows]
