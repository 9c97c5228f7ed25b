"""Versioned SQL migrations, with optional TimescaleDB companions.

``NNNN_name.sql`` runs everywhere. ``NNNN_name.timescale.sql``, when present, runs
right after it when the TimescaleDB extension can be loaded. Each version runs in
one transaction and is recorded in ``schema_migrations``; an advisory lock keeps
two processes from migrating at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from rpm.storage.pool import Conn

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x52504D  # "RPM"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    timescale_sql: str | None


def available() -> list[Migration]:
    """Migrations shipped in the package, in version order."""
    folder = resources.files("rpm.storage") / "migrations"
    found: list[Migration] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        match = _NAME.match(entry.name)
        if not match:
            continue
        companion = folder / entry.name.replace(".sql", ".timescale.sql")
        found.append(
            Migration(
                int(match.group(1)),
                match.group(2),
                entry.read_text(encoding="utf-8"),
                companion.read_text(encoding="utf-8") if companion.is_file() else None,
            )
        )
    return found


async def timescaledb_available(conn: asyncpg.Connection) -> bool:
    """True when the extension is installed and preloaded by this server."""
    installed = await conn.fetchval(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    return bool(installed) and "timescaledb" in (preload or "")


async def migrate(conn: asyncpg.Connection, up_to: int | None = None) -> list[str]:
    """Apply pending migrations (those numbered ``up_to`` or less when given, as a test of
    an upgrade from an older schema needs); return the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   timescale boolean NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        timescale = await timescaledb_available(conn)
        if timescale:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        for m in available():
            if up_to is not None and m.version > up_to:
                break
            if m.version in done:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                if timescale and m.timescale_sql:
                    await conn.execute(m.timescale_sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, timescale) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    timescale,
                )
            applied.append(f"{m.version:04d}_{m.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied


async def pending(conn: Conn) -> list[str]:
    """Shipped migrations this database has not applied (all of them before the first)."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        done: set[int] = set()
    else:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [f"{m.version:04d}_{m.name}" for m in available() if m.version not in done]
