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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from alerts.lifecycle import Action, AlertState
from alerts.policy import Decision, Episode, EpisodeKey, Snooze
from rpm.domain import AlertCandidate, Severity
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
