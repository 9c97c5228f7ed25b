"""Fixtures: a real PostgreSQL and Mosquitto started once per session on loopback ports,
a fresh database per test cloned from a migrated template, a fake Twilio speaking
Twilio's protocol, and the whole server in-process."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr

from rpm.local_endpoints import ServiceEndpoints, settings_for_local
from rpm.settings import Settings
from rpm.storage.migrate import migrate
from rpm.storage.pool import connect, create_pool
from simulators.localservices import LocalServices, free_port
from simulators.transports import drop_session
from simulators.twilio_sink import TwilioSink
from tests import examples

if TYPE_CHECKING:  # the server is imported by the fixture that starts it: pure runs skip it
    from rpm.server import Server

REPO_ROOT = Path(__file__).resolve().parents[1]
TWILIO_CONTRACT = REPO_ROOT.parent / "shared" / "contracts" / "twilio_api_v2010.json"
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "test-auth-token"
TEMPLATE_DB = "rpm_template"
_db_numbers = itertools.count()

# Property tests draw the same examples on every run and machine (a failure prints its
# example and reproduces anywhere): a test that fails on some days is a defect. No example
# database: nothing learnt on one machine changes what another runs.
hypothesis_settings.register_profile("rpm", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile(
    "rpm-quick", parent=hypothesis_settings.get_profile("rpm"), max_examples=25
)
hypothesis_settings.load_profile("rpm")


_OWN_BASETEMP = pytest.StashKey[Path]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Each run's temporary files in a directory of its own (unless --basetemp is given).

    pytest's default root, /tmp/pytest-of-<user>, is made 0700 again by every pytest run that
    starts; the local services let PostgreSQL (running as ``postgres``) and Mosquitto search
    their way to their data, so a second run started beside this one would cut this run's
    PostgreSQL off its data directory.
    """
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="rpm-pytest-")
        config.stash[_OWN_BASETEMP] = Path(config.option.basetemp)
    if _pure_only(config):
        examples.share = examples.QUICK_SHARE
        hypothesis_settings.load_profile("rpm-quick")


def _pure_only(config: pytest.Config) -> bool:
    return (config.option.markexpr or "").strip() == "pure"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``pytest -m pure`` does not import the test modules that hold no pure test (importing
    them, for the server and its libraries, took longer than running the pure tests)."""
    name = collection_path.name
    if _pure_only(config) and name.startswith("test_") and name.endswith(".py"):
        return "mark.pure" not in collection_path.read_text(encoding="utf-8")
    return None


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


# The fixtures that start PostgreSQL, Mosquitto, a server or a Twilio stand-in.
INFRASTRUCTURE = frozenset(
    {
        "services",
        "plain_services",
        "template_db",
        "db_url",
        "pool",
        "twilio",
        "server_settings",
        "server",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the ``pure`` marker honest: a test marked pure starts no infrastructure."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("pure") and fixtures & INFRASTRUCTURE:
            started = sorted(fixtures & INFRASTRUCTURE)
            raise pytest.UsageError(f"{item.nodeid} is marked pure but uses {started}")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceEndpoints]:
    """PostgreSQL (TimescaleDB when installed) and Mosquitto for the whole session."""
    if shutil.which("mosquitto_pub") is None:
        pytest.fail("mosquitto-clients is not installed: run scripts/test.sh, which installs it")
    local = LocalServices(tmp_path_factory.mktemp("services"), log=lambda line: None)
    endpoints = local.start()
    try:
        yield endpoints
    finally:
        local.stop()


@pytest.fixture(scope="module")
def plain_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceEndpoints]:
    """A plain PostgreSQL 15, for the lifecycle tests (the session's runs TimescaleDB when it
    is installed); a module's tests share it."""
    local = LocalServices(tmp_path_factory.mktemp("plain"), timescaledb=False, log=lambda _: None)
    try:
        yield local.start()
    finally:
        local.stop()


@pytest.fixture(scope="session")
async def template_db(services: ServiceEndpoints) -> str:
    """A migrated database that each test's database is cloned from."""
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    url = with_database(services.database_url, TEMPLATE_DB)
    conn = await connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    # TimescaleDB runs a job scheduler in every database that has the extension; a template
    # must have no sessions to be copied, so close it to connections and end the scheduler.
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f"ALTER DATABASE {TEMPLATE_DB} WITH ALLOW_CONNECTIONS false")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            TEMPLATE_DB,
        )
    finally:
        await admin.close()
    return url


async def create_from_template(admin: asyncpg.Connection, name: str) -> None:
    """``CREATE DATABASE name`` from the migrated template, waiting out a scheduler that is
    still leaving the template."""
    for attempt in range(50):
        try:
            await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
            return
        except asyncpg.ObjectInUseError:
            if attempt == 49:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture
async def db_url(services: ServiceEndpoints, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = f"test_{os.getpid()}_{next(_db_numbers)}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await create_from_template(admin, name)
        yield with_database(services.database_url, name)
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_url, size=4)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioSink]:
    """A local server speaking Twilio's Messages API, checking requests against the contract."""
    contract = TWILIO_CONTRACT if TWILIO_CONTRACT.is_file() else None
    sink = TwilioSink(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN, contract_path=contract)
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


async def drop_gateway_session(services: ServiceEndpoints, client_id: str) -> None:
    """End a test gateway's persistent session on the session's broker. Left behind, it would
    stay subscribed to every device topic and the broker would queue each later test's
    readings for it (up to a million per session), until saving that backlog every second
    stalls the broker."""
    await drop_session(
        services.mqtt_host,
        services.mqtt_port,
        services.mqtt_gateway_username,
        services.mqtt_gateway_password,
        client_id,
    )


@pytest.fixture
async def server_settings(
    services: ServiceEndpoints, db_url: str, twilio: TwilioSink, request: pytest.FixtureRequest
) -> AsyncIterator[Settings]:
    settings = settings_for_local(
        services,
        database={"url": SecretStr(db_url)},
        api={"port": free_port()},
        mqtt={
            "client_id": f"rpm-test-{request.node.name[:40]}-{next(_db_numbers)}",
            "batch_max_wait_ms": 5,
        },
        sms={
            "account_sid": TWILIO_SID,
            "auth_token": SecretStr(TWILIO_TOKEN),
            "base_url": twilio.base_url,
            "outbox_poll_interval_s": 0.1,
        },
        # The lifecycle scheduler's wall-clock passes stay out of tests; the lifecycle tests
        # call its tick with pinned clocks (tests/test_lifecycle.py).
        lifecycle={"interval_s": 86_400.0},
    )
    yield settings
    await drop_gateway_session(services, settings.mqtt.client_id)


@pytest.fixture
async def server(server_settings: Settings) -> AsyncIterator[Server]:
    """The whole server (gateway, API, SMS worker) in this event loop."""
    from rpm.server import Server

    s = Server(server_settings)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()
