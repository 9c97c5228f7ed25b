"""SQL of ``patient_rule_versions``: the per-patient lock and version of the rule state."""

from __future__ import annotations

from collections.abc import Iterable

from .pool import Conn


async def claim(conn: Conn, patient_ids: Iterable[str]) -> dict[str, int]:
    """Lock each patient's row until commit and bump its version; the new versions.

    Sorted, so two transactions claiming overlapping patients lock them in the same order
    and cannot deadlock; a patient without a row gets version 1. The row lock serialises the
    units of work of one patient across processes (the second waits for the first's commit).
    """
    ids = sorted(set(patient_ids))
    if not ids:
        return {}
    rows = await conn.fetch(
        """INSERT INTO patient_rule_versions AS v (patient_id, version)
           SELECT p, 1 FROM unnest($1::text[]) AS p ORDER BY p
           ON CONFLICT (patient_id) DO UPDATE SET version = v.version + 1
           RETURNING patient_id, version""",
        ids,
    )
    return {r["patient_id"]: r["version"] for r in rows}
