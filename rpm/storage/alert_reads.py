"""SQL that reads alerts: one alert with its snooze, listings for the queue and the FHIR
API, an alert's audit events, counts by state. The writes are in ``rpm.storage.alerts``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from rpm.domain.severity import sql_rank
from rpm.storage.pool import Conn

_ALERT_COLUMNS = f"""a.id, a.patient_id, a.rule_id, a.severity, a.state, a.title,
    a.explanation, a.evidence, a.first_reading_uid, a.last_reading_uid, a.occurrences,
    a.opened_at, a.updated_at, a.acknowledged_at, a.acknowledged_by, a.resolved_at,
    a.resolved_by, a.resolution_note, a.assigned_to, a.escalation_tier, a.next_escalation_at,
    a.condition_cleared_at, a.group_key, a.contributions, p.programs AS patient_programs,
    p.care_team,
    CASE WHEN s.until > now() AND {sql_rank("a.severity")} <= {sql_rank("s.max_severity")}
         THEN s.until END AS snoozed_until"""
_ALERT_FROM = """alerts a JOIN patients p ON p.id = a.patient_id
    LEFT JOIN alert_snoozes s ON s.patient_id = a.patient_id AND s.rule_id = a.group_key"""
_ORDERS = {
    # Triage: most severe first, then the longest waiting.
    "triage": f"{sql_rank('a.severity')} DESC, a.opened_at ASC, a.id ASC",
    "newest": "a.opened_at DESC, a.id DESC",
}


def _alert(r: asyncpg.Record) -> dict[str, Any]:
    d = dict(r)
    d["patient_programs"] = list(d["patient_programs"])
    # One episode per clinical event: every rule that contributed (``rule_id`` leads).
    d["rules"] = [c["rule_id"] for c in d["contributions"]] or [d["rule_id"]]
    return d


async def get(conn: Conn, alert_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_ALERT_COLUMNS} FROM {_ALERT_FROM} WHERE a.id = $1",  # noqa: S608
        alert_id,
    )
    return _alert(row) if row else None


async def escalation_round(conn: Conn, alert_id: int) -> int | None:
    """The alert's escalation round (a re-opened episode starts a new one); None if gone."""
    value = await conn.fetchval("SELECT escalation_round FROM alerts WHERE id = $1", alert_id)
    return int(value) if value is not None else None


async def listing(
    conn: Conn,
    *,
    states: Sequence[str] | None,
    patient_id: str | None,
    limit: int,
    program: str | None = None,
    severities: Sequence[str] | None = None,
    order: str = "triage",
    care_teams: Sequence[str] | None = None,
    patient_ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Alerts for the triage queue, filtered by state, patient (``patient_id``, or any of
    ``patient_ids``), patient program, severity and (``care_teams``, None: any) the patient's
    care team."""
    if patient_id is not None:
        patient_ids = [patient_id, *(patient_ids or ())]
    rows = await conn.fetch(
        f"""SELECT {_ALERT_COLUMNS} FROM {_ALERT_FROM}
             WHERE ($1::text[] IS NULL OR a.state = ANY($1::text[]))
               AND ($2::text[] IS NULL OR a.patient_id = ANY($2::text[]))
               AND ($4::text IS NULL OR $4 = ANY(p.programs))
               AND ($5::text[] IS NULL OR a.severity = ANY($5::text[]))
               AND ($6::text[] IS NULL OR p.care_team = ANY($6::text[]))
             ORDER BY {_ORDERS[order]}
             LIMIT $3""",  # noqa: S608 - fixed fragments, values are bound
        list(states) if states else None,
        list(patient_ids) if patient_ids is not None else None,
        limit,
        program,
        list(severities) if severities else None,
        list(care_teams) if care_teams is not None else None,
    )
    return [_alert(r) for r in rows]


async def count_of_patients(
    conn: Conn, patient_ids: Sequence[str] | None, care_teams: Sequence[str] | None
) -> int:
    """How many episodes of these patients (None: any) in these care teams (None: any)."""
    found = await conn.fetchval(
        f"""SELECT count(*) FROM {_ALERT_FROM}
             WHERE ($1::text[] IS NULL OR a.patient_id = ANY($1::text[]))
               AND ($2::text[] IS NULL OR p.care_team = ANY($2::text[]))""",  # noqa: S608
        list(patient_ids) if patient_ids is not None else None,
        list(care_teams) if care_teams is not None else None,
    )
    return int(found)


async def events(conn: Conn, alert_id: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT at, actor, action, from_state, to_state, severity, note, "
        "coalesce(media, '[]') AS media FROM alert_events "
        "WHERE alert_id = $1 ORDER BY id",
        alert_id,
    )
    return [dict(r) for r in rows]


async def count_by_state(conn: Conn, states: Sequence[str]) -> dict[str, int]:
    """Episodes per state among ``states`` (``alerts_state_time`` index), for metrics."""
    rows = await conn.fetch(
        "SELECT state, count(*) AS n FROM alerts WHERE state = ANY($1::text[]) GROUP BY state",
        list(states),
    )
    return {r["state"]: r["n"] for r in rows}
