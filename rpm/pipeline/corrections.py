"""What marking readings entered-in-error does, in the caller's transaction: the days and
newest times counted again without them, the alerts they caused withdrawn or annotated
(``alerts.retraction``), the EHR told (an outbox item of conditional updates), dashboards
notified. Shared by a vendor's retraction (the unit of work) and a nurse's correction."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from alerts.lifecycle import Action, AlertState
from alerts.retraction import on_entered_in_error
from rpm.storage import alert_retractions, rule_state
from rpm.storage import alerts as alert_store
from rpm.storage import corrections as correction_store
from rpm.storage import engagement as engagement_store
from rpm.storage import outbox as outbox_store
from rpm.storage.corrections import Marked
from rpm.storage.panel import PANEL_CHANNEL, patient_payloads
from rpm.storage.pool import Conn


def fhir_correction_item(marked: Sequence[Marked]) -> tuple[str, str, dict[str, Any]]:
    """One outbox item: the readings whose Observations the EHR must update to
    entered-in-error (the worker sends a reading marked so as a conditional update)."""
    keys = sorted((m.device_id, m.metric, m.measured_at.isoformat()) for m in marked)
    digest = hashlib.sha256(orjson.dumps(keys)).hexdigest()[:32]
    return (
        "fhir",
        f"fhir:corrections:{digest}",
        {"readings": [list(k) for k in keys]},
    )


async def apply_marked(
    conn: Conn, marked: Sequence[Marked], now: datetime, *, fhir_push: bool
) -> list[dict[str, Any]]:
    """Everything that follows from readings marked entered-in-error just now; returns the
    live-stream notes of the alerts it changed (already sent with NOTIFY)."""
    if not marked:
        return []
    await engagement_store.recount_days(
        conn, [m.patient_id for m in marked], [m.measured_at for m in marked]
    )
    await rule_state.recompute_last(conn, {(m.patient_id, m.metric) for m in marked})
    notes = await _alerts(conn, marked, now)
    if fhir_push:
        await outbox_store.enqueue(conn, [fhir_correction_item(marked)], now)
    panel = patient_payloads(m.patient_id for m in marked)
    if panel:
        await conn.execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", PANEL_CHANNEL, panel
        )
    return notes


async def _alerts(conn: Conn, marked: Sequence[Marked], now: datetime) -> list[dict[str, Any]]:
    by_uid = {str(m.uid): m for m in marked}
    cited = await alert_retractions.citing(conn, {m.patient_id for m in marked}, list(by_uid))
    if not cited:
        return []
    everything = {u for c in cited for u in c.evidence.reading_uids}
    in_error = frozenset(await correction_store.of_uids(conn, sorted(everything)))
    notes = []
    for c in cited:
        ev = c.evidence
        mine = [by_uid[u] for u in sorted(ev.reading_uids) if u in by_uid]
        what = "; ".join(
            f"Reading {m.uid} ({m.metric}, measured {m.measured_at.isoformat()}) entered in "
            f"error by {m.actor}: {m.reason}"
            for m in mine
        )
        action = on_entered_in_error(ev, in_error)
        if action is Action.WITHDRAW:
            note = f"Withdrawn: its only evidence was entered in error. {what}"
            await alert_retractions.withdraw(conn, c, note, now)
            state = AlertState.RESOLVED
        else:
            note = f"Evidence entered in error; the other evidence stands. {what}"
            await alert_retractions.annotate(conn, c, note, now)
            state = ev.state
        notes.append(alert_store.change(ev.alert_id, c.patient_id, action, state, c.severity))
    await alert_store.notify(conn, notes)
    return notes
