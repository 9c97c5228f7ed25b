"""SQL of reading corrections (``reading_corrections``, migration 0029): readings marked
entered-in-error, by key, append-only. A reading is never deleted or updated; what reads
readings joins against this table (``CORRECTED`` below, ``NOT_CORRECTED``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import asyncpg

from rpm.storage.pool import Conn
from rpm.storage.reading_keys import by_uid_filter, key_args

# SQL fragments for readers of ``readings`` (the table under its own name, no alias).
CORRECTED_AT = """(SELECT c.corrected_at FROM reading_corrections c
                    WHERE c.device_id = readings.device_id AND c.metric = readings.metric::text
                      AND c.measured_at = readings.measured_at)"""
NOT_CORRECTED = f"{CORRECTED_AT} IS NULL"


@dataclass(frozen=True, slots=True)
class Correction:
    """A request to mark the reading with this key entered-in-error."""

    device_id: str
    metric: str
    measured_at: datetime
    patient_id: str
    sent_status: str  # entered-in-error | cancelled, as the source said it
    source: str  # vendor | staff
    actor: str  # integration:<id> | staff:<id>
    reason: str


@dataclass(frozen=True, slots=True)
class Marked:
    """A stored reading that a correction marked entered-in-error just now."""

    uid: UUID
    device_id: str
    metric: str
    measured_at: datetime
    patient_id: str
    actor: str
    reason: str


@dataclass(slots=True)
class Recorded:
    """What ``record`` did, per request in order: ``marked`` (the reading is stored and was
    marked now), ``already`` (stored and marked before: a retry) or ``pending`` (not stored
    yet: kept, it marks the reading when it arrives)."""

    outcomes: list[str] = field(default_factory=list)
    marked: list[Marked] = field(default_factory=list)


async def record(conn: Conn, corrections: Sequence[Correction], now: datetime) -> Recorded:
    """Keep corrections (the first one of a key wins; a repeat changes nothing)."""
    out = Recorded()
    if not corrections:
        return out
    rows = await conn.fetch(
        """WITH k AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[],
                                    $5::text[], $6::text[], $7::text[], $8::text[])
                        WITH ORDINALITY AS k(d, m, t, p, st, src, act, why, n)),
           ins AS (
               INSERT INTO reading_corrections (device_id, metric, measured_at, uid, patient_id,
                                                sent_status, source, actor, reason, corrected_at)
               SELECT d, m, t, rpm_reading_uid(d, m, t), p, st, src, act, why, $9 FROM k
                ORDER BY d, m, t
               ON CONFLICT DO NOTHING
               RETURNING device_id, metric, measured_at)
           SELECT k.n, rpm_reading_uid(r.device_id, r.metric, r.measured_at) AS uid,
                  r.patient_id, (ins.device_id IS NOT NULL) AS new
             FROM k
             LEFT JOIN readings r
                    ON r.device_id = k.d AND r.metric = k.m::rpm_metric AND r.measured_at = k.t
             LEFT JOIN ins
                    ON ins.device_id = k.d AND ins.metric = k.m AND ins.measured_at = k.t
            ORDER BY k.n""",
        [c.device_id for c in corrections],
        [c.metric for c in corrections],
        [c.measured_at for c in corrections],
        [c.patient_id for c in corrections],
        [c.sent_status for c in corrections],
        [c.source for c in corrections],
        [c.actor for c in corrections],
        [c.reason for c in corrections],
        now,
    )
    seen: set[tuple[str, str, datetime]] = set()
    for c, r in zip(corrections, rows, strict=True):
        key = (c.device_id, c.metric, c.measured_at)
        if r["uid"] is None:
            out.outcomes.append("pending")
        elif r["new"] and key not in seen:
            out.outcomes.append("marked")
            out.marked.append(
                Marked(
                    r["uid"],
                    c.device_id,
                    c.metric,
                    c.measured_at,
                    r["patient_id"],
                    c.actor,
                    c.reason,
                )
            )
        else:
            out.outcomes.append("already")
        seen.add(key)
    return out


async def of_uids(conn: Conn, uids: Sequence[str | UUID]) -> set[str]:
    """Those of ``uids`` whose reading is marked entered-in-error."""
    if not uids:
        return set()
    rows = await conn.fetch(
        "SELECT uid FROM reading_corrections WHERE uid = ANY($1::uuid[])",
        [str(u) for u in uids],
    )
    return {str(r["uid"]) for r in rows}


async def for_reading(conn: Conn, uid: str) -> asyncpg.Record | None:
    """A reading by uid, with its correction when it has one (the staff path)."""
    key = key_args(uid)
    if key is None:
        return None
    return await conn.fetchrow(
        f"""SELECT r.device_id, r.metric, r.measured_at, r.patient_id,
                   rpm_reading_uid(r.device_id, r.metric, r.measured_at) AS uid,
                   c.corrected_at, c.actor, c.reason, c.source
              FROM readings r
              LEFT JOIN reading_corrections c
                     ON c.device_id = r.device_id AND c.metric = r.metric::text
                    AND c.measured_at = r.measured_at
             WHERE {by_uid_filter("r", 1)}""",  # noqa: S608
        *key,
    )


async def listing(conn: Conn, *, pending: bool | None, limit: int) -> list[dict[str, object]]:
    """Corrections, newest first; ``pending``: only those whose reading is not stored (True),
    only those whose reading is (False), or both (None)."""
    rows = await conn.fetch(
        """SELECT c.uid, c.patient_id, c.device_id, c.metric, c.measured_at, c.sent_status,
                  c.source, c.actor, c.reason, c.corrected_at,
                  (r.device_id IS NOT NULL) AS reading_stored
             FROM reading_corrections c
             LEFT JOIN readings r
                    ON r.device_id = c.device_id AND r.metric = c.metric::rpm_metric
                   AND r.measured_at = c.measured_at
            WHERE $1::boolean IS NULL OR (r.device_id IS NULL) = $1
            ORDER BY c.corrected_at DESC, c.uid
            LIMIT $2""",
        pending,
        limit,
    )
    return [dict(r) for r in rows]
