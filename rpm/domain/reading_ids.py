"""The reading uid: a UUID that names a measurement event and can be read back.

A reading is identified by its device, metric and measured time (the readings table's
primary key). Its uid (the FHIR Observation id, the reference alerts and corrections keep)
is made from those three and nothing else, so it is never stored with the reading
(docs/data-lifecycle.md, "Bytes per reading"): it is an RFC 9562 UUIDv8 that holds

    bits 127-80  measured time, µs since 1970 + 2^59, its high 48 bits
    bits 79-76   version 8
    bits 75-64   measured time, its low 12 bits
    bits 63-62   variant 0b10
    bits 61-56   the metric's code (``METRIC_CODES``)
    bits 55-0    the first 56 bits of MD5(device id, UTF-8): a locator, not a secret

``key_of_uid`` reads the time, metric and device hash back, and storage finds the reading by
its device (``devices`` has an index on the hash) and key. Two devices whose hashes agree
would need the same metric at the same microsecond for their uids to agree: at a million
devices, about one pair in 10^5 programs shares a hash at all. PostgreSQL computes the same
value in ``rpm_reading_uid`` (migration 0039); tests/test_reading_uid.py checks they agree.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Metric codes, 1-based positions in this tuple: append only, never reorder or reuse (the
# uids of stored readings hold them). Migration 0039 has the same list.
METRIC_CODES: tuple[str, ...] = (
    "blood_pressure",
    "heart_rate",
    "spo2",
    "weight",
    "body_temperature",
    "glucose",
    "respiratory_rate",
)
_CODE = {name: i + 1 for i, name in enumerate(METRIC_CODES)}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TIME_OFFSET = 1 << 59  # times from about 16,300 BC to AD 20,200 fit in 60 bits
_HASH_BITS = 56


def epoch_us(t: datetime) -> int:
    """Exact microseconds since the Unix epoch (whatever UTC offset ``t`` was written with)."""
    return (t - _EPOCH) // _MICROSECOND


def device_hash(device_id: str) -> int:
    """The first 56 bits of MD5 of the device id's UTF-8 bytes (``rpm_device_hash`` in SQL)."""
    digest = hashlib.md5(device_id.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[: _HASH_BITS // 8], "big")


def reading_uid(device_id: str, metric: str, measured_at: datetime) -> uuid.UUID:
    """The uid of the reading of ``device_id``'s ``metric`` measured at ``measured_at``."""
    code = _CODE.get(str(metric))
    if code is None:
        raise ValueError(f"metric {metric!r} has no uid code (rpm.domain.reading_ids)")
    t = epoch_us(measured_at) + _TIME_OFFSET
    if not 0 <= t < 1 << 60:
        raise ValueError("measured time out of the uid's range")
    value = (
        (t >> 12) << 80
        | 8 << 76
        | (t & 0xFFF) << 64
        | 0b10 << 62
        | code << _HASH_BITS
        | device_hash(device_id)
    )
    return uuid.UUID(int=value)


@dataclass(frozen=True, slots=True)
class UidKey:
    """What a reading uid holds: the device's hash, the metric and the measured time."""

    device_hash: int
    metric: str
    measured_at: datetime


def key_of_uid(uid: uuid.UUID | str) -> UidKey | None:
    """The key a reading uid holds; None for any other UUID (no reading has it)."""
    try:
        u = uid if isinstance(uid, uuid.UUID) else uuid.UUID(uid)
    except ValueError:
        return None
    if u.version != 8 or u.variant != uuid.RFC_4122:
        return None
    value = u.int
    code = value >> _HASH_BITS & 0x3F
    if not 1 <= code <= len(METRIC_CODES):
        return None
    t = (value >> 80) << 12 | (value >> 64 & 0xFFF)
    try:
        measured_at = _EPOCH + (t - _TIME_OFFSET) * _MICROSECOND
    except OverflowError:
        return None  # a v8 UUID of someone else's making, beyond datetime's years
    return UidKey(value & ((1 << _HASH_BITS) - 1), METRIC_CODES[code - 1], measured_at)
