"""The billing code table as data: which codes exist, what each needs (days with readings in
a 30-day device period, minutes in a calendar month, an interactive communication), what
excludes what, and from which date the table applies.

A table is a JSON document (``rpm/billing/tables/cms-2026.json`` is the CY 2026 default,
docs/billing.md). :func:`parse` checks it once and answers a :class:`CodeTable`, or raises
:class:`~rpm.domain.errors.InvalidCodeTable` saying where it is wrong. Kinds:

- ``setup``: once per patient, at the first device period with ``min_days`` days of readings;
- ``device_supply``: one per device period, for ``min_days`` to ``max_days`` days of readings;
- ``management``: per calendar month, for ``min_minutes`` of time (``requires_interactive``:
  with at least one real-time interactive communication);
- ``management_addon``: per calendar month, one unit for each further ``each_minutes`` past
  the minutes of the code it is ``addon_to``, only when that code is earned.

Codes that exclude each other (``excludes``, both ways) are never earned together: when
both qualify, the one with the higher threshold is earned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from typing import Any

from rpm.billing.periods import PERIOD_DAYS
from rpm.domain.errors import InvalidCodeTable

KINDS = ("setup", "device_supply", "management", "management_addon")
# The time-entry activities of migration 0018; which of them are "interactive" is the table's.
ACTIVITIES = ("data_review", "interactive_phone", "interactive_video", "care_coordination")
CODE = re.compile(r"^[0-9A-Z]{5}$")
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
DEFAULT_TABLE = "cms-2026.json"
MAX_CODES = 50
MAX_TEXT = 2000

_TABLE_KEYS = {
    "name",
    "title",
    "effective_from",
    "source",
    "interactive_activities",
    "codes",
}
_CODE_KEYS = {
    "code",
    "kind",
    "description",
    "min_days",
    "max_days",
    "min_minutes",
    "requires_interactive",
    "addon_to",
    "each_minutes",
    "max_units",
    "excludes",
}
# The fields each kind must have and may have (besides code, kind, description, excludes).
_NEEDS: Mapping[str, tuple[set[str], set[str]]] = {
    "setup": ({"min_days"}, set()),
    "device_supply": ({"min_days"}, {"max_days"}),
    "management": ({"min_minutes"}, {"requires_interactive"}),
    "management_addon": ({"addon_to", "each_minutes"}, {"max_units"}),
}


@dataclass(frozen=True, slots=True)
class Code:
    """One billing code and what it needs."""

    code: str
    kind: str
    description: str = ""
    min_days: int = 0
    max_days: int | None = None
    min_minutes: int = 0
    requires_interactive: bool = False
    addon_to: str | None = None
    each_minutes: int = 0
    max_units: int | None = None
    excludes: frozenset[str] = frozenset()

    @property
    def threshold(self) -> int:
        """What decides between two codes that exclude each other: the higher one wins."""
        return self.min_days if self.kind in ("setup", "device_supply") else self.min_minutes

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"code": self.code, "kind": self.kind}
        if self.description:
            doc["description"] = self.description
        if self.kind in ("setup", "device_supply"):
            doc["min_days"] = self.min_days
        if self.max_days is not None:
            doc["max_days"] = self.max_days
        if self.kind == "management":
            doc["min_minutes"] = self.min_minutes
            doc["requires_interactive"] = self.requires_interactive
        if self.kind == "management_addon":
            doc["addon_to"] = self.addon_to
            doc["each_minutes"] = self.each_minutes
            if self.max_units is not None:
                doc["max_units"] = self.max_units
        if self.excludes:
            doc["excludes"] = sorted(self.excludes)
        return doc


@dataclass(frozen=True, slots=True)
class CodeTable:
    """A checked code table; applies to dates from ``effective_from``."""

    name: str
    effective_from: date
    source: str
    codes: tuple[Code, ...]
    interactive_activities: frozenset[str]
    title: str = ""
    _by_code: Mapping[str, Code] = field(default_factory=dict, compare=False, repr=False)
    _by_kind: Mapping[str, tuple[Code, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # Decisions already taken with this table, by their inputs (rpm.billing.evaluate): a
    # population has few distinct (days, minutes, ...) so most patients reuse one.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_code", {c.code: c for c in self.codes})
        kinds = {k: tuple(c for c in self.codes if c.kind == k) for k in KINDS}
        object.__setattr__(self, "_by_kind", kinds)

    def code(self, name: str) -> Code:
        return self._by_code[name]

    def of_kind(self, kind: str) -> tuple[Code, ...]:
        return self._by_kind[kind]

    @property
    def setup(self) -> Code | None:
        found = self.of_kind("setup")
        return found[0] if found else None

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name}
        if self.title:
            doc["title"] = self.title
        doc |= {
            "effective_from": self.effective_from.isoformat(),
            "source": self.source,
            "interactive_activities": sorted(self.interactive_activities),
            "codes": [c.document() for c in self.codes],
        }
        return doc


def default_table() -> CodeTable:
    """The table shipped with the package (CMS CY 2026)."""
    text = (resources.files("rpm.billing") / "tables" / DEFAULT_TABLE).read_text("utf-8")
    return parse(json.loads(text))


def in_force(tables: Iterable[CodeTable], day: date) -> CodeTable:
    """The table that applies on ``day``: the latest ``effective_from`` on or before it (of
    two with the same date, the one given last: the newer version)."""
    found: CodeTable | None = None
    for t in tables:
        if t.effective_from <= day and (found is None or t.effective_from >= found.effective_from):
            found = t
    if found is None:
        raise InvalidCodeTable(f"no billing code table is in force on {day.isoformat()}")
    return found


def parse(document: object) -> CodeTable:
    """Check a table document; InvalidCodeTable says where it is wrong."""
    if not isinstance(document, dict):
        raise InvalidCodeTable("a code table is a JSON object")
    _no_unknown(document, _TABLE_KEYS, "table")
    name = _text(document, "name", "table", required=True)
    if not NAME.match(name):
        raise InvalidCodeTable("name: lowercase letters, digits, '.', '_' and '-', 1-64")
    try:
        effective = date.fromisoformat(_text(document, "effective_from", "table", required=True))
    except ValueError:
        raise InvalidCodeTable("effective_from: a date, YYYY-MM-DD") from None
    source = _text(document, "source", "table", required=True)
    if not source.strip():
        raise InvalidCodeTable("source: say where the codes and thresholds come from")
    interactive = document.get("interactive_activities", ["interactive_phone", "interactive_video"])
    if not isinstance(interactive, list) or not all(a in ACTIVITIES for a in interactive):
        raise InvalidCodeTable(f"interactive_activities: a list of {', '.join(ACTIVITIES)}")
    raw = document.get("codes")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_CODES:
        raise InvalidCodeTable(f"codes: a list of 1 to {MAX_CODES} codes")
    codes = tuple(_code(c, i) for i, c in enumerate(raw))
    _check_together(codes)
    return CodeTable(
        name,
        effective,
        source,
        codes,
        frozenset(interactive),
        _text(document, "title", "table"),
    )


def _code(raw: object, index: int) -> Code:
    where = f"codes[{index}]"
    if not isinstance(raw, dict):
        raise InvalidCodeTable(f"{where}: an object")
    _no_unknown(raw, _CODE_KEYS, where)
    code = _text(raw, "code", where, required=True)
    if not CODE.match(code):
        raise InvalidCodeTable(f"{where}.code: five digits or capital letters, e.g. 99454")
    where = f"code {code}"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise InvalidCodeTable(f"{where}: kind is one of {', '.join(KINDS)}")
    needs, may = _NEEDS[kind]
    common = {"code", "kind", "description", "excludes"}
    for key in needs - raw.keys():
        raise InvalidCodeTable(f"{where}: a {kind} code needs {key}")
    for key in raw.keys() - needs - may - common:
        raise InvalidCodeTable(f"{where}: {key} does not apply to a {kind} code")
    excludes = raw.get("excludes", [])
    if not isinstance(excludes, list) or not all(isinstance(e, str) for e in excludes):
        raise InvalidCodeTable(f"{where}.excludes: a list of codes")
    interactive = raw.get("requires_interactive", False)
    if not isinstance(interactive, bool):
        raise InvalidCodeTable(f"{where}.requires_interactive: true or false")
    addon_to = raw.get("addon_to")
    if addon_to is not None and not isinstance(addon_to, str):
        raise InvalidCodeTable(f"{where}.addon_to: a code")
    found = Code(
        code=code,
        kind=kind,
        description=_text(raw, "description", where),
        min_days=_int(raw, "min_days", where, 1, PERIOD_DAYS) or 0,
        max_days=_int(raw, "max_days", where, 1, PERIOD_DAYS),
        min_minutes=_int(raw, "min_minutes", where, 1, 24 * 60) or 0,
        requires_interactive=interactive,
        addon_to=addon_to,
        each_minutes=_int(raw, "each_minutes", where, 1, 24 * 60) or 0,
        max_units=_int(raw, "max_units", where, 1, 100),
        excludes=frozenset(excludes),
    )
    if found.max_days is not None and found.max_days < found.min_days:
        raise InvalidCodeTable(f"{where}: max_days is below min_days")
    if code in found.excludes:
        raise InvalidCodeTable(f"{where}: a code cannot exclude itself")
    return found


def _check_together(codes: Sequence[Code]) -> None:
    by_code: dict[str, Code] = {}
    for c in codes:
        if c.code in by_code:
            raise InvalidCodeTable(f"code {c.code}: listed twice")
        by_code[c.code] = c
    if len([c for c in codes if c.kind == "setup"]) > 1:
        raise InvalidCodeTable("at most one setup code")
    for c in codes:
        for other in sorted(c.excludes):
            if other not in by_code:
                raise InvalidCodeTable(
                    f"code {c.code}: excludes {other}, which is not in the table"
                )
            o = by_code[other]
            if c.code not in o.excludes:
                raise InvalidCodeTable(
                    f"code {c.code}: excludes {other}, but {other} does not exclude {c.code}"
                )
            if {o.kind, c.kind} - {"device_supply"} and {o.kind, c.kind} - {"management"}:
                raise InvalidCodeTable(
                    f"code {c.code}: excludes {other}; only device-supply codes (of one period) "
                    "or management codes (of one month) can exclude each other"
                )
            if o.threshold == c.threshold:
                raise InvalidCodeTable(
                    f"code {c.code}: excludes {other} with the same threshold; which one "
                    "would be earned?"
                )
        if c.kind == "management_addon":
            base = by_code.get(c.addon_to or "")
            if base is None or base.kind != "management":
                raise InvalidCodeTable(
                    f"code {c.code}: addon_to names a management code of the table"
                )


def _no_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(raw.keys() - known)
    if unknown:
        raise InvalidCodeTable(f"{where}: unknown field {unknown[0]}")


def _text(raw: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = raw.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise InvalidCodeTable(f"{where}.{key}: a text of 1 to {MAX_TEXT} characters")
    return value


def _int(raw: Mapping[str, Any], key: str, where: str, low: int, high: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidCodeTable(f"{where}.{key}: a whole number from {low} to {high}")
    return value
