"""Segments: named sets of patients defined over facts, compiled to SQL. Pure.

A definition is a document::

    {"description": "BP patients who measured on fewer than 4 of the last 7 days",
     "where": {"all": [{"fact": "program", "op": "includes", "value": "hypertension"},
                       {"fact": "days_with_readings_7d", "op": "<", "value": 4}]}}

``where`` is a condition: ``{"all": [...]}``, ``{"any": [...]}``, ``{"not": condition}`` or a
comparison ``{"fact", "op", "value"}`` over one of :data:`FACTS`. :func:`compile_where` turns
it into a SQL boolean expression over the columns of the facts query
(``rpm/storage/segments.py``), with every value a bind parameter: a definition can never
inject SQL, and the whole population is evaluated in one statement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from rpm.domain import Severity
from rpm.domain.errors import InvalidSegment

FactType = Literal["int", "text", "bool", "severity", "text[]"]


@dataclass(frozen=True, slots=True)
class Fact:
    type: FactType
    doc: str


# The facts a segment can test, each a column of the facts query. Severities compare by
# urgency (low < medium < high < critical); "none" is below every severity.
FACTS: Mapping[str, Fact] = MappingProxyType(
    {
        "program": Fact("text[]", "care programs the patient is enrolled in"),
        "care_team": Fact("text", "the patient's care team"),
        "language": Fact("text", "language of the patient's messages (BCP 47, e.g. 'es')"),
        "age": Fact("int", "age in whole years today (null: birth date unknown)"),
        "age_band": Fact("text", "5-year age band as in the export ('65-69', '90+')"),
        "days_with_readings_7d": Fact("int", "local days with readings in the last 7"),
        "days_with_readings_30d": Fact("int", "local days with readings in the last 30"),
        "days_since_last_reading": Fact(
            "int", "whole days since the newest reading (null: never measured)"
        ),
        "open_alerts": Fact("int", "alert episodes not resolved"),
        "open_alert_severity": Fact("severity", "highest severity of the open episodes"),
        "news2_severity_7d": Fact(
            "severity", "highest severity of NEWS2 alerts opened in the last 7 days"
        ),
        "weeks_since_enrolment": Fact("int", "whole weeks since the patient was enrolled"),
        "sms_consent": Fact("bool", "the patient agreed to be texted"),
        "opted_out": Fact("bool", "the patient texted STOP (or an opt-out word)"),
        "channel": Fact("text", "preferred channel: sms, whatsapp or voice"),
    }
)

Op = Literal["=", "!=", "<", "<=", ">", ">=", "in", "not_in", "includes", "is_null"]
_ORDERED = ("<", "<=", ">", ">=")
_OPS: Mapping[FactType, frozenset[str]] = MappingProxyType(
    {
        "int": frozenset({"=", "!=", *_ORDERED, "in", "not_in", "is_null"}),
        "text": frozenset({"=", "!=", "in", "not_in", "is_null"}),
        "bool": frozenset({"="}),
        "severity": frozenset({"=", "!=", *_ORDERED}),
        "text[]": frozenset({"includes"}),
    }
)
SEVERITY_NONE = "none"
MAX_DEPTH = 6
MAX_CONDITIONS = 50
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Comparison:
    fact: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class Group:
    kind: Literal["all", "any", "not"]
    parts: tuple[Condition, ...]


Condition = Comparison | Group


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    description: str
    where: Condition

    def document(self) -> dict[str, Any]:
        return {"description": self.description, "where": _document(self.where)}


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InvalidSegment(
            f"a name is 1-63 lower-case letters, digits, '_' or '-', starting with a "
            f"letter or digit: {name[:70]!r}"
        )
    return name


def parse(document: Mapping[str, Any]) -> SegmentSpec:
    """A definition from its document; :class:`InvalidSegment` saying what is wrong."""
    if not isinstance(document, Mapping):
        raise InvalidSegment("a segment is an object with 'where' (and 'description')")
    unknown = set(document) - {"description", "where"}
    if unknown:
        raise InvalidSegment(f"unknown keys {sorted(unknown)}; a segment has description, where")
    description = document.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise InvalidSegment("description is text of at most 500 characters")
    if "where" not in document:
        raise InvalidSegment("a segment needs 'where'")
    counter = [0]
    return SegmentSpec(description, _condition(document["where"], "where", 0, counter))


def _condition(node: Any, at: str, depth: int, counter: list[int]) -> Condition:
    counter[0] += 1
    if depth > MAX_DEPTH or counter[0] > MAX_CONDITIONS:
        raise InvalidSegment(f"{at}: at most {MAX_CONDITIONS} conditions nested {MAX_DEPTH} deep")
    if not isinstance(node, Mapping):
        raise InvalidSegment(f"{at}: a condition is an object")
    groups = [k for k in ("all", "any", "not") if k in node]
    if groups:
        if len(node) != 1:
            raise InvalidSegment(f"{at}: {groups[0]!r} stands alone in its object")
        kind = groups[0]
        if kind == "not":
            inner = _condition(node["not"], f"{at}.not", depth + 1, counter)
            return Group("not", (inner,))
        parts = node[kind]
        if not isinstance(parts, list) or not parts:
            raise InvalidSegment(f"{at}.{kind}: a non-empty list of conditions")
        return Group(
            kind,  # type: ignore[arg-type]
            tuple(
                _condition(p, f"{at}.{kind}[{i}]", depth + 1, counter) for i, p in enumerate(parts)
            ),
        )
    return _comparison(node, at)


def _comparison(node: Mapping[str, Any], at: str) -> Comparison:
    unknown = set(node) - {"fact", "op", "value"}
    if unknown or "fact" not in node or "op" not in node:
        raise InvalidSegment(
            f"{at}: a comparison is {{fact, op, value}} (or all/any/not); got {sorted(node)}"
        )
    name, op = node["fact"], node["op"]
    fact = FACTS.get(name) if isinstance(name, str) else None
    if fact is None:
        raise InvalidSegment(f"{at}: unknown fact {name!r}; known: {sorted(FACTS)}")
    if op not in _OPS[fact.type]:
        raise InvalidSegment(
            f"{at}: {name} ({fact.type}) takes the operators {sorted(_OPS[fact.type])}"
        )
    if op == "is_null":
        value = node.get("value", True)
        if not isinstance(value, bool):
            raise InvalidSegment(f"{at}: is_null takes true or false")
        return Comparison(name, op, value)
    if "value" not in node:
        raise InvalidSegment(f"{at}: {op!r} needs a value")
    value = node["value"]
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or len(value) > 100:
            raise InvalidSegment(f"{at}: {op} takes a list of 1 to 100 values")
        return Comparison(name, op, tuple(_scalar(fact, v, at) for v in value))
    element = "text" if fact.type == "text[]" else fact.type
    return Comparison(name, op, _scalar(Fact(element, ""), value, at))


def _scalar(fact: Fact, value: Any, at: str) -> Any:
    match fact.type:
        case "int":
            if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 10**6:
                raise InvalidSegment(f"{at}: a whole number within ±1,000,000")
            return value
        case "bool":
            if not isinstance(value, bool):
                raise InvalidSegment(f"{at}: true or false")
            return value
        case "severity":
            if value == SEVERITY_NONE:
                return 0
            try:
                return int(Severity.parse(str(value)))
            except ValueError:
                raise InvalidSegment(
                    f"{at}: a severity (none, low, medium, high, critical), not {value!r}"
                ) from None
        case _:
            if not isinstance(value, str) or not 0 < len(value) <= 100:
                raise InvalidSegment(f"{at}: text of 1 to 100 characters")
            return value


def _document(c: Condition) -> dict[str, Any]:
    if isinstance(c, Group):
        if c.kind == "not":
            return {"not": _document(c.parts[0])}
        return {c.kind: [_document(p) for p in c.parts]}
    value = c.value
    if FACTS[c.fact].type == "severity":
        value = SEVERITY_NONE if value == 0 else Severity(value).label
    elif isinstance(value, tuple):
        value = list(value)
    return {"fact": c.fact, "op": c.op, "value": value}


def compile_where(c: Condition, params: list[Any], column: str = "f.") -> str:
    """A SQL boolean expression for ``c`` over the facts columns (prefixed ``column``);
    its values are appended to ``params`` and referenced as ``$n``."""
    if isinstance(c, Group):
        if c.kind == "not":
            return f"NOT coalesce({compile_where(c.parts[0], params, column)}, false)"
        joiner = " AND " if c.kind == "all" else " OR "
        return "(" + joiner.join(compile_where(p, params, column) for p in c.parts) + ")"
    fact = FACTS[c.fact]
    col = f"{column}{c.fact}"

    def bind(value: Any, cast: str) -> str:
        params.append(value)
        return f"${len(params)}::{cast}"

    cast = {"int": "int", "text": "text", "bool": "boolean", "severity": "int"}.get(
        fact.type, "text"
    )
    if c.op == "is_null":
        return f"({col} IS {'' if c.value else 'NOT '}NULL)"
    if c.op == "includes":
        return f"({bind(c.value, 'text')} = ANY({col}))"
    if c.op == "in":
        return f"({col} = ANY({bind(list(c.value), cast + '[]')}))"
    if c.op == "not_in":
        return f"coalesce(NOT ({col} = ANY({bind(list(c.value), cast + '[]')})), true)"
    sql_op = "<>" if c.op == "!=" else c.op
    return f"({col} {sql_op} {bind(c.value, cast)})"


def referenced_facts(c: Condition) -> frozenset[str]:
    if isinstance(c, Group):
        return frozenset().union(*(referenced_facts(p) for p in c.parts))
    return frozenset({c.fact})


def explain(c: Condition) -> str:
    """The condition in words, for the dry run and the dashboard."""
    if isinstance(c, Group):
        if c.kind == "not":
            return f"not ({explain(c.parts[0])})"
        return f" {'and' if c.kind == 'all' else 'or'} ".join(
            explain(p) if isinstance(p, Comparison) else f"({explain(p)})" for p in c.parts
        )
    shown = _document(c)["value"]
    return f"{c.fact} {c.op} {shown}"


def names_in(segments: Sequence[str]) -> list[str]:
    return [check_name(s) for s in segments]
