"""The bottom layer: the values every stage of the flow shares, and the error tree.

It imports nothing of this project (import-linter's "domain is the bottom" contract in
pyproject.toml). Readings and metrics live in ``readings``, alert severity in ``severity``,
a rule's proposal in ``alerts``, the exception tree in ``errors``.
"""

from .alerts import AlertCandidate
from .readings import (
    DISPLAY_UNITS,
    METRICS,
    READING_NAMESPACE,
    RETRACTING_STATUSES,
    AcceptedReading,
    Binding,
    Component,
    DeviceRecord,
    Metric,
    MetricSpec,
    RawMessage,
    Reading,
    Rejection,
    RejectReason,
    Retraction,
    epoch_us,
    reading_uid,
)
from .severity import Severity

__all__ = [
    "DISPLAY_UNITS",
    "METRICS",
    "READING_NAMESPACE",
    "RETRACTING_STATUSES",
    "AcceptedReading",
    "AlertCandidate",
    "Binding",
    "Component",
    "DeviceRecord",
    "Metric",
    "MetricSpec",
    "RawMessage",
    "Reading",
    "RejectReason",
    "Rejection",
    "Retraction",
    "Severity",
    "epoch_us",
    "reading_uid",
]
