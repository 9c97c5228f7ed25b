"""Plain-language patient SMS. Short enough for two SMS segments; no jargon."""

from __future__ import annotations

from rules.spec import Severity


def patient_alert_sms(title: str, advice: str, severity: Severity) -> str:
    """What happened, what to do, and that the care team was told."""
    opening = "Your care team received a reading that needs attention"
    if severity >= Severity.CRITICAL:
        opening = "Your latest reading is in the danger range"
    text = f"{opening} ({title.lower()}). {advice} Your nurse has been told and will contact you."
    return text.replace("  ", " ").strip()
