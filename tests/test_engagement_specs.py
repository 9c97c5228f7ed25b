"""Segment and campaign definitions, pure: what they accept, what they refuse and why, the
SQL a segment compiles to (values always bound, never spliced), and message rendering."""

from __future__ import annotations

from typing import Any

import pytest

from rpm.engagement import campaigns, segments
from simulators.engagement_examples import CAMPAIGNS, SEGMENTS

pytestmark = pytest.mark.pure


def test_a_segment_compiles_to_sql_with_every_value_bound() -> None:
    spec = segments.parse(
        {
            "where": {
                "all": [
                    {"fact": "program", "op": "includes", "value": "copd'; DROP TABLE x; --"},
                    {
                        "any": [
                            {"fact": "open_alert_severity", "op": ">=", "value": "high"},
                            {"not": {"fact": "language", "op": "in", "value": ["en", "es"]}},
                        ]
                    },
                    {"fact": "days_since_last_reading", "op": "is_null", "value": False},
                ]
            }
        }
    )
    params: list[Any] = ["now", None]
    sql = segments.compile_where(spec.where, params)
    assert sql == (
        "(($3::text = ANY(f.program)) AND ((f.open_alert_severity >= $4::int) OR "
        "NOT coalesce((f.language = ANY($5::text[])), false)) AND "
        "(f.days_since_last_reading IS NOT NULL))"
    )
    assert params[2:] == ["copd'; DROP TABLE x; --", 3, ["en", "es"]]
    assert "DROP" not in sql


def test_a_segment_reads_back_as_the_document_it_was_given() -> None:
    document = {
        "description": "d",
        "where": {
            "all": [
                {"fact": "open_alert_severity", "op": "<", "value": "high"},
                {"fact": "news2_severity_7d", "op": "=", "value": "none"},
                {"fact": "age", "op": "in", "value": [70, 71]},
            ]
        },
    }
    assert segments.parse(document).document() == document
    assert segments.explain(segments.parse(document).where) == (
        "open_alert_severity < high and news2_severity_7d = none and age in [70, 71]"
    )


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ({"fact": "program", "op": "=", "value": "copd"}, "takes the operators ['includes']"),
        ({"fact": "age", "op": ">", "value": True}, "a whole number"),
        ({"fact": "age", "op": ">", "value": 10**7}, "a whole number"),
        ({"fact": "sms_consent", "op": "=", "value": "yes"}, "true or false"),
        ({"fact": "language", "op": "in", "value": []}, "a list of 1 to 100 values"),
        ({"all": [{"fact": "age", "op": ">", "value": 1}], "any": []}, "stands alone"),
        ({"fact": "age", "op": ">"}, "needs a value"),
        ({"fact": "age", "op": ">", "value": 1, "extra": 1}, "a comparison is"),
        ("age > 1", "a condition is an object"),
    ],
)
def test_a_bad_segment_says_what_is_wrong(where: Any, says: str) -> None:
    with pytest.raises(segments.InvalidSegment, match=None) as caught:
        segments.parse({"where": where})
    assert says in str(caught.value)


def test_deep_or_huge_segments_are_refused() -> None:
    deep: dict[str, Any] = {"fact": "age", "op": ">", "value": 1}
    for _ in range(10):
        deep = {"not": deep}
    with pytest.raises(segments.InvalidSegment, match="nested"):
        segments.parse({"where": deep})
    wide = {"any": [{"fact": "age", "op": "=", "value": n} for n in range(60)]}
    with pytest.raises(segments.InvalidSegment, match="at most 50 conditions"):
        segments.parse({"where": wide})


@pytest.mark.parametrize("name", ["", "UPPER", "-lead", "a" * 64, "has space", "é"])
def test_names_are_short_lower_case_words(name: str) -> None:
    with pytest.raises(segments.InvalidSegment):
        segments.check_name(name)


def test_campaign_triggers_default_their_cooldown_and_read_back() -> None:
    streak = campaigns.parse(
        {"segment": "s", "trigger": {"kind": "streak", "days": 5}, "messages": {"en": "x"}}
    )
    assert streak.cooldown_days == 5
    weekly = campaigns.parse(
        {
            "segment": "s",
            "trigger": {"kind": "weekly", "weekday": "sun", "local_time": "18:00"},
            "messages": {"en": "Week: {days_measured_7d} days", "es-MX": "Semana"},
        }
    )
    assert weekly.trigger.weekday == 7
    assert weekly.placeholders == {"days_measured_7d"}
    assert campaigns.parse(weekly.document()) == weekly
    assert weekly.message_for("es-MX") == "Semana"
    assert weekly.message_for("es") == "Week: {days_measured_7d} days"  # no "es": English
    assert weekly.trigger.explain() == "weekly on sun from 18:00 local time"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"trigger": {"kind": "sometimes"}}, "kind is one of"),
        ({"trigger": {"kind": "weekly", "weekday": "someday", "local_time": "09:00"}}, "weekday"),
        ({"trigger": {"kind": "no_reading_by", "local_time": "25:00"}}, "'HH:MM'"),
        ({"trigger": {"kind": "streak", "days": 0}}, "1 to 30"),
        ({"trigger": {"kind": "streak", "local_time": "10:00"}}, "takes ['days']"),
        (
            {"trigger": {"kind": "no_reading_by", "local_time": "10:00", "metric": "mood"}},
            "metric is one of",
        ),
        ({"messages": {"es": "hola"}}, "with 'en'"),
        ({"messages": {"en": "Hi {name}"}}, "unknown placeholder {name}"),
        ({"messages": {"en": "{days_measured_7d:>10}"}}, "no format or conversion"),
        ({"messages": {"en": "x" * 481}}, "1 to 480 characters"),
        ({"messages": {"english": "x", "en": "x"}}, "not a language tag"),
        ({"segment": "Not A Name"}, "a name is"),
        ({"cooldown_days": -1}, "cooldown_days"),
        ({"surprise": 1}, "unknown keys"),
    ],
)
def test_a_bad_campaign_says_what_is_wrong(change: dict[str, Any], says: str) -> None:
    base = {
        "segment": "s",
        "trigger": {"kind": "first_reading"},
        "messages": {"en": "Welcome"},
    }
    with pytest.raises(campaigns.InvalidCampaign) as caught:
        campaigns.parse({**base, **change})
    assert says in str(caught.value)


def test_messages_render_the_patients_figures_and_a_dash_for_what_is_unknown() -> None:
    text = "Days {days_measured_7d}, BP {bp_avg_7d}, weight {weight_change_7d}"
    context = {"days_measured_7d": 5, "bp_avg_7d": "128/82"}
    assert campaigns.render(text, context) == "Days 5, BP 128/82, weight -"


def test_the_examples_the_demo_publishes_are_valid() -> None:
    for document in SEGMENTS.values():
        segments.parse(document)
    for document, _ in CAMPAIGNS.values():
        spec = campaigns.parse(document)
        assert spec.segment in SEGMENTS
