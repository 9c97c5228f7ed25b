"""The ingest hot path's shortcuts change no result.

- ``rpm.domain.trusted``: a value built without its checks equals the one built with them,
  and stays frozen.
- The canonical decoder and validation build their readings that way: over many generated
  payloads, well-formed and malformed, every reading equals the checked construction of
  its fields, and a payload refused is refused with the same reason as before (the checked
  ``Reading`` still runs when the transport's time is naive).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_gateways.decoders import Decoded, canonical
from device_gateways.mqtt import to_raw
from rpm.domain import (
    AcceptedReading,
    Binding,
    DeviceRecord,
    Metric,
    RawMessage,
    Reading,
)
from rpm.domain.errors import DecodeError
from rpm.domain.trusted import trusted
from rpm.validation import ClockPolicy, validate
from tests.examples import examples

pytestmark = pytest.mark.pure

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def test_trusted_values_equal_checked_ones_and_stay_frozen() -> None:
    reading = Reading("dev-1", Metric.HEART_RATE, {"rate": 71.0}, NOW, NOW)
    pairs = [
        (
            trusted(RawMessage)("mqtt", "canonical", "d", b"{}", NOW, "t", None),
            RawMessage("mqtt", "canonical", "d", b"{}", NOW, "t"),
        ),
        (
            trusted(Reading)("dev-1", Metric.HEART_RATE, {"rate": 71.0}, NOW, NOW, {}),
            reading,
        ),
        (trusted(AcceptedReading)(reading, "p-1"), AcceptedReading(reading, "p-1")),
        (trusted(Decoded)([reading], [], {}, []), Decoded([reading])),
    ]
    for fast, checked in pairs:
        assert fast == checked
        assert hash(type(fast)) == hash(type(checked))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(fast, dataclasses.fields(fast)[0].name, "x")
    assert to_raw("rpm/v1/devices/dev-9/readings", b"x", NOW) == RawMessage(
        "mqtt", "canonical", "dev-9", b"x", NOW, "rpm/v1/devices/dev-9/readings"
    )


# Payloads near the canonical shape, so most decode and many fail in every way the decoder
# checks: unknown metrics and components, missing parts, non-numbers, naive or bad times.
_metric = st.sampled_from([m.value for m in Metric] + ["steps", 3, None])
_component = st.sampled_from(["systolic", "diastolic", "pulse", "rate", "value", "kg", "spo2"])
_number = st.one_of(
    st.integers(-10, 400), st.floats(-10, 400), st.just(True), st.just("80"), st.just(10**400)
)
_time = st.one_of(
    st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
    ).map(datetime.isoformat),
    st.just("2026-11-23T08:00:00"),
    st.just("yesterday"),
    st.just(17),
)
_item = st.fixed_dictionaries(
    {"metric": _metric, "values": st.dictionaries(_component, _number, max_size=3)},
    optional={
        "measured_at": _time,
        "device": st.fixed_dictionaries({"battery": _number}),
        "device_id": st.sampled_from(["dev-2", "", "a\x00b"]),
    },
)
_payload = st.one_of(_item, st.lists(_item, min_size=0, max_size=3)).map(
    lambda doc: json.dumps(doc).encode()  # json: integers past 64 bits too
)


def _checked(r: Reading) -> Reading:
    return Reading(r.device_id, r.metric, dict(r.values), r.measured_at, r.received_at, {})


@settings(max_examples=examples(600), deadline=None)
@given(payload=_payload, topic_device=st.sampled_from(["dev-1", None]))
def test_canonical_readings_equal_their_checked_construction(
    payload: bytes, topic_device: str | None
) -> None:
    raw = RawMessage("mqtt", "canonical", topic_device, payload, NOW)
    try:
        decoded = canonical.decode(raw)
    except DecodeError:
        return
    for r in decoded.readings:
        assert r == _checked(r)
        assert r.measured_at.tzinfo is not None
    device = DeviceRecord("dev-1", False, (Binding("p-1", NOW - timedelta(days=1)),))
    ok, bad = validate(raw, decoded.readings, device, NOW, ClockPolicy(max_age=timedelta(days=400)))
    assert [a for a in ok] == [AcceptedReading(_checked(a.reading), "p-1") for a in ok]
    assert len(ok) + len(bad) == len(decoded.readings)


def test_a_naive_transport_time_is_still_refused_by_the_reading_check() -> None:
    naive = RawMessage(
        "http",
        "canonical",
        "dev-1",
        b'{"metric":"heart_rate","measured_at":"2026-11-23T08:00:00Z","values":{"pulse":70}}',
        datetime(2026, 11, 23, 9, 0),  # naive: the point of the test
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        canonical.decode(naive)
