"""What route functions are given: the things the app holds in ``app.state``.

``create_app`` (rpm/api/app.py) puts them there once; an app that mounts one router (a
test's) sets only what that router's routes ask for. A route declares what it needs by
type, e.g. ``pool: PoolDep``; FastAPI calls the small function below for it.

============  ========================================  ===================================
app.state     what                                      asked for by
============  ========================================  ===================================
pool          the asyncpg pool                          every router
auth          ``rpm.auth.Auth``                         access (principals), admin, dashboard
settings      ``rpm.settings.Settings``                 ingest, twilio_hooks
broadcaster   the live stream's ``Broadcaster``         alerts
snooze_caps   ``alerts.policy.SnoozeCaps``              alerts
pipeline      ``rpm.pipeline.IngestPipeline``           ingest (quarantine replay)
webhooks      ``rpm.api.ingest.Webhooks``               ingest (rate limits, shared batches)
broker        ``BrokerAdmin``                           registry (device logins)
rule_books    ``rpm.api.rules.RuleBooks``               rules (cache, change callback)
operations    ``rpm.api.health.Operations``             health
started_at    when the app was built                    fhir (CapabilityStatement)
clock         a ``() -> datetime`` (optional: the wall  twilio_hooks, inbox (tests pin it)
              clock when not set)
panel_        ``rpm.billing.needs.Thresholds``: what    panel (when unset: the billing
thresholds    the panel's flags count as enough         code table in force today)
============  ========================================  ===================================
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request

from alerts.policy import SnoozeCaps
from device_gateways.broker_admin import BrokerAdmin
from rpm.auth import Auth
from rpm.billing.codes import in_force
from rpm.billing.needs import Thresholds, thresholds_of
from rpm.pipeline import IngestPipeline
from rpm.settings import Settings
from rpm.storage import billing as billing_store

from .live import Broadcaster


def held(request: Request, name: str) -> Any:
    """``request.app.state.<name>``; a missing one is a wiring bug, named as such."""
    try:
        return getattr(request.app.state, name)
    except AttributeError:
        raise RuntimeError(f"app.state.{name} is not set (see rpm/api/deps.py)") from None


# Async, so FastAPI calls them on the event loop (a plain function would go to a thread).
async def pool(request: Request) -> asyncpg.Pool:
    return held(request, "pool")  # type: ignore[no-any-return]


async def auth(request: Request) -> Auth:
    return held(request, "auth")  # type: ignore[no-any-return]


async def settings(request: Request) -> Settings:
    return held(request, "settings")  # type: ignore[no-any-return]


async def broadcaster(request: Request) -> Broadcaster:
    return held(request, "broadcaster")  # type: ignore[no-any-return]


async def snooze_caps(request: Request) -> SnoozeCaps:
    return held(request, "snooze_caps")  # type: ignore[no-any-return]


async def pipeline(request: Request) -> IngestPipeline:
    return held(request, "pipeline")  # type: ignore[no-any-return]


async def broker(request: Request) -> BrokerAdmin:
    return held(request, "broker")  # type: ignore[no-any-return]


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def clock(request: Request) -> Callable[[], datetime]:
    """What "now" is for routes that judge by the time of day (``app.state.clock`` when a
    test pins it, the wall clock otherwise)."""
    pinned: Callable[[], datetime] | None = getattr(request.app.state, "clock", None)
    return pinned or _utcnow


async def panel_thresholds(request: Request) -> Thresholds:
    """What the panel's flags count as enough: ``app.state.panel_thresholds`` when set (a
    test's), else what the billing code table in force today asks (``thresholds_of``)."""
    fixed: Thresholds | None = getattr(request.app.state, "panel_thresholds", None)
    if fixed is not None:
        return fixed
    today = (await clock(request))().date()
    async with held(request, "pool").acquire() as conn:
        tables = await billing_store.tables_in_use(conn)
    return thresholds_of(in_force(tables, today))


async def started_at(request: Request) -> datetime:
    return held(request, "started_at")  # type: ignore[no-any-return]


PoolDep = Annotated[asyncpg.Pool, Depends(pool)]
AuthDep = Annotated[Auth, Depends(auth)]
SettingsDep = Annotated[Settings, Depends(settings)]
BroadcasterDep = Annotated[Broadcaster, Depends(broadcaster)]
SnoozeCapsDep = Annotated[SnoozeCaps, Depends(snooze_caps)]
PipelineDep = Annotated[IngestPipeline, Depends(pipeline)]
BrokerDep = Annotated[BrokerAdmin, Depends(broker)]
StartedAtDep = Annotated[datetime, Depends(started_at)]
PanelThresholdsDep = Annotated[Thresholds, Depends(panel_thresholds)]
ClockDep = Annotated[Callable[[], datetime], Depends(clock)]
