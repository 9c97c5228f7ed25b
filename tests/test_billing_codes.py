"""The billing code table as data: the CY 2026 default, its checks, and which table is in
force on a date."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest

from rpm.billing.codes import default_table, in_force, parse
from rpm.domain.errors import InvalidCodeTable

pytestmark = pytest.mark.pure

DEFAULT = default_table()


def doc() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT.document())


def test_the_2026_default() -> None:
    assert DEFAULT.name == "cms-2026"
    assert DEFAULT.effective_from == date(2026, 1, 1)
    assert "CMS-1832-F" in DEFAULT.source
    by = {c.code: c for c in DEFAULT.codes}
    assert (by["99445"].min_days, by["99445"].max_days) == (2, 15)
    assert (by["99454"].min_days, by["99454"].max_days) == (16, 30)
    assert by["99445"].excludes == {"99454"}
    assert by["99454"].excludes == {"99445"}
    assert (by["99470"].min_minutes, by["99470"].requires_interactive) == (10, True)
    assert (by["99457"].min_minutes, by["99457"].excludes) == (20, {"99470"})
    assert (by["99458"].addon_to, by["99458"].each_minutes) == ("99457", 20)
    assert by["99453"].kind == "setup"
    assert by["99453"].min_days == 2
    assert DEFAULT.interactive_activities == {"interactive_phone", "interactive_video"}


def test_a_document_round_trips() -> None:
    assert parse(DEFAULT.document()) == DEFAULT


def _with(change: Any) -> dict[str, Any]:
    d = doc()
    change(d)
    return d


def _code(d: dict[str, Any], code: str) -> dict[str, Any]:
    return next(c for c in d["codes"] if c["code"] == code)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "a code table is a JSON object"),
        (_with(lambda d: d.pop("source")), "table.source"),
        (_with(lambda d: d.update(effective_from="2026-13-01")), "effective_from: a date"),
        (_with(lambda d: d.update(colour="red")), "table: unknown field colour"),
        (_with(lambda d: d.update(codes=[])), "codes: a list of 1 to 50"),
        (_with(lambda d: d.update(interactive_activities=["chat"])), "interactive_activities"),
        (_with(lambda d: _code(d, "99454").update(kind="bonus")), "code 99454: kind is one of"),
        (_with(lambda d: _code(d, "99454").update(code="9945")), "codes[2].code: five digits"),
        (
            _with(lambda d: _code(d, "99454").update(max_days=31)),
            "max_days: a whole number from 1 to 30",
        ),
        (_with(lambda d: _code(d, "99454").update(max_days=10)), "max_days is below min_days"),
        (_with(lambda d: _code(d, "99454").pop("min_days")), "a device_supply code needs min_days"),
        (_with(lambda d: _code(d, "99454").update(min_minutes=5)), "min_minutes does not apply"),
        (_with(lambda d: _code(d, "99457").update(min_minutes="20")), "99457.min_minutes"),
        (_with(lambda d: _code(d, "99457").update(requires_interactive="yes")), "true or false"),
        (
            _with(lambda d: _code(d, "99454").update(excludes=[])),
            "but 99454 does not exclude 99445",
        ),
        (
            _with(lambda d: _code(d, "99454").update(excludes=["99445", "99999"])),
            "99999, which is not in the table",
        ),
        (
            _with(lambda d: _code(d, "99454").update(excludes=["99445", "99454"])),
            "cannot exclude itself",
        ),
        (
            _with(lambda d: _code(d, "99458").update(addon_to="99454")),
            "addon_to names a management code",
        ),
        (_with(lambda d: d["codes"].append(_code(d, "99453"))), "code 99453: listed twice"),
        (_with(lambda d: _code(d, "99470").update(min_minutes=20)), "with the same threshold"),
    ],
)
def test_a_malformed_table_says_where(document: Any, message: str) -> None:
    with pytest.raises(InvalidCodeTable) as caught:
        parse(document)
    assert message in str(caught.value)


def test_exclusions_only_within_a_kind() -> None:
    d = doc()
    _code(d, "99454")["excludes"] = ["99445", "99457"]
    _code(d, "99457")["excludes"] = ["99470", "99454"]
    with pytest.raises(InvalidCodeTable, match="only device-supply codes"):
        parse(d)


def test_in_force_takes_the_latest_effective_date_on_or_before_the_day() -> None:
    later = parse(doc() | {"name": "cms-2027", "effective_from": "2027-01-01"})
    correction = parse(doc() | {"name": "cms-2026-fix"})
    tables = [DEFAULT, later, correction]
    assert in_force(tables, date(2026, 12, 31)).name == "cms-2026-fix"  # newer version wins
    assert in_force(tables, date(2027, 1, 1)).name == "cms-2027"
    with pytest.raises(InvalidCodeTable, match="2025-12-31"):
        in_force(tables, date(2025, 12, 31))
