"""Prometheus metrics of one server process, served at ``/metrics``.

Two kinds. Counters and histograms of the ingest path are updated once per batch at its
edge (``IngestMetrics.batch``): the hot path handles thousands of readings a second, so
nothing here runs per reading. Everything else is read when Prometheus scrapes: the
gateway's, workers' and pool's own counters and states (``watch``), and what only the
database knows (open alerts, outbox depth and age), queried with a short timeout and cached
for a few seconds so that scrapes cannot load the database.

Every registry is the process's own (not prometheus_client's global one), so several servers
in one process, as in the tests, do not collide. No label carries a patient, device or
phone: reasons, channels, states and outcomes only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import asyncpg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rpm.domain import RejectReason
from rpm.storage import alert_reads
from rpm.storage import outbox as outbox_store

if TYPE_CHECKING:
    from rpm.pipeline import BatchResult

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "DatabaseGauges", "IngestMetrics", "Metrics"]

# Batches hold 1 to batch_max_messages (2,000 by default) messages; a webhook call holds one.
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
# Seconds: a batch commits in a few milliseconds to a few hundred under load.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TRANSPORTS = ("mqtt", "http")
CHANNELS = ("sms", "voice", "fhir")
OPEN_STATES = ("open", "acknowledged")  # resolved episodes only grow: see rpm_alerts_opened_total


class IngestMetrics:
    """What the unit of work did, counted per batch."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "rpm_ingest_messages",
            "Messages received by the unit of work (MQTT messages, webhook bodies), by transport.",
            ["transport"],
            registry=registry,
        )
        self.stored = Counter("rpm_readings_stored", "Readings stored (new).", registry=registry)
        self.duplicates = Counter(
            "rpm_readings_duplicate",
            "Readings already stored (redelivery, device retransmit): skipped.",
            registry=registry,
        )
        self.quarantined = Counter(
            "rpm_readings_quarantined",
            "Payloads or readings refused into the quarantine, by reason.",
            ["reason"],
            registry=registry,
        )
        self.alerts_opened = Counter(
            "rpm_alerts_opened", "Alert episodes opened by ingest.", registry=registry
        )
        self.not_committed = Counter(
            "rpm_ingest_batches_not_committed",
            "Units of work the database did not commit (outage, conflict); the caller retries "
            "them, unacknowledged.",
            registry=registry,
        )
        self.batch_size = Histogram(
            "rpm_ingest_batch_size",
            "Messages per unit of work.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "rpm_ingest_batch_seconds",
            "Time of one unit of work, from decoding to commit (committed batches).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rule_step_seconds = Histogram(
            "rpm_rule_step_seconds",
            "Time of the rule engine's step over one batch's new readings.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Children looked up once: label lookups take a lock and a dict access each.
        self._transport = {t: self.messages.labels(t) for t in TRANSPORTS}
        self._reason = {r.value: self.quarantined.labels(r.value) for r in RejectReason}

    def batch(self, transport: str, result: BatchResult, seconds: float) -> None:
        """Count one committed unit of work."""
        child = self._transport.get(transport) or self._transport.setdefault(
            transport, self.messages.labels(transport)
        )
        child.inc(result.messages)
        self.batch_size.observe(result.messages)
        self.batch_seconds.observe(seconds)
        if result.stored:
            self.stored.inc(result.stored)
        if result.duplicates:
            self.duplicates.inc(result.duplicates)
        if result.alerts_opened:
            self.alerts_opened.inc(len(result.alerts_opened))
        for reason, n in result.quarantine_reasons.items():
            counter = self._reason.get(reason) or self._reason.setdefault(
                reason, self.quarantined.labels(reason)
            )
            counter.inc(n)


@dataclass(frozen=True, slots=True)
class _DbSnapshot:
    up: bool
    alerts: Mapping[str, int] = field(default_factory=dict)
    outbox: Mapping[str, tuple[int, float]] = field(default_factory=dict)  # depth, oldest age s
    held: Mapping[str, int] = field(default_factory=dict)  # held: credentials refused


class DatabaseGauges:
    """Gauges only the database knows, refreshed at scrape at most every ``max_age_s``."""

    def __init__(self, pool: asyncpg.Pool, *, max_age_s: float, timeout_s: float) -> None:
        self._pool = pool
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._snapshot = _DbSnapshot(up=False)
        self._taken = -1e9
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Query when the cached figures are older than ``max_age_s``; one query at a time."""
        async with self._lock:
            if time.monotonic() - self._taken < self._max_age_s:
                return
            try:
                async with asyncio.timeout(self._timeout_s), self._pool.acquire() as conn:
                    alerts = await alert_reads.count_by_state(conn, OPEN_STATES)
                    outbox = await outbox_store.backlog(conn)
                    held = await outbox_store.held(conn)
                self._snapshot = _DbSnapshot(True, alerts, outbox, held)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("metrics: database figures unavailable (%s)", exc.__class__.__name__)
                self._snapshot = _DbSnapshot(up=False)
            self._taken = time.monotonic()

    def collect(self) -> Iterable[Metric]:
        s = self._snapshot
        yield _gauge(
            "rpm_metrics_database_up", "1 when the last database query of /metrics answered.", s.up
        )
        alerts = GaugeMetricFamily(
            "rpm_alerts", "Alert episodes in an unresolved state, by state.", labels=["state"]
        )
        for state in OPEN_STATES:
            alerts.add_metric([state], s.alerts.get(state, 0))
        yield alerts
        depth = GaugeMetricFamily(
            "rpm_outbox_depth", "Outbox items waiting for delivery, by channel.", labels=["channel"]
        )
        age = GaugeMetricFamily(
            "rpm_outbox_oldest_age_seconds",
            "Age of the oldest outbox item waiting for delivery (0 when none), by channel.",
            labels=["channel"],
        )
        for channel in sorted({*CHANNELS, *s.outbox}):
            n, oldest = s.outbox.get(channel, (0, 0.0))
            depth.add_metric([channel], n)
            age.add_metric([channel], oldest)
        yield depth
        yield age
        held = GaugeMetricFamily(
            "rpm_outbox_held",
            "Outbox items held because Twilio refuses the credentials (HTTP 401, error 20003), "
            "by channel.",
            labels=["channel"],
        )
        for channel in sorted({"sms", "voice", *s.held}):
            held.add_metric([channel], s.held.get(channel, 0))
        yield held


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _counter(name: str, documentation: str, values: Mapping[str, int], label: str) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, n in values.items():
        family.add_metric([key], n)
    return family


def pool_families(pool: asyncpg.Pool) -> Callable[[], Iterable[Metric]]:
    """The connection pool's size and connections in use, read at scrape."""

    def collect() -> Iterable[Metric]:
        size = pool.get_size()
        yield _gauge("rpm_db_pool_size", "Connections open in the pool.", size)
        yield _gauge("rpm_db_pool_max", "Connections the pool may open.", pool.get_max_size())
        in_use = size - pool.get_idle_size()
        yield _gauge("rpm_db_pool_in_use", "Connections checked out of the pool.", in_use)

    return collect


def broker_families(
    connected: Callable[[], bool], reconnects: Callable[[], int]
) -> Callable[[], Iterable[Metric]]:
    """The gateway's broker connection: state (0/1) and reconnections since start."""

    def collect() -> Iterable[Metric]:
        yield _gauge(
            "rpm_broker_connected", "1 while the gateway is subscribed to the broker.", connected()
        )
        yield CounterMetricFamily(
            "rpm_broker_reconnects",
            "Times the gateway connected to the broker again after losing it.",
            value=reconnects(),
        )

    return collect


def delivery_families(
    name: str, documentation: str, outcomes: Callable[[], Mapping[str, int]]
) -> Callable[[], Iterable[Metric]]:
    """A worker's delivery results since start, by outcome."""

    def collect() -> Iterable[Metric]:
        yield _counter(name, documentation, outcomes(), "outcome")

    return collect


class _Hold(Protocol):
    @property
    def held(self) -> bool: ...

    @property
    def refusals(self) -> int: ...


def credentials_families(hold: _Hold) -> Callable[[], Iterable[Metric]]:
    """Whether Twilio refuses the credentials now, and how often it did (workers' process)."""

    def collect() -> Iterable[Metric]:
        yield _gauge(
            "rpm_twilio_credentials_refused",
            "1 while Twilio refuses the credentials and messages are held.",
            hold.held,
        )
        yield CounterMetricFamily(
            "rpm_twilio_credentials_refusals",
            "Requests Twilio refused for the credentials (HTTP 401, error 20003).",
            value=hold.refusals,
        )

    return collect


def channel_families(
    outcomes: Callable[[], Mapping[tuple[str, str], int]],
) -> Callable[[], Iterable[Metric]]:
    """Patient and staff messages and calls since start, by channel and outcome."""

    def collect() -> Iterable[Metric]:
        family = CounterMetricFamily(
            "rpm_channel_deliveries",
            "Messages and calls handled, by channel (sms, whatsapp, voice) and outcome.",
            labels=["channel", "outcome"],
        )
        for (channel, outcome), n in sorted(outcomes().items()):
            family.add_metric([channel, outcome], n)
        yield family

    return collect


class _Watched(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()

    def describe(self) -> Iterable[Metric]:
        return ()  # registered without describing: nothing is read at registration


class Metrics:
    """The registry of one server process and what feeds it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.ingest = IngestMetrics(self.registry)
        # Counted where Twilio's status callbacks arrive (the API process): messages Twilio
        # accepted (counted as sent) and then reported failed or undelivered.
        self.message_failures = Counter(
            "rpm_message_failures",
            "Messages Twilio reported failed or undelivered, by channel, status and error "
            "class (alerts/delivery_errors.py).",
            ["channel", "status", "error_class"],
            registry=self.registry,
        )
        # Counted where inbound messages arrive (the API process): media links of a patient's
        # message not kept (alerts/inbound_media.py: too many, not https, not Twilio's).
        self.inbound_media_dropped = Counter(
            "rpm_inbound_media_dropped",
            "Media links of inbound messages dropped, by reason (alerts/inbound_media.py).",
            ["reason"],
            registry=self.registry,
        )
        self._database: DatabaseGauges | None = None

    def watch(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Add figures read at scrape time."""
        self.registry.register(_Watched(collect))

    def watch_database(self, gauges: DatabaseGauges) -> None:
        self._database = gauges
        self.watch(gauges.collect)

    async def render(self) -> bytes:
        """The text exposition format, database figures refreshed if stale."""
        if self._database is not None:
            await self._database.refresh()
        return generate_latest(self.registry)
