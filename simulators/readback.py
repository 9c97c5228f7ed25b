"""Reads back what the server did with a run's traffic (read-only SQL over its tables)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from rpm.storage.pool import Conn
from simulators.report import Key, ObservedAlert, ObservedConfirmation


@dataclass(frozen=True, slots=True)
class Progress:
    stored: int
    quarantined: int


async def progress(
    conn: Conn, device_ids: Sequence[str], integrations: Sequence[str], since: datetime
) -> Progress:
    """Readings stored for these devices and their payloads quarantined since ``since``."""
    stored = await conn.fetchval(
        "SELECT count(*) FROM readings WHERE device_id = ANY($1::text[]) AND stored_at >= $2",
        list(device_ids),
        since,
    )
    quarantined = await conn.fetchval(
        # A refused MQTT payload names its device (the topic's), a webhook payload its
        # integration (a malformed one may name no device).
        """SELECT coalesce(sum(seen_count), 0) FROM quarantine
            WHERE (device_id = ANY($1::text[]) OR integration = ANY($2::text[]))
              AND last_seen_at >= $3""",
        list(device_ids),
        list(integrations),
        since,
    )
    return Progress(int(stored), int(quarantined))


async def stored_count(
    conn: Conn, device_ids: Sequence[str], since: datetime, measured_by: datetime
) -> int:
    """Readings of these devices stored since ``since`` and measured at or before
    ``measured_by``."""
    n = await conn.fetchval(
        """SELECT count(*) FROM readings
            WHERE device_id = ANY($1::text[]) AND stored_at >= $2 AND measured_at <= $3""",
        list(device_ids),
        since,
        measured_by,
    )
    return int(n)


async def stored(conn: Conn, device_ids: Sequence[str], since: datetime) -> dict[Key, float]:
    """Stored readings of these devices since ``since``: key -> stored_at (epoch seconds)."""
    rows = await conn.fetch(
        """SELECT device_id, metric, measured_at, extract(epoch FROM stored_at)::float8 AS s
             FROM readings WHERE device_id = ANY($1::text[]) AND stored_at >= $2""",
        list(device_ids),
        since,
    )
    return {(r["device_id"], r["metric"], r["measured_at"]): r["s"] for r in rows}


async def quarantined(
    conn: Conn, device_ids: Sequence[str], integrations: Sequence[str], since: datetime
) -> dict[str, int]:
    """Payloads of these devices or integrations refused since ``since``, by reason (a
    repeat of the same bytes counts again)."""
    rows = await conn.fetch(
        """SELECT reason, sum(seen_count)::int AS n FROM quarantine
            WHERE (device_id = ANY($1::text[]) OR integration = ANY($2::text[]))
              AND last_seen_at >= $3
            GROUP BY reason""",
        list(device_ids),
        list(integrations),
        since,
    )
    return {r["reason"]: r["n"] for r in rows}


async def alerts(
    conn: Conn,
    patient_ids: Sequence[str],
    since: datetime,
    to_sim: Callable[[datetime], datetime],
) -> list[ObservedAlert]:
    """Alerts of these patients opened since ``since``, with their simulated times.

    An alert opened by a reading happened, in simulated time, when that reading was
    measured; a missing-data alert has no reading and opened at the simulated time of the
    pass that found the silence (its first contribution's ``measured_at``: the pass's
    clock), exact whatever the load. Only an alert without either has its wall time mapped
    back.
    """
    rows = await conn.fetch(
        """SELECT a.patient_id, a.rule_id, a.opened_at, a.updated_at,
                  ARRAY(SELECT c->>'rule_id' FROM jsonb_array_elements(a.contributions) c)
                  AS rules,
                  extract(epoch FROM a.opened_at)::float8 AS opened,
                  (a.contributions -> 0 ->> 'measured_at')::timestamptz AS first_fired,
                  f.device_id, f.metric, f.measured_at AS first_measured,
                  l.measured_at AS last_measured
             FROM alerts a
             LEFT JOIN readings f
                    ON rpm_reading_uid(f.device_id, f.metric, f.measured_at) = a.first_reading_uid
                   AND f.patient_id = a.patient_id
             LEFT JOIN readings l
                    ON rpm_reading_uid(l.device_id, l.metric, l.measured_at) = a.last_reading_uid
                   AND l.patient_id = a.patient_id
            WHERE a.patient_id = ANY($1::text[]) AND a.opened_at >= $2
            ORDER BY a.id""",
        list(patient_ids),
        since,
    )
    out = []
    for r in rows:
        trigger: Key | None = None
        if r["first_measured"] is not None:
            trigger = (r["device_id"], r["metric"], r["first_measured"])
            sim_opened = r["first_measured"]
        elif r["first_fired"] is not None:
            sim_opened = r["first_fired"]
        else:
            sim_opened = to_sim(r["opened_at"])
        last = r["last_measured"] or to_sim(r["updated_at"])
        out.append(
            ObservedAlert(
                patient_id=r["patient_id"],
                rule_id=r["rule_id"],
                opened_at=r["opened"],
                sim_opened=sim_opened,
                sim_last=max(last, sim_opened),
                trigger=trigger,
                rules=tuple(r["rules"]),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Totals:
    stored: int
    quarantined: int
    alerts: int


async def totals(conn: Conn, since: datetime) -> Totals:
    """Readings stored, payloads quarantined and alerts opened since ``since`` (all sources)."""
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM readings WHERE stored_at >= $1) AS stored,
                  (SELECT coalesce(sum(seen_count), 0) FROM quarantine
                    WHERE last_seen_at >= $1) AS quarantined,
                  (SELECT count(*) FROM alerts WHERE opened_at >= $1) AS alerts""",
        since,
    )
    assert row is not None
    return Totals(int(row["stored"]), int(row["quarantined"]), int(row["alerts"]))


async def confirmations(
    conn: Conn, patient_ids: Sequence[str], since: datetime
) -> list[ObservedConfirmation]:
    """Confirmations before paging of these patients written since ``since`` (wall)."""
    rows = await conn.fetch(
        """SELECT rule_id, state, measured_at, closed_at FROM alert_confirmations
            WHERE patient_id = ANY($1::text[]) AND created_at >= $2 ORDER BY id""",
        list(patient_ids),
        since,
    )
    return [
        ObservedConfirmation(r["rule_id"], r["state"], r["measured_at"], r["closed_at"])
        for r in rows
    ]
