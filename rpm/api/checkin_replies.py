"""A patient's SMS reply to a check-in question: parse, store, ask the next question, let the
answers propose an alert; or hand what nobody could parse to the nurse's inbox.

Called by the inbound webhook (rpm/api/twilio_hooks.py) inside its one transaction, after
keywords. The decisions are pure (``rpm.engagement.checkins.parse_reply``,
``alerts.symptoms.propose``, ``alerts.policy.decide``); this module feeds them and writes what
they decide. Bodies are patient data: logs name ids only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from alerts import policy, symptoms
from alerts.lifecycle import Action
from rpm.domain import Severity
from rpm.engagement import checkins
from rpm.engagement.checkins import Answer, Questionnaire
from rpm.fhir.questionnaires import questionnaire_response
from rpm.pipeline.outbox_items import patient_sms_payload
from rpm.storage import alert_reads
from rpm.storage import alerts as alert_store
from rpm.storage import checkins as checkin_store
from rpm.storage import engagement as engagement_store
from rpm.storage import outbox as outbox_store
from rpm.storage import readings as reading_store
from rpm.storage import sms as sms_store
from rpm.storage.pool import Conn

log = logging.getLogger(__name__)

NO_CHECKIN = "free text, no check-in waiting for a reply"
WEIGHTS_READ = 60  # newest weights looked at (a few a day over the rule's window)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the patient is answered by TwiML (None: nothing; the next question follows)."""

    text: str | None


async def touch(
    conn: Conn,
    patient_id: str,
    sid: str | None,
    sms_id: int | None,
    at: datetime,
    sender: str = "",
) -> None:
    """The reply in the interaction ledger, once per message (a retried webhook adds none),
    on the channel it came by (Twilio posts WhatsApp messages from ``whatsapp:`` addresses)."""
    ref = f"sms:{sid}" if sid else (f"sms-id:{sms_id}" if sms_id is not None else None)
    if ref is None:
        return
    channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
    await engagement_store.record(
        conn, [engagement_store.Interaction(patient_id, at, "reply", channel, "inbound", ref)]
    )


async def answers_keyword(
    conn: Conn, patients: Sequence[sms_store.PatientSms], body: str, at: datetime
) -> bool:
    """Whether an opt-in keyword (Twilio's YES) is rather the answer to an open check-in of
    a patient who is not opted out (opting them in would change nothing)."""
    opted_in = [p.patient_id for p in patients if p.opted_out_at is None]
    prompt = await checkin_store.waiting_prompt(conn, opted_in, at)
    if prompt is None:
        return False
    q = checkins.QUESTIONNAIRES.get(prompt.questionnaire)
    return q is not None and isinstance(
        checkins.parse_reply(q.question(prompt.link_id), body), Answer
    )


async def handle(
    conn: Conn,
    patient_ids: Sequence[str],
    *,
    sid: str | None,
    body: str,
    at: datetime,
    emergency_number: str,
    sender: str = "",
    media: Sequence[Mapping[str, str]] = (),
) -> Reply | None:
    """Apply a reply to the open check-in of one of ``patient_ids``; None when none waits."""
    prompt = await checkin_store.waiting_prompt(conn, patient_ids, at)
    q = checkins.QUESTIONNAIRES.get(prompt.questionnaire) if prompt else None
    if prompt is None or q is None:
        return None
    question = q.question(prompt.link_id)
    sms_id = await sms_store.record_inbound(
        conn, sid=sid, patient_id=prompt.patient_id, alert_id=None, body=body, media=media
    )
    if sms_id is None:  # Twilio retried a webhook we answered: nothing more to do
        return Reply(None)
    await touch(conn, prompt.patient_id, sid, sms_id, at, sender)
    parsed = checkins.parse_reply(question, body)
    if not isinstance(parsed, Answer):
        await checkin_store.unreadable(conn, prompt.id)
        await checkin_store.add_to_inbox(
            conn,
            patient_id=prompt.patient_id,
            sms_id=sms_id,
            prompt_id=prompt.id,
            reason=f"unparseable answer ({parsed.reason})",
            at=at,
        )
        log.info("checkin prompt %s: reply %s not an answer: %s", prompt.id, sms_id, parsed.reason)
        return Reply(checkins.not_read(prompt.language, emergency_number))
    response = await checkin_store.record_answer(
        conn, prompt.response_id, question.link_id, parsed.option.code, sms_id, at
    )
    await checkin_store.answered(conn, prompt.id, at)
    codes = response.codes()
    resource = questionnaire_response(
        response_id=response.id,
        q=q,
        patient_id=response.patient_id,
        language=response.language,
        answers=codes,
        authored=at,
    )
    await checkin_store.save_resource(conn, response.id, resource["status"], resource)
    done = q.complete(codes)
    if not done:
        await _ask_next(conn, response, q, codes, at)
    rules = _RULES.get(q.id)
    if rules is not None:
        await rules(conn, response, codes, at)
    log.info(
        "checkin %s: patient=%s answered %s (%s)",
        response.id,
        response.patient_id,
        question.link_id,
        resource["status"],
    )
    return Reply(checkins.thanks(response.language, emergency_number) if done else None)


async def _ask_next(
    conn: Conn,
    response: checkin_store.Response,
    q: Questionnaire,
    codes: Mapping[str, str],
    at: datetime,
) -> None:
    """Queue the first unanswered question, through the outbox and the patient's SMS gate."""
    following = next(x for x in q.questions if x.link_id not in codes)
    if response.campaign is None or response.campaign_version is None:
        return
    payload: dict[str, Any] = {
        "recipient": "patient",
        "template": "campaign",
        "patient_id": response.patient_id,
        "campaign": response.campaign,
        "version": response.campaign_version,
        "occurrence": f"response:{response.id}",
        "urgent": False,
        "context": {},
        "checkin_question": following.link_id,
        "response_id": response.id,
    }
    key = f"checkin:{response.id}:{following.link_id}"
    await outbox_store.enqueue(conn, [("sms", key, payload)], at=at)


# --- rules -------------------------------------------------------------------------------


async def _hf_congestion(
    conn: Conn, response: checkin_store.Response, codes: Mapping[str, str], at: datetime
) -> None:
    """Heart-failure answers with the patient's weights and open alerts (alerts/symptoms.py),
    through the alert policy and store like any rule's candidate."""
    patient_id = response.patient_id
    stored = await reading_store.for_patient(
        conn, patient_id, metrics=["weight"], limit=WEIGHTS_READ
    )
    weights = [
        (s.accepted.reading.measured_at, float(s.accepted.reading.values["weight"]))
        for s in stored
        if "weight" in s.accepted.reading.values
    ]
    unresolved = await alert_reads.listing(
        conn, states=["open", "acknowledged"], patient_id=patient_id, limit=200
    )
    open_rules = {str(a["rule_id"]): Severity[str(a["severity"])] for a in unresolved}
    report = symptoms.Report(patient_id, response.id, at, codes)
    candidate = symptoms.propose(report, weights, open_rules)
    if candidate is None:
        return
    key = (patient_id, candidate.rule_id)
    decisions = policy.decide(
        [candidate],
        await alert_store.open_episodes(conn, [key]),
        await alert_store.snoozes(conn, [key], at),
    )
    applied = await alert_store.apply(conn, decisions)
    sms: list[tuple[str, str, dict[str, Any]]] = []
    notes = []
    for a in applied:
        d = a.decision
        if d.notify_patient:
            payload = patient_sms_payload(a.alert_id, d.candidate, template="alert")
            sms.append(("sms", f"sms:alert:{a.alert_id}:open", payload))
        if d.action in (Action.OPEN, Action.ESCALATE):
            notes.append(
                alert_store.change(
                    a.alert_id, patient_id, d.action, d.new_state, d.candidate.severity
                )
            )
            log.info(
                "alert %s %s patient=%s rule=%s severity=%s (check-in %s)",
                a.alert_id,
                d.action.value,
                patient_id,
                d.candidate.rule_id,
                d.candidate.severity.name,
                response.id,
            )
    await outbox_store.enqueue(conn, sms, at=at)
    await alert_store.notify(conn, notes)


_RULES: Mapping[
    str,
    Callable[[Conn, checkin_store.Response, Mapping[str, str], datetime], Any],
] = MappingProxyType({"hf_symptoms": _hf_congestion})
