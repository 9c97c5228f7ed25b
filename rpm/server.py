"""The composition root: the gateway, the API and the delivery workers, in one process or apart.

``Server(settings, roles)`` runs the parts named by ``roles`` (``ROLES``): the MQTT gateway
(ingest unit of work and rule step), the HTTP API (with vendor webhooks and live pushes),
and the workers (SMS outbox, FHIR push, alert timers, missing-data timer). The database is
their only meeting point, so the parts can run in separate processes: the workers' CPU
(the Twilio client spends milliseconds per message) then stays off the gateway's core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import uvicorn
from fastapi import FastAPI

from alerts.sms import TwilioSms
from alerts.voice import TwilioVoice
from device_gateways.broker_admin import BrokerAdmin
from device_gateways.mqtt import MqttGateway
from rpm.api.app import create_app
from rpm.api.health import Operations
from rpm.api.live import Broadcaster
from rpm.domain import RawMessage
from rpm.domain.errors import StorageError
from rpm.fhir.push import FhirPushWorker
from rpm.metrics import (
    DatabaseGauges,
    Metrics,
    broker_families,
    channel_families,
    credentials_families,
    delivery_families,
    pool_families,
)
from rpm.pipeline import INGEST_CHANNEL, BatchResult, IngestPipeline
from rpm.settings import DatabaseSettings, Settings
from rpm.settings.safety import require_safe
from rpm.storage import rule_programs
from rpm.storage.alerts import ALERTS_CHANNEL
from rpm.storage.migrate import migrate
from rpm.storage.panel import PANEL_CHANNEL
from rpm.storage.pool import connect, create_pool
from rpm.workers.alert_timers import AlertTimers
from rpm.workers.campaigns import CampaignPlanner
from rpm.workers.channels import ChannelRouter
from rpm.workers.credentials import CredentialsHold
from rpm.workers.lifecycle import LifecycleConfig, LifecycleScheduler
from rpm.workers.sms_config import DeliveryConfig
from rpm.workers.sms_outbox import SmsOutboxWorker
from rpm.workers.voice_calls import VoiceCallWorker, VoiceConfig
from rules.engine import Engine
from rules.programs import RuleBook

log = logging.getLogger(__name__)

# What a server process can run; ``rpm serve --role`` picks a subset.
ROLES = ("gateway", "api", "workers")


def parse_roles(text: str) -> frozenset[str]:
    """``gateway,api`` -> the roles; ``all`` is every role."""
    names = {r.strip() for r in text.split(",") if r.strip()}
    if names == {"all"}:
        return frozenset(ROLES)
    unknown = names - set(ROLES)
    if unknown or not names:
        raise ValueError(f"roles are {', '.join(ROLES)} or all, not {text!r}")
    return frozenset(names)


# Tasks that stop by themselves when asked, finishing what they hold; the rest are cancelled.
_GRACEFUL = frozenset({"api", "gateway", "sms-worker", "voice-worker", "fhir-push"})


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: ``rpm serve`` handles SIGTERM/SIGINT itself
    and stops every part in order (uvicorn would re-raise the signal after its shutdown)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(slots=True)
class IngestCounters:
    """Running totals of what the gateway's units of work did."""

    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    alerts_opened: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    def add(self, r: BatchResult) -> None:
        self.batches += 1
        self.stored += r.stored
        self.duplicates += r.duplicates
        self.quarantined += r.quarantined
        self.alerts_opened += len(r.alerts_opened)
        for k, v in r.quarantine_reasons.items():
            self.quarantine_reasons[k] = self.quarantine_reasons.get(k, 0) + v


async def run_migrations(database: DatabaseSettings) -> list[str]:
    conn = await connect(database.url.get_secret_value())
    try:
        return await migrate(conn)
    finally:
        await conn.close()


class Server:
    """Starts and stops every part of ``rpm serve`` inside the running event loop."""

    def __init__(self, settings: Settings, roles: Iterable[str] = ROLES) -> None:
        self.settings = settings
        self.roles = parse_roles(",".join(roles))
        self.counters = IngestCounters()
        self.pool: asyncpg.Pool | None = None
        self.gateway: MqttGateway | None = None
        self.sms_worker: SmsOutboxWorker | None = None
        self.campaign_planner: CampaignPlanner | None = None
        self.app: FastAPI | None = None  # the API's app, when this process serves it
        self._sms: TwilioSms | None = None
        self.voice_worker: VoiceCallWorker | None = None
        self._voice: TwilioVoice | None = None
        self._broadcaster: Broadcaster | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pipeline: IngestPipeline | None = None
        self.fhir_push: FhirPushWorker | None = None
        self.metrics = Metrics()

    async def start(self) -> None:
        """Start the parts; ConfigurationError first when production settings are unsafe."""
        s = self.settings
        require_safe(s)
        if s.operations.deployment == "local":
            log.warning("local mode (RPM_DEPLOYMENT=local): production start-up checks are off")
        dsn = s.database.url.get_secret_value()
        applied = await run_migrations(s.database)
        if applied:
            log.info("migrations applied: %s", ", ".join(applied))
        self.pool = await create_pool(dsn, size=s.database.pool_size)
        pipeline = IngestPipeline(
            self.pool,
            s.ingest.clock(),
            engine=Engine(RuleBook.builtin(), s.rules.buffer_capacity),
            rules_refresh_s=s.rules.refresh_s,
            fhir_push=s.ehr.fhir_base_url is not None,
            metrics=self.metrics.ingest,
        )
        self.pipeline = pipeline
        async with self.pool.acquire() as conn:
            seeded = await rule_programs.seed_builtin(conn)
            if seeded:
                log.info("built-in rule programs stored as version 1: %s", ", ".join(seeded))
            await pipeline.load_rules(conn)

        async def process(batch: Sequence[RawMessage]) -> None:
            result = await pipeline.process(batch)
            self.counters.add(result)

        roles = self.roles
        self._tasks = []
        if "gateway" in roles:
            self.gateway = MqttGateway(s.mqtt.gateway(), process, stage=pipeline.stage)
            self._tasks.append(asyncio.create_task(self.gateway.run(), name="gateway"))
        if "workers" in roles:
            self._start_workers()
        if "api" in roles:
            await self._start_api()
        if self.gateway is not None:
            await asyncio.wait_for(self.gateway.connected.wait(), timeout=15)
        if self._uvicorn is not None:
            while not self._uvicorn.started:  # noqa: ASYNC110 - uvicorn offers a flag, no event
                await asyncio.sleep(0.02)
            log.info("serving API on http://%s:%d", s.api.host, s.api.port)
        self._watch()
        log.info("roles running: %s", ", ".join(r for r in ROLES if r in roles))

    def _start_workers(self) -> None:
        """The delivery workers and timers: SMS outbox, FHIR push, alert and missing-data timers."""
        s = self.settings
        assert self.pool is not None
        self._sms = TwilioSms(
            account_sid=s.sms.account_sid,
            auth_token=s.sms.auth_token.get_secret_value(),
            from_number=s.sms.from_number,
            messaging_service_sid=s.sms.messaging_service_sid,
            base_url=s.sms.base_url,
            validity_period_s=s.sms.validity_period_s,
        )
        hold = CredentialsHold()  # one Twilio account: SMS and calls are held together
        self.sms_worker = SmsOutboxWorker(
            self.pool,
            self._sms,
            DeliveryConfig.from_settings(s.sms, s.api),
            router=ChannelRouter(s.channels),
            hold=hold,
        )
        self._voice = TwilioVoice(
            account_sid=s.sms.account_sid,
            auth_token=s.sms.auth_token.get_secret_value(),
            from_number=s.channels.voice_from or s.sms.from_number,
            base_url=s.sms.base_url,
            ring_timeout_s=s.channels.voice_ring_timeout_s,
        )
        self.voice_worker = VoiceCallWorker(
            self.pool, self._voice, VoiceConfig.from_settings(s.channels, s.sms, s.api), hold=hold
        )
        timers = AlertTimers(self.pool, s.alerts.escalation())
        self.campaign_planner = CampaignPlanner(
            self.pool,
            s.sms.daily_cap,
            timeout_s=s.engagement.planner_timeout_s,
            reconcile_s=s.engagement.planner_reconcile_s,
            full_after_s=s.engagement.planner_full_after_s,
            connections=s.engagement.planner_connections,
        )
        self._tasks += [
            asyncio.create_task(
                self.campaign_planner.run(s.engagement.planner_interval_s), name="campaigns"
            ),
            asyncio.create_task(self.sms_worker.run(), name="sms-worker"),
            asyncio.create_task(self.voice_worker.run(), name="voice-worker"),
            asyncio.create_task(self._missing_data_timer(), name="missing-data"),
            asyncio.create_task(timers.run(s.alerts.timer_interval_s), name="alert-timers"),
            asyncio.create_task(self._confirmation_timer(), name="confirmations"),
            asyncio.create_task(
                LifecycleScheduler(self.pool, LifecycleConfig.from_settings(s.lifecycle)).run(
                    s.lifecycle.interval_s
                ),
                name="lifecycle",
            ),
        ]
        if s.ehr.fhir_base_url is not None:
            self.fhir_push = FhirPushWorker.from_settings(
                self.pool, s.ehr, poll_interval_s=s.sms.outbox_poll_interval_s
            )
            self._tasks.append(asyncio.create_task(self.fhir_push.run(), name="fhir-push"))

    async def _start_api(self) -> None:
        s = self.settings
        assert self.pool is not None
        assert self.pipeline is not None
        dsn = s.database.url.get_secret_value()
        self._broadcaster = Broadcaster(dsn, (ALERTS_CHANNEL, INGEST_CHANNEL, PANEL_CHANNEL))
        await self._broadcaster.start()
        app = create_app(
            self.pool,
            self._broadcaster,
            self.pipeline,
            BrokerAdmin(s.mqtt.admin()),
            s,
            ops=Operations(
                self.metrics,
                self.gateway.connected.is_set if self.gateway is not None else None,
                s.operations.metrics_db_timeout_s,
            ),
        )
        self.app = app
        await app.state.device_authority.start(datetime.now(UTC))
        config = uvicorn.Config(
            app,
            host=s.api.host,
            port=s.api.port,
            lifespan="off",
            log_config=None,  # uvicorn logs through ours (rpm/logging_setup.py)
            log_level=None,
            access_log=s.operations.access_log,
            timeout_graceful_shutdown=max(1, int(s.operations.shutdown_timeout_s)),
        )
        self._uvicorn = _Uvicorn(config)
        self._tasks.append(asyncio.create_task(self._uvicorn.serve(), name="api"))

    async def _missing_data_timer(self) -> None:
        """Evaluate missing-data rules every ``rules.missing_data_interval_s`` (state is in
        the DB)."""
        assert self.pipeline is not None
        while True:
            try:
                result = await self.pipeline.check_missing()
                if result.alerts_opened:
                    log.info("missing-data alerts opened: %d", len(result.alerts_opened))
            except StorageError as exc:
                log.warning("missing-data check skipped: %s", exc)
            await asyncio.sleep(self.settings.rules.missing_data_interval_s)

    async def _confirmation_timer(self) -> None:
        """Page the confirmations whose window ended with no repeat reading, every
        ``rules.confirm_interval_s`` (the waiting rows are in the DB)."""
        assert self.pipeline is not None
        while True:
            try:
                paged = await self.pipeline.check_confirmations()
                if paged:
                    log.info("confirmations paged at their window's end: %d", paged)
            except StorageError as exc:
                log.warning("confirmation check skipped: %s", exc)
            await asyncio.sleep(self.settings.rules.confirm_interval_s)

    async def wait(self) -> None:
        """Return when any part stops (its exception propagates)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()

    def _watch(self) -> None:
        """Figures /metrics reads at scrape time from the parts and the database."""
        assert self.pool is not None
        m, s = self.metrics, self.settings
        m.watch(pool_families(self.pool))
        if (gateway := self.gateway) is not None:
            m.watch(broker_families(gateway.connected.is_set, lambda: gateway.reconnects))
        if (sms := self.sms_worker) is not None:
            m.watch(
                delivery_families(
                    "rpm_sms_deliveries",
                    "SMS outbox items handled, by outcome.",
                    lambda: sms.outcomes,
                )
            )
        if (planner := self.campaign_planner) is not None:
            m.watch(
                delivery_families(
                    "rpm_campaign_messages",
                    "Campaign messages planned into the SMS outbox.",
                    lambda: {"planned": planner.planned},
                )
            )
        if sms is not None and (voice := self.voice_worker) is not None:
            router = sms.router

            def channel_outcomes() -> dict[tuple[str, str], int]:
                calls = {("voice", k): n for k, n in voice.outcomes.items()}
                return {**router.outcomes, **calls}

            m.watch(channel_families(channel_outcomes))
            m.watch(credentials_families(sms.hold))
        if (push := self.fhir_push) is not None:
            c = push.counters
            m.watch(
                delivery_families(
                    "rpm_fhir_push_items",
                    "FHIR push outbox items handled, by outcome.",
                    lambda: {"delivered": c.items, "retry": c.retries, "failed": c.failed},
                )
            )
            m.watch(
                delivery_families(
                    "rpm_fhir_push_observations",
                    "Observations the EHR answered for, by outcome.",
                    lambda: {"created": c.created, "existing": c.existing, "refused": c.refused},
                )
            )
        m.watch_database(
            DatabaseGauges(
                self.pool,
                max_age_s=s.operations.metrics_cache_s,
                timeout_s=s.operations.metrics_db_timeout_s,
            )
        )

    async def stop(self) -> None:
        """Stop gracefully: no new HTTP requests or MQTT messages; the batch in flight
        commits and is acknowledged, the workers finish what they are sending; whatever
        still runs after ``operations.shutdown_timeout_s`` is cancelled (unacknowledged work is
        redelivered or retried after a restart, so nothing is lost either way)."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self.gateway is not None:
            self.gateway.stop_intake()
        if self.sms_worker is not None:
            self.sms_worker.request_stop()
        if self.voice_worker is not None:
            self.voice_worker.request_stop()
        if self.fhir_push is not None:
            self.fhir_push.request_stop()
        for t in self._tasks:
            if t.get_name() not in _GRACEFUL:
                t.cancel()
        if self._tasks:
            timeout = self.settings.operations.shutdown_timeout_s
            _, late = await asyncio.wait(self._tasks, timeout=timeout)
            for t in late:
                log.warning("shutdown: %s did not finish in time; cancelled", t.get_name())
                t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._broadcaster:
            await self._broadcaster.stop()
        if self.app is not None:
            self.app.state.device_authority.signer.close()  # its worker processes, if any
        if self._sms:
            await self._sms.close()
        if self._voice:
            await self._voice.close()
        if self.fhir_push:
            await self.fhir_push.close()
        if self.pool:
            await self.pool.close()
