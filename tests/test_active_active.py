"""Active-active gateways (docs/architecture.md, "Several gateways"): three ``rpm serve --role
gateway`` processes on one MQTT shared subscription, one of them killed with SIGKILL while
20,000 readings are in flight and started again. Nothing is lost, nothing is stored twice, and
the alert episodes are those of one pipeline stepping the same readings in publish order.

What Mosquitto does with the killed member's share (checked here, see docs/operations.md):
it keeps handing that session its turn of the group's messages while it is offline and keeps
them, with the unacknowledged ones, for the session until it returns; nothing is handed to the
other members. So the restart is part of the promise: the test restarts the gateway under
the same client id, and the stored count only reaches 20,000 after it did.

Select it with ``pytest -m active_active`` (deselect with ``-m "not active_active"``). It
took 57 s on 2 cores at load average 6 and about two minutes at load 10, most of it the three
gateways' start (numba's import).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from rpm.local_endpoints import ServiceEndpoints, settings_for_local
from rpm.storage.pool import create_pool
from simulators import active_active as aa
from tests.conftest import create_from_template, drop_gateway_session, with_database
from tests.test_reliability import Publisher, settings_env

pytestmark = pytest.mark.active_active

ROOT = Path(__file__).resolve().parents[1]
PATIENTS = 500
PER_PATIENT = 40  # 20,000 distinct readings; within the engine's buffer per patient
GATEWAYS = 3
RATE_PER_S = 4_000.0
KILL_AT = 3_000  # stored readings before gateway 0 is killed
_numbers = itertools.count()


@pytest.fixture
async def fleet_dbs(services: ServiceEndpoints, template_db: str) -> AsyncIterator[tuple[str, str]]:
    """Two fresh migrated databases: the gateways' and the reference's."""
    names = [f"aa_{os.getpid()}_{next(_numbers)}" for _ in range(2)]
    admin = await asyncpg.connect(services.database_url)
    try:
        for name in names:
            await create_from_template(admin, name)
        url = services.database_url
        yield with_database(url, names[0]), with_database(url, names[1])
    finally:
        for name in names:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def _stored(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM readings"))


async def _until(
    check: object, within: float, what: str, gateways: list[aa.GatewayProcess]
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():  # type: ignore[operator]
        for g in gateways:
            if g.proc is not None and g.proc.poll() is None:
                g.check_alive()
        if loop.time() > deadline:
            tails = "\n".join(g.log_tail(10) for g in gateways)
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}\n{tails}")
        await asyncio.sleep(0.1)


async def test_three_gateways_one_killed_lose_nothing_and_alert_as_one(
    services: ServiceEndpoints,
    template_db: str,
    fleet_dbs: tuple[str, str],
    tmp_path: Path,
) -> None:
    db, reference_db = fleet_dbs
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    stream = aa.make_stream(end, PATIENTS, PER_PATIENT)
    assert stream.distinct == 20_000
    for url in (db, reference_db):
        conn = await asyncpg.connect(url)
        try:
            await aa.enroll(conn, PATIENTS, end - timedelta(days=2))
        finally:
            await conn.close()

    run = f"{os.getpid()}-{next(_numbers)}"
    group = f"aa{run}".replace("-", "")
    gateways = []
    for k in range(GATEWAYS):
        settings = settings_for_local(
            services,
            database={"url": SecretStr(db)},
            mqtt={"client_id": f"rpm-aa-{run}-{k}", "share_group": group},
        )
        gateways.append(aa.GatewayProcess(settings_env(settings), tmp_path, f"gw{k}", ROOT))
    publisher = Publisher(services, f"aa-fleet-{run}", RATE_PER_S)
    conn = await asyncpg.connect(db)
    try:
        for g in gateways:
            g.spawn()
        for g in gateways:
            await g.subscribed()
        publisher.start(stream.messages)

        async def killable() -> bool:
            return await _stored(conn) >= KILL_AT

        await _until(killable, 60, f"{KILL_AT} readings stored", gateways)
        victim = gateways[0]
        victim.kill9()
        killed_at = await _stored(conn)

        async def published() -> bool:
            return publisher.finished

        await _until(published, 60, "the publisher to finish", gateways[1:])
        await publisher.wait_all_acked(within=60)

        async def others_drained() -> bool:
            before = await _stored(conn)
            await asyncio.sleep(1.0)
            return await _stored(conn) == before

        await _until(others_drained, 60, "the live gateways to drain", gateways[1:])
        held_for_victim = stream.distinct - await _stored(conn)
        victim.spawn()  # same client id: the broker hands back what it kept for the session
        await victim.subscribed()

        async def all_stored() -> bool:
            return await _stored(conn) >= stream.distinct

        await _until(all_stored, 90, "every reading stored", gateways)
        for g in gateways:  # a clean stop: acknowledgements out, nothing left in flight
            g.stop()
        rows, distinct = await aa.reading_counts(conn)
        alerts = await aa.alert_keys(conn)
    finally:
        await conn.close()
        publisher.close()
        for g in gateways:
            g.stop()
        for g in gateways:
            await drop_gateway_session(services, g.env["RPM_MQTT_CLIENT_ID"])

    assert killed_at >= KILL_AT
    # Mosquitto kept the dead member's share for it: nothing reached the others meanwhile.
    assert held_for_victim > 0, "the killed gateway's share was handed to the others"
    assert (rows, distinct) == (20_000, 20_000), "lost or duplicated readings"
    pool = await create_pool(reference_db, size=2)
    try:
        expected = await aa.reference_alerts(pool, stream.messages)
    finally:
        await pool.close()
    assert len(expected) > PATIENTS // 2, "the fleet must raise alerts to compare"
    missing, extra = sorted(set(expected) - set(alerts)), sorted(set(alerts) - set(expected))
    assert alerts == expected, f"missing {missing}; not in the reference {extra}"
