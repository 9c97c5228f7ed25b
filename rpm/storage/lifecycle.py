"""SQL of the data lifecycle jobs (docs/data-lifecycle.md): compression, retention, partition
maintenance, rollup refresh and the packing of closed partitions, on TimescaleDB or on plain
PostgreSQL with its partitions (migrations 0032, 0033, 0042).

The jobs are plain statements run by the project's scheduler (rpm/workers/lifecycle.py),
never TimescaleDB's job scheduler: its policy jobs fail on Debian's PostgreSQL 15.20 ("cannot
drop portal while it is being set up"). Each job is idempotent: run twice, it does nothing
the second time. Times come from the caller's clock, except pg_partman's, which reads the
database's ``now()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from rpm.storage.patient_readings import of_patients
from rpm.storage.pool import Conn

LOCK_KEY = 0x52504D4C  # "RPML": one lifecycle pass at a time across processes
_ORIGIN = "'2000-01-03 00:00:00+00'"  # time_bucket's default origin, for date_bin
PREMAKE_MONTHS = 4  # partitions made ahead (pg_partman's premake in migration 0032)
_MS = timedelta(milliseconds=1)
PACKED_FILL = 100  # fillfactor of a closed partition's btree indexes, rebuilt by pack()


@dataclass(frozen=True, slots=True)
class Flavour:
    """Which lifecycle this database has."""

    timescale: bool
    partman: bool


async def flavour(conn: Conn) -> Flavour:
    row = await conn.fetchrow(
        """SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS ts,
                  EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_partman') AS pm"""
    )
    assert row is not None
    return Flavour(bool(row["ts"]), bool(row["pm"]))


async def try_lock(conn: Conn) -> bool:
    """Take the lifecycle lock for this session, or say another session holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY))


async def unlock(conn: Conn) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


# --- TimescaleDB ----------------------------------------------------------------------


async def compress_chunks(conn: Conn, older_than: datetime) -> int:
    """Compress the readings chunks whose every row is older than ``older_than``."""
    rows = await conn.fetch(
        """SELECT compress_chunk(c, if_not_compressed => true)
             FROM show_chunks('readings', older_than => $1::timestamptz) c
            WHERE NOT EXISTS (SELECT 1 FROM timescaledb_information.chunks i
                               WHERE format('%I.%I', i.chunk_schema, i.chunk_name)::regclass = c
                                 AND i.is_compressed)""",
        older_than,
    )
    return len(rows)


async def stale_chunks(conn: Conn, limit: int) -> list[str]:
    """Up to ``limit`` compressed readings chunks whose compression settings are not the
    hypertable's (compressed before migration 0038 changed them: TimescaleDB keeps settings
    per chunk), oldest first."""
    rows = await conn.fetch(
        """SELECT s.relid::text AS chunk
             FROM _timescaledb_catalog.compression_settings s,
                  _timescaledb_catalog.compression_settings h
            WHERE h.relid = 'readings'::regclass
              AND s.relid IN (SELECT c FROM show_chunks('readings') c)
              AND s.compress_relid IS NOT NULL
              AND (s.segmentby IS DISTINCT FROM h.segmentby
                   OR s.orderby IS DISTINCT FROM h.orderby
                   OR s.orderby_desc IS DISTINCT FROM h.orderby_desc
                   OR s.orderby_nullsfirst IS DISTINCT FROM h.orderby_nullsfirst)
            ORDER BY s.relid::oid
            LIMIT $1""",
        limit,
    )
    return [r["chunk"] for r in rows]


async def recompress(conn: Conn, chunk: str) -> None:
    """Rewrite one compressed chunk under the hypertable's current settings (the chunk is
    locked against writes meanwhile)."""
    await conn.execute("SELECT compress_chunk($1::regclass, recompress => true)", chunk)


async def refresh_rollups(conn: Conn, until: datetime, since: datetime | None = None) -> None:
    """Materialise the continuous aggregates from ``since`` (None: the beginning) up to the
    hour (hourly) and the day (daily) of ``until``; TimescaleDB refreshes only what changed.
    With retention on, ``since`` is its horizon: a refresh over dropped chunks would empty
    the buckets the rollups keep. A procedure that commits as it goes: run outside a
    transaction, as one simple statement (asyncpg's prepared statements run in an implicit
    transaction block, which it refuses)."""
    for view, grain in (("readings_hourly", "1 hour"), ("readings_daily", "1 day")):
        row = await conn.fetchrow(
            f"""SELECT date_bin('{grain}', $1::timestamptz, {_ORIGIN}) AS hi,
                       date_bin('{grain}', $2::timestamptz, {_ORIGIN}) + interval '{grain}'
                       AS lo""",
            until,
            since,
        )
        assert row is not None
        lo = "NULL" if row["lo"] is None else f"'{row['lo'].isoformat()}'"
        if row["lo"] is not None and row["lo"] >= row["hi"]:
            continue
        await conn.execute(
            f"CALL refresh_continuous_aggregate('{view}', {lo}, '{row['hi'].isoformat()}')"
        )


async def drop_chunks(conn: Conn, older_than: datetime) -> list[str]:
    """Drop the readings chunks whose every row is older than ``older_than`` (retention)."""
    rows = await conn.fetch(
        "SELECT drop_chunks('readings', older_than => $1::timestamptz)::text AS c", older_than
    )
    return [r["c"] for r in rows]


# --- packing closed partitions (both databases) ------------------------------------------

# A monthly partition's end, from its name (retention and packing).
_MONTH_END = """(to_date(substr(c.relname, 11), 'YYYY_MM')::timestamp AT TIME ZONE 'UTC')
                + interval '1 month'"""

# Monthly partitions (never the default one), or uncompressed chunks: (name, ends).
_PARTITIONS = f"""
        SELECT format('%I.%I', n.nspname, c.relname) AS name, {_MONTH_END} AS ends
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE i.inhparent = 'readings'::regclass
           AND c.relname ~ '^readings_p[0-9]{{4}}_[0-9]{{2}}$'"""  # noqa: S608
_CHUNKS = """
        SELECT format('%I.%I', chunk_schema, chunk_name) AS name, range_end AS ends
          FROM timescaledb_information.chunks
         WHERE hypertable_name = 'readings' AND NOT is_compressed"""


def _to_pack_sql(ranges: str) -> str:
    return f"""
    SELECT x.name FROM ({ranges}) x
     WHERE x.ends <= $1
       AND NOT EXISTS (SELECT 1 FROM reading_partitions_packed p WHERE p.name = x.name)
     ORDER BY x.ends
     LIMIT $2"""  # noqa: S608 - constant fragments


_PARTITIONS_TO_PACK = _to_pack_sql(_PARTITIONS)
_CHUNKS_TO_PACK = _to_pack_sql(_CHUNKS)


async def to_pack(conn: Conn, closed_before: datetime, limit: int, fl: Flavour) -> list[str]:
    """Up to ``limit`` readings partitions (monthly ones: never the default partition) or
    uncompressed chunks whose range ended by ``closed_before`` and whose indexes have not been
    rebuilt since, oldest first; schema-qualified, quoted names."""
    sql = _CHUNKS_TO_PACK if fl.timescale else _PARTITIONS_TO_PACK
    return [r["name"] for r in await conn.fetch(sql, closed_before, limit)]


async def pack(conn: Conn, name: str, now: datetime, wait: timedelta) -> None:
    """Rebuild the indexes of one partition or chunk (a name from ``to_pack``) packed full,
    without blocking its readers and writers, and record it as packed at ``now``.

    REINDEX CONCURRENTLY waits, between its phases, for the transactions older than it to
    end: no wait may exceed ``wait`` (``lock_timeout``), so a long transaction (a dump, an
    export) fails the rebuild, left to a later pass, instead of holding the scheduler's
    lock, and with it every other job, for as long as it lasts.

    Its btree indexes get fillfactor 100 first (the rebuild keeps it): the range is closed,
    so leaves are filled whole instead of to btree's default 90 %; the rare late reading
    splits the one leaf it lands in. A rebuild that failed part way leaves an invalid copy
    of an index (``..._ccnew``, or ``..._ccold`` after the swap) that inserts keep writing
    and a table-wide REINDEX CONCURRENTLY skips: such copies are dropped first. REINDEX and
    DROP INDEX CONCURRENTLY cannot run in a transaction block: they are sent with no
    parameters (asyncpg's simple protocol, no implicit transaction), on the scheduler's
    connection, whose session advisory lock stays held meanwhile.
    """
    indexes = await conn.fetch(
        """SELECT format('%I.%I', n.nspname, x.relname) AS name, a.amname = 'btree' AS btree,
                  NOT i.indisvalid AND x.relname ~ '_cc(new|old)[0-9]*$' AS leftover
             FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
             JOIN pg_am a ON a.oid = x.relam
             JOIN pg_namespace n ON n.oid = x.relnamespace
            WHERE i.indrelid = $1::regclass""",
        name,
    )
    await conn.execute(f"SET lock_timeout = {max(1, round(wait / _MS))}")
    try:
        for index in indexes:  # names quoted by the query above
            if index["leftover"]:
                await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index['name']}")
            elif index["btree"]:
                await conn.execute(f"ALTER INDEX {index['name']} SET (fillfactor = {PACKED_FILL})")
        await conn.execute(f"REINDEX TABLE CONCURRENTLY {name}")  # quoted by to_pack
    finally:
        await conn.execute("RESET lock_timeout")
    await conn.execute(
        """INSERT INTO reading_partitions_packed (name, packed_at) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET packed_at = excluded.packed_at""",
        name,
        now,
    )


async def forget_dropped(conn: Conn) -> int:
    """Remove the packed records of partitions and chunks that no longer exist (dropped by
    retention, or by hand); return how many."""
    status = await conn.execute(
        "DELETE FROM reading_partitions_packed WHERE to_regclass(name) IS NULL"
    )
    return int(status.split()[-1])


# --- plain PostgreSQL -------------------------------------------------------------------


async def maintain_partitions(conn: Conn, now: datetime, fl: Flavour) -> int:
    """Make the partitions of the coming months: pg_partman's ``run_maintenance`` when
    installed (its own clock), else rpm_make_reading_partitions (migration 0032)."""
    if fl.partman:
        before = await _partition_count(conn)
        await conn.execute(
            "SELECT set_config('TimeZone', 'UTC', false), "
            "partman.run_maintenance(current_schema() || '.readings', p_jobmon => false)"
        )
        return await _partition_count(conn) - before
    made = await conn.fetchval(
        """SELECT rpm_make_reading_partitions($1::timestamptz,
                                              $1::timestamptz + make_interval(months => $2))""",
        now,
        PREMAKE_MONTHS,
    )
    return int(made or 0)


async def _partition_count(conn: Conn) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings'::regclass"
        )
        or 0
    )


async def drop_partitions(conn: Conn, older_than: datetime) -> list[str]:
    """Drop the monthly partitions whose whole month is before ``older_than`` (retention);
    the default partition is never dropped."""
    rows = await conn.fetch(
        f"""SELECT c.relname
              FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'readings'::regclass
               AND c.relname ~ '^readings_p[0-9]{{4}}_[0-9]{{2}}$'
               AND {_MONTH_END} <= $1
             ORDER BY 1""",  # noqa: S608 - a constant fragment
        older_than,
    )
    names = [r["relname"] for r in rows]
    for name in names:
        await conn.execute(f'DROP TABLE "{name}"')  # a name matched above
    return names


_HOURLY_FROM_READINGS = f"""
    SELECT date_bin('1 hour', measured_at, {_ORIGIN}) AS bucket, patient_id, metric, count(*),
           count(v1), min(v1), max(v1), sum(v1),
           count(v2), min(v2), max(v2), sum(v2),
           count(v3), min(v3), max(v3), sum(v3)
      FROM (SELECT r.measured_at, r.patient_id, r.metric::text AS metric, r.v1, r.v2, r.v3
              FROM readings r
             WHERE {of_patients("$1::text[]", "r")}
               AND r.measured_at >= $2 AND r.measured_at < $3
               AND (r.patient_id, r.metric::text, date_bin('1 hour', r.measured_at, {_ORIGIN}))
                   IN (SELECT patient_id, metric, hour FROM dirty)) x
     GROUP BY 1, 2, 3"""  # noqa: S608 - constant fragments


async def refresh_plain_rollups(conn: Conn, limit: int = 10_000) -> int:
    """Recompute the rollups of the (patient, metric, hour) keys of up to ``limit`` dirty-log
    rows from their readings, in one transaction that consumes those rows; return how many
    rows. A row written by a transaction not yet committed is not seen and stays for the
    next pass."""
    async with conn.transaction():
        status = await conn.execute(
            """CREATE TEMP TABLE taken ON COMMIT DROP AS
               WITH t AS (
                   DELETE FROM reading_rollup_dirty
                    WHERE ctid = ANY (ARRAY(SELECT ctid FROM reading_rollup_dirty LIMIT $1))
                   RETURNING patient_id, metric, hour)
               SELECT * FROM t""",
            limit,
        )
        taken = int(status.split()[-1])
        if taken == 0:
            return 0
        await conn.execute(
            "CREATE TEMP TABLE dirty ON COMMIT DROP AS SELECT DISTINCT * FROM taken; ANALYZE dirty"
        )
        # Explicit bounds and patients: the planner prunes partitions to the hours at hand
        # and reads each patient's index range (rpm/storage/migrations/0032).
        span = await conn.fetchrow(
            """SELECT array_agg(DISTINCT patient_id) AS patients, min(hour) AS lo,
                      max(hour) + interval '1 hour' AS hi FROM dirty"""
        )
        assert span is not None
        await conn.execute(
            """DELETE FROM readings_hourly h USING dirty d
                WHERE h.patient_id = d.patient_id AND h.metric = d.metric AND h.bucket = d.hour"""
        )
        await conn.execute(
            f"INSERT INTO readings_hourly {_HOURLY_FROM_READINGS}",
            span["patients"],
            span["lo"],
            span["hi"],
        )
        await conn.execute(
            f"""DELETE FROM readings_daily y
                 USING (SELECT DISTINCT patient_id, metric,
                               date_bin('1 day', hour, {_ORIGIN}) AS day FROM dirty) d
                 WHERE y.patient_id = d.patient_id AND y.metric = d.metric
                   AND y.bucket = d.day;
                INSERT INTO readings_daily
                SELECT d.day, h.patient_id, h.metric, sum(h.n),
                       sum(h.c1_n), min(h.c1_min), max(h.c1_max), sum(h.c1_sum),
                       sum(h.c2_n), min(h.c2_min), max(h.c2_max), sum(h.c2_sum),
                       sum(h.c3_n), min(h.c3_min), max(h.c3_max), sum(h.c3_sum)
                  FROM (SELECT DISTINCT patient_id, metric,
                               date_bin('1 day', hour, {_ORIGIN}) AS day FROM dirty) d
                  JOIN readings_hourly h
                    ON h.patient_id = d.patient_id AND h.metric = d.metric
                   AND h.bucket >= d.day AND h.bucket < d.day + interval '1 day'
                 GROUP BY 1, 2, 3"""  # noqa: S608 - constant fragments
        )
        return taken
