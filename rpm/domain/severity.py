"""Alert severity: its order, its names, and how SQL ranks it. The one definition."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator, PlainSerializer


class Severity(enum.IntEnum):
    """Alert severity; higher is more urgent. Stored by upper-case name, written in specs,
    settings and the API in lower case (either case is read)."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        """The lower-case name used in specs, settings and the API (``"high"``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Severity:
        """A severity from its name in either case; ValueError for anything else."""
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {value!r}; known: {LABELS}") from None


# Most urgent first: the order of queues, filters and the dashboard's legend.
BY_URGENCY: tuple[Severity, ...] = tuple(sorted(Severity, reverse=True))
NAMES: tuple[str, ...] = tuple(s.name for s in BY_URGENCY)  # as stored: "CRITICAL", ...
LABELS: tuple[str, ...] = tuple(s.label for s in BY_URGENCY)  # as written: "critical", ...
RANK: Mapping[str, int] = MappingProxyType({s.name: int(s) for s in Severity})


# A severity name as a query parameter may give it (either case). A Literal, so that the
# OpenAPI description lists the names; checked against the enum below.
SeverityName = Literal["critical", "high", "medium", "low", "CRITICAL", "HIGH", "MEDIUM", "LOW"]
assert set(get_args(SeverityName)) == set(LABELS) | set(NAMES), "SeverityName is out of date"


def sql_rank(column: str) -> str:
    """A SQL expression giving ``column`` (a stored severity name) its ``Severity`` value."""
    cases = " ".join(f"WHEN '{s.name}' THEN {int(s)}" for s in BY_URGENCY)
    return f"CASE {column} {cases} ELSE 0 END"


def _coerce(value: object) -> object:
    return Severity.parse(value) if isinstance(value, str) else value


# A pydantic field that reads a name in either case and writes the lower-case label.
SeverityField = Annotated[
    Severity,
    BeforeValidator(_coerce),
    PlainSerializer(lambda s: s.label, return_type=str),
]
