"""SQL for staff, care teams and on-call shifts: who receives an escalation, and when.

Display names and phone numbers are personal data: stored and returned, never logged.
Sign-in (credentials, sessions) lives in ``rpm.storage.staff_auth``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

import asyncpg

from rpm.domain.errors import (
    InvalidRequestError,
    NotATeamMember,
    NotFoundError,
    ShiftOverlap,
)
from rpm.storage.pool import Conn


async def create_team(
    conn: Conn, team_id: str, title: str, service_name: str | None = None
) -> None:
    """Create a care team (an existing id keeps its title and service name)."""
    await conn.execute(
        "INSERT INTO care_teams (id, title, service_name) VALUES ($1, $2, $3) "
        "ON CONFLICT (id) DO NOTHING",
        team_id,
        title,
        service_name,
    )


async def set_service_name(conn: Conn, team_id: str, service_name: str | None) -> bool:
    """The name the team's patient texts and calls are from (None: the configured default);
    False when there is no such team."""
    status = await conn.execute(
        "UPDATE care_teams SET service_name = $2 WHERE id = $1", team_id, service_name
    )
    return status != "UPDATE 0"


async def add_member(conn: Conn, team_id: str, staff_id: str) -> None:
    """Add a staff member to a team; ``NotFoundError`` when either does not exist."""
    try:
        await conn.execute(
            "INSERT INTO care_team_members (team_id, staff_id) VALUES ($1, $2) "
            "ON CONFLICT DO NOTHING",
            team_id,
            staff_id,
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFoundError("no such team or staff member") from None


async def set_patient_team(conn: Conn, patient_id: str, team_id: str | None) -> None:
    """Put a patient in a care team; ``InvalidRequestError`` for a team that does not exist."""
    try:
        await conn.execute("UPDATE patients SET care_team = $2 WHERE id = $1", patient_id, team_id)
    except asyncpg.ForeignKeyViolationError:
        raise InvalidRequestError(f"no team {team_id!r}") from None


async def set_on_call(
    conn: Conn, team_id: str, tier: int, staff_id: str, start: datetime, end: datetime
) -> None:
    """Put a team member on call at ``tier`` (1 or 2) for ``[start, end)``.

    Raises ``NotATeamMember`` for someone outside the team (or inactive), and
    ``ShiftOverlap`` when the team's tier is already covered during part of that time.
    """
    try:
        inserted = await conn.fetchval(
            """INSERT INTO on_call (team_id, tier, staff_id, during)
               SELECT $1, $2, $3, tstzrange($4, $5, '[)')
                WHERE EXISTS (SELECT 1 FROM care_team_members m JOIN staff s ON s.id = m.staff_id
                               WHERE m.team_id = $1 AND m.staff_id = $3 AND s.active)
               RETURNING 1""",
            team_id,
            tier,
            staff_id,
            start,
            end,
        )
    except asyncpg.ExclusionViolationError:
        raise ShiftOverlap(f"team {team_id} tier {tier} is already covered then") from None
    if inserted is None:
        raise NotATeamMember(f"{staff_id} is not an active member of team {team_id}")


async def on_call(conn: Conn, team_id: str, tier: int, at: datetime) -> str | None:
    """Who is on call for ``team_id`` at ``tier`` at time ``at`` (active, with a phone)."""
    found = await on_call_for(conn, [team_id], at)
    return found.get(team_id, {}).get(tier)


async def on_call_for(
    conn: Conn, team_ids: Iterable[str], at: datetime
) -> dict[str, Mapping[int, str]]:
    """Team -> tier -> staff id of everyone reachable on call at ``at``, for several teams."""
    teams = sorted(set(team_ids))
    if not teams:
        return {}
    rows = await conn.fetch(
        """SELECT o.team_id, o.tier, o.staff_id
             FROM on_call o JOIN staff s ON s.id = o.staff_id
            WHERE o.team_id = ANY($1::text[]) AND o.during @> $2::timestamptz
              AND s.active AND s.phone IS NOT NULL""",
        teams,
        at,
    )
    found: dict[str, dict[int, str]] = {}
    for r in rows:
        found.setdefault(r["team_id"], {})[r["tier"]] = r["staff_id"]
    return dict(found)


async def exists(conn: Conn, staff_id: str) -> bool:
    """An active staff member with this id."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM staff WHERE id = $1 AND active)", staff_id
        )
    )


async def staff_phone(conn: Conn, staff_id: str) -> tuple[bool, str | None]:
    """(known and active, phone) of a staff member."""
    row = await conn.fetchrow("SELECT phone, active FROM staff WHERE id = $1", staff_id)
    if row is None or not row["active"]:
        return False, None
    return True, row["phone"]


async def patient_teams(conn: Conn, patient_ids: Iterable[str]) -> dict[str, str | None]:
    """Care team of each known patient among ``patient_ids`` (unknown ones are absent)."""
    rows = await conn.fetch(
        "SELECT id, care_team FROM patients WHERE id = ANY($1::text[])", sorted(set(patient_ids))
    )
    return {r["id"]: r["care_team"] for r in rows}


async def team_patients(conn: Conn, team_ids: Iterable[str]) -> list[str]:
    """Ids of the patients cared for by any of ``team_ids``."""
    rows = await conn.fetch(
        "SELECT id FROM patients WHERE care_team = ANY($1::text[]) ORDER BY id",
        sorted(set(team_ids)),
    )
    return [r["id"] for r in rows]


async def teams(conn: Conn) -> list[dict[str, object]]:
    """Every care team with its members' ids."""
    rows = await conn.fetch(
        """SELECT t.id, t.title, t.service_name,
                  ARRAY(SELECT m.staff_id FROM care_team_members m
                         WHERE m.team_id = t.id ORDER BY 1) AS members
             FROM care_teams t ORDER BY t.id"""
    )
    return [
        {
            "id": r["id"],
            "title": r["title"],
            "service_name": r["service_name"],
            "members": list(r["members"]),
        }
        for r in rows
    ]


async def remove_member(conn: Conn, team_id: str, staff_id: str) -> bool:
    status = await conn.execute(
        "DELETE FROM care_team_members WHERE team_id = $1 AND staff_id = $2", team_id, staff_id
    )
    return status.split()[-1] != "0"


async def adopt_unassigned_patients(conn: Conn, team_id: str) -> int:
    """Put every patient without a care team in ``team_id`` (the demo's set-up)."""
    status = await conn.execute(
        "UPDATE patients SET care_team = $1 WHERE care_team IS NULL", team_id
    )
    return int(status.split()[-1])
