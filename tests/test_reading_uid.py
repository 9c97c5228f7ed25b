"""The reading uid (rpm.domain.reading_ids): made from the reading's key, read back from it,
and the same in PostgreSQL (``rpm_reading_uid``, migration 0039) as in Python, whatever UTC
offset the device wrote its time with."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest

from rpm.domain import AcceptedReading, Metric, Reading, device_hash, key_of_uid, reading_uid
from rpm.domain.reading_ids import METRIC_CODES
from rpm.storage import readings as reading_store

TIMES = [
    datetime(2026, 11, 23, 8, 0, tzinfo=UTC),
    datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=UTC),
    datetime(2026, 11, 23, 10, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC),
]
DEVICES = ["dev|odd id", "cuff-0001", "vendor:ünïcode-7", ""]


def test_the_uid_does_not_depend_on_the_written_offset() -> None:
    utc = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    assert reading_uid("d", Metric.SPO2, utc) == reading_uid("d", Metric.SPO2, paris)
    assert reading_uid("d", Metric.SPO2, utc) != reading_uid(
        "d", Metric.SPO2, utc + timedelta(microseconds=1)
    )
    assert reading_uid("d", Metric.SPO2, utc) != reading_uid("e", Metric.SPO2, utc)
    assert reading_uid("d", Metric.SPO2, utc) != reading_uid("d", Metric.WEIGHT, utc)


def test_every_metric_has_a_code_and_the_uid_reads_back() -> None:
    assert set(METRIC_CODES) == {m.value for m in Metric}
    for metric in Metric:
        for device in DEVICES:
            for t in TIMES:
                uid = reading_uid(device, metric, t)
                assert uid.version == 8
                assert uid.variant == uuid.RFC_4122
                key = key_of_uid(uid)
                assert key is not None
                assert (key.device_hash, key.metric, key.measured_at) == (
                    device_hash(device),
                    metric.value,
                    t,
                )
                assert key_of_uid(str(uid)) == key


def test_other_uuids_name_no_reading() -> None:
    assert key_of_uid(uuid.uuid5(uuid.NAMESPACE_URL, "x")) is None  # 0003's kind
    assert key_of_uid(uuid.uuid4()) is None
    assert key_of_uid("not a uuid") is None
    assert key_of_uid(uuid.UUID("ffffffff-ffff-8fff-bfff-ffffffffffff")) is None  # code 63
    with pytest.raises(ValueError, match="no uid code"):
        reading_uid("d", "cholesterol", TIMES[0])


async def test_database_and_python_agree(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT d, m, t, rpm_reading_uid(d, m, t) AS uid, rpm_device_hash(d) AS h
                 FROM unnest($1::text[]) d, unnest($2::text[]) m, unnest($3::timestamptz[]) t""",
            DEVICES,
            [m.value for m in Metric],
            TIMES,
        )
        assert len(rows) == len(DEVICES) * len(Metric) * len(TIMES)
        for r in rows:
            assert r["uid"] == reading_uid(r["d"], r["m"], r["t"]), (r["d"], r["m"], r["t"])
            assert r["h"] == device_hash(r["d"])
        assert await conn.fetchval("SELECT rpm_reading_uid('d', 'cholesterol', now())") is None


async def test_a_stored_reading_is_found_by_its_uid(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO patients (id, display_name) VALUES ('p', 'x')")
        await conn.execute("INSERT INTO devices (id, kind) VALUES ('dev|odd id', 'scale')")
        accepted = [
            AcceptedReading(Reading("dev|odd id", Metric.WEIGHT, {"weight": 80.0}, t, t), "p")
            for t in TIMES
        ]
        assert len(await reading_store.insert_new(conn, accepted)) == len(TIMES)
        for a in accepted:
            found = await reading_store.by_uid(conn, str(a.reading.uid))
            assert found is not None
            assert found.accepted.reading.measured_at == a.reading.measured_at
        other = reading_uid("dev|odd id", Metric.SPO2, TIMES[0])
        assert await reading_store.by_uid(conn, str(other)) is None
