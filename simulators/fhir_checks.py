"""What the FHIR stand-in (simulators/fhir_server.py) refuses in a transaction Bundle, as a
FHIR server answers it: fhir.resources' structural validation, the request of each entry, the
Observation status value set, and that ``ifNoneExist`` (or a conditional update's criteria)
names an identifier the resource carries. Pure: no server state."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

FHIR_JSON = "application/fhir+json"
JSON_TYPES = frozenset({FHIR_JSON, "application/json"})
# R4 Observation.status (required binding, ObservationStatus); fhir.resources checks only
# that a code is a code.
OBSERVATION_STATUS = frozenset(
    {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
_IF_NONE_EXIST = re.compile(r"^identifier=(?P<system>[^|&]*)\|(?P<value>[^&]+)$")
_CONDITIONAL_URL = re.compile(r"^Observation\?(?P<criteria>identifier=.*)$")
CONDITIONAL_PATIENT = re.compile(r"^Patient\?identifier=(?P<system>[^|&]*)\|(?P<value>[^&]+)$")


def outcome(code: str, diagnostics: str, expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class _Refusal(Exception):
    """An answer other than success: status and OperationOutcome."""

    def __init__(self, status: int, outcome: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.outcome = outcome


def _fhir_path(loc: Sequence[int | str]) -> str:
    path = "Bundle"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate(bundle: object) -> None:
    """fhir.resources' structural validation, as an OperationOutcome of every issue."""
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        issues = [
            {
                "severity": "error",
                "code": "structure",
                "diagnostics": e["msg"],
                "expression": [_fhir_path(e["loc"])],
            }
            for e in exc.errors()
        ]
        raise _Refusal(400, {"resourceType": "OperationOutcome", "issue": issues}) from None


@dataclass(frozen=True, slots=True)
class Entry:
    """A transaction entry that passed the checks."""

    resource: dict[str, Any]
    key: tuple[str, str] | None  # the conditional identifier (system, value), if any
    update: bool  # a conditional update (PUT Observation?identifier=...)
    where: str  # Bundle.entry[i]


def transaction_entries(bundle: Any) -> list[Entry]:
    """The entries of a transaction Bundle, checked; a ``_Refusal`` naming the first entry
    that is wrong."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise _Refusal(400, outcome("structure", "not a Bundle"))
    if bundle.get("type") != "transaction":
        raise _Refusal(400, outcome("not-supported", "only transaction Bundles are accepted"))
    return [
        _entry(entry, f"Bundle.entry[{i}]") for i, entry in enumerate(bundle.get("entry") or [])
    ]


def _entry(entry: Mapping[str, Any], where: str) -> Entry:
    request, resource = entry.get("request") or {}, entry.get("resource") or {}
    method, url = request.get("method"), str(request.get("url", ""))
    conditional_update = _CONDITIONAL_URL.match(url) if method == "PUT" else None
    if conditional_update is None and (method != "POST" or url != "Observation"):
        raise _Refusal(
            400,
            outcome(
                "not-supported",
                "only POST Observation and PUT Observation?identifier= entries",
                where + ".request",
            ),
        )
    if resource.get("resourceType") != "Observation":
        raise _Refusal(400, outcome("structure", "not an Observation", where + ".resource"))
    if resource.get("status") not in OBSERVATION_STATUS:
        raise _Refusal(
            400,
            outcome("code-invalid", "status not in ObservationStatus", where + ".resource.status"),
        )
    criteria = (
        conditional_update["criteria"]
        if conditional_update is not None
        else request.get("ifNoneExist")
    )
    return Entry(
        resource, _conditional(criteria, resource, where), conditional_update is not None, where
    )


def _conditional(
    criteria: object, resource: Mapping[str, Any], where: str
) -> tuple[str, str] | None:
    if criteria is None:
        return None
    m = _IF_NONE_EXIST.match(str(criteria))
    if m is None:
        raise _Refusal(
            400, outcome("not-supported", "ifNoneExist must be identifier=system|value", where)
        )
    key = (m["system"], m["value"])
    held = {(i.get("system", ""), i.get("value")) for i in resource.get("identifier") or []}
    if key not in held:
        raise _Refusal(400, outcome("invalid", "ifNoneExist names another identifier", where))
    return key
