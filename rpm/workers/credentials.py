"""Holding Twilio work while Twilio refuses our credentials (HTTP 401, error 20003).

A wrong or rotated auth token fails every request alike, so failing messages one by one would
lose all of them for good. Instead the first refusal puts the worker on hold: that item and
the rest of its claim go back to the outbox, due again after ``retry_s``, their attempts not
counted and their ``last_error`` starting with ``held:`` (``rpm.storage.outbox.HELD``). Each
later pass tries the most urgent item first; the first one Twilio accepts ends the hold, and
the rest follow. ``/readyz`` reports the held items (``twilio`` check, status ``degraded``)
and ``/metrics`` counts them (``rpm_outbox_held``), from the database, in every process; the
workers' process also has ``rpm_twilio_credentials_refused`` (1 while on hold). The SMS and
the voice worker share one hold: they use the same account.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg

from rpm.storage import outbox as outbox_store

log = logging.getLogger(__name__)


class CredentialsHold:
    """Whether Twilio refuses the credentials now; puts refused work back, uncounted."""

    def __init__(self, retry_s: float = 30.0) -> None:
        self.retry = timedelta(seconds=retry_s)
        self.since: datetime | None = None  # on hold since (None: credentials accepted)
        self.refusals = 0  # refused requests since start, for /metrics

    @property
    def held(self) -> bool:
        return self.since is not None

    async def refused(
        self,
        pool: asyncpg.Pool,
        items: Sequence[outbox_store.OutboxItem],
        now: datetime,
        error: str,
    ) -> None:
        """Twilio refused the credentials on ``items[0]``: hold it and the rest of the claim."""
        self.refusals += 1
        if self.since is None:
            self.since = now
            log.error(
                "twilio refused the credentials (%s): messages and calls are held, not failed, "
                "until RPM_TWILIO_ACCOUNT_SID/RPM_TWILIO_AUTH_TOKEN work again",
                error,
            )
        reason = f"{outbox_store.HELD}Twilio refused the credentials ({error})"
        async with pool.acquire() as conn:
            for item in items:
                await outbox_store.defer(conn, item.id, now + self.retry, reason)

    def accepted(self) -> None:
        """Twilio accepted a request: the hold ends."""
        if self.since is not None:
            log.warning("twilio accepts the credentials again: held messages are being sent")
            self.since = None
