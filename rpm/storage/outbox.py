"""SQL for the outbox: delivery work written with its cause, drained by workers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rpm.backoff import Backoff
from rpm.storage.pool import Conn

# ``last_error`` of items held while Twilio refuses the credentials (rpm/workers/credentials.py).
HELD = "held: "


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    channel: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime | None = None  # when its cause was committed


async def enqueue(
    conn: Conn,
    items: Sequence[tuple[str, str, dict[str, Any]]],
    at: datetime | None = None,
) -> None:
    """Add (channel, dedupe_key, payload) rows, due at ``at`` (the cause's time: the caller's
    clock; the database's when None); a repeated dedupe key is ignored."""
    if not items:
        return
    await conn.executemany(
        "INSERT INTO outbox (channel, dedupe_key, payload, created_at, next_attempt_at) "
        "VALUES ($1, $2, $3, coalesce($4::timestamptz, now()), coalesce($4::timestamptz, now())) "
        "ON CONFLICT (dedupe_key) DO NOTHING",
        [(*item, at) for item in items],
    )


async def claim_due(
    conn: Conn, channel: str, limit: int, lease: timedelta, now: datetime | None = None
) -> list[OutboxItem]:
    """Take due items, the most urgent first (``priority``, migration 0017), leasing them so a
    concurrent worker skips them until the lease ends.

    ``now`` is the worker's clock (the database's when None).
    """
    rows = await conn.fetch(
        """UPDATE outbox SET next_attempt_at = coalesce($4::timestamptz, now()) + $3::interval,
                             attempts = attempts + 1
            WHERE id IN (SELECT id FROM outbox
                          WHERE channel = $1 AND delivered_at IS NULL AND failed_at IS NULL
                            AND next_attempt_at <= coalesce($4::timestamptz, now())
                          ORDER BY priority DESC, next_attempt_at
                          LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING id, channel, payload, attempts, created_at, priority""",
        channel,
        limit,
        lease,
        now,
    )
    # UPDATE ... RETURNING keeps no order: the most urgent first, then the oldest.
    ordered = sorted(rows, key=lambda r: (-r["priority"], r["id"]))
    return [
        OutboxItem(r["id"], r["channel"], r["payload"], r["attempts"], r["created_at"])
        for r in ordered
    ]


async def delivered(conn: Conn, item_id: int, result: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE outbox SET delivered_at = now(), result = $2, last_error = NULL WHERE id = $1",
        item_id,
        result,
    )


async def retry_at(conn: Conn, item_id: int, when: datetime, error: str) -> None:
    await conn.execute(
        "UPDATE outbox SET next_attempt_at = $2, last_error = $3 WHERE id = $1",
        item_id,
        when,
        error,
    )


async def retry_or_give_up(
    conn: Conn,
    item: OutboxItem,
    now: datetime,
    error: str,
    *,
    max_attempts: int,
    backoff: Backoff,
    result: dict[str, Any] | None = None,
) -> bool:
    """After a failed attempt that may pass: due again after ``backoff``'s wait for this
    attempt, or failed for good once ``max_attempts`` were made (``result`` kept then).
    True when it gave up."""
    if item.attempts >= max_attempts:
        await failed(conn, item.id, f"gave up after {item.attempts} attempts: {error}", result)
        return True
    await retry_at(conn, item.id, now + timedelta(seconds=backoff.seconds(item.attempts)), error)
    return False


async def defer(conn: Conn, item_id: int, when: datetime, reason: str) -> None:
    """Hold a claimed item until ``when`` without counting the claim as a delivery attempt."""
    await conn.execute(
        """UPDATE outbox SET next_attempt_at = $2, last_error = $3,
                             attempts = greatest(attempts - 1, 0)
            WHERE id = $1""",
        item_id,
        when,
        reason,
    )


async def failed(
    conn: Conn, item_id: int, error: str, result: dict[str, Any] | None = None
) -> None:
    await conn.execute(
        "UPDATE outbox SET failed_at = now(), last_error = $2, result = $3 WHERE id = $1",
        item_id,
        error,
        result,
    )


async def backlog(conn: Conn) -> dict[str, tuple[int, float]]:
    """Items waiting per channel and the age in seconds of the oldest (``outbox_due`` index)."""
    rows = await conn.fetch(
        """SELECT channel, count(*) AS n,
                  coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age
             FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL
            GROUP BY channel"""
    )
    return {r["channel"]: (r["n"], max(0.0, r["age"])) for r in rows}


async def held(conn: Conn) -> dict[str, int]:
    """Items waiting per channel because Twilio refused the credentials (``HELD``)."""
    rows = await conn.fetch(
        """SELECT channel, count(*) AS n FROM outbox
            WHERE delivered_at IS NULL AND failed_at IS NULL AND starts_with(last_error, $1)
            GROUP BY channel""",
        HELD,
    )
    return {r["channel"]: r["n"] for r in rows}
