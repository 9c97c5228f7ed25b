"""Parsing shared by the vendor decoders: JSON, numbers, times, device ids, readings, batches.

Whatever the input, these functions raise nothing but ``DecodeError``, so a decoder built
from them (and from ``isinstance`` checks) lets no other exception escape. Times come out
timezone-aware and in UTC, so a reading's identity does not depend on how a vendor spelled
its offset.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from device_gateways.units import to_canonical
from rpm.domain import METRICS, Metric, RawMessage, Reading
from rpm.domain.errors import DecodeError

from .base import Decoded

MAX_ITEMS = 1000
MAX_ID_LENGTH = 200
_MAX_PROBLEMS_IN_ERROR = 10
# A plain decimal number; Python's float() would also take "nan", "1_000" and non-ASCII digits.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def load_json(payload: bytes) -> object:
    """The JSON document in ``payload``."""
    try:
        return json.loads(payload)
    # ValueError covers JSONDecodeError and integers past Python's digit limit.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError(f"not JSON: {str(exc)[:120]}") from None


def show(value: object) -> str:
    """A short rendering of a payload value for a problem message."""
    if isinstance(value, str):
        return repr(value[:40])
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= 20 else f"{text[:17]}..."
    if isinstance(value, dict):
        return "an object"
    return "an array" if isinstance(value, list) else type(value).__name__


def number(value: object, what: str, *, strings: bool = False) -> float:
    """A finite number; with ``strings``, also a decimal number written as a string."""
    if strings and isinstance(value, str):
        text = value.strip()
        if len(text) > 40 or not _NUMBER.fullmatch(text):
            raise DecodeError(f"{what} is not a number: {show(value)}")
        result = float(text)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            result = float(value)
        except OverflowError:
            raise DecodeError(f"{what} is out of range: {show(value)}") from None
    else:
        raise DecodeError(f"{what} must be a number, not {show(value)}")
    if not math.isfinite(result):
        raise DecodeError(f"{what} must be finite, not {show(value)}")
    return result


def identifier(value: object) -> str | None:
    """A usable id: a non-empty printable string (or integer) of reasonable length."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() < 512:
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > MAX_ID_LENGTH or not text.isprintable():
        return None
    return text


def device_id(raw: RawMessage, found: str | None, where: str) -> str:
    """The transport's identity when it has one, else the vendor's id found at ``where``."""
    if raw.device_id is not None:
        return raw.device_id
    if found is None:
        raise DecodeError(f"no usable device id in {where}")
    return found


def iso_time(value: object, what: str, *, naive_is_utc: bool = False) -> datetime:
    """An ISO 8601 date and time of day, in UTC.

    Without ``naive_is_utc`` a time without offset is refused: local time is ambiguous.
    """
    if not isinstance(value, str) or len(value) > 64:
        raise DecodeError(f"{what} must be an ISO 8601 date-time string, not {show(value)}")
    text = value.strip()
    if not any(c in text for c in "Tt "):
        raise DecodeError(f"{what} needs a time of day: {show(value)}")
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise DecodeError(f"{what} is not ISO 8601: {show(value)}") from None
    if t.tzinfo is None:
        if not naive_is_utc:
            raise DecodeError(f"{what} needs a UTC offset (e.g. 'Z'): {show(value)}")
        t = t.replace(tzinfo=UTC)
    try:
        return t.astimezone(UTC)
    except OverflowError:
        raise DecodeError(f"{what} is out of range: {show(value)}") from None


def unix_time(value: object, what: str) -> datetime:
    """Seconds since 1970-01-01T00:00:00Z, in UTC."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"{what} must be a Unix time in seconds, not {show(value)}")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise DecodeError(f"{what} is out of range: {show(value)}") from None


def reading(
    raw: RawMessage,
    device: str,
    metric: Metric,
    measured_at: datetime,
    quantities: Mapping[str, tuple[float, str]],
    extra: Mapping[str, object] | None = None,
) -> Reading:
    """A reading from ``{component: (value, UCUM unit)}``, converted to canonical units.

    Each converted component keeps what the device sent in ``original``; ``extra`` adds
    other facts worth keeping there.
    """
    spec = METRICS[metric]
    values: dict[str, float] = {}
    original: dict[str, object] = {}
    for name, (value, unit) in quantities.items():
        component = spec.component(name)
        if component is None:
            raise DecodeError(f"{metric.value} has no component {name!r}")
        converted = to_canonical(value, unit, component.ucum)
        if not math.isfinite(converted):
            raise DecodeError(f"{name} is out of range: {show(value)} {unit}")
        values[name] = converted
        if unit != component.ucum:
            original[name] = {"value": value, "unit": unit}
    missing = [c.name for c in spec.components if c.required and c.name not in values]
    if missing:
        raise DecodeError(f"{metric.value} lacks {', '.join(missing)}")
    original.update(extra or {})
    return Reading(device, metric, values, measured_at, raw.received_at, original)


def collect(
    items: Sequence[object], decode_item: Callable[[object], list[Reading]]
) -> tuple[list[Reading], list[str]]:
    """Decode each item; a bad item becomes a problem and the others go on."""
    if len(items) > MAX_ITEMS:
        raise DecodeError(f"more than {MAX_ITEMS} items in one payload")
    readings: list[Reading] = []
    problems: list[str] = []
    for index, item in enumerate(items):
        try:
            readings.extend(decode_item(item))
        except DecodeError as exc:
            problems.append(f"item {index}: {exc}" if len(items) > 1 else str(exc))
    return readings, problems


def finish(readings: list[Reading], problems: list[str], *, empty_ok: bool = False) -> Decoded:
    """The decoded payload; ``DecodeError`` when nothing in it was usable.

    ``empty_ok``: a payload whose items were all deliberately skipped (not measurements)
    decodes to no readings rather than failing.
    """
    if not readings and (problems or not empty_ok):
        if not problems:
            raise DecodeError("no readings in the payload")
        shown = "; ".join(problems[:_MAX_PROBLEMS_IN_ERROR])
        more = len(problems) - _MAX_PROBLEMS_IN_ERROR
        raise DecodeError(shown + (f"; and {more} more" if more > 0 else ""))
    return Decoded(readings, problems)
