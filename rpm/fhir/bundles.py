"""Bundles and OperationOutcomes as plain JSON: searchsets we answer, transactions we push,
and the transaction-responses we read back. Pure.

Transactions follow FHIR R4 http.html#transaction: each Observation is a conditional create
(``request.ifNoneExist`` on its identifier), so sending it again, after a timeout or a crash,
stores nothing new at the EHR (http.html#ccreate). An Observation of a reading marked
entered-in-error is a conditional update instead (``PUT Observation?identifier=...``,
http.html#cond-update): it replaces the EHR's copy found by our identifier, or creates it when
the EHR never got the original; sending it again changes nothing more. The subject is a
conditional reference (``Patient?identifier=<system>|<value>``, resolved by the EHR within
the transaction): the patient's identifier at the EHR (e.g. its MRN) when enrolment gave one,
else our id under ``RPM_EHR_PATIENT_IDENTIFIER_SYSTEM``, because the EHR does not know our
Patient ids; the device is a logical reference by identifier.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rpm.domain.errors import MalformedResponse
from rpm.domain.text_input import whole_number

from .mapping import IDENTIFIER_SYSTEM, RecordedReading, recorded_observations

DEVICE_IDENTIFIER_SYSTEM = "urn:rpm:device"
PATIENT_IDENTIFIER_SYSTEM = "urn:rpm:patient"
# An entry named in an OperationOutcome's expression or location: "Bundle.entry[3]...".
_ENTRY_INDEX = re.compile(r"Bundle\.entry\[(\d+)\]")


def operation_outcome(
    code: str, diagnostics: str, *, severity: str = "error", expression: str | None = None
) -> dict[str, Any]:
    """An OperationOutcome with one issue (``code`` from the R4 issue-type value set)."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression is not None:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def searchset(
    resources: Sequence[dict[str, Any]],
    base_url: str,
    self_url: str,
    *,
    next_url: str | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """A searchset Bundle of ``resources`` (one page), with self and next links."""
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    bundle["entry"] = [
        {
            "fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": "match"},
        }
        for r in resources
    ]
    return bundle


# --- the push: transaction Bundles ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushEntry:
    """One Observation on its way to the EHR, and the reading it records."""

    observation_id: str
    reading_key: tuple[str, str, str]  # device id, metric, measured time (ISO)
    patient_id: str
    resource: dict[str, Any]  # as the EHR gets it (see ``for_ehr``)
    update: bool = False  # a conditional update (entered-in-error), not a conditional create


def for_ehr(
    observation: dict[str, Any], patient: tuple[str, str], device_id: str
) -> dict[str, Any]:
    """Our Observation as another server stores it: no id (the EHR assigns its own), the
    subject as a conditional reference by the patient's identifier ``(system, value)`` at the
    EHR, the device by identifier."""
    out = {k: v for k, v in observation.items() if k != "id"}
    system, value = patient
    out["subject"] = {"reference": f"Patient?identifier={system}|{value}"}
    out["device"] = {"identifier": {"system": DEVICE_IDENTIFIER_SYSTEM, "value": device_id}}
    return out


def if_none_exist(observation_id: str) -> str:
    """The conditional-create criteria of one of our Observations."""
    return f"identifier={IDENTIFIER_SYSTEM}|{observation_id}"


def transaction(entries: Sequence[PushEntry]) -> dict[str, Any]:
    """A transaction Bundle creating each Observation unless its identifier exists, or, for
    one entered in error, updating the one with its identifier (creating it if none)."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": _full_url(e.observation_id),
                "resource": e.resource,
                "request": _request(e),
            }
            for e in entries
        ],
    }


def _request(e: PushEntry) -> dict[str, str]:
    if e.update:
        return {"method": "PUT", "url": "Observation?" + if_none_exist(e.observation_id)}
    return {"method": "POST", "url": "Observation", "ifNoneExist": if_none_exist(e.observation_id)}


def _full_url(observation_id: str) -> str:
    """A stable urn:uuid per Observation (R4 bundle.html#bundle-unique): the reading's uid for
    its main Observation, a UUIDv5 of the id for a part (``<uid>-pulse``)."""
    if len(observation_id) == 36:
        return "urn:uuid:" + observation_id
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, observation_id)}"


@dataclass(frozen=True, slots=True)
class EntryResult:
    """What the EHR did with one entry: ``status`` is the HTTP code in ``response.status``."""

    status: int
    location: str | None
    outcome: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def transaction_results(response: object, sent: int) -> list[EntryResult]:
    """Read a transaction-response Bundle: one result per entry sent, in order."""
    if not isinstance(response, dict) or response.get("resourceType") != "Bundle":
        raise MalformedResponse("the answer is not a Bundle")
    if response.get("type") != "transaction-response":
        raise MalformedResponse(f"Bundle type {response.get('type')!r}, not transaction-response")
    entries = response.get("entry") or []
    if not isinstance(entries, list) or len(entries) != sent:
        count = len(entries) if isinstance(entries, list) else "?"
        raise MalformedResponse(f"{count} entries answered for {sent} sent")
    out = []
    for entry in entries:
        answer = entry.get("response") if isinstance(entry, dict) else None
        if not isinstance(answer, dict):
            raise MalformedResponse("an entry has no response")
        status = whole_number(str(answer.get("status", "")).split(" ", 1)[0], max_digits=3)
        if status is None:
            raise MalformedResponse(f"entry status {str(answer.get('status'))[:40]!r}")
        outcome = answer.get("outcome")
        out.append(
            EntryResult(
                status,
                answer.get("location"),
                outcome if isinstance(outcome, dict) else None,
            )
        )
    return out


def named_entries(outcome: dict[str, Any] | None, count: int) -> list[int]:
    """Entry indexes (< ``count``) an OperationOutcome blames, from its issues' expression
    or location (``Bundle.entry[3].resource.code``), in order, without repeats."""
    found: list[int] = []
    for issue in (outcome or {}).get("issue") or []:
        if not isinstance(issue, dict):
            continue
        paths = [*(issue.get("expression") or []), *(issue.get("location") or [])]
        for path in paths:
            for match in _ENTRY_INDEX.finditer(str(path)):
                i = int(match.group(1))
                if i < count and i not in found:
                    found.append(i)
    return found


def split_for_isolation(
    count: int, blamed: Sequence[int], patients: Sequence[str] | None = None
) -> list[list[int]]:
    """How to resend a refused transaction of ``count`` entries to find the bad ones: the
    entries the OperationOutcome blames alone, then the rest; else, when the entries are of
    several ``patients`` (one per entry), one part per patient (a patient the EHR does not
    know refuses all of theirs, and the EHR may not say which entry: HAPI's 404); else two
    halves."""
    if count <= 1:
        return [list(range(count))]
    if blamed:
        rest = [i for i in range(count) if i not in set(blamed)]
        return [[i] for i in blamed] + ([rest] if rest else [])
    if patients is not None and len(set(patients)) > 1:
        parts: dict[str, list[int]] = {}
        for i, patient in enumerate(patients[:count]):
            parts.setdefault(patient, []).append(i)
        return list(parts.values())
    half = count // 2
    return [list(range(half)), list(range(half, count))]


def outcome_summary(outcome: dict[str, Any] | None, limit: int = 300) -> str:
    """The diagnostics of an OperationOutcome's issues on one line, for ``last_error``."""
    texts = []
    for issue in (outcome or {}).get("issue") or []:
        if isinstance(issue, dict):
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
            texts.append(str(text or issue.get("code") or "issue"))
    joined = "; ".join(texts) or "no OperationOutcome"
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


def push_entries(
    recorded: Sequence[RecordedReading],
    patient_system: str,
    ehr_identifiers: Mapping[str, tuple[str, str]] | None = None,
) -> list[PushEntry]:
    """The Observations of stored readings, ready for a transaction. A patient is named by
    their identifier at the EHR (``ehr_identifiers``: patient id -> ``(system, value)``, e.g.
    the hospital's MRN) when they have one, else as ``patient_system|<our id>``."""
    known = ehr_identifiers or {}
    out = []
    for rec in recorded:
        r = rec.accepted.reading
        key = (r.device_id, r.metric.value, r.measured_at.isoformat())
        pid = rec.accepted.patient_id
        patient = known.get(pid, (patient_system, pid))
        update = rec.entered_in_error_at is not None
        for obs in recorded_observations(rec):
            resource = for_ehr(obs, patient, r.device_id)
            out.append(PushEntry(obs["id"], key, pid, resource, update))
    return out
