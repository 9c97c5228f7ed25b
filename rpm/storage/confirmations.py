"""SQL for confirmations before paging (``alert_confirmations``, migration 0028).

A pending row is a first reading waiting for its repeat (``alerts.confirm``); it ends
confirmed, not confirmed, without a repeat (paged at the window's end by the timer) or
superseded by a more severe reading, and stays as the patient's history.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from alerts.confirm import Closing, Measured, Pending
from alerts.policy import EpisodeKey
from rpm.domain import AlertCandidate, Severity
from rpm.storage.patient_readings import of_patient
from rpm.storage.pool import Conn
from rpm.storage.reading_values import row_values

_COLUMNS = """id, patient_id, rule_id, group_key, severity, state, reading_uid, measured_at,
    deadline, first_values, candidate, created_at, closed_at, closed_reading_uid,
    closed_values, note, alert_id"""


def _candidate_json(c: AlertCandidate) -> dict[str, Any]:
    # Through JSON text once: the evidence may hold datetimes and UUIDs.
    out: dict[str, Any] = json.loads(
        json.dumps(
            {
                "patient_id": c.patient_id,
                "rule_id": c.rule_id,
                "severity": c.severity.name,
                "title": c.title,
                "measured_at": c.measured_at.isoformat(),
                "explanation": c.explanation,
                "evidence": dict(c.evidence),
                "reading_uid": str(c.reading_uid) if c.reading_uid else None,
                "advice": c.advice,
                "advice_i18n": dict(c.advice_i18n),
            },
            default=str,
        )
    )
    return out


def _candidate(data: Mapping[str, Any]) -> AlertCandidate:
    uid = data.get("reading_uid")
    return AlertCandidate(
        patient_id=data["patient_id"],
        rule_id=data["rule_id"],
        severity=Severity[data["severity"]],
        title=data["title"],
        measured_at=datetime.fromisoformat(data["measured_at"]),
        explanation=data["explanation"],
        evidence=data.get("evidence") or {},
        reading_uid=UUID(uid) if uid else None,
        advice=data.get("advice", ""),
        advice_i18n=data.get("advice_i18n") or {},
    )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _pending(r: Any) -> Pending:
    return Pending(
        r["id"],
        (r["patient_id"], r["group_key"]),
        _candidate(_json(r["candidate"])),
        r["deadline"],
        _json(r["first_values"]) or {},
    )


async def pending_for(conn: Conn, patients: Iterable[str]) -> dict[EpisodeKey, Pending]:
    """The waiting confirmations of these patients, locked for this transaction."""
    ids = sorted(set(patients))
    if not ids:
        return {}
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM alert_confirmations "  # noqa: S608 (constant columns)
        "WHERE state = 'pending' AND patient_id = ANY($1::text[]) ORDER BY id FOR UPDATE",
        ids,
    )
    return {(r["patient_id"], r["group_key"]): _pending(r) for r in rows}


async def due(conn: Conn, now: datetime, limit: int) -> list[Pending]:
    """Waiting confirmations whose window ended by ``now``, locked (others skip them)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM alert_confirmations "  # noqa: S608 - fixed columns
        "WHERE state = 'pending' AND deadline <= $1 "
        "ORDER BY deadline, id LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )
    return [_pending(r) for r in rows]


async def readings_between(
    conn: Conn, wants: Sequence[tuple[str, str, datetime, datetime]]
) -> list[Measured]:
    """The readings of (patient, metric) measured in ``(after, until]``, for each want."""
    if not wants:
        return []
    rows = await conn.fetch(
        f"""SELECT DISTINCT r.patient_id, r.metric, r.measured_at,
                        rpm_reading_uid(r.device_id, r.metric, r.measured_at) AS uid,
                        r.v1, r.v2, r.v3
             FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
                  AS w(patient_id, metric, after, until)
             JOIN readings r ON {of_patient("w.patient_id", "r")}
                            AND r.metric = w.metric::rpm_metric
                            AND r.measured_at > w.after AND r.measured_at <= w.until""",  # noqa: S608
        [w[0] for w in wants],
        [w[1] for w in wants],
        [w[2] for w in wants],
        [w[3] for w in wants],
    )
    return [
        Measured(
            r["patient_id"],
            r["metric"],
            r["measured_at"],
            r["uid"],
            row_values(r),
        )
        for r in rows
    ]


async def _insert(
    conn: Conn,
    p: Pending,
    closing: Closing | None = None,
    alert_id: int | None = None,
) -> int:
    """Write a confirmation: waiting, or already ended (``closing``) in its own batch."""
    c, r = p.candidate, closing.reading if closing else None
    return int(
        await conn.fetchval(
            """INSERT INTO alert_confirmations
                   (patient_id, rule_id, group_key, severity, reading_uid, measured_at,
                    deadline, first_values, candidate, state, closed_at,
                    closed_reading_uid, closed_values, note, alert_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10, $11, $12,
                       $13::jsonb, $14, $15) RETURNING id""",
            c.patient_id,
            c.rule_id,
            p.key[1],
            c.severity.name,
            c.reading_uid,
            c.measured_at,
            p.deadline,
            dict(p.values),
            _candidate_json(c),
            closing.outcome.value if closing else "pending",
            closing.at if closing else None,
            r.uid if r else None,
            dict(r.values) if r else None,
            (closing.note or None) if closing else None,
            alert_id,
        )
    )


async def open_many(conn: Conn, pending: Sequence[Pending]) -> list[int]:
    """Write new waiting confirmations; their ids, in order."""
    return [await _insert(conn, p) for p in pending]


async def close_many(
    conn: Conn, closings: Sequence[Closing], alert_ids: Mapping[EpisodeKey, int]
) -> list[int]:
    """End confirmations (a new one that ended in its own batch is written closed); ids."""
    ids = []
    for k in closings:
        p, r = k.pending, k.reading
        alert_id = alert_ids.get(p.key)
        if not p.id:
            ids.append(await _insert(conn, p, k, alert_id))
            continue
        await conn.execute(
            """UPDATE alert_confirmations SET state = $2, closed_at = $3,
                      closed_reading_uid = $4, closed_values = $5::jsonb, note = $6,
                      alert_id = $7
                WHERE id = $1 AND state = 'pending'""",
            p.id,
            k.outcome.value,
            k.at,
            r.uid if r else None,
            dict(r.values) if r else None,
            k.note or None,
            alert_id,
        )
        ids.append(p.id)
    return ids


async def listing(
    conn: Conn,
    *,
    patient_id: str | None,
    state: str | None,
    limit: int,
    care_teams: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Confirmations, newest first (one patient's, or every patient's; of these care teams'
    patients when given)."""
    rows = await conn.fetch(
        """SELECT c.id, c.patient_id, c.rule_id, c.group_key, c.severity, c.state,
                  c.reading_uid, c.measured_at, c.deadline, c.first_values, c.candidate,
                  c.created_at, c.closed_at, c.closed_reading_uid, c.closed_values, c.note,
                  c.alert_id
             FROM alert_confirmations c JOIN patients p ON p.id = c.patient_id
            WHERE ($1::text IS NULL OR c.patient_id = $1)
              AND ($2::text IS NULL OR c.state = $2)
              AND ($4::text[] IS NULL OR p.care_team = ANY($4::text[]))
            ORDER BY c.measured_at DESC, c.id DESC LIMIT $3""",
        patient_id,
        state,
        limit,
        list(care_teams) if care_teams is not None else None,
    )
    out = []
    for r in rows:
        candidate = _json(r["candidate"])
        out.append(
            {
                "id": r["id"],
                "patient_id": r["patient_id"],
                "rule_id": r["rule_id"],
                "group_key": r["group_key"],
                "severity": r["severity"],
                "state": r["state"],
                "title": candidate.get("title", ""),
                "measured_at": r["measured_at"],
                "deadline": r["deadline"],
                "first_values": _json(r["first_values"]),
                "closed_at": r["closed_at"],
                "closed_values": _json(r["closed_values"]),
                "note": r["note"],
                "alert_id": r["alert_id"],
            }
        )
    return out
