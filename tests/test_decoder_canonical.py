"""The canonical JSON decoder: bytes in, readings out, no I/O."""

from __future__ import annotations

import pytest

from device_gateways.decoders import DECODERS
from device_gateways.decoders.canonical import decode
from rpm.domain import Metric
from rpm.domain.errors import DecodeError
from tests.helpers import T0, raw

pytestmark = pytest.mark.pure

BP = {
    "metric": "blood_pressure",
    "measured_at": "2026-11-23T08:00:00Z",
    "values": {"systolic": 142, "diastolic": 91, "pulse": 77},
    "device": {"battery": 81},
}


def test_single_reading_decodes_in_canonical_units() -> None:
    out = decode(raw(BP))
    assert len(out.readings) == 1
    r = out.readings[0]
    assert r.metric is Metric.BLOOD_PRESSURE
    assert dict(r.values) == {"systolic": 142.0, "diastolic": 91.0, "pulse": 77.0}
    assert r.measured_at == T0
    assert out.device_status == {"dev-1": {"battery": 81.0}}
    assert out.problems == []


def test_batch_as_list_and_as_object() -> None:
    spo2 = {"metric": "spo2", "measured_at": "2026-11-23T08:01:00+00:00", "values": {"spo2": 94}}
    assert [r.metric for r in decode(raw([BP, spo2])).readings] == [
        Metric.BLOOD_PRESSURE,
        Metric.SPO2,
    ]
    assert len(decode(raw({"readings": [BP, spo2]})).readings) == 2


def test_identity_comes_from_the_transport_not_the_payload() -> None:
    forged = {**BP, "device_id": "someone-else"}
    assert decode(raw(forged, device_id="dev-topic")).readings[0].device_id == "dev-topic"


def test_one_bad_item_of_a_batch_is_reported_and_the_rest_kept() -> None:
    bad = {"metric": "weight", "measured_at": "2026-11-23T08:00:00Z", "values": {"kg": 80}}
    out = decode(raw([BP, bad]))
    assert len(out.readings) == 1
    assert out.problems == ["item 1: weight has no component 'kg'"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"metric": "blood_pressure", ', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (
            {"metric": "bp", "measured_at": "2026-11-23T08:00:00Z", "values": {"x": 1}},
            "unknown metric",
        ),
        ({**BP, "values": {"systolic": 120}}, "lacks diastolic"),
        ({**BP, "values": {"systolic": True, "diastolic": 80}}, "finite number"),
        ({**BP, "values": {"systolic": "120", "diastolic": 80}}, "finite number"),
        ({**BP, "measured_at": "2026-11-23T08:00:00"}, "UTC offset"),
        ({**BP, "measured_at": "yesterday"}, "not ISO 8601"),
        ({**BP, "measured_at": 1763884800}, "ISO 8601 string"),
        ([], "non-empty"),
        ("just a string", "JSON object"),
    ],
)
def test_malformed_payloads_raise_with_a_reason(payload: object, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(raw(payload))


def test_nan_is_refused() -> None:
    # NaN is not JSON (RFC 8259); the parser refuses it before any value check.
    with pytest.raises(DecodeError, match="not JSON"):
        decode(raw(b'{"metric":"spo2","measured_at":"2026-11-23T08:00:00Z","values":{"spo2":NaN}}'))


def test_registry_has_canonical() -> None:
    assert DECODERS["canonical"] is decode
