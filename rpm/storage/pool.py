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


# What a database that is restarting, failing over or out of connections looks like to
# asyncpg; the unit of work may be retried once it is back. Class 08 (connection), class 57
# (operator intervention: 57P01 admin shutdown while a query ran, 57P03 "the database system
# is starting up / shutting down"), class 53 (e.g. too many connections), client-side errors
# of a connection that died (InterfaceError; InternalClientError when the pool resets a
# connection whose server went away mid-operation), and the socket's own OSError.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)
