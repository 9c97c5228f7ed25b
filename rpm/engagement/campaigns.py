"""Campaigns: a segment, a trigger or a weekly schedule, and a message per language. Pure.

A campaign document::

    {"description": "Nudge BP patients who have not measured by 11:00",
     "segment": "bp-patients",
     "trigger": {"kind": "no_reading_by", "local_time": "11:00", "metric": "blood_pressure"},
     "messages": {"en": "You have measured on {days_measured_7d} of the last 7 days. ...",
                  "es": "Ha medido {days_measured_7d} de los últimos 7 días. ..."},
     "cooldown_days": 1}

Triggers (:data:`TRIGGERS`), each judged at a planner pass in the patient's own time zone:

- ``no_reading_by``: no reading today (of ``metric`` when given) by ``local_time``.
- ``missed_days``: no reading on the last ``days`` whole local days, after having measured
  before; once per gap.
- ``first_reading``: the patient's first day with readings is today; once ever.
- ``streak``: readings on each of the last ``days`` local days, today included.
- ``alert_resolved``: an alert episode of the patient was resolved in the last day; once per
  episode.
- ``weight_rising``: the day's mean weight rose on each of the last ``days`` days, by
  ``min_gain_kg`` in all, with no weight alert open (a rise below the alert thresholds).
- ``weekly``: every week on ``weekday`` from ``local_time`` (a weekly summary).

Each trigger fires at most once per occurrence (a local day, a week, a gap, an episode) and,
with ``cooldown_days``, at most once in that many days per patient. Messages are formatted
with the patient's own figures (:data:`PLACEHOLDERS`), never their name.

A check-in campaign names a questionnaire (``rpm.engagement.checkins``) instead of, or as
well as, messages: ``"checkin": "hf_symptoms"``. Its SMS asks the first question (after the
message, when there is one) and waits ``reply_window_hours`` (default 24) for the reply;
docs/checkins.md.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from types import MappingProxyType
from typing import Any, Literal

from rpm.domain import METRICS
from rpm.domain.errors import InvalidCampaign, InvalidSegment
from rpm.engagement import checkins
from rpm.engagement.segments import check_name

TriggerKind = Literal[
    "no_reading_by",
    "missed_days",
    "first_reading",
    "streak",
    "alert_resolved",
    "weight_rising",
    "weekly",
]
TRIGGERS: tuple[TriggerKind, ...] = (
    "no_reading_by",
    "missed_days",
    "first_reading",
    "streak",
    "alert_resolved",
    "weight_rising",
    "weekly",
)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # ISO order, 1..7
# What a message may say about the patient, each computed by the planner in SQL.
PLACEHOLDERS: Mapping[str, str] = MappingProxyType(
    {
        "days_measured_7d": "local days with readings in the last 7",
        "days_measured_30d": "local days with readings in the last 30",
        "days_since_last": "whole days since the newest reading",
        "bp_avg_7d": "mean blood pressure of the last 7 days ('128/82'), or '-'",
        "weight_change_7d": "kg gained (+) or lost (-) over the last 7 days ('+1.2'), or '-'",
        "streak_days": "the trigger's streak length",
    }
)
MAX_MESSAGE = 480  # three SMS segments of GSM-7
DEFAULT_LANGUAGE = "en"
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


@dataclass(frozen=True, slots=True)
class Trigger:
    kind: TriggerKind
    local_time: time | None = None
    metric: str | None = None
    days: int | None = None
    min_gain_kg: float | None = None
    weekday: int | None = None  # ISO 1 (Monday) .. 7

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.local_time is not None:
            out["local_time"] = self.local_time.strftime("%H:%M")
        if self.metric is not None:
            out["metric"] = self.metric
        if self.days is not None:
            out["days"] = self.days
        if self.min_gain_kg is not None:
            out["min_gain_kg"] = self.min_gain_kg
        if self.weekday is not None:
            out["weekday"] = WEEKDAYS[self.weekday - 1]
        return out

    def explain(self) -> str:
        match self.kind:
            case "no_reading_by":
                what = f"no {self.metric} reading" if self.metric else "no reading"
                return f"{what} today by {self.document()['local_time']} local time"
            case "missed_days":
                return f"no reading on the last {self.days} days"
            case "first_reading":
                return "first day with readings"
            case "streak":
                return f"readings on each of the last {self.days} days"
            case "alert_resolved":
                return "an alert was resolved"
            case "weight_rising":
                return (
                    f"weight rising each day for {self.days} days by {self.min_gain_kg} kg or "
                    "more, no weight alert open"
                )
            case _:
                doc = self.document()
                return f"weekly on {doc['weekday']} from {doc['local_time']} local time"


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    description: str
    segment: str
    trigger: Trigger
    messages: Mapping[str, str]
    cooldown_days: int = 0
    placeholders: frozenset[str] = field(default_factory=frozenset)
    checkin: str | None = None  # a questionnaire of rpm.engagement.checkins.QUESTIONNAIRES
    reply_window_hours: int = checkins.DEFAULT_REPLY_WINDOW_HOURS

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "description": self.description,
            "segment": self.segment,
            "trigger": self.trigger.document(),
            "messages": dict(self.messages),
            "cooldown_days": self.cooldown_days,
        }
        if self.checkin is not None:
            out["checkin"] = self.checkin
            out["reply_window_hours"] = self.reply_window_hours
        return out

    def message_for(self, language: str) -> str:
        """The message in ``language``, else its base language, else the default's ('' for
        a check-in without messages)."""
        return (
            self.messages.get(language)
            or self.messages.get(language.split("-")[0])
            or self.messages.get(DEFAULT_LANGUAGE, "")
        )


def parse(document: Mapping[str, Any]) -> CampaignSpec:
    if not isinstance(document, Mapping):
        raise InvalidCampaign("a campaign is an object with segment, trigger and messages")
    keys = {"description", "segment", "trigger", "messages", "cooldown_days", "checkin"}
    unknown = set(document) - keys - {"reply_window_hours"}
    if unknown:
        raise InvalidCampaign(f"unknown keys {sorted(unknown)}")
    description = document.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise InvalidCampaign("description is text of at most 500 characters")
    segment = document.get("segment")
    if not isinstance(segment, str):
        raise InvalidCampaign("segment names the segment the campaign is aimed at")
    try:
        check_name(segment)
    except InvalidSegment as exc:
        raise InvalidCampaign(f"segment: {exc}") from None
    trigger = _trigger(document.get("trigger"))
    checkin, window = _checkin(document)
    if checkin is not None and not document.get("messages"):  # {} as document() writes it
        messages: Mapping[str, str] = MappingProxyType({})
        used: frozenset[str] = frozenset()
    else:
        messages, used = _messages(document.get("messages"))
    cooldown = document.get("cooldown_days", _default_cooldown(trigger))
    if isinstance(cooldown, bool) or not isinstance(cooldown, int) or not 0 <= cooldown <= 365:
        raise InvalidCampaign("cooldown_days is a whole number of days, 0 to 365")
    return CampaignSpec(description, segment, trigger, messages, cooldown, used, checkin, window)


def _checkin(document: Mapping[str, Any]) -> tuple[str | None, int]:
    """The questionnaire a check-in campaign asks, and how long its reply is waited for."""
    name = document.get("checkin")
    window = document.get("reply_window_hours", checkins.DEFAULT_REPLY_WINDOW_HOURS)
    if name is None:
        if "reply_window_hours" in document:
            raise InvalidCampaign("reply_window_hours is for a check-in campaign (checkin)")
        return None, window
    if name not in checkins.QUESTIONNAIRES:
        raise InvalidCampaign(f"checkin is one of {sorted(checkins.QUESTIONNAIRES)}")
    top = checkins.MAX_REPLY_WINDOW_HOURS
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= top:
        raise InvalidCampaign(f"reply_window_hours is a whole number of hours, 1 to {top}")
    return name, window


def _default_cooldown(trigger: Trigger) -> int:
    """A streak is congratulated once per ``days``; a rising weight once in 3 days."""
    if trigger.kind == "streak":
        return trigger.days or 0
    if trigger.kind == "weight_rising":
        return 3
    return 0


def _trigger(node: Any) -> Trigger:
    if not isinstance(node, Mapping) or node.get("kind") not in TRIGGERS:
        raise InvalidCampaign(f"trigger is an object whose kind is one of {list(TRIGGERS)}")
    kind: TriggerKind = node["kind"]
    allowed = {
        "no_reading_by": {"local_time", "metric"},
        "missed_days": {"days"},
        "first_reading": set(),
        "streak": {"days"},
        "alert_resolved": set(),
        "weight_rising": {"days", "min_gain_kg"},
        "weekly": {"weekday", "local_time"},
    }[kind]
    unknown = set(node) - allowed - {"kind"}
    if unknown:
        raise InvalidCampaign(f"trigger {kind} takes {sorted(allowed)}, not {sorted(unknown)}")
    local_time = None
    if "local_time" in allowed:
        local_time = _time(node.get("local_time"), kind)
    metric = node.get("metric")
    if metric is not None and metric not in {m.value for m in METRICS}:
        raise InvalidCampaign(f"trigger metric is one of {sorted(m.value for m in METRICS)}")
    days = None
    if "days" in allowed:
        days = node.get("days", 2 if kind == "missed_days" else 3 if kind == "weight_rising" else 7)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 30:
            raise InvalidCampaign(f"trigger {kind}: days is a whole number from 1 to 30")
    gain = None
    if kind == "weight_rising":
        gain = node.get("min_gain_kg", 1.0)
        if isinstance(gain, bool) or not isinstance(gain, int | float) or not 0 < gain <= 20:
            raise InvalidCampaign("trigger weight_rising: min_gain_kg is above 0 and at most 20")
        gain = float(gain)
    weekday = None
    if kind == "weekly":
        name = node.get("weekday")
        if name not in WEEKDAYS:
            raise InvalidCampaign(f"trigger weekly: weekday is one of {list(WEEKDAYS)}")
        weekday = WEEKDAYS.index(name) + 1
    return Trigger(kind, local_time, metric, days, gain, weekday)


def _time(value: Any, kind: str) -> time:
    if not isinstance(value, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise InvalidCampaign(f"trigger {kind}: local_time is 'HH:MM' (24-hour)")
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def _messages(node: Any) -> tuple[Mapping[str, str], frozenset[str]]:
    if not isinstance(node, Mapping) or DEFAULT_LANGUAGE not in node:
        raise InvalidCampaign(
            f"messages maps languages to text, with '{DEFAULT_LANGUAGE}' for anyone else"
        )
    used: set[str] = set()
    out: dict[str, str] = {}
    for language, text in node.items():
        if not isinstance(language, str) or not _LANGUAGE.match(language):
            raise InvalidCampaign(f"messages: {language!r} is not a language tag like 'es'")
        if not isinstance(text, str) or not 0 < len(text) <= MAX_MESSAGE:
            raise InvalidCampaign(f"messages.{language}: text of 1 to {MAX_MESSAGE} characters")
        try:
            fields = [f for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
        except ValueError as exc:
            raise InvalidCampaign(f"messages.{language}: {exc}") from None
        for f in fields:
            if f not in PLACEHOLDERS:
                raise InvalidCampaign(
                    f"messages.{language}: unknown placeholder {{{f}}}; known: "
                    f"{sorted(PLACEHOLDERS)}"
                )
        if re.search(r"\{[^}]*[!:][^}]*\}", text):
            raise InvalidCampaign(f"messages.{language}: placeholders take no format or conversion")
        used.update(fields)
        out[language] = text
    return MappingProxyType(out), frozenset(used)


def render(text: str, context: Mapping[str, Any]) -> str:
    """The message with the patient's figures; a figure the planner did not give reads '-'."""
    values = {name: _shown(context.get(name)) for name in PLACEHOLDERS}
    return text.format_map(values)


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
