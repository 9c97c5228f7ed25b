"""SQL for staff, care teams and on-call shifts: who receives an escalation, and when.

Display names and phone numbers are personal data: stored and returned, never logged.
Sign-in (credentials, sessions) lives in ``rpm.storage.staff_auth``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Shift:
    """One on-call shift: ``staff_id`` answers the team's ``tier`` during ``[start, end)``."""

    id: int
    team_id: str
    tier: int
    staff_id: str
    start: datetime
    end: datetime
    reachable: bool  # active and with a phone: escalation can page them
    created_by: str | None


async def set_on_call(
    conn: Conn,
    team_id: str,
    tier: int,
    staff_id: str,
    start: datetime,
    end: datetime,
    created_by: str | None = None,
) -> int:
    """Put a team member on call at ``tier`` (1 or 2) for ``[start, end)``; the shift's id.

    Raises ``InvalidRequestError`` unless ``start < end``, ``NotATeamMember`` for someone
    outside the team (or inactive), and ``ShiftOverlap`` when the team's tier is already
    covered during part of that time.
    """
    if not start < end:
        raise InvalidRequestError("a shift must end after it starts")
    try:
        shift_id = await conn.fetchval(
            """INSERT INTO on_call (team_id, tier, staff_id, during, created_by)
               SELECT $1, $2, $3, tstzrange($4, $5, '[)'), $6
                WHERE EXISTS (SELECT 1 FROM care_team_members m JOIN staff s ON s.id = m.staff_id
                               WHERE m.team_id = $1 AND m.staff_id = $3 AND s.active)
               RETURNING id""",
            team_id,
            tier,
            staff_id,
            start,
            end,
            created_by,
        )
    except asyncpg.ExclusionViolationError:
        raise ShiftOverlap(f"team {team_id} tier {tier} is already covered then") from None
    if shift_id is None:
        raise NotATeamMember(f"{staff_id} is not an active member of team {team_id}")
    return int(shift_id)


_SHIFT_COLUMNS = """o.id, o.team_id, o.tier, o.staff_id, lower(o.during) AS start,
                    upper(o.during) AS "end", (s.active AND s.phone IS NOT NULL) AS reachable,
                    o.created_by"""


def _shift(r: asyncpg.Record) -> Shift:
    return Shift(
        id=r["id"],
        team_id=r["team_id"],
        tier=r["tier"],
        staff_id=r["staff_id"],
        start=r["start"],
        end=r["end"],
        reachable=r["reachable"],
        created_by=r["created_by"],
    )


async def shifts(conn: Conn, team_id: str, start: datetime, end: datetime) -> list[Shift]:
    """The team's shifts that overlap ``[start, end)``, by start then tier."""
    rows = await conn.fetch(
        f"""SELECT {_SHIFT_COLUMNS}
              FROM on_call o JOIN staff s ON s.id = o.staff_id
             WHERE o.team_id = $1 AND o.during && tstzrange($2, $3, '[)')
             ORDER BY lower(o.during), o.tier, o.id""",  # noqa: S608 - constant columns
        team_id,
        start,
        end,
    )
    return [_shift(r) for r in rows]


async def shift(conn: Conn, team_id: str, shift_id: int) -> Shift | None:
    """One of the team's shifts, or None."""
    row = await conn.fetchrow(
        f"""SELECT {_SHIFT_COLUMNS} FROM on_call o JOIN staff s ON s.id = o.staff_id
             WHERE o.team_id = $1 AND o.id = $2""",  # noqa: S608 - constant columns
        team_id,
        shift_id,
    )
    return None if row is None else _shift(row)


async def remove_shift(conn: Conn, team_id: str, shift_id: int) -> bool:
    """Delete one of the team's shifts; False when it has no such shift."""
    status = await conn.execute(
        "DELETE FROM on_call WHERE team_id = $1 AND id = $2", team_id, shift_id
    )
    return status != "DELETE 0"


async def team_exists(conn: Conn, team_id: str) -> bool:
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM care_teams WHERE id = $1)", team_id)
    )


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
