"""What an SMS outbox item says: the text of each template (alerts, escalations, campaigns
and check-in questions) in the recipient's language. Pure; the worker
(``rpm/workers/sms_outbox.py``) gathers what it needs and sends the result."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from alerts import templates
from alerts.sms_policy import Recipient, SmsWork
from rpm.domain.errors import BadWork
from rpm.engagement import campaigns as campaign_spec
from rpm.engagement import checkins
from rpm.engagement.campaigns import CampaignSpec


@dataclass(frozen=True, slots=True)
class RenderContext:
    """What rendering needs besides the payload."""

    recipient: Recipient
    at: datetime  # when the cause was committed
    now: datetime
    alert: Mapping[str, Any] | None
    emergency_number: str
    dashboard_url: str
    campaign: CampaignSpec | None = None
    service: str = "Home Health Monitoring"  # the care team's service name


def _render_alert(work: SmsWork, c: RenderContext) -> str:
    assert work.severity is not None
    return templates.patient_alert(
        severity=work.severity,
        advice=work.advice,
        language=c.recipient.language,
        at=c.at,
        now=c.now,
        zone=c.recipient.zone,
        service=c.service,
        emergency_number=c.emergency_number,
    )


def _render_escalation(work: SmsWork, c: RenderContext) -> str:
    assert work.severity is not None
    assert work.alert_id is not None
    opened: datetime = c.alert["opened_at"] if c.alert else c.at
    title = work.title or (str(c.alert["title"]) if c.alert else "")
    return templates.escalation(
        alert_id=work.alert_id,
        severity=work.severity,
        title=title,
        patient_id=work.patient_id or (str(c.alert["patient_id"]) if c.alert else "?"),
        tier=work.tier or 1,
        minutes_unacknowledged=max(0, int((c.now - opened).total_seconds() // 60)),
        link=f"{c.dashboard_url.rstrip('/')}/?alert={work.alert_id}",
    )


def _render_legacy(work: SmsWork, c: RenderContext) -> str:
    return work.body or ""


def _render_campaign(work: SmsWork, c: RenderContext) -> str:
    assert c.campaign is not None
    message = campaign_spec.render(c.campaign.message_for(c.recipient.language), work.context)
    asked = asked_in(work, c.campaign, c.recipient.language)
    if asked is None:
        return message
    # The campaign's message introduces the first question only.
    intro = message if c.campaign.messages and work.question is None else None
    return checkins.prompt_text(asked.question, c.recipient.language, intro)[1]


@dataclass(frozen=True, slots=True)
class Asked:
    """The question a check-in SMS asks, in which language, and how long it waits."""

    questionnaire: checkins.Questionnaire
    question: checkins.Question
    language: str
    window: timedelta


def asked_in(work: SmsWork, campaign: CampaignSpec, language: str) -> Asked | None:
    if campaign.checkin is None:
        return None
    questionnaire = checkins.QUESTIONNAIRES[campaign.checkin]
    try:
        question = questionnaire.question(work.question or questionnaire.questions[0].link_id)
    except KeyError:
        raise BadWork(f"no question {work.question!r} in {questionnaire.id}") from None
    used, _ = question.text_for(language)
    return Asked(questionnaire, question, used, timedelta(hours=campaign.reply_window_hours))


def _render_consent(work: SmsWork, c: RenderContext) -> str:
    return templates.consent_confirmation(c.recipient.language, service=c.service)


def _render_remeasure(work: SmsWork, c: RenderContext) -> str:
    return templates.remeasure_request(
        c.recipient.language,
        minutes=int(work.context.get("minutes", 15)),
        at=c.at,
        now=c.now,
        zone=c.recipient.zone,
        service=c.service,
        emergency_number=c.emergency_number,
    )


RENDERERS: Mapping[str, Callable[[SmsWork, RenderContext], str]] = {
    "alert": _render_alert,
    "consent": _render_consent,
    "remeasure": _render_remeasure,
    "escalation": _render_escalation,
    "legacy": _render_legacy,
    "campaign": _render_campaign,
}


def render(work: SmsWork, context: RenderContext) -> str:
    """The message's text (``BadWork`` for a template the worker cannot render)."""
    try:
        renderer = RENDERERS[work.template]
    except KeyError:
        raise BadWork(f"no template {work.template!r}") from None
    return renderer(work, context)
