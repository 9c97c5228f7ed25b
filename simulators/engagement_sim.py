"""Engagement on the simulated clock: virtual patients who measure, get campaign messages,
ignore some, act on others and reply, through the real server parts.

Every hour of simulated time (a pinned clock, never the wall clock):

1. the patients' readings of that hour go through the real ingest pipeline (rules, alerts,
   days with readings);
2. the real campaign planner plans the live campaigns (``rpm.workers.campaigns``);
3. the real SMS worker sends what is due through the gate (consent, opt-out, quiet hours, the
   daily cap, crisis exclusion) to the local Twilio stand-in;
4. each patient reacts to the messages Twilio accepted for them, by the behaviour model
   below: a nudge may make them measure within two hours; a message may get a reply, posted
   as a signed Twilio webhook to the server's real ``/twilio/sms`` route.

The behaviour model is stated here, not fitted to anything: each patient measures on a day
with their own probability (drawn around 0.7), at their own habitual local hour; a fifth skip
weekends; a nudge is acted on by "responders" (60% of patients) with probability 0.4 within
two hours, and ignored by the rest; a message gets a reply with probability 0.2. These are
assumptions for exercising the program, not evidence. (Text-message reminders roughly doubled
the odds of medication adherence in a meta-analysis of trials: Thakkar J et al., JAMA Intern
Med 2016;176(3):340-349; the model's effect is of that order, and the simulated uplift is not
clinical evidence of anything.)

Afterwards the report reads the figures the server computes (interactions per patient-year,
reply rate, adherence per segment) and checks, by its own queries over what was sent, that
no message went out in a patient's quiet hours (non-urgent ones), over the daily cap, or to
a patient without consent or opted out: each must be 0.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import numpy as np

from alerts.sms import TwilioSms
from rpm.domain import RawMessage
from rpm.pipeline import IngestPipeline
from rpm.settings import Settings
from rpm.storage import campaigns as campaign_store
from rpm.storage import engagement as store
from rpm.storage import registry
from rpm.storage import segments as segment_store
from rpm.storage.pool import Conn
from rpm.validation import ClockPolicy
from rpm.workers.campaigns import CampaignPlanner
from rpm.workers.sms_config import DeliveryConfig
from rpm.workers.sms_outbox import SmsOutboxWorker
from simulators.engagement_examples import publish_examples
from simulators.patients import DEVICE_METRICS
from simulators.traffic import SimPatient

RESPONDER_SHARE = 0.6
NUDGE_RESPONSE = 0.4  # a responder measures within two hours of a nudge, this often
REPLY_RATE = 0.2
WEEKEND_SKIPPER_SHARE = 0.2
NO_CONSENT_SHARE = 0.05
OPTED_OUT_SHARE = 0.03
NUDGE_CAMPAIGNS = frozenset({"bp-morning-nudge"})  # messages that ask for a reading
REPLIES = ("Thanks", "OK, will do", "Got it, thank you")


@dataclass(frozen=True, slots=True)
class Behaviour:
    adherence: float  # probability of measuring on a day
    weekend_skipper: bool
    hour: int  # habitual local hour of measuring
    responder: bool  # acts on nudges
    consent: bool
    opted_out: bool


def draw_behaviours(patients: Sequence[SimPatient], seed: int) -> dict[str, Behaviour]:
    """Each patient's behaviour, from the seed alone."""
    rng = np.random.default_rng([seed, 0xE16A])
    out = {}
    for p in patients:
        out[p.patient_id] = Behaviour(
            adherence=float(rng.beta(7.0, 3.0)),  # mean 0.7
            weekend_skipper=bool(rng.random() < WEEKEND_SKIPPER_SHARE),
            hour=int(rng.integers(7, 11)),
            responder=bool(rng.random() < RESPONDER_SHARE),
            consent=bool(rng.random() >= NO_CONSENT_SHARE),
            opted_out=bool(rng.random() < OPTED_OUT_SHARE),
        )
    return out


# Plausible, unremarkable values per metric (the engagement run is about behaviour; the
# scenarios of simulators/scenarios are for the clinical runs).
def _values(metric: str, rng: np.random.Generator) -> dict[str, float]:
    match metric:
        case "blood_pressure":
            return {
                "systolic": float(round(rng.normal(128, 8))),
                "diastolic": float(round(rng.normal(80, 5))),
            }
        case "weight":
            return {"weight": float(round(rng.normal(82, 0.4), 1))}
        case "spo2":
            return {"spo2": float(round(min(99.0, rng.normal(96, 1))))}
        case "glucose":
            return {"glucose": float(round(rng.normal(115, 12)))}
        case _:
            return {"body_temperature": float(round(rng.normal(36.8, 0.2), 1))}


@dataclass(slots=True)
class EngagementReport:
    days: float
    patients: int
    messages_sent: int
    replies_sent: int
    nudges_acted_on: int
    figures: list[dict[str, Any]]
    violations: dict[str, int]
    outcomes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "engagement_days": self.days,
            "engagement_patients": self.patients,
            "engagement_messages_sent": self.messages_sent,
            "engagement_replies": self.replies_sent,
            "engagement_nudges_acted_on": self.nudges_acted_on,
            "engagement_by_segment": self.figures,
            "engagement_outcomes": self.outcomes,
            **{f"engagement_{k}": v for k, v in self.violations.items()},
        }


async def enrol(
    conn: Conn,
    patients: Sequence[SimPatient],
    behaviours: Mapping[str, Behaviour],
    since: datetime,
) -> None:
    """The patients and their devices, with consent and opt-out as the behaviours say. Each
    gets a phone of its own (the traffic plan's fictional numbers repeat), so a reply is
    attributed to the patient who sent it."""
    for i, p in enumerate(patients):
        b = behaviours[p.patient_id]
        await registry.upsert_patient(
            conn,
            patient_id=p.patient_id,
            display_name=p.display_name,
            phone=phone_of(i),
            sms_consent=b.consent,
            programs=list(p.programs),
            timezone=p.timezone,
            language=p.language,
        )
        await conn.execute(
            "UPDATE patients SET created_at = $2, sms_opted_out_at = $3 WHERE id = $1",
            p.patient_id,
            since,
            since if b.opted_out else None,
        )
        for d in p.devices:
            await registry.enroll_device(
                conn, device_id=d.device_id, kind=d.kind, patient_id=p.patient_id, since=since
            )


def phone_of(i: int) -> str:
    """A fictional number per patient: +1 555 01xx numbers in area codes 201 and up."""
    return f"+1{201 + i // 100}55501{i % 100:02d}"


class EngagementRun:
    """One run: ``step`` advances an hour; ``report`` reads the figures and checks."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        channel: Any,
        sink: Any,
        inbound_url: str,
        patients: Sequence[SimPatient],
        seed: int,
    ) -> None:
        self.pool, self.settings, self.sink = pool, settings, sink
        self.inbound_url = inbound_url
        self.patients = {p.patient_id: p for p in patients}
        self.behaviours = draw_behaviours(patients, seed)
        self.rng = np.random.default_rng([seed, 0xE16B])
        self.now = datetime.now(UTC)
        self.pipeline = IngestPipeline(pool, ClockPolicy(), now=lambda: self.now, rules_refresh_s=0)
        self.planner = CampaignPlanner(pool, settings.sms.daily_cap, clock=lambda: self.now)
        self.worker = SmsOutboxWorker(
            pool,
            channel,
            DeliveryConfig.from_settings(settings.sms, settings.api),
            clock=lambda: self.now,
        )
        self.phones = {phone_of(i): p.patient_id for i, p in enumerate(patients)}
        self.measure_days: dict[tuple[str, str], bool] = {}
        self.extra: dict[str, list[datetime]] = defaultdict(list)  # nudged readings due
        self.measured_today: dict[tuple[str, str], bool] = {}
        self.seen_messages = 0
        self.replies = 0
        self.nudges_acted_on = 0

    def _local_day(self, patient_id: str, at: datetime) -> str:
        return at.astimezone(ZoneInfo(self.patients[patient_id].timezone)).date().isoformat()

    def _measures_on(self, patient_id: str, at: datetime) -> bool:
        day = self._local_day(patient_id, at)
        key = (patient_id, day)
        if key not in self.measure_days:
            b = self.behaviours[patient_id]
            weekend = datetime.fromisoformat(day).weekday() >= 5
            self.measure_days[key] = not (b.weekend_skipper and weekend) and bool(
                self.rng.random() < b.adherence
            )
        return self.measure_days[key]

    def _readings(self, start: datetime, end: datetime) -> list[RawMessage]:
        out = []
        for pid, p in self.patients.items():
            b = self.behaviours[pid]
            local = start.astimezone(ZoneInfo(p.timezone))
            times = []
            if local.hour == b.hour and self._measures_on(pid, start):
                times.append(start + timedelta(minutes=int(self.rng.integers(0, 60))))
            times += [t for t in self.extra.get(pid, []) if start <= t < end]
            for at in times:
                self.measured_today[(pid, self._local_day(pid, at))] = True
                for d in p.devices:
                    for metric in DEVICE_METRICS[d.kind]:
                        body = json.dumps(
                            {
                                "metric": metric,
                                "measured_at": at.replace(microsecond=0).isoformat(),
                                "values": _values(metric, self.rng),
                            }
                        ).encode()
                        out.append(
                            RawMessage(
                                "mqtt",
                                "canonical",
                                d.device_id,
                                body,
                                at,
                                f"rpm/v1/devices/{d.device_id}/readings",
                            )
                        )
        return out

    async def step(self, start: datetime) -> None:
        """One simulated hour from ``start``."""
        end = start + timedelta(hours=1)
        batch = self._readings(start, end)
        self.now = end
        for i in range(0, len(batch), 500):
            await self.pipeline.process(batch[i : i + 500])
        await self.planner.tick(end)
        while await self.worker.drain_once():
            pass
        await self._react(end)

    async def _react(self, now: datetime) -> None:
        sent = self.sink.messages[self.seen_messages :]
        self.seen_messages += len(sent)
        if not sent:
            return
        async with self.pool.acquire() as conn:
            campaigns: dict[str, str | None] = dict(
                await conn.fetch(  # type: ignore[arg-type]
                    """SELECT m.twilio_sid, o.payload->>'campaign' FROM sms_messages m
                         JOIN outbox o ON o.id = m.outbox_id
                        WHERE m.twilio_sid = ANY($1::text[])""",
                    [m.sid for m in sent],
                )
            )
        for m in sent:
            pid = self.phones.get(m.to)
            if pid is None:
                continue
            campaign = campaigns.get(m.sid)
            b = self.behaviours[pid]
            if (
                campaign in NUDGE_CAMPAIGNS
                and b.responder
                and not self.measured_today.get((pid, self._local_day(pid, now)))
                and self.rng.random() < NUDGE_RESPONSE
            ):
                self.extra[pid].append(now + timedelta(minutes=int(self.rng.integers(10, 120))))
                self.nudges_acted_on += 1
            if self.rng.random() < REPLY_RATE:
                reply = REPLIES[int(self.rng.integers(0, len(REPLIES)))]
                await self.sink.send_inbound(self.inbound_url, from_=m.to, body=reply)
                self.replies += 1

    async def report(self, start: datetime, end: datetime) -> EngagementReport:
        days = (end - start).total_seconds() / 86400
        async with self.pool.acquire() as conn:
            current = await segment_store.current_segments(conn)
            window = max(7, math.ceil(days))
            figures = await store.engagement(conn, end, current, None, window)
            violations = await violations_of(conn, start, end, self.settings.sms.daily_cap)
            outcomes: dict[str, int] = dict(
                await conn.fetch(  # type: ignore[arg-type]
                    """SELECT CASE WHEN delivered_at IS NOT NULL THEN 'sent'
                                   ELSE coalesce(last_error, 'pending') END, count(*)
                         FROM outbox WHERE channel = 'sms' GROUP BY 1 ORDER BY 1"""
                )
            )
        return EngagementReport(
            days=days,
            patients=len(self.patients),
            messages_sent=self.seen_messages,
            replies_sent=self.replies,
            nudges_acted_on=self.nudges_acted_on,
            figures=figures,
            violations=violations,
            outcomes={str(k): int(v) for k, v in outcomes.items()},
        )


async def violations_of(
    conn: Conn, start: datetime, end: datetime, daily_cap: int
) -> dict[str, int]:
    """What must never happen, counted from what was sent (by its own SQL, not the gate's):
    a non-urgent patient message in the patient's quiet hours; a message over the daily cap
    (a campaign message after ``daily_cap`` messages of any kind that local day, or a
    non-urgent alert message after ``daily_cap`` of those: alerts first); a message to a
    patient without consent or after their opt-out."""
    row = await conn.fetchrow(
        """WITH sent AS (
               SELECT m.id, m.patient_id, m.created_at AS at,
                      coalesce((o.payload->>'urgent')::boolean, true) AS urgent,
                      coalesce(o.payload->>'template', '') = 'campaign' AS campaign,
                      p.timezone, p.quiet_hours_start AS qs, p.quiet_hours_end AS qe,
                      p.sms_consent, p.sms_opted_out_at
                 FROM sms_messages m JOIN outbox o ON o.id = m.outbox_id
                 JOIN patients p ON p.id = m.patient_id
                WHERE m.direction = 'outbound' AND m.twilio_sid IS NOT NULL
                  AND m.staff_id IS NULL AND m.created_at >= $1 AND m.created_at <= $2
           ), local AS (
               SELECT *, (at AT TIME ZONE timezone)::time AS t,
                      (at AT TIME ZONE timezone)::date AS day FROM sent
           ), counted AS (
               SELECT *,
                      count(*) OVER earlier AS before_all,
                      count(*) FILTER (WHERE NOT urgent AND NOT campaign) OVER earlier
                          AS before_alerts
                 FROM local
               WINDOW earlier AS (PARTITION BY patient_id, day ORDER BY at, id
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
           )
           SELECT
             count(*) FILTER (WHERE NOT urgent AND qs <> qe AND
                 CASE WHEN qs < qe THEN t >= qs AND t < qe ELSE t >= qs OR t < qe END)
                 AS quiet_hour_violations,
             count(*) FILTER (WHERE (campaign AND before_all >= $3)
                 OR (NOT campaign AND NOT urgent AND before_alerts >= $3)) AS cap_violations,
             count(*) FILTER (WHERE NOT sms_consent
                 OR (sms_opted_out_at IS NOT NULL AND sms_opted_out_at <= at))
                 AS consent_violations
             FROM counted""",
        start,
        end,
        daily_cap,
    )
    assert row is not None
    return {k: int(v) for k, v in dict(row).items()}


async def run_engagement(
    pool: asyncpg.Pool,
    settings: Settings,
    channel: Any,
    sink: Any,
    inbound_url: str,
    patients: Sequence[SimPatient],
    *,
    start: datetime,
    days: float,
    seed: int,
    app: Any = None,
) -> EngagementReport:
    """Enrol the patients, publish the example segments and campaigns (all live), and step
    ``days`` of simulated hours from ``start``. ``app``: the API serving ``inbound_url``,
    whose clock is pinned to the simulated one (replies are recorded at simulated times)."""
    start = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    run = EngagementRun(pool, settings, channel, sink, inbound_url, patients, seed)
    if app is not None:
        app.state.clock = lambda: run.now
    async with pool.acquire() as conn:
        await enrol(conn, patients, run.behaviours, start - timedelta(days=1))
        await publish_examples(conn)
        for c in await campaign_store.current_campaigns(conn):  # the simulation runs them all
            await campaign_store.publish_campaign(
                conn, c.name, c.spec, True, "system:simulate", None
            )
    hours = int(days * 24)
    for h in range(hours):
        await run.step(start + timedelta(hours=h))
    return await run.report(start, start + timedelta(hours=hours))


def render(report: EngagementReport) -> str:
    """The report as a table for people."""
    lines = [
        f"Engagement over {report.days:g} simulated days, {report.patients} patients "
        "(stated behaviour model; simulated uplift is not clinical evidence):",
        f"  messages sent {report.messages_sent}, replies {report.replies_sent}, "
        f"nudges acted on {report.nudges_acted_on}",
        "  segment                  patients  per patient-year  reply rate  "
        "reading days per patient-week, oldest first",
    ]
    for f in report.figures:
        rate = f["interactions_per_patient_year"]
        reply = f["reply_rate"]
        weeks = " ".join(
            "-" if w is None else f"{w:.1f}" for w in f["reading_days_per_patient_week"]
        )
        lines.append(
            f"  {f['segment']:<24} {f['patients']:>8}  {'-' if rate is None else rate:>16}  "
            f"{'-' if reply is None else f'{reply:.0%}':>10}  {weeks}"
        )
    v = report.violations
    lines.append(
        f"  sent in quiet hours {v['quiet_hour_violations']}, over the daily cap "
        f"{v['cap_violations']}, without consent {v['consent_violations']} (each must be 0)"
    )
    shown = ", ".join(f"{k} {n}" for k, n in report.outcomes.items())
    lines.append(f"  outbox outcomes: {shown}")
    return "\n".join(lines)


async def run_with_server(
    settings: Settings,
    sink: Any,
    patients: Sequence[SimPatient],
    *,
    start: datetime,
    days: float,
    seed: int,
) -> EngagementReport:
    """Start the API alone (no wall-clock workers: this run's planner and SMS worker keep the
    simulated clock) on ``settings``' fresh database, run, stop."""
    from rpm.server import Server  # the server is started only when this phase runs

    server = Server(settings, roles=["api"])
    await server.start()
    channel = TwilioSms(
        account_sid=settings.sms.account_sid,
        auth_token=settings.sms.auth_token.get_secret_value(),
        from_number=settings.sms.from_number,
        base_url=settings.sms.base_url,
        validity_period_s=settings.sms.validity_period_s,
    )
    try:
        assert server.pool is not None
        return await run_engagement(
            server.pool,
            settings,
            channel,
            sink,
            settings.api.public_url("/twilio/sms"),
            patients,
            start=start,
            days=days,
            seed=seed,
            app=server.app,
        )
    finally:
        await channel.close()
        await server.stop()
