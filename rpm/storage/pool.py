"""The asyncpg connection pool, with JSON codecs so jsonb reads as Python values."""

from __future__ import annotations

import json

import asyncpg
from asyncpg.pool import PoolConnectionProxy


async def _init(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, size: int) -> asyncpg.Pool:
    """Open a pool of ``size`` connections to ``dsn``."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=size, init=_init)
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection with the same codecs as the pool (for LISTEN and migrations)."""
    conn = await asyncpg.connect(dsn)
    await _init(conn)
    return conn


# What repositories accept: a plain connection or one borrowed from the pool.
Conn = asyncpg.Connection | PoolConnectionProxy


# What asyncpg raises while the database is away (down, restarting, shutting down, the
# network gone): the unit of work may be retried as a whole once it is back.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)
