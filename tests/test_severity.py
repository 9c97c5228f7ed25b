"""Severity is defined once (rpm/domain/severity.py): its order, names, parsing and SQL rank."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import BaseModel

from rpm.domain import Severity
from rpm.domain.severity import BY_URGENCY, LABELS, NAMES, SeverityField, SeverityName, sql_rank

pytestmark = pytest.mark.pure


def test_order_names_and_labels() -> None:
    assert BY_URGENCY == (Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW)
    assert NAMES == ("CRITICAL", "HIGH", "MEDIUM", "LOW")
    assert LABELS == ("critical", "high", "medium", "low")
    assert set(get_args(SeverityName)) == set(NAMES) | set(LABELS)


@pytest.mark.parametrize("text", ["high", "HIGH", "High"])
def test_parse_reads_either_case(text: str) -> None:
    assert Severity.parse(text) is Severity.HIGH


def test_parse_refuses_other_names() -> None:
    with pytest.raises(ValueError, match="unknown severity 'urgent'"):
        Severity.parse("urgent")


def test_a_spec_field_reads_a_name_and_writes_the_label() -> None:
    class Spec(BaseModel):
        severity: SeverityField

    spec = Spec.model_validate({"severity": "CRITICAL"})
    assert spec.severity is Severity.CRITICAL
    assert spec.model_dump() == {"severity": "critical"}


def test_sql_rank_gives_each_stored_name_its_value() -> None:
    sql = sql_rank("a.severity")
    assert sql.startswith("CASE a.severity ")
    for s in Severity:
        assert f"WHEN '{s.name}' THEN {int(s)}" in sql
