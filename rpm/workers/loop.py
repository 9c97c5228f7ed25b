"""The loop every outbox worker runs (SMS in rpm/workers/sms_outbox.py, FHIR push in
rpm/fhir/push.py): drain what is due, rest when nothing was, stop when asked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

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
