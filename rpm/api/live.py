"""Live fan-out of database notifications to browser streams.

One LISTEN connection per process; each subscriber gets a bounded queue. A
subscriber too slow to keep up is disconnected (counted), and its browser
reconnects and reloads the list, so no change is silently missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg

from rpm.storage.pool import DATABASE_UNAVAILABLE, Conn, connect

log = logging.getLogger(__name__)

_LISTEN_ERRORS: tuple[type[Exception], ...] = (asyncpg.PostgresError, *DATABASE_UNAVAILABLE)


class Broadcaster:
    """LISTENs on channels and hands each payload to every subscriber."""

    def __init__(self, dsn: str, channels: tuple[str, ...], queue_size: int = 256) -> None:
        self._dsn = dsn
        self._channels = channels
        self._queue_size = queue_size
        # Each subscriber's queue, with the channels it hears (None: all of them).
        self._subscribers: dict[asyncio.Queue[tuple[str, str] | None], frozenset[str] | None] = {}
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.dropped_subscribers = 0
        self.listening = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for q in list(self._subscribers):
            self._close(q)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                conn = await connect(self._dsn)
                try:
                    lost = asyncio.Event()
                    conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                    for ch in self._channels:
                        await conn.add_listener(ch, self._on_notify)
                    self.listening.set()
                    delay = 0.2
                    await lost.wait()
                finally:
                    self.listening.clear()
                    with contextlib.suppress(Exception):
                        await conn.close()
            except _LISTEN_ERRORS as exc:
                log.warning("live: LISTEN connection failed (%s)", exc.__class__.__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_notify(self, _conn: Conn, _pid: int, channel: str, payload: object) -> None:
        for q, hears in list(self._subscribers.items()):
            if hears is not None and channel not in hears:
                continue
            if q.qsize() >= self._queue_size:
                self.dropped_subscribers += 1
                self._close(q)
            else:
                q.put_nowait((channel, str(payload)))

    def _close(self, q: asyncio.Queue[tuple[str, str] | None]) -> None:
        self._subscribers.pop(q, None)
        q.put_nowait(None)  # unbounded queue: the bound is checked in _on_notify

    async def subscribe(
        self, channels: tuple[str, ...] | None = None
    ) -> AsyncIterator[tuple[str, str]]:
        """Yield (channel, payload) of ``channels`` (default: all) until the subscriber is
        closed."""
        q: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._subscribers[q] = None if channels is None else frozenset(channels)
        try:
            while (item := await q.get()) is not None:
                yield item
        finally:
            self._subscribers.pop(q, None)
