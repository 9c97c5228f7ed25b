# ruff: noqa: S608 - statements are built from fixed fragments (the sort and flag tables
# below) and segment definitions compiled by rpm.engagement.segments; every value in them is
# a bind parameter.
"""SQL for the patient panel (docs/panel.md): one row per patient of a care team with the
days with readings in the current device period, the minutes logged this calendar month,
open alerts and the newest reading; filtered, sorted and paged in one statement, plus the
newest value of each metric for the patients of the page.

The device period and the flags are computed here over the whole team (a sort or a flag
filter needs every row), with the definitions of ``rpm.billing.periods`` and
``rpm.billing.needs``; tests/test_panel.py checks that the SQL and the pure code agree.

Live updates: :data:`PANEL_CHANNEL` carries ``{"patients": [ids]}`` whenever something the
panel shows changes for those patients: the ingest unit of work sends the batch's ids in its
one NOTIFY statement (:func:`patient_payloads`), a trigger on ``time_entries`` one per
statement (``rpm_panel_notify`` of migration 0021); both keep each payload under the
8000-byte limit. Alert changes are on ``rpm_alerts`` already.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from rpm.billing.needs import Thresholds
from rpm.billing.periods import PERIOD_DAYS
from rpm.domain.severity import sql_rank
from rpm.engagement import segments as segment_spec
from rpm.engagement.segments import SegmentSpec
from rpm.storage.patient_readings import of_patient
from rpm.storage.pool import Conn
from rpm.storage.reading_values import row_values
from rpm.storage.segments import FACTS_SQL, over_everyone

PANEL_CHANNEL = "rpm_panel"

SortKey = Literal["name", "patient", "days", "minutes", "last_reading", "alerts"]
Direction = Literal["asc", "desc"]
FlagFilter = Literal["readings", "time", "any", "none"]

# The panel's computed columns, each from one index probe per patient (``x`` is the row):
# name -> (its columns, the lateral join that makes them). Only those a sort or a flag
# filter needs are made for every patient of the team; the others for the page's rows only.
_PARTS: dict[str, tuple[str, str]] = {
    # rpm.billing.periods.device_period: the 30-day span from the start holding today; days
    # with readings in it so far.
    "period": (
        "period.start, period.pstart, period.days",
        f"""LEFT JOIN LATERAL (
              SELECT s.start, s.pstart,
                     (SELECT count(*) FROM patient_days d
                       WHERE d.patient_id = x.id AND d.day >= s.pstart
                         AND d.day <= x.today)::int AS days
                FROM (SELECT st.start,
                             st.start + (greatest(0, x.today - st.start) / {PERIOD_DAYS})
                                 * {PERIOD_DAYS} AS pstart
                        FROM (SELECT coalesce(x.monitoring_started_on,
                                              (SELECT min(d.day) FROM patient_days d
                                                WHERE d.patient_id = x.id)) AS start
                              OFFSET 0) st) s
              OFFSET 0  -- a fence: each probe once per patient, not once per use
            ) period ON true""",
    ),
    "spent": (
        "coalesce(spent.seconds, 0)::int AS seconds, "
        "coalesce(spent.interactive, false) AS interactive",
        """LEFT JOIN LATERAL (
              SELECT sum(e.duration_s) AS seconds,
                     bool_or(e.activity = ANY($7::text[])) AS interactive
                FROM time_entries e
               WHERE e.patient_id = x.id AND e.deleted_at IS NULL
                 AND e.started_at >= x.month_from AND e.started_at < x.month_to
            ) spent ON true""",
    ),
    "open": (
        "coalesce(open.n, 0)::int AS open_alerts, coalesce(open.top, 0)::int AS top_rank",
        f"""LEFT JOIN LATERAL (
              SELECT count(*) AS n, max({sql_rank("a.severity")}) AS top FROM alerts a
               WHERE a.patient_id = x.id AND a.state <> 'resolved'
            ) open ON true""",
    ),
    "last": (
        "last.at AS last_at",
        """LEFT JOIN LATERAL (
              SELECT max(m.measured_at) AS at FROM patient_metric_last m
               WHERE m.patient_id = x.id
            ) last ON true""",
    ),
}

# For the whole team, open episodes (few next to patients, and in a partial index) are
# counted at once, which costs less than a probe per patient; the page's rows probe.
_OPEN_FOR_EVERYONE = f"""LEFT JOIN (
      SELECT a.patient_id, count(*) AS n, max({sql_rank("a.severity")}) AS top
        FROM alerts a WHERE a.state <> 'resolved' GROUP BY a.patient_id
    ) open ON open.patient_id = x.id"""

# Each sort key: its ORDER BY (ascending; descending flips each part) and the parts it
# needs. The patient id always ends it, so pages never overlap or skip a row.
_SORTS: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "name": ((("display_name", ""),), ()),
    "patient": ((), ()),
    "days": ((("days", ""),), ("period",)),
    "minutes": ((("seconds", ""),), ("spent",)),
    "last_reading": ((("last_at", "NULLS FIRST"),), ("last",)),  # never measured: stalest
    "alerts": ((("top_rank", ""), ("open_alerts", "")), ("open",)),
}
# The flags, from the parts' columns ($4 days, $5 seconds, $6 interactive needed).
_NEEDS_READINGS = "(days < $4::int)"
_NEEDS_TIME = "(seconds < $5::int OR ($6::boolean AND NOT interactive))"
_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "readings": (_NEEDS_READINGS, ("period",)),
    "time": (_NEEDS_TIME, ("spent",)),
    "any": (f"({_NEEDS_READINGS} OR {_NEEDS_TIME})", ("period", "spent")),
    "none": (f"NOT ({_NEEDS_READINGS} OR {_NEEDS_TIME})", ("period", "spent")),
}


def _order_by(sort: str, direction: str) -> str:
    parts = []
    for expr, nulls in _SORTS[sort][0]:
        if direction == "desc":
            nulls = {"NULLS FIRST": "NULLS LAST"}.get(nulls, nulls)
            parts.append(f"{expr} DESC {nulls}".strip())
        else:
            parts.append(f"{expr} ASC {nulls}".strip())
    return ", ".join([*parts, "id"])


# $1 now, $2 care teams (NULL: every team), $3 program (NULL: any), $4 days needed,
# $5 seconds needed, $6 interactive needed, $7 the activities that are interactive (the code
# table's); a segment's condition adds its own parameters.
# Patients are taken by care team; the parts the sort and the filter need are made for
# each of them (``everyone``), the page is cut, and the other parts are made for its rows
# only (``page``). Each part probes the patient's own index range (patient_days' primary
# key, time_entries_patient, the open-episode index, patient_metric_last's key): the cost
# is linear in the team, whatever the size of the whole population.
_PANEL_SQL = """
WITH zone AS MATERIALIZED (
    SELECT z.timezone, z.local_now::date AS today,
           date_trunc('month', z.local_now) AT TIME ZONE z.timezone AS month_from,
           (date_trunc('month', z.local_now) + interval '1 month') AT TIME ZONE z.timezone
               AS month_to
      FROM (SELECT t.timezone, $1::timestamptz AT TIME ZONE t.timezone AS local_now
              FROM (SELECT DISTINCT timezone FROM patients
                     WHERE $2::text[] IS NULL OR care_team = ANY($2::text[])) t) z
), pl AS (
    SELECT p.id, p.display_name, p.programs, p.care_team, p.timezone,
           p.monitoring_started_on, zone.today, zone.month_from, zone.month_to
      FROM patients p JOIN zone ON zone.timezone = p.timezone
     WHERE ($2::text[] IS NULL OR p.care_team = ANY($2::text[]))
       AND ($3::text IS NULL OR $3::text = ANY(p.programs))
       {segment}
), everyone AS MATERIALIZED (
    SELECT x.*{first_columns} FROM pl x {first_joins}
), page AS MATERIALIZED (
    SELECT everyone.*, count(*) OVER () AS total FROM everyone
     WHERE {flag}
     ORDER BY {order}
     LIMIT {limit} OFFSET {offset}
)
SELECT x.id, x.display_name, x.programs, x.care_team, x.timezone, x.today, x.total,
       start, pstart, days, seconds, interactive, open_alerts, top_rank, last_at,
       {needs_readings} AS needs_readings, {needs_time} AS needs_time
  FROM (SELECT x.*{then_columns} FROM page x {then_joins}) x
 ORDER BY {order}
"""


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """What to show: whose patients, which of them, in what order, which page."""

    teams: frozenset[str] | None  # None: every team
    program: str | None = None
    segment: SegmentSpec | None = None
    flag: FlagFilter | None = None
    sort: SortKey = "name"
    direction: Direction = "asc"
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class PanelRow:
    patient_id: str
    display_name: str  # PHI: shown on the dashboard, never logged
    programs: list[str]
    care_team: str | None
    timezone: str
    today: date  # in the patient's time zone
    start: date | None  # where device periods count from (None: not started)
    days: int  # days with readings in the current device period
    seconds: int  # logged this calendar month (local), deleted entries left out
    interactive: bool  # a real-time interactive communication this month
    open_alerts: int
    top_rank: int  # rpm.domain.Severity value of the most severe open alert (0: none)
    last_at: datetime | None  # the newest reading of any metric
    needs_readings: bool
    needs_time: bool


def statement(now: datetime, q: PanelQuery, t: Thresholds) -> tuple[str, list[Any]]:
    """The panel's one statement and its parameters."""
    params: list[Any] = [
        now,
        None if q.teams is None else sorted(q.teams),
        q.program,
        t.days_needed,
        t.minutes_needed * 60,
        t.interactive_needed,
        sorted(t.interactive_activities),
    ]
    segment = ""
    if q.segment is not None:
        # The segment's facts for this team's patients only ($1 and $2 are FACTS_SQL's too).
        where = segment_spec.compile_where(q.segment.where, params)
        segment = f"AND p.id IN (SELECT f.patient_id FROM ({FACTS_SQL}) f WHERE {where})"
    params += [q.limit, q.offset]
    n = len(params)
    first = _SORTS[q.sort][1]
    flag, needed = _FLAGS[q.flag] if q.flag else ("true", ())
    now_parts = [k for k in _PARTS if k in (*first, *needed)]
    then_parts = [k for k in _PARTS if k not in now_parts]
    sql = _PANEL_SQL.format(
        segment=segment,
        first_columns="".join(f", {_PARTS[k][0]}" for k in now_parts),
        first_joins="\n".join(
            _OPEN_FOR_EVERYONE if k == "open" else _PARTS[k][1] for k in now_parts
        ),
        then_columns="".join(f", {_PARTS[k][0]}" for k in then_parts),
        then_joins="\n".join(_PARTS[k][1] for k in then_parts),
        flag=flag,
        order=_order_by(q.sort, q.direction),
        limit=f"${n - 1}::int",
        offset=f"${n}::int",
        needs_readings=_NEEDS_READINGS,
        needs_time=_NEEDS_TIME,
    )
    return sql, params


async def panel(
    conn: Conn, now: datetime, q: PanelQuery, t: Thresholds
) -> tuple[int, list[PanelRow]]:
    """(patients matching, the page of them) at ``now``."""
    sql, params = statement(now, q, t)
    async with over_everyone(conn):
        rows = await conn.fetch(sql, *params)
    total = int(rows[0]["total"]) if rows else await _total_past_end(conn, sql, params, q)
    return total, [
        PanelRow(
            patient_id=r["id"],
            display_name=r["display_name"],
            programs=list(r["programs"]),
            care_team=r["care_team"],
            timezone=r["timezone"],
            today=r["today"],
            start=r["start"],
            days=r["days"],
            seconds=r["seconds"],
            interactive=r["interactive"],
            open_alerts=r["open_alerts"],
            top_rank=r["top_rank"],
            last_at=r["last_at"],
            needs_readings=r["needs_readings"],
            needs_time=r["needs_time"],
        )
        for r in rows
    ]


async def _total_past_end(conn: Conn, sql: str, params: list[Any], q: PanelQuery) -> int:
    """The count when the page is empty: 0 on the first page, else the first row's count."""
    if q.offset == 0:
        return 0
    async with over_everyone(conn):
        rows = await conn.fetch(sql, *params[:-2], 1, 0)
    return int(rows[0]["total"]) if rows else 0


async def latest_values(
    conn: Conn, patient_ids: Sequence[str]
) -> dict[str, list[tuple[str, datetime, dict[str, Any]]]]:
    """The newest reading of each metric of each patient: (metric, measured at, values)."""
    rows = await conn.fetch(
        f"""SELECT m.patient_id, m.metric, m.measured_at, v.v1, v.v2, v.v3
             FROM patient_metric_last m
             LEFT JOIN LATERAL (
                 SELECT r.v1, r.v2, r.v3 FROM readings r
                  WHERE {of_patient("m.patient_id", "r")} AND r.measured_at = m.measured_at
                    AND r.metric = m.metric::rpm_metric
                  LIMIT 1
             ) v ON true
            WHERE m.patient_id = ANY($1::text[])
            ORDER BY m.patient_id, m.metric""",
        list(patient_ids),
    )
    out: dict[str, list[tuple[str, datetime, dict[str, Any]]]] = {}
    for r in rows:
        out.setdefault(r["patient_id"], []).append(
            (
                r["metric"],
                r["measured_at"],
                {} if r["v1"] is None else row_values(r),
            )
        )
    return out


async def care_teams(conn: Conn, teams: frozenset[str] | None) -> list[tuple[str, str]]:
    """(id, title) of the care teams a caller may pick (None: every team)."""
    rows = await conn.fetch(
        """SELECT id, title FROM care_teams
            WHERE $1::text[] IS NULL OR id = ANY($1::text[]) ORDER BY title, id""",
        None if teams is None else sorted(teams),
    )
    return [(r["id"], r["title"]) for r in rows]


# --- live updates ------------------------------------------------------------------------


NOTIFY_BYTES = 7000  # a payload's bound; PostgreSQL's limit is 8000 bytes


def patient_payloads(patient_ids: Iterable[str]) -> list[str]:
    """``{"patients": [...]}`` payloads naming each patient once, each under the bound
    (what ``rpm_panel_notify`` of migration 0021 does in SQL, for the ingest's statement)."""
    out: list[str] = []
    chunk: list[str] = []
    size = 0
    for pid in sorted(set(patient_ids)):
        cost = len(pid.encode()) + 4  # quotes, comma, space
        if chunk and size + cost > NOTIFY_BYTES:
            out.extend(_encoded(chunk))
            chunk, size = [], 0
        chunk.append(pid)
        size += cost
    if chunk:
        out.extend(_encoded(chunk))
    return out


def _encoded(chunk: list[str]) -> list[str]:
    payload = json.dumps({"patients": chunk})
    if len(payload.encode()) <= NOTIFY_BYTES or len(chunk) == 1:  # escapes may lengthen ids
        return [payload]
    half = len(chunk) // 2
    return [*_encoded(chunk[:half]), *_encoded(chunk[half:])]


async def notify_patients(conn: Conn, patient_ids: Sequence[str]) -> None:
    """Announce on :data:`PANEL_CHANNEL` that the panel rows of these patients changed
    (delivered at commit; chunked under the payload limit by ``rpm_panel_notify``)."""
    if patient_ids:
        await conn.execute("SELECT rpm_panel_notify($1::text[])", list(patient_ids))


def changed_patients(payload: str) -> list[str]:
    """The patient ids a notification names (``patients`` or an alert's ``patient_id``);
    none for a payload that is not ours."""
    try:
        body = json.loads(payload)
    except ValueError:
        return []
    if not isinstance(body, dict):
        return []
    ids = body.get("patients")
    if isinstance(ids, list):
        return [i for i in ids if isinstance(i, str)]
    one = body.get("patient_id")
    return [one] if isinstance(one, str) else []
