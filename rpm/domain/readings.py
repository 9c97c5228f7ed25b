"""Domain value types shared by every stage of the flow.

A ``RawMessage`` is what a transport received; a decoder turns it into
``Reading`` values; validation accepts or rejects them; rejected input becomes a
``Rejection`` that is kept in the quarantine with its reason.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from .reading_ids import reading_uid


class Metric(enum.StrEnum):
    """What a reading measures. Values are canonical and stored as text."""

    BLOOD_PRESSURE = "blood_pressure"
    HEART_RATE = "heart_rate"
    SPO2 = "spo2"
    WEIGHT = "weight"
    BODY_TEMPERATURE = "body_temperature"
    GLUCOSE = "glucose"
    RESPIRATORY_RATE = "respiratory_rate"


@dataclass(frozen=True, slots=True)
class Component:
    """One value of a metric, with its canonical UCUM unit and plausible range.

    The plausible range rejects values no living patient's device reports
    (sensor faults, unit mix-ups); it is not a clinical threshold.
    """

    name: str
    ucum: str
    low: float
    high: float
    required: bool = True


@dataclass(frozen=True, slots=True)
class MetricSpec:
    metric: Metric
    components: tuple[Component, ...]

    def component(self, name: str) -> Component | None:
        for c in self.components:
            if c.name == name:
                return c
        return None


# Canonical units are UCUM (https://ucum.org/ucum): mm[Hg], /min, %, kg, Cel, mg/dL.
METRICS: Mapping[Metric, MetricSpec] = MappingProxyType(
    {
        Metric.BLOOD_PRESSURE: MetricSpec(
            Metric.BLOOD_PRESSURE,
            (
                Component("systolic", "mm[Hg]", 40, 300),
                Component("diastolic", "mm[Hg]", 20, 200),
                Component("pulse", "/min", 20, 250, required=False),
            ),
        ),
        Metric.HEART_RATE: MetricSpec(Metric.HEART_RATE, (Component("pulse", "/min", 20, 250),)),
        Metric.SPO2: MetricSpec(
            Metric.SPO2,
            (
                Component("spo2", "%", 50, 100),
                Component("pulse", "/min", 20, 250, required=False),
            ),
        ),
        Metric.WEIGHT: MetricSpec(Metric.WEIGHT, (Component("weight", "kg", 2, 400),)),
        Metric.BODY_TEMPERATURE: MetricSpec(
            Metric.BODY_TEMPERATURE, (Component("temperature", "Cel", 30, 44),)
        ),
        Metric.GLUCOSE: MetricSpec(Metric.GLUCOSE, (Component("glucose", "mg/dL", 10, 1000),)),
        Metric.RESPIRATORY_RATE: MetricSpec(
            Metric.RESPIRATORY_RATE, (Component("respiratory_rate", "/min", 2, 80),)
        ),
    }
)

# UCUM codes (https://ucum.org/ucum) as people read them: charts, alert texts, FHIR
# Quantity.unit. The one table of display units.
DISPLAY_UNITS: Mapping[str, str] = MappingProxyType(
    {"mm[Hg]": "mmHg", "/min": "/min", "%": "%", "kg": "kg", "Cel": "°C", "mg/dL": "mg/dL"}
)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """Bytes as a transport received them, with the identity the transport vouches for.

    ``device_id`` comes from the authenticated channel (the MQTT topic the broker's
    ACL allowed), never from the payload; decoders must use it when it is set. Vendor
    webhooks carry many devices: there ``device_id`` is None, the decoder reads the
    vendor's device ids, and ``integration`` names the authenticated integration, which
    may only report devices enrolled under it.
    """

    transport: str
    payload_format: str
    device_id: str | None
    payload: bytes
    received_at: datetime
    topic: str | None = None
    integration: str | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement event in canonical units.

    Decoders construct readings with already-checked fields; validation decides
    whether each one is plausible and belongs to a bound device.
    """

    device_id: str
    metric: Metric
    values: Mapping[str, float]
    measured_at: datetime
    received_at: datetime
    original: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.measured_at.tzinfo is None or self.received_at.tzinfo is None:
            raise ValueError("reading timestamps must be timezone-aware")

    @property
    def uid(self) -> uuid.UUID:
        """The reading's identity as a UUID (computed on demand: off the hot path)."""
        return reading_uid(self.device_id, self.metric, self.measured_at)


# FHIR R4 Observation.status values that retract an Observation sent before
# (http://hl7.org/fhir/R4/valueset-observation-status.html): "entered-in-error" (it should
# not have existed) and "cancelled" (aborted). Both mark the stored reading entered-in-error.
RETRACTING_STATUSES = frozenset({"entered-in-error", "cancelled"})


@dataclass(frozen=True, slots=True)
class Retraction:
    """A source saying a reading it sent earlier is not a measurement.

    It names the reading by its identity (device, metric, measured time: what ``reading_uid``
    holds), exactly as the original Observation would decode; ``status`` is the FHIR status
    it was sent with (one of ``RETRACTING_STATUSES``).
    """

    device_id: str
    metric: Metric
    measured_at: datetime
    status: str

    def __post_init__(self) -> None:
        if self.measured_at.tzinfo is None:
            raise ValueError("a retraction's measured time must be timezone-aware")
        if self.status not in RETRACTING_STATUSES:
            raise ValueError(f"status {self.status!r} does not retract a reading")

    @property
    def uid(self) -> uuid.UUID:
        return reading_uid(self.device_id, self.metric, self.measured_at)


class RejectReason(enum.StrEnum):
    """Machine-readable reasons a payload or reading went to the quarantine."""

    MALFORMED = "malformed"
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNKNOWN_DEVICE = "unknown_device"
    RETIRED_DEVICE = "retired_device"
    UNBOUND_DEVICE = "unbound_device"
    IMPLAUSIBLE_VALUE = "implausible_value"
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    DECODER_ERROR = "decoder_error"  # our bug, not the device's: kept for replay once fixed


@dataclass(frozen=True, slots=True)
class Rejection:
    """A payload (or one reading of it) refused, with the reason and the raw bytes."""

    reason: RejectReason
    detail: str
    raw: RawMessage
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class Binding:
    """A device lent to one patient from ``start`` until ``end`` (open-ended when None)."""

    patient_id: str
    start: datetime
    end: datetime | None = None

    def covers(self, t: datetime) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """What validation needs to know about a device: whether it is retired and its bindings."""

    device_id: str
    retired: bool
    bindings: tuple[Binding, ...] = ()

    def patient_at(self, t: datetime) -> str | None:
        for b in self.bindings:
            if b.covers(t):
                return b.patient_id
        return None


@dataclass(frozen=True, slots=True)
class AcceptedReading:
    """A valid reading attributed to the patient its device was bound to."""

    reading: Reading
    patient_id: str
