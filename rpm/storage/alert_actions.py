"""SQL of the nurses' actions on an alert (``alerts`` and ``alert_events``, migration 0005):
acknowledge, resolve, assign, snooze and unsnooze. Each locks the alert, checks the action
against the lifecycle table (``alerts.lifecycle``), writes it, audits it and announces it on
the live stream (``rpm.storage.alerts.notify``); a resolution or acknowledgement disarms the
escalation timer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from alerts.lifecycle import Action, AlertState, staff_transition
from alerts.policy import SnoozeCaps
from rpm.domain import Severity
from rpm.domain.errors import AlertNotFound, StaffNotFound
from rpm.storage import alert_reads
from rpm.storage import staff as staff_store
from rpm.storage.alerts import audit, change, notify
from rpm.storage.pool import Conn

# --- staff actions --------------------------------------------------------------------


async def _act(
    conn: Conn,
    alert_id: int,
    action: Action,
    actor: str,
    note: str | None,
    write: Callable[[AlertState], Awaitable[object]],
) -> dict[str, Any]:
    """Lock the alert, check the action against the lifecycle table, ``write`` the change
    (given the state after), audit it and announce it on the live stream."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT state, severity, patient_id FROM alerts WHERE id = $1 FOR UPDATE", alert_id
        )
        if row is None:
            raise AlertNotFound("no such alert")
        before = AlertState(row["state"])
        after = staff_transition(before, action, note)
        await write(after)
        await audit(conn, alert_id, actor, action, before, after, row["severity"], note)
        await notify(conn, [change(alert_id, row["patient_id"], action, after, row["severity"])])
        found = await alert_reads.get(conn, alert_id)
        assert found is not None
        return found


async def transition(
    conn: Conn, alert_id: int, action: Action, actor: str, note: str | None = None
) -> dict[str, Any]:
    """Acknowledge, or resolve with a note; either stops the escalation."""

    async def acknowledge(after: AlertState) -> object:
        return await conn.execute(
            """UPDATE alerts SET state = $2, acknowledged_at = now(), acknowledged_by = $3,
                      next_escalation_at = NULL, updated_at = now() WHERE id = $1""",
            alert_id,
            after.value,
            actor,
        )

    async def resolve(after: AlertState) -> object:
        return await conn.execute(
            """UPDATE alerts SET state = $2, resolved_at = now(), resolved_by = $3,
                      resolution_note = $4, next_escalation_at = NULL, updated_at = now()
                WHERE id = $1""",
            alert_id,
            after.value,
            actor,
            note,
        )

    writers = {Action.ACKNOWLEDGE: acknowledge, Action.RESOLVE: resolve}
    if action not in writers:
        raise ValueError(f"{action.value} has its own function")
    return await _act(conn, alert_id, action, actor, note, writers[action])


async def assign(conn: Conn, alert_id: int, assignee: str, actor: str) -> dict[str, Any]:
    """Make ``assignee`` (an active staff member) the owner of the alert; audited."""

    async def write(_: AlertState) -> object:
        if not await staff_store.exists(conn, assignee):
            raise StaffNotFound("no such active staff member")
        return await conn.execute(
            "UPDATE alerts SET assigned_to = $2, updated_at = now() WHERE id = $1",
            alert_id,
            assignee,
        )

    return await _act(conn, alert_id, Action.ASSIGN, actor, f"to {assignee}", write)


async def snooze(
    conn: Conn,
    alert_id: int,
    *,
    duration: timedelta,
    actor: str,
    reason: str | None,
    caps: SnoozeCaps,
) -> dict[str, Any]:
    """Snooze this alert's kind (patient + rule) up to its severity, within the cap.

    Raises ``SnoozeTooLong`` beyond the cap of the alert's severity. A later snooze of the
    same kind replaces the earlier one.
    """
    minutes = int(duration.total_seconds() // 60)
    note = f"{minutes} min" + (f": {reason}" if reason else "")

    async def write(_: AlertState) -> object:
        severity = await conn.fetchval("SELECT severity FROM alerts WHERE id = $1", alert_id)
        caps.check(Severity[severity], duration)
        # The snooze is per episode group (``alert_snoozes.rule_id`` holds the group key);
        # its window is kept after it ends, for readings measured inside it that arrive late.
        await conn.execute(
            """INSERT INTO alert_snoozes (patient_id, rule_id, until, max_severity, actor, reason)
               SELECT patient_id, group_key, now() + $2::interval, severity, $3, $4
                 FROM alerts WHERE id = $1
               ON CONFLICT (patient_id, rule_id) DO UPDATE
                  SET until = EXCLUDED.until, max_severity = EXCLUDED.max_severity,
                      actor = EXCLUDED.actor, reason = EXCLUDED.reason, created_at = now()""",
            alert_id,
            duration,
            actor,
            reason,
        )
        await _end_window(conn, alert_id)
        await conn.execute(
            """INSERT INTO alert_snooze_windows
                      (patient_id, group_key, since, until, max_severity, actor)
               SELECT patient_id, group_key, now(), now() + $2::interval, severity, $3
                 FROM alerts WHERE id = $1""",
            alert_id,
            duration,
            actor,
        )
        return await conn.execute("UPDATE alerts SET updated_at = now() WHERE id = $1", alert_id)

    return await _act(conn, alert_id, Action.SNOOZE, actor, note, write)


async def _end_window(conn: Conn, alert_id: int) -> None:
    """End, now, the snooze window in force for this alert's group."""
    await conn.execute(
        """UPDATE alert_snooze_windows w SET until = now() FROM alerts a
            WHERE a.id = $1 AND w.patient_id = a.patient_id AND w.group_key = a.group_key
              AND w.until > now()""",
        alert_id,
    )


async def unsnooze(conn: Conn, alert_id: int, actor: str) -> dict[str, Any]:
    """End the snooze of this alert's kind; a held escalation is looked at again now."""

    async def write(_: AlertState) -> object:
        await conn.execute(
            """DELETE FROM alert_snoozes s USING alerts a
                WHERE a.id = $1 AND s.patient_id = a.patient_id AND s.rule_id = a.group_key""",
            alert_id,
        )
        await _end_window(conn, alert_id)
        return await conn.execute(
            """UPDATE alerts SET updated_at = now(),
                      next_escalation_at = least(next_escalation_at, now())
                WHERE id = $1""",
            alert_id,
        )

    return await _act(conn, alert_id, Action.UNSNOOZE, actor, None, write)
