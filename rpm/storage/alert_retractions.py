"""SQL of what a reading marked entered-in-error does to the alerts that cite it: the episodes
citing it (locked), their withdrawal or annotation (``alerts.retraction`` decides which)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from alerts.lifecycle import Action, AlertState
from alerts.retraction import CitedEvidence
from rpm.storage.alerts import audit
from rpm.storage.pool import Conn

SYSTEM_ACTOR = "system"


@dataclass(frozen=True, slots=True)
class Citing:
    evidence: CitedEvidence
    patient_id: str
    severity: str


async def citing(conn: Conn, patient_ids: Iterable[str], uids: Sequence[str]) -> list[Citing]:
    """The patients' episodes (any state) that cite one of these readings, locked."""
    rows = await conn.fetch(
        """SELECT a.id, a.patient_id, a.state, a.severity, a.occurrences,
                  a.first_reading_uid::text AS first_uid, a.last_reading_uid::text AS last_uid,
                  ARRAY(SELECT c->>'reading_uid'
                          FROM jsonb_array_elements(a.contributions) c) AS cited
             FROM alerts a
            WHERE a.patient_id = ANY($1::text[])
              AND (a.first_reading_uid = ANY($2::uuid[]) OR a.last_reading_uid = ANY($2::uuid[])
                   OR EXISTS (SELECT 1 FROM jsonb_array_elements(a.contributions) c
                               WHERE c->>'reading_uid' = ANY($3::text[])))
            ORDER BY a.id
              FOR UPDATE OF a""",
        sorted(set(patient_ids)),
        list(uids),
        [str(u) for u in uids],
    )
    out = []
    for r in rows:
        evidence = CitedEvidence(
            alert_id=r["id"],
            state=AlertState(r["state"]),
            first_uid=r["first_uid"],
            last_uid=r["last_uid"],
            contribution_uids=tuple(r["cited"]),
            occurrences=r["occurrences"],
        )
        out.append(Citing(evidence, r["patient_id"], r["severity"]))
    return out


async def withdraw(conn: Conn, c: Citing, note: str, now: datetime) -> None:
    """Resolve the episode by the system: its only evidence was entered in error."""
    await conn.execute(
        """UPDATE alerts SET state = 'resolved', resolved_at = $2, resolved_by = $3,
                  resolution_note = $4, next_escalation_at = NULL, updated_at = now()
            WHERE id = $1""",
        c.evidence.alert_id,
        now,
        SYSTEM_ACTOR,
        note,
    )
    await audit(
        conn,
        c.evidence.alert_id,
        SYSTEM_ACTOR,
        Action.WITHDRAW,
        c.evidence.state,
        AlertState.RESOLVED,
        c.severity,
        note,
        now,
    )


async def annotate(conn: Conn, c: Citing, note: str, now: datetime) -> None:
    """Record on the episode that some of its evidence was entered in error."""
    await conn.execute("UPDATE alerts SET updated_at = now() WHERE id = $1", c.evidence.alert_id)
    await audit(
        conn,
        c.evidence.alert_id,
        SYSTEM_ACTOR,
        Action.EVIDENCE_ENTERED_IN_ERROR,
        c.evidence.state,
        c.evidence.state,
        c.severity,
        note,
        now,
    )
