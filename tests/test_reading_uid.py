"""The reading uid: PostgreSQL derives it on insert exactly as rpm.domain.reading_uid does,
whatever UTC offset the device wrote its time with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import asyncpg

from rpm.domain import AcceptedReading, Metric, Reading, reading_uid
from rpm.storage import readings as reading_store

TIMES = [
    datetime(2026, 11, 23, 8, 0, tzinfo=UTC),
    datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=UTC),
    datetime(2026, 11, 23, 10, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
]


def test_the_uid_does_not_depend_on_the_written_offset() -> None:
    utc = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    assert reading_uid("d", Metric.SPO2, utc) == reading_uid("d", Metric.SPO2, paris)
    assert reading_uid("d", Metric.SPO2, utc) != reading_uid(
        "d", Metric.SPO2, utc + timedelta(microseconds=1)
    )
    assert reading_uid("d", Metric.SPO2, utc) != reading_uid("e", Metric.SPO2, utc)


async def test_database_and_python_agree(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO patients (id, display_name) VALUES ('p', 'x')")
        accepted = [
            AcceptedReading(Reading("dev|odd id", Metric.WEIGHT, {"weight": 80.0}, t, t), "p")
            for t in TIMES
        ]
        new = await reading_store.insert_new(conn, accepted)
        assert len(new) == len(TIMES)
        stored = {
            (r["measured_at"]): r["uid"]
            for r in await conn.fetch("SELECT measured_at, uid FROM readings")
        }
    for a in accepted:
        assert stored[a.reading.measured_at] == a.reading.uid
