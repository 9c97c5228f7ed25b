"""SQL for alerts, their audit events, snoozes, and the notifications that announce them.

Escalation timers live in the alert rows (``next_escalation_at``), so they survive
restarts. ``apply`` arms them with ``next_escalation_at = now()``: the timers worker,
which holds the configured delays, looks at the alert on its next pass and sets the due
time. A nurse's acknowledgement or resolution disarms them. The timers' own queries are
in ``rpm.storage.alert_timers``, the reads (one alert, listings, events) in
``rpm.storage.alert_reads``: the same tables, split out by who uses them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from alerts.lifecycle import Action, AlertState, staff_transition
from alerts.policy import Decision, Episode, EpisodeKey, Snooze, SnoozeCaps
from rpm.domain import AlertCandidate, Severity
from rpm.domain.errors import AlertNotFound, StaffNotFound
from rpm.storage import alert_reads
from rpm.storage import staff as staff_store
from rpm.storage.pool import Conn
from rules.engine import Clear

ALERTS_CHANNEL = "rpm_alerts"
SYSTEM_ACTOR = "system:rules"


# --- the ingest side: episodes, snoozes, decisions ---------------------------------------


_EPISODE_COLUMNS = """a.id, a.patient_id, a.rule_id, a.group_key, a.severity, a.state,
    a.state = 'open' AND a.last_notified_at IS NULL AS silenced, a.acknowledged_at,
    a.resolved_at, ARRAY(SELECT c->>'rule_id' FROM jsonb_array_elements(a.contributions) c)
    AS rules"""


def _episode(r: asyncpg.Record) -> Episode:
    return Episode(
        r["id"],
        r["patient_id"],
        r["rule_id"],
        Severity[r["severity"]],
        AlertState(r["state"]),
        r["silenced"],
        r["group_key"],
        tuple(r["rules"]),
        r["acknowledged_at"],
        r["resolved_at"],
    )


async def episodes_since(
    conn: Conn, since: Mapping[EpisodeKey, datetime]
) -> tuple[dict[EpisodeKey, Episode], dict[EpisodeKey, list[Episode]]]:
    """The unresolved episode of each (patient, group) key, and its episodes resolved after
    ``since[key]`` (the earliest measured time of the batch's candidates for it: a reading
    measured before a resolution is late evidence of it), locked for this transaction.

    One statement: the unique index of unresolved episodes and ``alerts_resolved_by_key``
    answer it, so a key with no late candidates costs what it did before."""
    if not since:
        return {}, {}
    keys = list(since)
    rows = await conn.fetch(
        f"""SELECT {_EPISODE_COLUMNS} FROM alerts a
             WHERE a.id IN (
                   SELECT u.id FROM alerts u
                     JOIN unnest($1::text[], $2::text[]) AS k(patient_id, group_key)
                       ON u.patient_id = k.patient_id AND u.group_key = k.group_key
                    WHERE u.state <> 'resolved'
                   UNION ALL
                   SELECT r.id FROM alerts r
                     JOIN unnest($1::text[], $2::text[], $3::timestamptz[])
                          AS k(patient_id, group_key, since)
                       ON r.patient_id = k.patient_id AND r.group_key = k.group_key
                    WHERE r.state = 'resolved' AND r.resolved_at > k.since)
             ORDER BY a.id
               FOR UPDATE OF a""",  # noqa: S608 - fixed fragments, values are bound
        [k[0] for k in keys],
        [k[1] for k in keys],
        [since[k] for k in keys],
    )
    current: dict[EpisodeKey, Episode] = {}
    resolved: dict[EpisodeKey, list[Episode]] = {}
    for r in rows:
        e = _episode(r)
        if e.state is AlertState.RESOLVED:
            resolved.setdefault(e.key, []).append(e)
        else:
            current[e.key] = e
    return current, resolved


async def open_episodes(conn: Conn, keys: Iterable[EpisodeKey]) -> dict[EpisodeKey, Episode]:
    """Unresolved episodes for (patient, group) keys, locked for this transaction."""
    current, _ = await episodes_since(
        conn, dict.fromkeys(set(keys), datetime.max.replace(tzinfo=UTC))
    )
    return current


async def snooze_windows(
    conn: Conn, since: Mapping[EpisodeKey, datetime]
) -> dict[EpisodeKey, list[Snooze]]:
    """The snooze windows of each (patient, group) key that end after ``since[key]``."""
    if not since:
        return {}
    keys = list(since)
    rows = await conn.fetch(
        """SELECT w.patient_id, w.group_key, w.since, w.until, w.max_severity, w.actor
             FROM alert_snooze_windows w
             JOIN unnest($1::text[], $2::text[], $3::timestamptz[])
                  AS k(patient_id, group_key, since)
               ON w.patient_id = k.patient_id AND w.group_key = k.group_key
            WHERE w.until > k.since
            ORDER BY w.id""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [since[k] for k in keys],
    )
    out: dict[EpisodeKey, list[Snooze]] = {}
    for r in rows:
        out.setdefault((r["patient_id"], r["group_key"]), []).append(
            Snooze(
                r["patient_id"],
                r["group_key"],
                r["until"],
                Severity[r["max_severity"]],
                r["actor"],
                r["since"],
            )
        )
    return out


async def snoozes(
    conn: Conn, keys: Iterable[EpisodeKey], at: datetime | None = None
) -> dict[EpisodeKey, Snooze]:
    """The snoozes in force at ``at`` (default: now) for (patient, rule) pairs."""
    keys = list(set(keys))
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT s.patient_id, s.rule_id, s.until, s.max_severity, s.actor
             FROM alert_snoozes s
             JOIN unnest($1::text[], $2::text[]) AS k(patient_id, rule_id)
               ON s.patient_id = k.patient_id AND s.rule_id = k.rule_id
            WHERE s.until > coalesce($3::timestamptz, now())""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        at,
    )
    return {(r["patient_id"], r["rule_id"]): _snooze(r) for r in rows}


def _snooze(r: asyncpg.Record) -> Snooze:
    return Snooze(
        r["patient_id"], r["rule_id"], r["until"], Severity[r["max_severity"]], r["actor"]
    )


@dataclass(frozen=True, slots=True)
class AppliedDecision:
    alert_id: int
    decision: Decision


def _held(d: Decision) -> str | None:
    return f"{d.suppressed}: no SMS, no escalation" if d.suppressed else None


def _contribution(c: AlertCandidate) -> list[dict[str, Any]]:
    """One entry of ``alerts.contributions`` (a jsonb list), as a list to append."""
    return [
        {
            "rule_id": c.rule_id,
            "severity": c.severity.name,
            "title": c.title,
            "explanation": c.explanation,
            "measured_at": c.measured_at.isoformat(),
            "reading_uid": str(c.reading_uid) if c.reading_uid else None,
        }
    ]


async def apply(conn: Conn, decisions: Sequence[Decision]) -> list[AppliedDecision]:
    """Write the policy's decisions: new episodes, escalations, joins, recurrences, late
    evidence, audit events, and the escalation timers they arm.

    Recurrences (the common case under load) are counted in one statement per batch;
    they are not audited one by one (only the one that ends an episode's silence is).
    Late evidence is audited once per episode and batch.
    """
    applied: list[AppliedDecision] = []
    opened: dict[EpisodeKey, int] = {}
    recurring: dict[int, tuple[int, UUID | None, datetime]] = {}  # id -> (n, uid, fired)
    late: dict[int, list[Decision]] = {}
    live: list[int] = []
    for d in decisions:
        c = d.candidate
        key = d.episode_key
        if d.action is Action.OPEN:
            alert_id = await conn.fetchval(
                """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation,
                                       evidence, first_reading_uid, last_reading_uid,
                                       last_fired_at, last_notified_at, next_escalation_at,
                                       group_key, contributions)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9,
                           CASE WHEN $10 THEN now() END, CASE WHEN $10 THEN now() END,
                           $11, $12::jsonb)
                   RETURNING id""",
                c.patient_id,
                c.rule_id,
                c.severity.name,
                d.new_state.value,
                c.title,
                c.explanation,
                dict(c.evidence),
                c.reading_uid,
                c.measured_at,
                d.start_escalation,
                key[1],
                _contribution(c),
            )
            opened[key] = alert_id
            await audit(
                conn, alert_id, SYSTEM_ACTOR, d.action, None, d.new_state, c.severity, _held(d)
            )
        elif d.action is Action.ESCALATE:
            alert_id = d.episode.alert_id if d.episode else opened[key]
            before = d.episode.state if d.episode else AlertState.OPEN
            # Re-opening an acknowledged episode starts a new escalation round. The more
            # severe rule leads the episode from now on.
            await conn.execute(
                """UPDATE alerts SET occurrences = occurrences + 1, last_reading_uid = $2,
                          updated_at = now(), state = $3, severity = $4, explanation = $5,
                          evidence = $6, condition_cleared_at = NULL,
                          last_fired_at = greatest(last_fired_at, $7),
                          escalation_round = escalation_round + CASE WHEN $8 THEN 1 ELSE 0 END,
                          escalation_tier = CASE WHEN $8 THEN 0 ELSE escalation_tier END,
                          last_notified_at = CASE
                              WHEN $8 AND $9 THEN now() WHEN $8 THEN NULL
                              WHEN $9 THEN coalesce(last_notified_at, now())
                              ELSE last_notified_at END,
                          next_escalation_at = CASE
                              WHEN $9 THEN now() WHEN $8 THEN NULL ELSE next_escalation_at END,
                          rule_id = $10, title = $11,
                          contributions = CASE WHEN $12 THEN contributions || $13::jsonb
                                               ELSE contributions END
                    WHERE id = $1""",
                alert_id,
                c.reading_uid,
                d.new_state.value,
                c.severity.name,
                c.explanation,
                dict(c.evidence),
                c.measured_at,
                before is not AlertState.OPEN,
                d.start_escalation,
                c.rule_id,
                c.title,
                d.joins,
                _contribution(c),
            )
            note = _held(d)
            if d.joins:
                note = f"{c.rule_id} joined" + (f"; {note}" if note else "")
            await audit(
                conn, alert_id, SYSTEM_ACTOR, d.action, before, d.new_state, c.severity, note
            )
        elif d.action is Action.JOIN:
            alert_id = d.episode.alert_id if d.episode else opened[key]
            await conn.execute(
                """UPDATE alerts SET occurrences = occurrences + 1, updated_at = now(),
                          last_fired_at = greatest(last_fired_at, $2),
                          condition_cleared_at = NULL,
                          contributions = contributions || $3::jsonb
                    WHERE id = $1""",
                alert_id,
                c.measured_at,
                _contribution(c),
            )
            await audit(
                conn,
                alert_id,
                SYSTEM_ACTOR,
                d.action,
                d.new_state,
                d.new_state,
                c.severity,
                f"{c.rule_id}: {c.explanation}",
            )
            if d.start_escalation:
                live.append(alert_id)
        elif d.action is Action.LATE_EVIDENCE:
            alert_id = d.episode.alert_id if d.episode else opened[key]
            late.setdefault(alert_id, []).append(d)
        else:
            alert_id = d.episode.alert_id if d.episode else opened[key]
            count, _, fired = recurring.get(alert_id, (0, None, c.measured_at))
            recurring[alert_id] = (count + 1, c.reading_uid, max(fired, c.measured_at))
            if d.start_escalation:
                live.append(alert_id)
                await audit(
                    conn,
                    alert_id,
                    SYSTEM_ACTOR,
                    d.action,
                    d.new_state,
                    d.new_state,
                    c.severity,
                    "no longer snoozed and still firing: patient SMS and escalation start",
                )
        applied.append(AppliedDecision(alert_id, d))
    for alert_id, ds in late.items():
        await _late_evidence(conn, alert_id, ds)
    if recurring:
        ids = list(recurring)
        await conn.execute(
            """UPDATE alerts a SET occurrences = a.occurrences + r.n,
                      last_reading_uid = coalesce(r.uid, a.last_reading_uid),
                      last_fired_at = greatest(a.last_fired_at, r.fired),
                      updated_at = now(), condition_cleared_at = NULL
                 FROM unnest($1::bigint[], $2::int[], $3::uuid[], $4::timestamptz[])
                      AS r(id, n, uid, fired)
                WHERE a.id = r.id""",
            ids,
            [recurring[i][0] for i in ids],
            [recurring[i][1] for i in ids],
            [recurring[i][2] for i in ids],
        )
    if live:
        await conn.execute(
            """UPDATE alerts SET last_notified_at = now(), next_escalation_at = now()
                WHERE id = ANY($1::bigint[]) AND state = 'open' AND last_notified_at IS NULL""",
            live,
        )
    return applied


async def _late_evidence(conn: Conn, alert_id: int, ds: Sequence[Decision]) -> None:
    """Record a batch's late readings on their episode: counted, the new rules among its
    contributions, a more severe one leading it, one audit event. The state, the timers and
    the patient are left alone."""
    worst = max(ds, key=lambda d: d.candidate.severity)
    c = worst.candidate
    episode = worst.episode
    raise_to = episode is None or c.severity > episode.severity
    new_rules: dict[str, AlertCandidate] = {}
    for d in ds:
        if d.joins:
            new_rules.setdefault(d.candidate.rule_id, d.candidate)
    joined = [_contribution(x)[0] for x in new_rules.values()]
    state = await conn.fetchval(
        """UPDATE alerts SET occurrences = occurrences + $2, updated_at = now(),
                  contributions = contributions || $3::jsonb,
                  severity = CASE WHEN $4 THEN $5 ELSE severity END,
                  rule_id = CASE WHEN $4 THEN $6 ELSE rule_id END,
                  title = CASE WHEN $4 THEN $7 ELSE title END,
                  explanation = CASE WHEN $4 THEN $8 ELSE explanation END,
                  evidence = CASE WHEN $4 THEN $9 ELSE evidence END
            WHERE id = $1
        RETURNING state""",
        alert_id,
        len(ds),
        joined,
        raise_to,
        c.severity.name,
        c.rule_id,
        c.title,
        c.explanation,
        dict(c.evidence),
    )
    note = (
        f"late evidence: {len(ds)} reading(s), the most severe {worst.late}. "
        f"{c.rule_id}: {c.explanation}. No new alert, no SMS, no escalation."
    )
    await audit(
        conn,
        alert_id,
        SYSTEM_ACTOR,
        Action.LATE_EVIDENCE,
        state,
        AlertState(state),
        c.severity,
        note,
    )


async def mark_cleared(conn: Conn, clears: Sequence[Clear]) -> int:
    """Record when a fired rule's condition was seen to be over (auto-resolve reads it)."""
    if not clears:
        return 0
    status = await conn.execute(
        """UPDATE alerts a SET condition_cleared_at = c.at, updated_at = now()
             FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS c(patient_id, rule_id, at)
            WHERE a.patient_id = c.patient_id AND a.rule_id = c.rule_id
              AND a.state <> 'resolved' AND a.condition_cleared_at IS NULL""",
        [c.patient_id for c in clears],
        [c.rule_id for c in clears],
        [c.measured_at for c in clears],
    )
    return int(status.split()[-1])


async def audit(
    conn: Conn,
    alert_id: int,
    actor: str,
    action: Action,
    from_state: AlertState | str | None,
    to_state: AlertState,
    severity: Severity | str,
    note: str | None = None,
    at: datetime | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO alert_events (alert_id, actor, action, from_state, to_state, severity,
                                     note, at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8, now()))""",
        alert_id,
        actor,
        action.value,
        from_state.value if isinstance(from_state, AlertState) else from_state,
        to_state.value,
        severity.name if isinstance(severity, Severity) else severity,
        note,
        at,
    )


async def reply_event(
    conn: Conn,
    *,
    alert_id: int,
    patient_id: str,
    state: str,
    severity: str,
    text: str,
    media: Sequence[Mapping[str, str]] = (),
) -> None:
    """Audit a patient's SMS reply, with its media links, on the alert it answers (the state
    does not change)."""
    await conn.execute(
        """INSERT INTO alert_events
                  (alert_id, actor, action, from_state, to_state, severity, note, media)
           VALUES ($1, $2, 'patient_reply', $3, $3, $4, $5, $6)""",
        alert_id,
        f"patient:{patient_id}",
        state,
        severity,
        text,
        list(media) or None,
    )


async def patient_confirmed_event(
    conn: Conn, *, alert_id: int, patient_id: str, note: str, at: datetime | None = None
) -> dict[str, Any] | None:
    """Audit that the patient confirmed the alert (pressed 1 on a call); the state does not
    change. Return the alert as the live stream announces it, None if it is gone."""
    row = await conn.fetchrow(
        """INSERT INTO alert_events (alert_id, actor, action, from_state, to_state, severity,
                                     note, at)
           SELECT id, $2, 'patient_confirmed', state, state, severity, $3, coalesce($4, now())
             FROM alerts WHERE id = $1
        RETURNING alert_id, to_state AS state, severity""",
        alert_id,
        f"patient:{patient_id}",
        note,
        at,
    )
    if row is None:
        return None
    return {
        "alert_id": row["alert_id"],
        "patient_id": patient_id,
        "action": "patient_confirmed",
        "state": row["state"],
        "severity": row["severity"],
    }


async def message_failed_event(
    conn: Conn, *, alert_id: int, note: str, at: datetime | None = None
) -> dict[str, Any] | None:
    """Audit that a message about the alert was not delivered (``message_failed``, actor
    ``system:twilio``); the state does not change. Return the alert as the live stream
    announces it, None if it is gone."""
    row = await conn.fetchrow(
        """INSERT INTO alert_events (alert_id, actor, action, from_state, to_state, severity,
                                     note, at)
           SELECT id, 'system:twilio', 'message_failed', state, state, severity, $2,
                  coalesce($3, now())
             FROM alerts WHERE id = $1
        RETURNING alert_id, to_state AS state, severity""",
        alert_id,
        note,
        at,
    )
    if row is None:
        return None
    patient_id = await conn.fetchval("SELECT patient_id FROM alerts WHERE id = $1", alert_id)
    return {
        "alert_id": row["alert_id"],
        "patient_id": patient_id,
        "action": "message_failed",
        "state": row["state"],
        "severity": row["severity"],
    }


async def patient_unreachable(conn: Conn, *, alert_id: int, note: str) -> bool:
    """The patient could not be told of this open critical alert on any channel: audit it
    (``patient_unreachable``) and make the escalation due now, so the timers page the
    on-call nurse at once (``alerts.escalation.next_step``). False when the alert is not
    open and critical (nothing to bring forward) or was already so marked."""
    row = await conn.fetchrow(
        """UPDATE alerts SET next_escalation_at = least(next_escalation_at, now()),
                             updated_at = now()
            WHERE id = $1 AND state = 'open' AND severity = 'CRITICAL'
              AND NOT EXISTS (SELECT 1 FROM alert_events e WHERE e.alert_id = $1
                                 AND e.action = 'patient_unreachable')
        RETURNING id""",
        alert_id,
    )
    if row is None:
        return False
    await conn.execute(
        """INSERT INTO alert_events (alert_id, actor, action, from_state, to_state, severity, note)
           VALUES ($1, 'system:twilio', 'patient_unreachable', 'open', 'open', 'CRITICAL', $2)""",
        alert_id,
        note,
    )
    return True


async def notify(conn: Conn, payloads: Sequence[dict[str, Any]]) -> None:
    """Announce alert changes on the ``rpm_alerts`` channel; delivered at commit."""
    if payloads:
        await conn.execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
            ALERTS_CHANNEL,
            [json.dumps(p) for p in payloads],
        )


def change(
    alert_id: int, patient_id: str, action: Action, state: AlertState, severity: Severity | str
) -> dict[str, Any]:
    """What the live stream says about one alert change (ids only)."""
    return {
        "alert_id": alert_id,
        "patient_id": patient_id,
        "action": action.value,
        "state": state.value,
        "severity": severity.name if isinstance(severity, Severity) else severity,
    }


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
