"""schemathesis against our OpenAPI schema: every operation, called in-process through the
ASGI app over a real, migrated PostgreSQL (and the real broker for device logins), with
schemathesis's default checks (no 5xx, documented status codes, content types, headers
and response bodies that match the schema). Bounded and derandomised: the same examples
every run.

Credentials come from ONE place, the ``api_credentials`` fixture: an admin's bearer token.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import unquote

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import Case, GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.python.asgi import shutdown_lifespans

from device_gateways.broker_admin import BrokerAdmin
from rpm.api.app import create_app
from rpm.api.live import Broadcaster
from rpm.domain.text_input import has_control_character
from rpm.local_endpoints import ServiceEndpoints, settings_for_local
from rpm.pipeline import IngestPipeline
from rpm.settings import Settings
from rpm.storage import rule_programs
from rpm.storage.alerts import ALERTS_CHANNEL
from rpm.storage.pool import create_pool
from rpm.validation import ClockPolicy
from rules.engine import Engine
from rules.programs import RuleBook
from tests.conftest import TEMPLATE_DB, with_database
from tests.helpers import staff_headers

MAX_EXAMPLES = 8
# Never end, so a request through the in-process client would wait forever (SSE streams).
ENDLESS = r"/stream$"

Asgi = Callable[..., Any]

_NUL = "text holding a NUL byte, which PostgreSQL text cannot store, is answered 422"
_ENTRY = (
    "an entry starts in the last 366 days and ends by now, and lasts at most "
    "RPM_TIME_ENTRY_MAX_MINUTES; " + _NUL
)
# Operations where a request the schema allows may still be refused with 400/422 for a
# reason OpenAPI cannot state; schemathesis's positive_data_acceptance check is skipped
# there (every other check still runs). Each reason was read off a failure of this test.
SCHEMA_CANNOT_SAY = {
    "POST /api/alerts/{alert_id}/resolve": _NUL,
    "POST /api/alerts/{alert_id}/assign": _NUL + "; the assignee must be a staff member",
    "POST /api/alerts/{alert_id}/snooze": _NUL + "; the cap depends on the alert's severity",
    "DELETE /api/alerts/{alert_id}/snooze": _NUL,
    "POST /api/alerts/{alert_id}/acknowledge": _NUL,
    "POST /api/patients": "a birth date must be past, a time zone IANA; " + _NUL,
    "POST /api/devices": "the integration named must exist; " + _NUL,
    "POST /api/integrations": "formats must be known decoder names (listed in the answer)",
    "PUT /api/rules/programs/{program}": "the document is checked by the rule compiler",
    "PUT /api/segments/{name}": "the definition is checked by rpm.engagement.segments",
    "PUT /api/campaigns/{name}": "the definition is checked by rpm.engagement.campaigns",
    "POST /api/rules/programs/{program}/activate": _NUL,
    "POST /api/keys": "a key with the ingest scope must name an existing integration",
    "GET /fhir/Observation": "a FHIR search needs patient or subject",
    "GET /fhir/Communication": "a FHIR search needs patient or subject",
    "GET /fhir/QuestionnaireResponse": "a FHIR search needs patient or subject",
    "POST /fhir/Observation/_search": "a FHIR search needs patient or subject",
    "POST /fhir/Communication/_search": "a FHIR search needs patient or subject",
    "POST /fhir/QuestionnaireResponse/_search": "a FHIR search needs patient or subject",
    "POST /api/inbox/{item_id}/handled": _NUL,
    "POST /api/teams": _NUL,
    "PUT /api/teams/{team_id}/service-name": _NUL,
    "POST /api/quarantine/replay": _NUL,
    "GET /api/patients/{patient_id}/time-entries": "from and to come together, without month",
    "POST /api/patients/{patient_id}/time-entries": _ENTRY,
    "PATCH /api/time-entries/{entry_id}": _ENTRY,
    "POST /api/timer": _NUL,
    "POST /api/timer/stop": _NUL,
    "GET /api/billing/report": "a month needs a billing code table in force on its last day",
    "GET /api/billing/report.csv": "a month needs a billing code table in force on its last day",
    "POST /api/billing/code-tables": "the table is checked by rpm.billing.codes",
    "GET /api/teams/{team_id}/on-call": "to must be after from, at most 92 days later",
    "POST /api/teams/{team_id}/on-call": (
        "a shift ends after it starts and names an active member of the team"
    ),
}


class LiveApp:
    """The API app, built by ``create_app`` inside the event loop that serves it (the ASGI
    client's own thread), from the lifespan startup event, and closed on shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Asgi | None = None
        self._close: list[Callable[[], Any]] = []

    async def _start(self) -> None:
        s = self.settings
        dsn = s.database.url.get_secret_value()
        pool = await create_pool(dsn, size=4)
        self._close.append(pool.close)
        pipeline = IngestPipeline(
            pool, ClockPolicy(), engine=Engine(RuleBook.builtin(), {}), rules_refresh_s=0
        )
        async with pool.acquire() as conn:
            await rule_programs.seed_builtin(conn)
            await pipeline.load_rules(conn)
        broadcaster = Broadcaster(dsn, (ALERTS_CHANNEL,))
        await broadcaster.start()
        self._close.insert(0, broadcaster.stop)
        self._app = create_app(pool, broadcaster, pipeline, BrokerAdmin(s.mqtt.admin()), s)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self._start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    for close in self._close:
                        await close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert self._app is not None, "the ASGI client runs the lifespan first"
        await self._app(scope, receive, send)


@pytest.fixture(scope="module")
async def fuzz_db(services: ServiceEndpoints, template_db: str) -> AsyncIterator[str]:
    """One database for the whole run (the app keeps its pool open across operations)."""
    name = f"fuzz_{os.getpid()}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await admin.close()
    yield with_database(services.database_url, name)
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def api_schema(services: ServiceEndpoints, fuzz_db: str) -> Iterator[Any]:
    app = LiveApp(settings_for_local(services, database={"url": SecretStr(fuzz_db)}))
    yield schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path_regex=ENDLESS)
    shutdown_lifespans()  # closes the pool and the LISTEN connection before the drop


@pytest.fixture
async def api_credentials(fuzz_db: str) -> dict[str, str]:
    """Headers every call sends: an admin's bearer token, so every route is reachable."""
    pool = await asyncpg.create_pool(fuzz_db, min_size=1, max_size=1)
    try:
        return await staff_headers(pool)
    finally:
        await pool.close()


def _control_characters(case: Case) -> bool:
    """Whether a path or query value holds text the API refuses before any route (400:
    control characters, rpm/api/request_text.py, tests/test_total_parsers.py), which a
    schema's ``string`` allows: for such a case only the acceptance check is skipped."""
    path = [unquote(v) for v in (case.path_parameters or {}).values() if isinstance(v, str)]
    query = [v for v in (case.query or {}).values()]
    flat = [v for value in query for v in (value if isinstance(value, list) else [value])]
    return any(isinstance(v, str) and has_control_character(v) for v in [*path, *flat])


# schemathesis.pytest.from_fixture is what its docs suggest for a schema built from fixtures,
# but 4.32.5 sets pytest's private Function._nodeid, which pytest 9 no longer has; so this
# test walks the operations itself, one Hypothesis run per operation and generation mode.
def check_operation(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> str | None:
    """One bounded, derandomised Hypothesis run; the failure report, or None."""
    name = f"{operation.method.upper()} {operation.path}"
    excluded = [positive_data_acceptance] if name in SCHEMA_CANNOT_SAY else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
    )
    def call(case: Case) -> None:
        refused_text = mode is GenerationMode.POSITIVE and _control_characters(case)
        skip = [positive_data_acceptance] if refused_text else excluded
        case.call_and_validate(headers=headers, excluded_checks=skip)

    try:
        call()
    except Unsatisfiable:
        # Nothing invalid can be said to it (no parameters, no body): nothing to test.
        assert mode is GenerationMode.NEGATIVE, name
    except (Exception, BaseExceptionGroup) as exc:
        return f"{name} ({mode.value}): {exc}"
    return None


def test_every_operation_keeps_to_its_schema(
    api_schema: Any, api_credentials: dict[str, str]
) -> None:
    # Every operation runs, whatever failed before it, and every failure is reported.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 30  # the whole API was walked, not an empty schema
    reports = [
        check_operation(operation, mode, api_credentials)
        for operation in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    failures = [r for r in reports if r is not None]
    assert not failures, "\n\n".join(failures)
