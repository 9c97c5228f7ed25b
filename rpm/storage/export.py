"""SQL for the pseudonymised export: each table streamed through a server-side cursor.

The caller holds a (read-only, repeatable-read) transaction, which cursors need and which
gives every file of one export the same snapshot. Only the columns the export keeps are
selected, so names, phone numbers and free-text notes never leave the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import asyncpg

from rpm.storage.pool import Conn

PREFETCH = 2000  # rows per round trip; memory stays bounded by it, not by the table

# Patients in scope: all, or those in any of the programs ($1 NULL = no filter); times in
# [$2, $3), either end open when NULL.
_QUERIES = {
    "patients": """
        SELECT id, birth_date, programs FROM patients
         WHERE $1::text[] IS NULL OR programs && $1::text[]
         ORDER BY id""",
    "readings": """
        SELECT rpm_reading_uid(device_id, metric, measured_at) AS uid,
               patient_id, device_id, metric, measured_at, received_at, v1, v2, v3,
               original, interpretation,
               EXISTS (SELECT 1 FROM reading_corrections c
                        WHERE c.device_id = readings.device_id AND c.metric = readings.metric::text
                          AND c.measured_at = readings.measured_at) AS entered_in_error
          FROM readings
         WHERE patient_id IN (
               SELECT id FROM patients WHERE $1::text[] IS NULL OR programs && $1::text[])
           AND ($2::timestamptz IS NULL OR measured_at >= $2)
           AND ($3::timestamptz IS NULL OR measured_at < $3)
         ORDER BY measured_at, device_id, metric::text""",
    "alerts": """
        SELECT id, patient_id, rule_id, program, severity, state, title, evidence,
               first_reading_uid, last_reading_uid, occurrences, opened_at, updated_at,
               acknowledged_at, acknowledged_by, resolved_at, resolved_by, escalation_tier
          FROM alerts
         WHERE patient_id IN (
               SELECT id FROM patients WHERE $1::text[] IS NULL OR programs && $1::text[])
           AND ($2::timestamptz IS NULL OR opened_at >= $2)
           AND ($3::timestamptz IS NULL OR opened_at < $3)
         ORDER BY opened_at, id""",
    "alert_events": """
        SELECT e.id, e.alert_id, a.patient_id, e.at, e.actor, e.action, e.from_state,
               e.to_state, e.severity
          FROM alert_events e JOIN alerts a ON a.id = e.alert_id
         WHERE a.patient_id IN (
               SELECT id FROM patients WHERE $1::text[] IS NULL OR programs && $1::text[])
           AND ($2::timestamptz IS NULL OR a.opened_at >= $2)
           AND ($3::timestamptz IS NULL OR a.opened_at < $3)
         ORDER BY e.at, e.id""",
    "reading_days": """
        SELECT patient_id, day, readings, metrics
          FROM patient_days
         WHERE patient_id IN (
               SELECT id FROM patients WHERE $1::text[] IS NULL OR programs && $1::text[])
           AND ($2::timestamptz IS NULL OR day >= ($2::timestamptz AT TIME ZONE 'UTC')::date)
           AND ($3::timestamptz IS NULL OR day < ($3::timestamptz AT TIME ZONE 'UTC')::date)
         ORDER BY day, patient_id""",
    "interactions": """
        SELECT id, patient_id, at, kind, channel, direction, campaign
          FROM interactions
         WHERE patient_id IN (
               SELECT id FROM patients WHERE $1::text[] IS NULL OR programs && $1::text[])
           AND ($2::timestamptz IS NULL OR at >= $2)
           AND ($3::timestamptz IS NULL OR at < $3)
         ORDER BY at, id""",
}
TABLES: tuple[str, ...] = tuple(_QUERIES)


async def rows(
    conn: Conn,
    table: str,
    *,
    programs: Sequence[str] | None,
    start: datetime | None,
    end: datetime | None,
) -> AsyncIterator[asyncpg.Record]:
    """The rows of ``table`` in scope, streamed (call inside a transaction)."""
    query = _QUERIES[table]
    args: list[object] = [list(programs) if programs is not None else None]
    if table != "patients":
        args += [start, end]
    async for record in conn.cursor(query, *args, prefetch=PREFETCH):
        yield record
