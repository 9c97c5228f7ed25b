"""The CapabilityStatement of our FHIR API (R4 capabilitystatement.html), from one table. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from .mapping import SPECS, VITAL_SIGNS_PROFILE

FHIR_VERSION = "4.0.1"


@dataclass(frozen=True, slots=True)
class ResourceSupport:
    """What the API offers for one resource type: read, and search by these parameters."""

    search: tuple[tuple[str, str, str], ...]  # (name, type, documentation)
    profiles: tuple[str, ...] = ()
    searchable: bool = True  # False: read only


_PATIENT_REF = (
    "a Patient id, Patient/{id} or its absolute URL; comma for any of several; "
    "the :Patient type modifier is accepted"
)
SUPPORTED: Mapping[str, ResourceSupport] = MappingProxyType(
    {
        "Observation": ResourceSupport(
            (
                ("patient", "reference", "required (or subject): " + _PATIENT_REF),
                ("subject", "reference", _PATIENT_REF),
                ("code", "token", "LOINC code, with or without http://loinc.org|"),
                ("category", "token", "vital-signs or laboratory"),
                ("date", "date", "effective time; prefixes eq ne gt lt ge le sa eb; repeat to AND"),
            ),
            (VITAL_SIGNS_PROFILE, *sorted({s.profile for s in SPECS.values() if s.profile})),
        ),
        "Patient": ResourceSupport(
            (
                ("_id", "token", "logical id"),
                ("identifier", "token", "urn:rpm:patient|{id}"),
            )
        ),
        "Device": ResourceSupport(
            (
                ("_id", "token", "logical id"),
                ("identifier", "token", "urn:rpm:device|{id}"),
                ("patient", "reference", "devices bound to the patient now: " + _PATIENT_REF),
            )
        ),
        "DetectedIssue": ResourceSupport(
            (("patient", "reference", "alerts of the patients, newest first: " + _PATIENT_REF),)
        ),
        "Communication": ResourceSupport(
            (
                (
                    "patient",
                    "reference",
                    "required (or subject): SMS sent to or received "
                    "from the patients, newest first: " + _PATIENT_REF,
                ),
                ("subject", "reference", _PATIENT_REF),
            )
        ),
        "QuestionnaireResponse": ResourceSupport(
            (
                (
                    "patient",
                    "reference",
                    "required (or subject): SMS check-in answers of the "
                    "patients, newest first: " + _PATIENT_REF,
                ),
                ("subject", "reference", _PATIENT_REF),
            )
        ),
        "Questionnaire": ResourceSupport((), searchable=False),
    }
)


# How a client authenticates (R4 CapabilityStatement.rest.security). Our credentials are
# not OAuth or SMART tokens, so no restful-security-service code applies; the description
# says what is.
SECURITY: Mapping[str, Any] = MappingProxyType(
    {
        "cors": False,
        "description": (
            "Every request carries Authorization: Bearer <token>: an integration API key "
            "with the fhir:read scope (every patient), or a staff member's token (a nurse "
            "sees the patients of their care teams only; others' resources are left out "
            "of searches and read as 404). No token: 401; a token without the right: 403. "
            "Every read and search is written to the audit log."
        ),
    }
)


def capability_statement(base_url: str, software_version: str, date: datetime) -> dict[str, Any]:
    """What this server can do, for ``GET [base]/metadata``."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date.isoformat(),
        "publisher": "rpm-server",
        "kind": "instance",
        "software": {"name": "rpm-server", "version": software_version},
        "implementation": {"description": "RPM server FHIR API (read-only)", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Read-only. Search by GET [type]?... or POST [type]/_search with an "
                    "application/x-www-form-urlencoded body. Searchsets carry total "
                    "(_total=none spares the count); _summary=count and _count=0 answer "
                    "the total alone. Pages follow an opaque _cursor (link next); _count at "
                    "most 1000. Observation sorts by _sort=-date (default), date, "
                    "-_lastUpdated or _lastUpdated (meta.lastUpdated: when the reading was "
                    "stored, or marked entered-in-error after); the other types have one "
                    "fixed order. Unknown parameters are "
                    "ignored unless Prefer: handling=strict; modifiers other than :Patient "
                    "on patient and subject are refused."
                ),
                "security": dict(SECURITY),
                "resource": [_resource(kind, support) for kind, support in SUPPORTED.items()],
            }
        ],
    }


def _resource(kind: str, support: ResourceSupport) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind}
    if support.profiles:
        out["supportedProfile"] = list(support.profiles)
    out["interaction"] = [{"code": "read"}]
    if support.searchable:
        out["interaction"].append({"code": "search-type"})
        out["searchParam"] = [
            {"name": name, "type": kind_, "documentation": doc}
            for name, kind_, doc in support.search
        ]
    return out
