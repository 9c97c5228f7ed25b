"""SQL for signing staff in: their credentials, and browser sessions (``staff_sessions``).

Care teams and on-call live in ``rpm.storage.staff``. Display names and phone numbers are
personal data: this module returns them, never logs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from rpm.domain.errors import ApiKeyExists, StaffExists
from rpm.storage.pool import Conn


@dataclass(frozen=True, slots=True)
class Credentials:
    staff_id: str
    password_hash: str
    active: bool


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A live session joined with the staff member it belongs to."""

    staff_id: str
    display_name: str
    role: str
    csrf_token: str
    expires_at: datetime
    teams: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A live bearer token joined with the staff member it belongs to."""

    staff_id: str
    role: str
    expires_at: datetime
    teams: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    name: str
    scopes: tuple[str, ...]
    integration: str | None
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


_TEAMS = "ARRAY(SELECT m.team_id FROM care_team_members m WHERE m.staff_id = s.id ORDER BY 1)"


@dataclass(frozen=True, slots=True)
class StaffMember:
    id: str
    display_name: str
    role: str


async def add_staff(
    conn: Conn,
    *,
    staff_id: str,
    display_name: str,
    role: str,
    password_hash: str,
    phone: str | None,
    replace: bool = False,
) -> None:
    """Create a staff member; with ``replace``, overwrite one (and reactivate it)."""
    if replace:
        await conn.execute(
            """INSERT INTO staff (id, display_name, role, password_hash, phone)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name,
                   role = excluded.role, password_hash = excluded.password_hash,
                   phone = excluded.phone, active = true""",
            staff_id,
            display_name,
            role,
            password_hash,
            phone,
        )
        return
    try:
        await conn.execute(
            """INSERT INTO staff (id, display_name, role, password_hash, phone)
               VALUES ($1, $2, $3, $4, $5)""",
            staff_id,
            display_name,
            role,
            password_hash,
            phone,
        )
    except asyncpg.UniqueViolationError:
        raise StaffExists(f"staff member {staff_id!r} exists") from None


async def credentials(conn: Conn, staff_id: str) -> Credentials | None:
    row = await conn.fetchrow("SELECT id, password_hash, active FROM staff WHERE id = $1", staff_id)
    return Credentials(row["id"], row["password_hash"], row["active"]) if row else None


async def set_password_hash(conn: Conn, staff_id: str, password_hash: str) -> None:
    await conn.execute("UPDATE staff SET password_hash = $2 WHERE id = $1", staff_id, password_hash)


async def active_staff(conn: Conn) -> list[StaffMember]:
    """Everyone who may sign in, by display name (for choosing an assignee)."""
    rows = await conn.fetch(
        "SELECT id, display_name, role FROM staff WHERE active ORDER BY display_name, id"
    )
    return [StaffMember(r["id"], r["display_name"], r["role"]) for r in rows]


async def create_session(
    conn: Conn, *, token_hash: bytes, staff_id: str, csrf_token: str, expires_at: datetime
) -> None:
    await conn.execute(
        """INSERT INTO staff_sessions (token_hash, staff_id, csrf_token, expires_at)
           VALUES ($1, $2, $3, $4)""",
        token_hash,
        staff_id,
        csrf_token,
        expires_at,
    )


async def session(conn: Conn, token_hash: bytes) -> SessionRecord | None:
    """The unexpired session of an active staff member; marks it seen (at most once a minute)."""
    row = await conn.fetchrow(
        f"""WITH found AS (
               SELECT s.id, s.display_name, s.role, ss.csrf_token, ss.expires_at,
                      {_TEAMS} AS teams
                 FROM staff_sessions ss JOIN staff s ON s.id = ss.staff_id
                WHERE ss.token_hash = $1 AND ss.expires_at > now() AND s.active),
           touched AS (
               UPDATE staff_sessions SET last_seen_at = now()
                WHERE token_hash = $1 AND last_seen_at < now() - interval '1 minute'
                  AND EXISTS (SELECT 1 FROM found))
           SELECT * FROM found""",  # noqa: S608 - a fixed fragment
        token_hash,
    )
    if row is None:
        return None
    return SessionRecord(
        row["id"],
        row["display_name"],
        row["role"],
        row["csrf_token"],
        row["expires_at"],
        tuple(row["teams"]),
    )


async def delete_session(conn: Conn, token_hash: bytes) -> None:
    await conn.execute("DELETE FROM staff_sessions WHERE token_hash = $1", token_hash)


async def delete_expired_sessions(conn: Conn) -> int:
    status = await conn.execute("DELETE FROM staff_sessions WHERE expires_at <= now()")
    return int(status.split()[-1])


async def create_token(
    conn: Conn, *, token_hash: bytes, staff_id: str, expires_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO staff_tokens (token_hash, staff_id, expires_at) VALUES ($1, $2, $3)",
        token_hash,
        staff_id,
        expires_at,
    )


async def token(conn: Conn, token_hash: bytes) -> TokenRecord | None:
    """The unexpired bearer token of an active staff member."""
    row = await conn.fetchrow(
        f"""SELECT s.id, s.role, t.expires_at, {_TEAMS} AS teams
              FROM staff_tokens t JOIN staff s ON s.id = t.staff_id
             WHERE t.token_hash = $1 AND t.expires_at > now() AND s.active""",  # noqa: S608
        token_hash,
    )
    if row is None:
        return None
    return TokenRecord(row["id"], row["role"], row["expires_at"], tuple(row["teams"]))


async def delete_expired_tokens(conn: Conn) -> int:
    status = await conn.execute("DELETE FROM staff_tokens WHERE expires_at <= now()")
    return int(status.split()[-1])


async def create_api_key(
    conn: Conn,
    *,
    key_id: str,
    name: str,
    scopes: tuple[str, ...],
    integration: str | None,
    key_hash: bytes,
    created_by: str,
) -> None:
    try:
        await conn.execute(
            """INSERT INTO api_keys (id, name, scopes, integration, key_hash, created_by)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            key_id,
            name,
            list(scopes),
            integration,
            key_hash,
            created_by,
        )
    except asyncpg.UniqueViolationError:
        raise ApiKeyExists(f"key {key_id!r} exists") from None


def _key(r: asyncpg.Record) -> ApiKeyRecord:
    return ApiKeyRecord(
        r["id"],
        r["name"],
        tuple(r["scopes"]),
        r["integration"],
        r["created_by"],
        r["created_at"],
        r["revoked_at"],
    )


_KEY_COLUMNS = "id, name, scopes, integration, created_by, created_at, revoked_at"


async def api_key(conn: Conn, key_hash: bytes) -> ApiKeyRecord | None:
    """The unrevoked key with this hash."""
    row = await conn.fetchrow(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",  # noqa: S608
        key_hash,
    )
    return _key(row) if row else None


async def api_keys(conn: Conn) -> list[ApiKeyRecord]:
    rows = await conn.fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")  # noqa: S608
    return [_key(r) for r in rows]


async def revoke_api_key(conn: Conn, key_id: str) -> bool:
    """Refuse the key from now on; False when there is no such key."""
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1", key_id
    )
    return status.split()[-1] != "0"
