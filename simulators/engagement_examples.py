"""Example segments and campaigns, published by ``rpm demo`` so its dashboard shows the
program between the alerts (docs/engagement.md uses the same documents)."""

from __future__ import annotations

from typing import Any

from rpm.engagement import campaigns, segments
from rpm.storage import campaigns as campaign_store
from rpm.storage import segments as segment_store
from rpm.storage.pool import Conn

ACTOR = "system:demo"

SEGMENTS: dict[str, dict[str, Any]] = {
    "bp-low-adherence": {
        "description": "Hypertension patients who measured on fewer than 4 of the last 7 days",
        "where": {
            "all": [
                {"fact": "program", "op": "includes", "value": "hypertension"},
                {"fact": "days_with_readings_7d", "op": "<", "value": 4},
            ]
        },
    },
    "measuring-well": {
        "description": "Patients who measured on at least 6 of the last 7 days",
        "where": {"fact": "days_with_readings_7d", "op": ">=", "value": 6},
    },
    "heart-failure": {
        "description": "Heart-failure patients without an open high or critical alert",
        "where": {
            "all": [
                {"fact": "program", "op": "includes", "value": "heart_failure"},
                {"fact": "open_alert_severity", "op": "<", "value": "high"},
            ]
        },
    },
    "everyone": {
        "description": "Every enrolled patient",
        "where": {"fact": "weeks_since_enrolment", "op": ">=", "value": 0},
    },
}

CAMPAIGNS: dict[str, tuple[dict[str, Any], bool]] = {
    "bp-morning-nudge": (
        {
            "description": "A nudge to measure when no blood pressure by 11:00",
            "segment": "bp-low-adherence",
            "trigger": {
                "kind": "no_reading_by",
                "local_time": "11:00",
                "metric": "blood_pressure",
            },
            "messages": {
                "en": "Good morning. A blood pressure reading today helps your care team. "
                "You measured on {days_measured_7d} of the last 7 days.",
                "es": "Buenos días. Una medición de presión hoy ayuda a su equipo de salud. "
                "Midió {days_measured_7d} de los últimos 7 días.",
            },
        },
        True,
    ),
    "streak-7": (
        {
            "description": "Congratulate a week of daily readings",
            "segment": "measuring-well",
            "trigger": {"kind": "streak", "days": 7},
            "messages": {
                "en": "Seven days of readings in a row: thank you. Keep it up!",
                "es": "Siete días seguidos de mediciones: gracias. ¡Siga así!",
            },
        },
        True,
    ),
    "weekly-summary": (
        {
            "description": "A weekly summary on Sunday evening",
            "segment": "everyone",
            "trigger": {"kind": "weekly", "weekday": "sun", "local_time": "18:00"},
            "messages": {
                "en": "Your week: readings on {days_measured_7d} of 7 days. Blood pressure "
                "average {bp_avg_7d}. Questions? Reply to this message.",
                "es": "Su semana: mediciones {days_measured_7d} de 7 días. Presión media "
                "{bp_avg_7d}. ¿Preguntas? Responda a este mensaje.",
            },
        },
        False,
    ),
}


async def publish_examples(conn: Conn) -> None:
    """Publish the example segments and campaigns (a no-op when they are already there)."""
    for name, document in SEGMENTS.items():
        await segment_store.publish_segment(conn, name, segments.parse(document), ACTOR, "example")
    for name, (document, live) in CAMPAIGNS.items():
        await campaign_store.publish_campaign(
            conn, name, campaigns.parse(document), live, ACTOR, "example"
        )
