"""The loop every outbox worker runs (SMS in rpm/workers/sms_outbox.py, voice calls, FHIR push in
rpm/fhir/push.py): drain what is due, rest when nothing was, stop when asked; and how a worker
hands back claimed items by half their lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import asyncpg

from rpm.storage import outbox as outbox_store
from rpm.storage.pool import DATABASE_UNAVAILABLE


async def drain_until_stopped(
    drain_once: Callable[[], Awaitable[int]],
    stopping: asyncio.Event,
    idle_s: Callable[[], float],
    log: logging.Logger,
    name: str,
) -> None:
    """Call ``drain_once`` until ``stopping`` is set; after a pass that handled nothing, or
    while the database is unavailable (its items stay in the outbox), rest ``idle_s()``
    seconds, cut short by a stop request."""
    while not stopping.is_set():
        try:
            handled = await drain_once()
        except DATABASE_UNAVAILABLE as exc:
            log.warning("%s: database unavailable (%s)", name, exc.__class__.__name__)
            handled = 0
        if handled == 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle_s()):
                    await stopping.wait()


def half_lease_gone(claimed_at: float, lease: timedelta) -> bool:
    """Half a claim's lease has gone by (``claimed_at``: ``time.monotonic()`` at the claim).
    A worker hands back what it has not sent by then, so no other worker process claims an
    item this one is still sending (several workers share the outbox)."""
    return time.monotonic() - claimed_at > lease.total_seconds() / 2


async def release(
    pool: asyncpg.Pool,
    items: Sequence[outbox_store.OutboxItem],
    now: datetime,
    reason: str = "released at shutdown",
) -> None:
    """Hand claimed items back at once (not after the lease), the claim not counted;
    ``reason`` is kept on each item."""
    async with pool.acquire() as conn:
        for item in items:
            await outbox_store.defer(conn, item.id, now, reason)
