"""What ``benchmarks/engagement.py`` checks after its day, with SQL of its own: every message
the Twilio stand-in accepted, at the pinned time of the drain that sent it, against the
patients' own settings (phone, consent, opt-out, quiet hours, language, open alerts) and the
daily cap; and the outbox's outcome of every campaign message, as the worker recorded it.

Nothing here calls the code under test: the checks read the stand-in's messages, the
patients table as the population built it, and the alert SMS the population seeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_SENT_TABLE = """CREATE TEMP TABLE bench_sent (
    sid text NOT NULL, phone text NOT NULL, body text NOT NULL, sent_at timestamptz NOT NULL,
    urgent boolean NOT NULL, campaign text, language text)"""

# Every outbound message a patient got, and on which of their local days: the messages the
# stand-in accepted, plus the alert SMS the population seeded as already sent.
_DELIVERED = """
SELECT p.id AS patient_id, s.sent_at AS at, s.campaign
  FROM bench_sent s JOIN patients p ON p.phone = s.phone
UNION ALL
SELECT m.patient_id, m.created_at, NULL
  FROM sms_messages m WHERE m.twilio_sid LIKE 'SMbench%'"""

_CHECKS = f"""
WITH delivered AS ({_DELIVERED}),
per_day AS (
    SELECT d.patient_id, (d.at AT TIME ZONE p.timezone)::date AS day, count(*) AS n,
           count(*) FILTER (WHERE d.campaign IS NOT NULL) AS campaign_n
      FROM delivered d JOIN patients p ON p.id = d.patient_id
     GROUP BY 1, 2
),
sent AS (
    SELECT s.*, p.id AS patient_id, p.language AS patient_language, p.sms_consent,
           p.sms_opted_out_at, p.quiet_hours_start AS qs, p.quiet_hours_end AS qe,
           (s.sent_at AT TIME ZONE p.timezone)::time AS local_time,
           (s.sent_at AT TIME ZONE p.timezone)::date AS local_day
      FROM bench_sent s LEFT JOIN patients p ON p.phone = s.phone
)
SELECT
  (SELECT count(DISTINCT patient_id) FROM per_day WHERE n > $1) AS cap_violations,
  (SELECT coalesce(max(n), 0) FROM per_day) AS most_in_a_day,
  (SELECT count(*) FROM per_day WHERE n = $1 AND campaign_n > 0) AS days_at_cap,
  (SELECT count(*) FROM sent
    WHERE NOT urgent AND CASE WHEN qs < qe THEN local_time >= qs AND local_time < qe
               WHEN qs > qe THEN local_time >= qs OR local_time < qe
               ELSE false END) AS quiet_hour_violations,
  (SELECT count(*) FROM sent
    WHERE NOT sms_consent OR sms_opted_out_at <= sent_at) AS consent_violations,
  (SELECT count(*) FROM sent s
    WHERE NOT urgent AND EXISTS (
        SELECT 1 FROM alerts a
         WHERE a.patient_id = s.patient_id AND a.severity IN ('HIGH', 'CRITICAL')
           AND a.opened_at <= s.sent_at AND (a.resolved_at IS NULL OR a.resolved_at > s.sent_at)
    )) AS crisis_violations,
  (SELECT count(*) FROM sent WHERE patient_id IS NULL) AS unknown_recipients,
  (SELECT count(*) FROM sent WHERE NOT urgent AND campaign IS NULL) AS unknown_bodies,
  (SELECT count(*) FROM sent
    WHERE NOT urgent AND language IS DISTINCT FROM patient_language) AS wrong_language,
  (SELECT coalesce(sum(n - 1), 0) FROM (
      SELECT count(*) AS n FROM sent GROUP BY patient_id, campaign, local_day) x
    WHERE n > 1) AS duplicates,
  (SELECT count(*) FROM sent s JOIN sms_messages m ON m.twilio_sid = s.sid
                               JOIN outbox o ON o.id = m.outbox_id
    WHERE o.payload->>'occurrence' LIKE '____-__-__'
      AND s.local_day <> (o.payload->>'occurrence')::date) AS sent_on_a_later_day"""

# Which campaigns sent a patient two messages on one local day, and why: the occurrence
# (as the planner wrote it on the outbox row) of each.
_DUPLICATES = """
WITH sent AS (
    SELECT s.campaign, p.id AS patient_id, (s.sent_at AT TIME ZONE p.timezone)::date AS day,
           o.payload->>'occurrence' AS occurrence
      FROM bench_sent s JOIN patients p ON p.phone = s.phone
      JOIN sms_messages m ON m.twilio_sid = s.sid JOIN outbox o ON o.id = m.outbox_id
)
SELECT a.campaign, count(*) AS n,
       min(a.occurrence || ' and ' || b.occurrence || ', sent on ' || a.day) AS example
  FROM sent a JOIN sent b ON b.patient_id = a.patient_id AND b.campaign = a.campaign
                         AND b.day = a.day AND b.occurrence > a.occurrence
 GROUP BY 1 ORDER BY 1"""

# How each campaign's messages ended, as the worker recorded them on the outbox row.
_OUTCOMES = """
SELECT cs.campaign,
       CASE WHEN o.delivered_at IS NOT NULL THEN 'sent'
            WHEN o.failed_at IS NOT NULL THEN 'dropped: ' || coalesce(o.last_error, '?')
            WHEN o.last_error IS NOT NULL THEN 'waiting: ' || o.last_error
            ELSE 'waiting' END AS outcome,
       count(*) AS n
  FROM campaign_sends cs JOIN outbox o ON o.id = cs.outbox_id
 GROUP BY 1, 2 ORDER BY 1, 3 DESC"""


@dataclass(frozen=True, slots=True)
class Sent:
    """A message the stand-in accepted, at the pinned time of the drain that sent it;
    ``urgent``: the alert SMS the benchmark queued, which may break quiet hours and the cap."""

    sid: str
    phone: str
    body: str
    sent_at: datetime
    urgent: bool = False


def identify(body: str, prefixes: Mapping[tuple[str, str], str]) -> tuple[str | None, str | None]:
    """(campaign, language) of a message body, from the fixed opening of each template."""
    for (campaign, language), prefix in prefixes.items():
        if body.startswith(prefix):
            return campaign, language
    return None, None


async def check(
    conn: Any, sent: Sequence[Sent], prefixes: Mapping[tuple[str, str], str], daily_cap: int
) -> dict[str, int]:
    """The figures that must be 0 (and a few beside them)."""
    await conn.execute("DROP TABLE IF EXISTS bench_sent")
    await conn.execute(_SENT_TABLE)
    rows = [
        (s.sid, s.phone, s.body, s.sent_at, s.urgent, *identify(s.body, prefixes)) for s in sent
    ]
    await conn.copy_records_to_table("bench_sent", records=rows)
    await conn.execute("ANALYZE bench_sent")
    row = await conn.fetchrow(_CHECKS, daily_cap)
    return {k: int(v) for k, v in dict(row).items()}


async def duplicates(conn: Any) -> dict[str, tuple[int, str]]:
    """Per campaign: second messages on one local day, with an example (after ``check``)."""
    return {r["campaign"]: (int(r["n"]), r["example"]) for r in await conn.fetch(_DUPLICATES)}


async def outcomes(conn: Any) -> dict[str, dict[str, int]]:
    """Per campaign: how many messages were sent, dropped (by reason) and still waiting."""
    found: dict[str, dict[str, int]] = {}
    for r in await conn.fetch(_OUTCOMES):
        found.setdefault(r["campaign"], {})[r["outcome"]] = int(r["n"])
    return found
