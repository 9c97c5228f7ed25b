"""FHIR search parameters, parsed into plain values. Pure.

What each parameter means is FHIR R4's (http://hl7.org/fhir/R4/search.html): ``date`` with
the prefixes eq, ne, gt, lt, ge, le, sa, eb (a value stands for the whole range its precision
implies: ``2026-11`` is November), tokens as ``[system]|[code]``, references as ``id``,
``Type/id`` or an absolute URL ending so. Unknown parameters are ignored unless the client
asks for ``Prefer: handling=strict``; a modifier we do not support is refused, as R4 requires.
Paging is by an opaque ``_cursor`` (keyset: the last row a page showed). Every searchset
carries ``total`` unless ``_total=none``; ``_summary=count`` (and ``_count=0``, which R4 says
to treat so) answers with the total alone. A reference parameter takes the ``:Patient`` type
modifier (``subject:Patient=...``), the only type it can name.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import orjson

from rpm.domain import METRICS, Metric
from rpm.domain.errors import SearchError
from rpm.domain.text_input import whole_number

from .mapping import (
    LOINC,
    OBSERVATION_CATEGORY,
    PULSE,
    SPECS,
    RecordedReading,
    parts_of,
    served_observations,
)

MAX_COUNT = 1000
DEFAULT_COUNT = 50
# Parameters every search accepts (R4 search.html#all, and our paging cursor).
COMMON = frozenset({"_count", "_cursor", "_format", "_sort", "_summary", "_total"})
# Reference parameters and the one type modifier each takes (R4 search.html#reference).
TYPE_MODIFIERS: Mapping[str, str] = MappingProxyType({"patient": "Patient", "subject": "Patient"})


# --- dates ----------------------------------------------------------------------------------

_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


@dataclass(frozen=True, slots=True)
class DateRange:
    """The range ``[start, end)`` a date search value stands for, with its prefix."""

    prefix: str
    start: datetime
    end: datetime


def parse_date(text: str) -> DateRange:
    """``ge2026-11-23``, ``2026-11``, ``lt2026-11-23T08:00:00Z``, ... (UTC when no offset)."""
    prefix = text[:2] if text[:2] in _PREFIXES else "eq"
    value = text[2:] if text[:2] in _PREFIXES else text
    m = _DATE.fullmatch(value)
    if m is None:
        raise SearchError(f"not a FHIR date: {text!r}")
    try:
        start, step = _start_and_step(m)
    except ValueError as exc:
        raise SearchError(f"not a valid date: {text!r} ({exc})") from None
    end = _add(start, step)
    return DateRange(prefix, start, end)


def _start_and_step(m: re.Match[str]) -> tuple[datetime, tuple[str, int]]:
    tz = UTC
    if m["tz"] and m["tz"] != "Z":
        sign = 1 if m["tz"][0] == "+" else -1
        hours, minutes = int(m["tz"][1:3]), int(m["tz"][4:6])
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    year = int(m["y"])
    if m["m"] is None:
        return datetime(year, 1, 1, tzinfo=tz), ("year", 1)
    month = int(m["m"])
    if m["d"] is None:
        return datetime(year, month, 1, tzinfo=tz), ("month", 1)
    day = int(m["d"])
    if m["H"] is None:
        return datetime(year, month, day, tzinfo=tz), ("us", 86_400_000_000)
    hour, minute = int(m["H"]), int(m["M"])
    if m["S"] is None:
        return datetime(year, month, day, hour, minute, tzinfo=tz), ("us", 60_000_000)
    second = int(m["S"])
    if m["f"] is None:
        return datetime(year, month, day, hour, minute, second, tzinfo=tz), ("us", 1_000_000)
    digits = m["f"][:6]
    micro = int(digits.ljust(6, "0"))
    step = 10 ** (6 - len(digits))
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz), ("us", step)


def _add(start: datetime, step: tuple[str, int]) -> datetime:
    unit, n = step
    if unit == "year":
        return start.replace(year=start.year + n)
    if unit == "month":
        return (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
    return start + timedelta(microseconds=n)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Several date parameters combined (they AND): ``since <= t < before``, outside
    every ``excluded`` range."""

    since: datetime | None = None
    before: datetime | None = None
    excluded: tuple[tuple[datetime, datetime], ...] = ()

    def contains(self, t: datetime) -> bool:
        return (
            (self.since is None or t >= self.since)
            and (self.before is None or t < self.before)
            and not any(lo <= t < hi for lo, hi in self.excluded)
        )


# For a point in time t against a value's range [start, end): which end bounds t from below
# (t >= it) and from above (t < it). ``ne`` is the one prefix that excludes instead.
_BOUNDS: Mapping[str, tuple[str | None, str | None]] = MappingProxyType(
    {
        "eq": ("start", "end"),
        "gt": ("end", None),
        "sa": ("end", None),
        "ge": ("start", None),
        "lt": (None, "start"),
        "eb": (None, "start"),
        "le": (None, "end"),
    }
)


def time_window(ranges: Iterable[DateRange]) -> TimeWindow:
    """The instants a point in time (``effectiveDateTime``) may have to match every range:
    eq start <= t < end; ne outside it; gt and sa t >= end; ge t >= start; lt and eb
    t < start; le t < end."""
    lows: list[datetime] = []
    highs: list[datetime] = []
    excluded: list[tuple[datetime, datetime]] = []
    for r in ranges:
        if r.prefix == "ne":
            excluded.append((r.start, r.end))
            continue
        low, high = _BOUNDS[r.prefix]
        if low is not None:
            lows.append(getattr(r, low))
        if high is not None:
            highs.append(getattr(r, high))
    return TimeWindow(max(lows) if lows else None, min(highs) if highs else None, tuple(excluded))


# --- tokens and references -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    system: str | None  # None: any system; "": no system
    code: str


def parse_tokens(text: str) -> list[Token]:
    """A token parameter's values (comma = OR)."""
    out = []
    for part in _split(text):
        if "|" in part:
            system, code = part.split("|", 1)
            out.append(Token(system, code))
        else:
            out.append(Token(None, part))
    return out


def parse_references(text: str, resource_type: str) -> list[str]:
    """The ids a reference parameter names (``id``, ``Type/id``, ``http://…/Type/id``)."""
    out = []
    for part in _split(text):
        head, _, tail = part.rpartition("/")
        if head:
            kind = head.rsplit("/", 1)[-1]
            if kind != resource_type:
                raise SearchError(f"{part!r} is not a {resource_type} reference")
        out.append(tail)
    return out


def _split(text: str) -> list[str]:
    # A comma inside a value is escaped as "\," (R4 search.html#escaping).
    parts = re.split(r"(?<!\\),", text)
    return [p.replace("\\,", ",") for p in parts if p]


# --- which Observations a code or category names ----------------------------------------------

ObservationKind = tuple[Metric, str | None]  # (metric, part): part None is the main one

_KINDS: tuple[ObservationKind, ...] = (
    *((m, None) for m in Metric),
    # A pulse measured alongside another metric is its own Observation (mapping.parts_of).
    *(
        (m, PULSE)
        for m, spec in METRICS.items()
        if m is not Metric.HEART_RATE and spec.component(PULSE)
    ),
)


def _codes_of(kind: ObservationKind) -> tuple[str, ...]:
    metric, part = kind
    spec = SPECS[Metric.HEART_RATE] if part == PULSE else SPECS[metric]
    return tuple(c.code for c in spec.codings)


def _category_of(kind: ObservationKind) -> str:
    metric, part = kind
    return SPECS[Metric.HEART_RATE if part == PULSE else metric].category


_BY_CODE: Mapping[str, frozenset[ObservationKind]] = MappingProxyType(
    {
        code: frozenset(k for k in _KINDS if code in _codes_of(k))
        for kind in _KINDS
        for code in _codes_of(kind)
    }
)
_BY_CATEGORY: Mapping[str, frozenset[ObservationKind]] = MappingProxyType(
    {
        cat: frozenset(k for k in _KINDS if _category_of(k) == cat)
        for cat in map(_category_of, _KINDS)
    }
)
ALL_KINDS = frozenset(_KINDS)


def kinds_for_codes(tokens: Sequence[Token]) -> frozenset[ObservationKind]:
    """The Observations whose code matches any of the tokens (LOINC, or no system given)."""
    found: set[ObservationKind] = set()
    for t in tokens:
        if t.system in (None, LOINC):
            found |= _BY_CODE.get(t.code, frozenset())
    return frozenset(found)


def kinds_for_categories(tokens: Sequence[Token]) -> frozenset[ObservationKind]:
    found: set[ObservationKind] = set()
    for t in tokens:
        if t.system in (None, OBSERVATION_CATEGORY):
            found |= _BY_CATEGORY.get(t.code, frozenset())
    return frozenset(found)


# --- the parameters of one search --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Params:
    """A search's parameters, each name with its values in order (repeats AND)."""

    items: tuple[tuple[str, str], ...]
    strict: bool = False  # Prefer: handling=strict

    @classmethod
    def of(cls, items: Iterable[tuple[str, str]], strict: bool = False) -> Params:
        """The parameters as given, with ``subject:Patient`` read as ``subject`` (the type
        modifier names the only type the parameter can refer to)."""
        out = []
        for name, value in items:
            base, _, modifier = name.partition(":")
            out.append((base if modifier and TYPE_MODIFIERS.get(base) == modifier else name, value))
        return cls(tuple(out), strict)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.items if k == name]

    def one(self, name: str) -> str | None:
        values = self.all(name)
        if len(values) > 1:
            raise SearchError(f"{name} may be given once")
        return values[0] if values else None

    def check(self, known: Iterable[str]) -> tuple[tuple[str, str], ...]:
        """The parameters we use, in order; refuse modifiers, and unknown names when strict."""
        allowed = COMMON | set(known)
        used = []
        for name, value in self.items:
            base, _, modifier = name.partition(":")
            if base in allowed and modifier:
                raise SearchError(
                    f"modifier :{modifier} of {base} is not supported", code="not-supported"
                )
            if name in allowed:
                used.append((name, value))
            elif self.strict:
                raise SearchError(f"unknown search parameter {name!r}", code="not-supported")
        return tuple(used)


def count_of(params: Params) -> int:
    text = params.one("_count")
    if text is None:
        return DEFAULT_COUNT
    count = whole_number(text, max_digits=9)
    if count is None:
        raise SearchError(f"_count must be a whole number of at most 9 digits, not {text[:20]!r}")
    return min(count, MAX_COUNT)


def summary_only(params: Params) -> bool:
    """``_summary=count``, or ``_count=0`` (R4 search.html#count: "treat as _summary=count"):
    the total without the resources. ``_summary=false`` is the default."""
    text = params.one("_summary")
    if text not in (None, "count", "false"):
        raise SearchError(f"_summary={text} is not supported (count)", code="not-supported")
    return text == "count" or count_of(params) == 0


def wants_total(params: Params) -> bool:
    """Whether to count the matches: ``_total`` accurate or estimate (both counted exactly),
    the default; ``none`` spares the count."""
    text = params.one("_total")
    if text not in (None, "none", "estimate", "accurate"):
        raise SearchError(f"_total={text} is not valid (none, estimate, accurate)")
    return text != "none" or summary_only(params)


SORTS = ("-date", "date", "-_lastUpdated", "_lastUpdated")


def sort_of(params: Params) -> tuple[str, bool]:
    """An Observation search's order: (``date`` or ``_lastUpdated``, newest first?), by
    ``_sort`` (default ``-date``)."""
    text = params.one("_sort") or "-date"
    if text not in SORTS:
        raise SearchError(
            f"_sort={text} is not supported ({', '.join(SORTS)})", code="not-supported"
        )
    return text.removeprefix("-"), text.startswith("-")


def encode_cursor(value: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(value))).decode().rstrip("=")


def decode_cursor(text: str | None, check: Callable[[list[Any]], bool]) -> list[Any] | None:
    """The cursor's values, or None; SearchError when it is not one we issued."""
    if text is None:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        raise SearchError("_cursor is not valid") from None
    if not isinstance(value, list) or not check(value):
        raise SearchError("_cursor is not valid")
    return value


# An Observation page's key: (the sort's time, device, metric, measured at) of the reading
# a page ended in, and how many of its Observations the pages so far have shown.
ObservationKey = tuple[datetime, str, str, datetime, int]


@dataclass(frozen=True, slots=True)
class ObservationQuery:
    """An Observation search as storage runs it."""

    patients: tuple[str, ...]
    kinds: frozenset[ObservationKind] = ALL_KINDS
    window: TimeWindow = field(default_factory=TimeWindow)
    count: int = DEFAULT_COUNT
    newest_first: bool = True
    by: str = "date"  # or "_lastUpdated" (meta.lastUpdated: stored, or marked in error)
    after: ObservationKey | None = None

    @property
    def main_metrics(self) -> list[str]:
        return sorted(m.value for m, part in self.kinds if part is None)

    @property
    def pulse_metrics(self) -> list[str]:
        return sorted(m.value for m, part in self.kinds if part == PULSE)


OBSERVATION_PARAMS = ("patient", "subject", "code", "category", "date")


def observation_query(params: Params) -> tuple[ObservationQuery, tuple[tuple[str, str], ...]]:
    """Parse an Observation search; also return the parameters used (for the self link)."""
    used = params.check(OBSERVATION_PARAMS)
    patients = [p for v in params.all("patient") for p in parse_references(v, "Patient")]
    patients += [p for v in params.all("subject") for p in parse_references(v, "Patient")]
    if not patients:
        raise SearchError("patient (or subject) is required", code="required")
    kinds = ALL_KINDS
    for v in params.all("code"):
        kinds = kinds & kinds_for_codes(parse_tokens(v))
    for v in params.all("category"):
        kinds = kinds & kinds_for_categories(parse_tokens(v))
    window = time_window(parse_date(v) for v in params.all("date"))
    by, newest_first = sort_of(params)
    after = decode_cursor(params.one("_cursor"), _observation_cursor_ok)
    key = None
    if after is not None:
        key = (
            datetime.fromisoformat(after[0]),
            str(after[1]),
            str(after[2]),
            datetime.fromisoformat(after[3]),
            int(after[4]),
        )
    query = ObservationQuery(
        tuple(dict.fromkeys(patients)),
        kinds,
        window,
        0 if summary_only(params) else count_of(params),
        newest_first,
        by,
        key,
    )
    return query, used


def _observation_cursor_ok(v: list[Any]) -> bool:
    if len(v) != 5 or not all(isinstance(x, str) for x in v[:4]) or not isinstance(v[4], int):
        return False
    try:
        return all(datetime.fromisoformat(v[i]).tzinfo is not None for i in (0, 3))
    except ValueError:
        return False


def page_observations(
    rows: Sequence[RecordedReading], q: ObservationQuery
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of Observations from readings in the query's order (``observation_page``
    fetched ``count + 2``), and the cursor of the next page, if any.

    A reading may hold two Observations (a pulse measured alongside), so a page may end
    inside a reading: the cursor names the reading and how many of its Observations the
    pages so far have shown.
    """
    out: list[dict[str, Any]] = []
    if q.count == 0:
        return out, None
    for rec in rows:
        r = rec.accepted.reading
        at = rec.last_updated if q.by == "_lastUpdated" else r.measured_at
        key = (at, r.device_id, r.metric.value, r.measured_at)
        wanted = [
            obs
            for obs, part in zip(
                served_observations(rec), parts_of(r.metric, r.values), strict=True
            )
            if (r.metric, part) in q.kinds
        ]
        shown = q.after[4] if q.after is not None and key == q.after[:4] else 0
        wanted = wanted[shown:]
        if not wanted:
            continue
        room = q.count - len(out)
        if len(wanted) > room:
            out.extend(wanted[:room])
            cursor = [key[0].isoformat(), key[1], key[2], key[3].isoformat(), shown + room]
            return out, encode_cursor(cursor)
        out.extend(wanted)
    return out, None
