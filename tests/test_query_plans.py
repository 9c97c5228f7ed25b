"""The hot reads of readings never scan a whole history (docs/performance.md, issue 20):
EXPLAIN of the statements the storage modules really send, on a database with enough rows
that a sequential scan would be the planner's choice without the right index.

Each storage function runs against ``Explaining``, a connection that answers every statement
with its plan (EXPLAIN (FORMAT JSON), the bound parameters included, so the plan is the
custom plan the server gets) instead of its rows: the SQL is the module's own, never a copy.

A read bounded by patient (the patient page and its chart, the panel's newest values, the
FHIR search, the rule state's history, the days a patient measured, a confirmation's window,
the backtest of named patients) must reach readings by an index, on every chunk or partition:
readings has no index on patient_id, so through the patient's devices and the primary key
(migration 0041); a read of every patient bounded by time (the export, the backtest of a period) by
an index, or by leaving out the chunks or partitions outside the period. Run on the test
database (a hypertable when TimescaleDB is installed) and on plain PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from rpm.backtest import store as backtest_store
from rpm.domain import Metric, reading_uid
from rpm.fhir.search import ObservationQuery, TimeWindow, kinds_for_codes, parse_tokens
from rpm.storage import alert_reads, confirmations, engagement, export, panel, rule_state
from rpm.storage import fhir as fhir_store
from rpm.storage import readings as reading_store
from rpm.storage.migrate import migrate
from rpm.storage.pool import connect
from simulators.localservices import LocalServices

PATIENTS = 200
DAYS = 500
END = datetime(2026, 6, 1, tzinfo=UTC)
START = END - timedelta(days=DAYS)

# Two readings a day per patient (a blood pressure and a weight), in measured-time order as
# ingest stores them; alerts: a history of resolved episodes, and 30 open ones per patient.
_BUILD = [
    """INSERT INTO patients (id, display_name, programs)
       SELECT 'q' || lpad(i::text, 4, '0'), 'Patient', ARRAY['hypertension']
         FROM generate_series(1, $1::int) i WHERE $2::int > 0 AND $3::timestamptz IS NOT NULL""",
    # Each patient's cuff and scale, bound from the start (a patient's readings are found
    # through the patient's devices: migration 0041).
    """INSERT INTO devices (id, kind) SELECT p.id || s.suffix, s.kind
         FROM patients p CROSS JOIN (VALUES ('-bp', 'bp_cuff'), ('-sc', 'scale')) s(suffix, kind)
        WHERE $1::int > 0 AND $2::int > 0 AND $3::timestamptz IS NOT NULL""",
    """INSERT INTO device_bindings (device_id, patient_id, during)
       SELECT id, split_part(id, '-', 1), tstzrange($3::timestamptz, NULL) FROM devices
        WHERE $1::int > 0 AND $2::int > 0""",
    """INSERT INTO readings (measured_at, device_id, metric, patient_id, v1, v2, received_at)
       SELECT t, p || m.suffix, m.metric::rpm_metric, p, m.v1, m.v2, t
         FROM generate_series(0, $2::int - 1) d
        CROSS JOIN generate_series(1, $1::int) i
        CROSS JOIN LATERAL (SELECT 'q' || lpad(i::text, 4, '0') AS p,
                                   $3::timestamptz + d * interval '1 day'
                                   + i * interval '1 minute' AS t) x
        CROSS JOIN (VALUES ('-bp', 'blood_pressure', 130, 80),  -- systolic, diastolic
                           ('-sc', 'weight', 80.5, NULL))
                   AS m(suffix, metric, v1, v2)
        ORDER BY t""",
    """INSERT INTO patient_metric_last (patient_id, metric, measured_at)
       SELECT patient_id, metric, max(measured_at) FROM readings
        WHERE $1::int > 0 AND $2::int > 0 AND $3::timestamptz IS NOT NULL
        GROUP BY patient_id, metric""",
    """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation, evidence,
                           opened_at, resolved_at)
       SELECT 'q' || lpad(i::text, 4, '0'), 'htn.stage2_persistent', 'HIGH', 'resolved', 't',
              'e', '{}', $3::timestamptz + k * interval '1 day',
              $3::timestamptz + k * interval '1 day' + interval '1 hour'
         FROM generate_series(1, $1::int) i CROSS JOIN generate_series(1, 60) k
        WHERE $2::int > 0""",
    """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation, evidence,
                           opened_at, group_key)
       SELECT 'q' || lpad(i::text, 4, '0'), 'r' || k, (ARRAY['LOW', 'HIGH'])[1 + k % 2], 'open',
              't', 'e', '{}', $3::timestamptz + k * interval '1 hour', 'g' || k
         FROM generate_series(1, $1::int) i CROSS JOIN generate_series(1, 30) k
        WHERE $2::int > 0""",
]


class Explaining:
    """A connection that plans each statement instead of running it (the plans in
    ``plans``; every read answers no rows)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.plans: list[tuple[str, dict[str, Any]]] = []

    async def _explain(self, sql: str, args: tuple[Any, ...]) -> None:
        found = await self._conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
        plan = json.loads(found) if isinstance(found, str) else found
        self.plans.append((sql, plan[0]["Plan"]))

    async def fetch(self, sql: str, *args: Any, **_: Any) -> list[Any]:
        await self._explain(sql, args)
        return []

    async def fetchrow(self, sql: str, *args: Any, **_: Any) -> None:
        await self._explain(sql, args)

    async def fetchval(self, sql: str, *args: Any, **_: Any) -> int:
        await self._explain(sql, args)
        return 0

    async def execute(self, sql: str, *args: Any, **_: Any) -> str:
        await self._explain(sql, args)
        return ""

    def cursor(self, sql: str, *args: Any, **_: Any) -> AsyncIterator[Any]:
        async def nothing() -> AsyncIterator[Any]:
            await self._explain(sql, args)
            for row in ():
                yield row

        return nothing()

    @asynccontextmanager
    async def transaction(self, **_: Any) -> AsyncIterator[None]:
        yield


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


async def _readings_relations(conn: asyncpg.Connection) -> set[str]:
    """``readings`` and its chunks (TimescaleDB) or partitions."""
    names = {"readings"}
    names |= {
        r[0]
        for r in await conn.fetch(
            "SELECT relid::regclass::text FROM pg_partition_tree('readings') WHERE isleaf"
        )
    }
    if await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"):
        names |= {
            r[0]
            for r in await conn.fetch(
                """SELECT chunk_name FROM timescaledb_information.chunks
                    WHERE hypertable_name = 'readings'"""
            )
        }
    return names


async def _empty(conn: asyncpg.Connection, relations: set[str]) -> set[str]:
    """The relations among ``relations`` that hold no row."""
    empty = set()
    for name in relations:
        table = await conn.fetchval(
            "SELECT coalesce(to_regclass($1), to_regclass('_timescaledb_internal.' || $1))::text",
            name,
        )
        if not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
            empty.add(name)
    return empty


async def _build(conn: asyncpg.Connection) -> None:
    for sql in _BUILD:
        await conn.execute(sql, PATIENTS, DAYS, START)
    await conn.execute("VACUUM ANALYZE")


def _scans(plans: list[tuple[str, dict[str, Any]]], relations: set[str]) -> list[dict[str, Any]]:
    return [n for _, plan in plans for n in _nodes(plan) if n.get("Relation Name") in relations]


def _outline(plan: dict[str, Any], depth: int = 0) -> Iterator[str]:
    """The plan as EXPLAIN's text shows it, one node a line: type, relation, index, rows."""
    what = " ".join(str(plan[k]) for k in ("Node Type", "Relation Name", "Index Name") if k in plan)
    yield f"{'  ' * depth}{what} (rows {plan.get('Plan Rows')})"
    for child in plan.get("Plans", ()):
        yield from _outline(child, depth + 1)


def _described(plans: list[tuple[str, dict[str, Any]]]) -> str:
    return "\n\n".join(f"{sql}\n" + "\n".join(_outline(plan)) for sql, plan in plans)


async def _patient_reads(x: Explaining) -> None:
    """Every read bounded by patient (and time) that the server makes of readings."""
    month = TimeWindow(since=END - timedelta(days=60), before=END - timedelta(days=30))
    await reading_store.for_patient(x, "q0042", limit=2000)  # type: ignore[arg-type]
    await reading_store.for_patient(x, "q0042", metrics=["weight"], limit=300)  # type: ignore[arg-type]
    await reading_store.newest_by_metric(x, "q0042", 10)  # type: ignore[arg-type]
    await reading_store.chart_summaries(x, "q0042", 300)  # type: ignore[arg-type]
    await panel.latest_values(x, ["q0042", "q0043"])  # type: ignore[arg-type]
    # By uid (FHIR read, staff correction): the device by hash, then the primary key.
    uid = str(reading_uid("q0042-bp", "blood_pressure", END - timedelta(days=40)))
    await reading_store.by_uid(x, uid)  # type: ignore[arg-type]
    await fhir_store.recorded_by_uid(x, uid)  # type: ignore[arg-type]
    blood_pressure = kinds_for_codes(parse_tokens("http://loinc.org|85354-9"))
    query = ObservationQuery(("q0042",), blood_pressure, month)  # one code, one month
    await fhir_store.observation_page(x, query, 50)  # type: ignore[arg-type]
    await fhir_store.observation_count(x, query)  # type: ignore[arg-type]
    await rule_state.history(  # type: ignore[arg-type]
        x,
        [f"q{i:04d}" for i in range(40, 45)],  # a batch's unseen patients: a few
        END - timedelta(days=30),
        {Metric.BLOOD_PRESSURE: 48, Metric.WEIGHT: 32},
    )
    await rule_state.recompute_last(x, [("q0042", "weight")])  # type: ignore[arg-type]
    day = END - timedelta(days=40)
    await engagement.recount_days(x, ["q0042", "q0043"], [day, day])  # type: ignore[arg-type]
    await confirmations.readings_between(  # type: ignore[arg-type]
        x, [("q0042", "blood_pressure", day - timedelta(hours=6), day)]
    )
    async for _ in backtest_store.stream_database(  # type: ignore[arg-type]
        x, since=None, until=None, patients=("q0042", "q0043")
    ):
        pass


async def _period_reads(x: Explaining) -> None:
    """Every patient's readings of one month: the export and the backtest."""
    since, until = END - timedelta(days=60), END - timedelta(days=30)
    async for _ in export.rows(x, "readings", programs=None, start=since, end=until):  # type: ignore[arg-type]
        pass
    async for _ in backtest_store.stream_database(x, since=since, until=until):  # type: ignore[arg-type]
        pass


async def _check(conn: asyncpg.Connection) -> None:
    await _build(conn)
    relations = await _readings_relations(conn)
    x = Explaining(conn)
    await _patient_reads(x)
    scans = _scans(x.plans, relations)
    assert scans, _described(x.plans)
    # An empty partition (a month ahead of the data) is scanned whole at no cost: the planner
    # picks a sequential scan of nothing.
    empty = await _empty(conn, relations)
    seq = [n for n in scans if n["Node Type"] == "Seq Scan" and n["Relation Name"] not in empty]
    assert not seq, "sequential scan of readings:\n" + _described(x.plans)

    x = Explaining(conn)
    await _period_reads(x)
    chunked = len(relations) > 1
    for sql, plan in x.plans:
        scanned = _scans([(sql, plan)], relations)
        assert scanned, _described([(sql, plan)])
        if chunked:  # chunks or partitions outside the month are left out
            touched = {n["Relation Name"] for n in scanned}
            # A month of 500 days: a few weekly chunks, or a month of daily partitions.
            bound = max(8, (len(relations) - 1) // 4)
            assert len(touched) <= bound, f"{len(touched)} of {len(relations) - 1}: " + (
                _described([(sql, plan)])
            )
        else:
            assert all(n["Node Type"] != "Seq Scan" for n in scanned), _described([(sql, plan)])


async def _alert_queue(conn: asyncpg.Connection) -> None:
    x = Explaining(conn)
    await alert_reads.listing(x, states=["open", "acknowledged"], patient_id=None, limit=200)  # type: ignore[arg-type]
    await alert_reads.listing(
        x, states=["open", "acknowledged", "resolved"], patient_id="q0042", limit=50
    )  # type: ignore[arg-type]
    seq = [n for n in _scans(x.plans, {"alerts"}) if n["Node Type"] == "Seq Scan"]
    assert not seq, _described(x.plans)
    # The queue walks the triage index and stops at its page: no sort of every open episode.
    queue = x.plans[0][1]
    assert not [n for n in _nodes(queue) if n["Node Type"] == "Sort"], _described(x.plans[:1])


async def test_hot_reads_use_index_ranges(db_url: str) -> None:
    """The test database (a hypertable when TimescaleDB is installed)."""
    conn = await connect(db_url)
    try:
        await _check(conn)
        await _alert_queue(conn)
    finally:
        await conn.close()


async def test_hot_reads_use_index_ranges_on_plain_postgresql(tmp_path: Path) -> None:
    """Plain PostgreSQL: a table without chunks; the BRIN index of migration 0034."""
    local = LocalServices(tmp_path / "plain", timescaledb=False, log=lambda line: None)
    endpoints = local.start()
    try:
        conn = await connect(endpoints.database_url)
        try:
            await migrate(conn)
            await _check(conn)
        finally:
            await conn.close()
    finally:
        local.stop()


@pytest.mark.pure
def test_nodes_walks_the_whole_plan() -> None:
    plan = {"Node Type": "A", "Plans": [{"Node Type": "B", "Plans": [{"Node Type": "C"}]}]}
    assert [n["Node Type"] for n in _nodes(plan)] == ["A", "B", "C"]
