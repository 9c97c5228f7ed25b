"""Check-in questionnaires and a patient's answers as FHIR R4 resources (plain JSON). Pure.

- Questionnaire, one per built-in questionnaire (``rpm.engagement.checkins``): ``url`` is
  its canonical (``urn:rpm:questionnaire:<id>``), each question a ``choice`` item whose
  answer options are LOINC's yes and no (LA33-6, LA32-8).
- QuestionnaireResponse, one per check-in sent: ``questionnaire`` is the canonical with its
  version, ``status`` in-progress until every question is answered, then completed;
  ``authored`` is when the latest answer came; the patient is ``subject`` and ``source``
  (they answered themselves, by SMS); each item has the question as it was asked (in the
  patient's language, ``language`` of the resource) and the option chosen.

No answer is also an Observation: no LOINC code fits the questions as asked
(rpm/engagement/checkins.py says why), and an Observation without a code that means what was
asked would mislead.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rpm.engagement.checkins import QUESTION_SYSTEM, Option, Questionnaire

from .mapping import logical_id

RESPONSE_IDENTIFIER_SYSTEM = "urn:rpm:checkin"


def _coding(option: Option) -> dict[str, str]:
    return {"system": option.system, "code": option.system_code, "display": option.display}


def questionnaire(q: Questionnaire) -> dict[str, Any]:
    """The Questionnaire a check-in asks (in English; the SMS asks in the patient's language)."""
    return {
        "resourceType": "Questionnaire",
        "id": q.fhir_id,
        "url": q.url,
        "version": q.version,
        "name": q.id,
        "title": q.title,
        "status": "active",
        "subjectType": ["Patient"],
        "description": q.source,
        "item": [
            {
                "linkId": question.link_id,
                "code": [{"system": QUESTION_SYSTEM, "code": question.link_id}],
                "text": question.text["en"],
                "type": "choice",
                "required": True,
                "answerOption": [{"valueCoding": _coding(o)} for o in question.options],
            }
            for question in q.questions
        ],
    }


def questionnaire_response(
    *,
    response_id: int,
    q: Questionnaire,
    patient_id: str,
    language: str,
    answers: Mapping[str, str],
    authored: datetime,
) -> dict[str, Any]:
    """A patient's answers so far (``answers``: option code by question link id)."""
    patient = {"reference": "Patient/" + logical_id(patient_id)}
    items = []
    for question in q.questions:
        code = answers.get(question.link_id)
        if code is None:
            continue
        _, text = question.text_for(language)
        items.append(
            {
                "linkId": question.link_id,
                "text": text,
                "answer": [{"valueCoding": _coding(question.option(code))}],
            }
        )
    return {
        "resourceType": "QuestionnaireResponse",
        "id": str(response_id),
        "language": language,
        "identifier": {"system": RESPONSE_IDENTIFIER_SYSTEM, "value": str(response_id)},
        "questionnaire": q.canonical,
        "status": "completed" if q.complete(answers) else "in-progress",
        "subject": patient,
        "authored": authored.isoformat(),
        "source": patient,
        "item": items,
    }
