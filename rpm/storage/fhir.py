"""SQL of the record: stored readings as the FHIR API and the EHR push read them, patients and
devices for FHIR reads, and the push's refusals and failures.

Reads of ``readings``, ``patients``, ``devices``, ``sms_messages`` and the ``fhir`` channel of
``outbox`` are here because only the record reads them this way (keyset pages, rows by primary
key); the writes to those tables stay with their own modules. ``fhir_push_refusals`` and
``fhir_push_requeues`` (migration 0009) are this module's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from rpm.domain import AcceptedReading, Metric, Reading
from rpm.fhir.mapping import RecordedReading
from rpm.fhir.search import ObservationQuery
from rpm.storage.corrections import CORRECTED_AT
from rpm.storage.patient_readings import of_patients
from rpm.storage.pool import Conn
from rpm.storage.reading_keys import by_uid_filter, key_args
from rpm.storage.reading_values import present_sql, row_values

CHANNEL = "fhir"  # the outbox channel of EHR push work (rpm.pipeline.fhir_push_item)
ReadingKey = tuple[str, str, str]  # device id, metric, measured time (ISO 8601)

# Readings under their own table name (no alias): ``CORRECTED_AT`` refers to it.
_READING_COLUMNS = f"""measured_at, device_id, metric, patient_id,
                      rpm_reading_uid(device_id, metric, measured_at) AS uid, v1, v2, v3,
                      received_at, stored_at, interpretation, {CORRECTED_AT} AS corrected_at"""


def _recorded(r: asyncpg.Record) -> RecordedReading:
    reading = Reading(
        r["device_id"],
        Metric(r["metric"]),
        row_values(r),
        r["measured_at"],
        r["received_at"],
    )
    return RecordedReading(
        AcceptedReading(reading, r["patient_id"]),
        r["uid"],
        r["stored_at"],
        r["interpretation"],
        r["corrected_at"],
    )


# --- readings ------------------------------------------------------------------------------------


async def recorded_by_keys(conn: Conn, keys: Sequence[ReadingKey]) -> list[RecordedReading]:
    """Readings by primary key, in the order of ``keys``; keys not stored are left out."""
    if not keys:
        return []
    rows = await conn.fetch(
        f"""SELECT {_READING_COLUMNS}
              FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(d, m, t, n)
              JOIN readings ON readings.device_id = k.d AND readings.metric = k.m::rpm_metric
                           AND readings.measured_at = k.t::timestamptz
             ORDER BY k.n""",  # noqa: S608 - fixed column list
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
    )
    return [_recorded(r) for r in rows]


async def ehr_identifiers(conn: Conn, patient_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """The EHR's identifier ``(system, value)`` of those patients that have one (the push's
    subject; the others go by our id)."""
    rows = await conn.fetch(
        """SELECT id, ehr_identifier_system, ehr_identifier_value FROM patients
            WHERE id = ANY($1::text[]) AND ehr_identifier_system IS NOT NULL""",
        sorted(set(patient_ids)),
    )
    return {r["id"]: (r["ehr_identifier_system"], r["ehr_identifier_value"]) for r in rows}


async def recorded_by_uid(conn: Conn, uid: str) -> RecordedReading | None:
    key = key_args(uid)
    if key is None:
        return None
    row = await conn.fetchrow(
        f"SELECT {_READING_COLUMNS} FROM readings WHERE {by_uid_filter('readings', 1)}",  # noqa: S608
        *key,
    )
    return _recorded(row) if row else None


# Keyset pages in both directions, by the time a search sorts on (``date``: measured_at;
# ``_lastUpdated``: stored_at, or when it was marked entered-in-error after) then the primary
# key, which orders readings totally.
_SORT_TIME = {"date": "measured_at", "_lastUpdated": f"greatest(stored_at, {CORRECTED_AT})"}
_DIRECTION = {True: ("<=", "DESC"), False: (">=", "")}

_PULSE = present_sql("pulse")  # a pulse measured alongside: an Observation of its own

# Which readings hold an Observation the query asks for ($1-$7 of both statements below).
_MATCHES = f"""{of_patients("$1::text[]")}
               AND (metric = ANY($2::rpm_metric[]) OR (metric = ANY($3::rpm_metric[]) AND {_PULSE}))
               AND ($4::timestamptz IS NULL OR measured_at >= $4)
               AND ($5::timestamptz IS NULL OR measured_at < $5)
               AND NOT EXISTS (SELECT 1 FROM unnest($6::timestamptz[], $7::timestamptz[])
                                             AS x(lo, hi)
                                WHERE measured_at >= x.lo AND measured_at < x.hi)"""  # noqa: S608


def _match_args(q: ObservationQuery) -> list[Any]:
    return [
        list(q.patients),
        q.main_metrics,
        q.pulse_metrics,
        q.window.since,
        q.window.before,
        [lo for lo, _ in q.window.excluded],
        [hi for _, hi in q.window.excluded],
    ]


async def observation_page(conn: Conn, q: ObservationQuery, limit: int) -> list[RecordedReading]:
    """Up to ``limit`` readings that hold an Observation the query asks for, in its order,
    from its cursor on (the cursor's own reading included)."""
    t = _SORT_TIME[q.by]
    op, desc = _DIRECTION[q.newest_first]
    after = q.after
    rows = await conn.fetch(
        f"""SELECT {_READING_COLUMNS} FROM readings
             WHERE {_MATCHES}
               AND ($8::timestamptz IS NULL OR ({t} {op} $8
                    AND ({t}, device_id, metric, measured_at)
                        {op} ($8, $9::text, $10::rpm_metric, $11::timestamptz)))
             ORDER BY {t} {desc}, device_id {desc}, metric {desc}, measured_at {desc}
             LIMIT $12""",  # noqa: S608 - fixed fragments, values are bound
        *_match_args(q),
        after[0] if after else None,
        after[1] if after else None,
        after[2] if after else None,
        after[3] if after else None,
        limit,
    )
    return [_recorded(r) for r in rows]


async def observation_count(conn: Conn, q: ObservationQuery) -> int:
    """How many Observations the query matches on every page (a reading with a pulse measured
    alongside holds two when both are asked for)."""
    total = await conn.fetchval(
        f"""SELECT coalesce(sum((metric = ANY($2::rpm_metric[]))::int
                             + (metric = ANY($3::rpm_metric[]) AND {_PULSE})::int), 0)
              FROM readings WHERE {_MATCHES}""",  # noqa: S608 - fixed fragments
        *_match_args(q),
    )
    return int(total)


# --- patients and devices ----------------------------------------------------------------------


async def resolve_patients(conn: Conn, fhir_ids: Sequence[str]) -> list[str]:
    """Our ids of the patients with these FHIR ids (``rpm_fhir_id``)."""
    rows = await conn.fetch(
        "SELECT id FROM patients WHERE rpm_fhir_id(id) = ANY($1::text[])", list(fhir_ids)
    )
    return [r["id"] for r in rows]


async def patients(
    conn: Conn,
    *,
    fhir_ids: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    after: str | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    """Patients by FHIR id and/or our id (None: any), in id order, after our id ``after``."""
    rows = await conn.fetch(
        """SELECT id, display_name, phone, language FROM patients
            WHERE ($1::text[] IS NULL OR rpm_fhir_id(id) = ANY($1::text[]))
              AND ($2::text[] IS NULL OR id = ANY($2::text[]))
              AND ($3::text IS NULL OR id > $3)
            ORDER BY id
            LIMIT $4""",
        list(fhir_ids) if fhir_ids is not None else None,
        list(ids) if ids is not None else None,
        after,
        limit,
    )
    return [dict(r) for r in rows]


async def patient_count(
    conn: Conn, *, fhir_ids: Sequence[str] | None = None, ids: Sequence[str] | None = None
) -> int:
    """How many patients ``patients`` finds on every page."""
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM patients
                WHERE ($1::text[] IS NULL OR rpm_fhir_id(id) = ANY($1::text[]))
                  AND ($2::text[] IS NULL OR id = ANY($2::text[]))""",
            list(fhir_ids) if fhir_ids is not None else None,
            list(ids) if ids is not None else None,
        )
    )


_DEVICES = """FROM devices d
             LEFT JOIN device_bindings b ON b.device_id = d.id AND b.during @> now()
            WHERE ($1::text[] IS NULL OR rpm_fhir_id(d.id) = ANY($1::text[]))
              AND ($2::text[] IS NULL OR d.id = ANY($2::text[]))
              AND ($3::text[] IS NULL OR b.patient_id = ANY($3::text[]))"""


def _device_args(
    fhir_ids: Sequence[str] | None, ids: Sequence[str] | None, patient_ids: Sequence[str] | None
) -> list[Any]:
    return [
        list(fhir_ids) if fhir_ids is not None else None,
        list(ids) if ids is not None else None,
        list(patient_ids) if patient_ids is not None else None,
    ]


async def devices(
    conn: Conn,
    *,
    fhir_ids: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    patient_ids: Sequence[str] | None = None,
    after: str | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    """Devices with the patient bound to each now, by FHIR id, our id and/or bound patient
    (None: any), in id order, after our id ``after``."""
    rows = await conn.fetch(
        f"""SELECT d.id, d.kind, d.vendor, d.serial, d.retired_at, b.patient_id {_DEVICES}
              AND ($4::text IS NULL OR d.id > $4)
            ORDER BY d.id
            LIMIT $5""",
        *_device_args(fhir_ids, ids, patient_ids),
        after,
        limit,
    )
    return [dict(r) for r in rows]


async def device_count(
    conn: Conn,
    *,
    fhir_ids: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    patient_ids: Sequence[str] | None = None,
) -> int:
    """How many devices ``devices`` finds on every page."""
    found = await conn.fetchval(
        f"SELECT count(*) {_DEVICES}",
        *_device_args(fhir_ids, ids, patient_ids),
    )
    return int(found)


async def sms_message(conn: Conn, message_id: int) -> dict[str, Any] | None:
    """One patient SMS (staff messages are not part of a patient's record)."""
    row = await conn.fetchrow(
        """SELECT id, direction, patient_id, alert_id, twilio_sid, status, error_code, body,
                  created_at, updated_at
             FROM sms_messages WHERE id = $1 AND patient_id IS NOT NULL""",
        message_id,
    )
    return dict(row) if row else None


# --- the push's refusals and failures -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """One Observation the EHR refused, isolated from its transaction."""

    observation_id: str
    reading_key: ReadingKey
    patient_id: str
    status: int
    outcome: dict[str, Any] | None


async def record_refusals(conn: Conn, outbox_id: int, refusals: Sequence[Refusal]) -> None:
    """Keep refusals (a repeated one, after a crash and a retry, updates the first)."""
    if not refusals:
        return
    await conn.executemany(
        """INSERT INTO fhir_push_refusals
               (outbox_id, observation_id, device_id, metric, measured_at, patient_id, status,
                outcome)
           VALUES ($1, $2, $3, $4, $5::text::timestamptz, $6, $7, $8)
           ON CONFLICT (outbox_id, observation_id) DO UPDATE
               SET status = excluded.status, outcome = excluded.outcome, refused_at = now()""",
        [
            (
                outbox_id,
                r.observation_id,
                r.reading_key[0],
                r.reading_key[1],
                r.reading_key[2],
                r.patient_id,
                r.status,
                r.outcome,
            )
            for r in refusals
        ],
    )


async def refusals(conn: Conn, *, include_requeued: bool, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id, outbox_id, observation_id, patient_id, device_id, metric, measured_at,
                  status, outcome, refused_at, requeued_at, requeued_by
             FROM fhir_push_refusals
            WHERE $1 OR requeued_at IS NULL
            ORDER BY refused_at DESC, id DESC
            LIMIT $2""",
        include_requeued,
        limit,
    )
    return [dict(r) for r in rows]


async def failed_items(conn: Conn, *, include_requeued: bool, limit: int) -> list[dict[str, Any]]:
    """Push work the worker gave up on (attempts exhausted), newest first."""
    rows = await conn.fetch(
        """SELECT o.id AS outbox_id, o.created_at, o.failed_at, o.attempts, o.last_error,
                  o.result, jsonb_array_length(o.payload->'readings') AS readings,
                  q.requeued_at, q.requeued_by
             FROM outbox o LEFT JOIN fhir_push_requeues q ON q.outbox_id = o.id
            WHERE o.channel = $1 AND o.failed_at IS NOT NULL
              AND ($2 OR q.outbox_id IS NULL)
            ORDER BY o.failed_at DESC, o.id DESC
            LIMIT $3""",
        CHANNEL,
        include_requeued,
        limit,
    )
    return [dict(r) for r in rows]


async def backlog(conn: Conn) -> dict[str, Any]:
    """Push work not yet delivered: how much, since when, and the last error seen."""
    row = await conn.fetchrow(
        """SELECT count(*) AS items, min(created_at) AS oldest,
                  count(*) FILTER (WHERE last_error IS NOT NULL) AS retrying,
                  (array_agg(last_error ORDER BY next_attempt_at DESC)
                       FILTER (WHERE last_error IS NOT NULL))[1] AS last_error
             FROM outbox
            WHERE channel = $1 AND delivered_at IS NULL AND failed_at IS NULL""",
        CHANNEL,
    )
    assert row is not None
    return dict(row)


async def requeue_refusals(conn: Conn, ids: Sequence[int], actor: str) -> list[ReadingKey]:
    """Mark refusals requeued; return the readings they were about."""
    rows = await conn.fetch(
        """UPDATE fhir_push_refusals SET requeued_at = now(), requeued_by = $2
            WHERE id = ANY($1::bigint[]) AND requeued_at IS NULL
        RETURNING device_id, metric, measured_at""",
        list(ids),
        actor,
    )
    return [(r["device_id"], r["metric"], r["measured_at"].isoformat()) for r in rows]


async def requeue_failed(conn: Conn, ids: Sequence[int], actor: str) -> list[ReadingKey]:
    """Mark failed push items requeued; return the readings they carried."""
    rows = await conn.fetch(
        """WITH marked AS (
               INSERT INTO fhir_push_requeues (outbox_id, requeued_by)
               SELECT id, $3 FROM outbox
                WHERE id = ANY($1::bigint[]) AND channel = $2 AND failed_at IS NOT NULL
               ON CONFLICT (outbox_id) DO NOTHING
               RETURNING outbox_id)
           SELECT o.payload FROM outbox o JOIN marked m ON m.outbox_id = o.id""",
        list(ids),
        CHANNEL,
        actor,
    )
    keys: list[ReadingKey] = []
    for r in rows:
        for d, m, t in r["payload"].get("readings", []):
            keys.append((str(d), str(m), str(t)))
    return keys
