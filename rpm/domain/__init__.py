"""The bottom layer: the values every stage of the flow shares, and the error tree.

It imports nothing of this project (import-linter's "domain is the bottom" contract in
pyproject.toml). Readings and metrics live in ``readings``, alert severity in ``severity``,
a reading's uid in ``reading_ids``, a rule's proposal in ``alerts``, the exception tree in
``errors``.
"""

from .alerts import AlertCandidate
from .reading_ids import UidKey, device_hash, epoch_us, key_of_uid, reading_uid
from .readings import (
    DISPLAY_UNITS,
    METRICS,
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
)
from .severity import Severity

__all__ = [
    "DISPLAY_UNITS",
    "METRICS",
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
    "UidKey",
    "device_hash",
    "epoch_us",
    "key_of_uid",
    "reading_uid",
]
