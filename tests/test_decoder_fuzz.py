"""Every decoder answers any input with ``Decoded`` or ``DecodeError``, and only sane readings.

Inputs: arbitrary bytes, arbitrary JSON (huge integers, NaN and friends, number-like strings,
deep nesting), and mutations of the golden samples (fields dropped, replaced, retyped), which
reach far deeper into each decoder than random documents do.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_gateways.decoders import DECODERS, Decoded
from rpm.domain import METRICS, RawMessage, Reading
from rpm.domain.errors import DecodeError
from tests.examples import examples

pytestmark = pytest.mark.pure

GOLDEN = Path(__file__).parent / "golden"
FORMATS = sorted(DECODERS)
RECEIVED = datetime(2026, 11, 23, 8, 10, tzinfo=UTC)
FUZZ = settings(
    max_examples=examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Field names and values the decoders look for, so random documents reach past the first check.
KEYS = (
    "metric", "values", "measured_at", "device", "battery", "signal", "readings",
    "hwi_device_id", "value_1", "value_2", "timestamp", "estimated_timestamp",
    "status", "body", "measuregrps", "category", "date", "deviceid", "measures", "type",
    "value", "unit", "header", "schema_id", "namespace", "name", "acquisition_provenance",
    "device_id", "effective_time_frame", "date_time", "time_interval", "end_date_time",
    "start_date_time", "duration", "descriptive_statistic", "resourceType", "entry",
    "resource", "fullUrl", "code", "coding", "system", "valueQuantity", "component",
    "effectiveDateTime", "effectivePeriod", "effectiveInstant", "reference", "identifier",
)  # fmt: skip
STRINGS = (
    "NaN", "nan", "-Infinity", "inf", "1e999", "-1e-999", "1_000", "\uff11\uff12", " 72 ", "",
    "0x1f",
    "blood_pressure", "spO2", "spo2", "weight", "temperature", "pulse", "glucose", "heart_rate",
    "omh", "blood-pressure", "body-weight", "Observation", "Bundle", "Device", "final",
    "entered-in-error", "http://loinc.org", "http://unitsofmeasure.org", "85354-9", "8480-6",
    "8462-4", "8867-4", "29463-7", "8310-5", "mmol/L", "[lb_av]", "[degF]", "lb", "F", "K",
    "mmHg", "{beats}/min", "Device/x", "urn:uuid:x", "a/Device/b/_history/1", "\x00", "\u202e",
    "2026-11-23T08:00:00Z", "2026-11-23T08:00:00", "2026-11-23", "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+01:00", "2026-11-23T08:00:00+24:00", "x" * 300,
)  # fmt: skip

leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | st.sampled_from(STRINGS)
    | st.text(max_size=12)
)
json_docs = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=25,
)


@st.composite
def deep(draw: st.DrawFn) -> object:
    """A value nested up to 220 arrays or objects deep (one draw for the shape: it is fast)."""
    doc: object = draw(st.sampled_from([None, 1, 10**400, "NaN", "2026-11-23T08:00:00Z"]))
    depth = draw(st.integers(1, 220))
    shape = draw(st.binary(min_size=depth, max_size=depth))
    for byte in shape:
        doc = [doc] if byte % 2 else {KEYS[byte % len(KEYS)]: doc}
    return doc


def check(payload_format: str, payload: bytes, device_id: str | None) -> None:
    """Decode; anything but ``Decoded`` or ``DecodeError`` fails the test."""
    raw = RawMessage("fuzz", payload_format, device_id, payload, RECEIVED)
    try:
        out = DECODERS[payload_format](raw)
    except DecodeError:
        return
    assert isinstance(out, Decoded)
    for r in out.readings:
        assert_sane(r, raw)
    assert all(isinstance(p, str) and p for p in out.problems)
    for device, status in out.device_status.items():
        assert isinstance(device, str)
        assert all(isinstance(v, float) and math.isfinite(v) for v in status.values())


def assert_sane(r: Reading, raw: RawMessage) -> None:
    spec = METRICS[r.metric]
    names = {c.name for c in spec.components}
    assert set(r.values) <= names
    assert {c.name for c in spec.components if c.required} <= set(r.values)
    assert all(isinstance(v, float) and math.isfinite(v) for v in r.values.values())
    assert r.measured_at.tzinfo is not None
    assert r.measured_at.utcoffset() is not None
    assert r.received_at == RECEIVED
    assert isinstance(r.device_id, str)
    assert r.device_id.strip()
    assert r.device_id.isprintable()
    if raw.device_id is not None:
        assert r.device_id == raw.device_id
    assert isinstance(r.original, Mapping)
    r.uid  # noqa: B018  (identity must be computable)


def golden_docs(payload_format: str) -> list[Any]:
    paths = sorted((GOLDEN / payload_format).glob("*.json"))
    return [json.loads(p.read_text()) for p in paths if not p.name.endswith(".expected.json")]


GOLDEN_DOCS = {f: golden_docs(f) for f in FORMATS}
device_ids = st.sampled_from([None, "dev-fuzz"])


@pytest.mark.parametrize("payload_format", FORMATS)
@FUZZ
@given(payload=st.binary(max_size=300), device_id=device_ids)
def test_arbitrary_bytes(payload_format: str, payload: bytes, device_id: str | None) -> None:
    check(payload_format, payload, device_id)


@pytest.mark.parametrize("payload_format", FORMATS)
@FUZZ
@given(doc=json_docs | deep(), device_id=device_ids)
def test_arbitrary_json(payload_format: str, doc: object, device_id: str | None) -> None:
    check(payload_format, json.dumps(doc).encode(), device_id)


# --- mutations of golden samples -------------------------------------------------------------


def paths(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document, the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            out += paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            out += paths(child, (*prefix, index))
    return out


def retyped(value: object) -> object:
    """The same content in another JSON type."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return [value]
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    return 0


def mutate(doc: object, data: st.DataObject) -> object:
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths(doc)), label="path")
        op = data.draw(st.sampled_from(["drop", "replace", "retype", "deep", "duplicate"]))
        if not path:
            if op in ("replace", "deep"):
                doc = data.draw(json_docs if op == "replace" else deep())
            elif op == "retype":
                doc = retyped(doc)
            continue
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        if op == "drop":
            del parent[key]
        elif op == "replace":
            parent[key] = data.draw(json_docs, label="replacement")
        elif op == "retype":
            parent[key] = retyped(parent[key])
        elif op == "deep":
            parent[key] = data.draw(deep(), label="deep")
        elif isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        else:
            parent[key] = [parent[key], copy.deepcopy(parent[key])]
    return doc


@pytest.mark.parametrize("payload_format", FORMATS)
@settings(FUZZ, max_examples=examples(300))
@given(data=st.data(), device_id=device_ids)
def test_mutated_golden_samples(
    payload_format: str, data: st.DataObject, device_id: str | None
) -> None:
    doc = data.draw(st.sampled_from(GOLDEN_DOCS[payload_format]), label="sample")
    check(payload_format, json.dumps(mutate(doc, data)).encode(), device_id)


# --- inputs worth spelling out -----------------------------------------------------------------

SPECIFIC = [
    b"9" * 5000,  # past Python's int/str digit limit: json raises ValueError
    b'{"value_1": ' + b"9" * 5000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,  # past the recursion limit
    b"NaN",
    b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
    b"\x00\x00\x00[",
    b'"\\ud800"',  # a lone surrogate
]


@pytest.mark.parametrize("payload_format", FORMATS)
@pytest.mark.parametrize("payload", SPECIFIC, ids=range(len(SPECIFIC)))
def test_specific_nasty_payloads(payload_format: str, payload: bytes) -> None:
    for device_id in (None, "dev-fuzz"):
        check(payload_format, payload, device_id)


@pytest.mark.parametrize("payload_format", FORMATS)
def test_huge_numbers_in_every_field_of_every_golden_sample(payload_format: str) -> None:
    for doc in GOLDEN_DOCS[payload_format]:
        for path in paths(doc)[1:]:
            for value in (10**400, -(10**400), 1e308, -0.0):
                mutated: Any = copy.deepcopy(doc)
                parent = mutated
                for step in path[:-1]:
                    parent = parent[step]
                parent[path[-1]] = value
                check(payload_format, json.dumps(mutated).encode(), None)
