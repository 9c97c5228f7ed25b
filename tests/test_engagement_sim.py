"""The engagement simulation through the real parts: the API alone (its real /twilio/sms
route), the ingest pipeline, the campaign planner and the SMS worker on a pinned simulated
clock, the local Twilio stand-in. Whatever the patients do, nothing goes out in quiet hours,
over the cap or without consent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rpm.settings import Settings
from simulators import engagement_sim
from simulators.traffic import SimConfig, SimPatient, build_plan
from simulators.twilio_sink import TwilioSink

START = datetime(2026, 5, 4, 0, 0, tzinfo=UTC)  # a Monday


def patients(n: int) -> list[SimPatient]:
    plan = build_plan(SimConfig(patients=n, start=START, end=START + timedelta(hours=1), seed=11))
    return list(plan.patients)


async def test_a_simulated_week_of_campaigns_keeps_every_promise(
    server_settings: Settings, twilio: TwilioSink
) -> None:
    report = await engagement_sim.run_with_server(
        server_settings, twilio, patients(40), start=START, days=7, seed=3
    )
    assert report.violations == {
        "quiet_hour_violations": 0,
        "cap_violations": 0,
        "consent_violations": 0,
    }
    assert report.messages_sent > 0
    assert report.replies_sent > 0
    everyone = report.figures[0]
    assert everyone["segment"] == "*"
    assert everyone["patients"] == 40
    assert everyone["messages_out"] == report.messages_sent
    assert everyone["replies"] == report.replies_sent  # each reply a touch, at its time
    assert 0.05 < everyone["reply_rate"] < 0.5
    # Days with readings alone put a patient measuring on ~70% of days near 250 a year.
    assert 100 < everyone["interactions_per_patient_year"] < 600
    by_reason = report.outcomes
    assert by_reason.get("sent", 0) == report.messages_sent
    assert set(by_reason) <= {
        "sent",
        "pending",
        "expired",
        "quiet hours",
        "daily cap",
        "no SMS consent",
        "opted out",
        "open high or critical alert",
    }
    text = engagement_sim.render(report)
    assert "simulated uplift is not clinical evidence" in text
    assert "sent in quiet hours 0, over the daily cap 0, without consent 0" in text


def test_behaviours_come_from_the_seed_alone() -> None:
    fleet = patients(30)
    assert engagement_sim.draw_behaviours(fleet, 5) == engagement_sim.draw_behaviours(fleet, 5)
    assert engagement_sim.draw_behaviours(fleet, 5) != engagement_sim.draw_behaviours(fleet, 6)
