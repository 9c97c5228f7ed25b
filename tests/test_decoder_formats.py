"""Payload formats: golden vendor samples, unit conversions, and encode -> decode round trips."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_gateways.decoders import DECODERS, fhir, openmhealth, tenovi, withings
from device_gateways.units import CONVERSIONS, to_canonical, without_annotations
from rpm.domain import METRICS, Metric, RawMessage, Reading
from rpm.domain.errors import DecodeError
from simulators import encoders
from simulators.fleet import make_fleet, reading
from tests.examples import examples

pytestmark = pytest.mark.pure

GOLDEN = Path(__file__).parent / "golden"
SAMPLES = sorted(p for p in GOLDEN.glob("*/*.json") if not p.name.endswith(".expected.json"))
SCHEMA_PATH = (
    Path(__file__).parents[1] / "device_gateways" / "schemas" / "canonical-reading.schema.json"
)
RECEIVED = datetime(2026, 11, 23, 8, 10, tzinfo=UTC)
WEBHOOK_FORMATS = ("tenovi", "withings", "openmhealth", "fhir")


def raw_message(payload_format: str, payload: bytes, device_id: str | None) -> RawMessage:
    if device_id is None:
        return RawMessage("http", payload_format, None, payload, RECEIVED, integration="golden")
    topic = f"rpm/v1/devices/{device_id}/readings"
    return RawMessage("mqtt", payload_format, device_id, payload, RECEIVED, topic)


def expected_of(sample: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(sample.with_suffix(".expected.json").read_text())
    return result


# --- golden samples ----------------------------------------------------------------------


def test_every_format_has_golden_samples_with_expectations() -> None:
    for payload_format in DECODERS:
        samples = [p for p in SAMPLES if p.parent.name == payload_format]
        assert len(samples) >= 3, payload_format
    for sample in SAMPLES:
        assert sample.with_suffix(".expected.json").is_file(), sample


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_sample_decodes_as_expected(sample: Path) -> None:
    payload_format = sample.parent.name
    expected = expected_of(sample)
    raw = raw_message(payload_format, sample.read_bytes(), expected["raw_device_id"])
    decode = DECODERS[payload_format]
    if "error" in expected:
        with pytest.raises(DecodeError, match=re.escape(expected["error"])):
            decode(raw)
        return
    out = decode(raw)
    assert [summary(r) for r in out.readings] == [
        {**e, "measured_at": datetime.fromisoformat(e["measured_at"])} for e in expected["readings"]
    ]
    for r in out.readings:
        assert r.received_at == RECEIVED
        assert r.measured_at.utcoffset() is not None
    assert len(out.problems) == len(expected["problems"]), out.problems
    for problem, part in zip(out.problems, expected["problems"], strict=True):
        assert part in problem
    assert out.device_status == expected["device_status"]
    assert [
        {
            "device_id": r.device_id,
            "metric": r.metric.value,
            "measured_at": r.measured_at,
            "status": r.status,
        }
        for r in out.retractions
    ] == [
        {**e, "measured_at": datetime.fromisoformat(e["measured_at"])}
        for e in expected.get("retractions", [])
    ]


def summary(r: Reading) -> dict[str, Any]:
    return {
        "device_id": r.device_id,
        "metric": r.metric.value,
        "values": dict(r.values),
        "measured_at": r.measured_at,
        "original": dict(r.original),
    }


WEBHOOK_SAMPLES = [
    p for p in SAMPLES if p.parent.name in WEBHOOK_FORMATS and "error" not in expected_of(p)
]


@pytest.mark.parametrize("sample", WEBHOOK_SAMPLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_transport_identity_overrides_ids_in_the_payload(sample: Path) -> None:
    out = DECODERS[sample.parent.name](
        raw_message(sample.parent.name, sample.read_bytes(), "dev-t")
    )
    assert out.readings
    assert {r.device_id for r in out.readings} == {"dev-t"}
    # Items that lacked a vendor id are fine once the transport vouches for the device.
    assert len(out.readings) >= len(expected_of(sample)["readings"])


# --- unit conversions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "canonical", "expected"),
    [
        (180.4, "[lb_av]", "kg", 81.828),
        (1.0, "[lb_av]", "kg", 0.454),
        (80150, "g", "kg", 80.15),
        (98.6, "[degF]", "Cel", 37.0),
        (99.1, "[degF]", "Cel", 37.28),
        (32, "[degF]", "Cel", 0.0),
        (309.95, "K", "Cel", 36.8),
        (6.4, "mmol/L", "mg/dL", 115.3),
        (5.0, "mmol/L", "mg/dL", 90.1),
        (16, "kPa", "mm[Hg]", 120.0),
        (81.4, "kg", "kg", 81.4),
        (36.6, "Cel", "Cel", 36.6),
    ],
)
def test_conversions(value: float, unit: str, canonical: str, expected: float) -> None:
    assert to_canonical(value, unit, canonical) == expected


def test_every_conversion_ends_in_a_canonical_unit() -> None:
    canonical = {c.ucum for spec in METRICS.values() for c in spec.components}
    assert {target for _, target in CONVERSIONS} <= canonical


def test_unknown_unit_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="cannot convert"):
        to_canonical(70.0, "[stone_av]", "kg")


def test_ucum_annotations_are_dropped() -> None:
    assert without_annotations("{beats}/min") == "/min"
    assert without_annotations("mm[Hg]") == "mm[Hg]"


# --- format details beyond the golden samples -----------------------------------------------


def decode_json(payload_format: str, doc: object, device_id: str | None = None) -> Any:
    return DECODERS[payload_format](
        raw_message(payload_format, json.dumps(doc).encode(), device_id)
    )


def test_withings_empty_or_objectives_only_decodes_to_nothing() -> None:
    assert decode_json("withings", {"status": 0, "body": {"measuregrps": []}}).readings == []
    objective = {
        "grpid": 1,
        "date": 1795420800,
        "category": 2,
        "deviceid": None,
        "measures": [{"value": 75000, "type": 1, "unit": -3}],
    }
    out = decode_json("withings", {"status": 0, "body": {"measuregrps": [objective]}})
    assert (out.readings, out.problems) == ([], [])


def test_withings_value_scaling_is_exact() -> None:
    group = {
        "date": 1795420800,
        "category": 1,
        "deviceid": "w-1",
        "measures": [{"value": 3685, "type": 71, "unit": -2}],
    }
    out = decode_json("withings", {"measuregrps": [group]})
    assert out.readings[0].values == {"temperature": 36.85}


def test_tenovi_refuses_non_decimal_number_strings() -> None:
    item = {"metric": "pulse", "hwi_device_id": "t-1", "timestamp": "2026-11-23T08:00:00Z"}
    for bad in ("1_000", "inf", "nan", "\uff11\uff12", "0x1f", "", "72 bpm"):
        with pytest.raises(DecodeError, match="value_1"):
            decode_json("tenovi", {**item, "value_1": bad})
    assert decode_json("tenovi", {**item, "value_1": " 72 "}).readings[0].values == {"pulse": 72}


def test_fhir_bundle_without_observations_is_refused() -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {}}]}
    with pytest.raises(DecodeError):
        decode_json("fhir", {**bundle, "entry": []})
    patient = {"resourceType": "Patient", "id": "1"}
    with pytest.raises(DecodeError, match="no Observation"):
        decode_json("fhir", {**bundle, "entry": [{"resource": patient}]})


def test_openmhealth_local_time_is_refused() -> None:
    point = json.loads((GOLDEN / "openmhealth" / "bp_single.json").read_text())
    point["body"]["effective_time_frame"]["date_time"] = "2026-11-23T08:00:00"
    with pytest.raises(DecodeError, match="UTC offset"):
        decode_json("openmhealth", point)


def test_webhook_formats_name_the_device_id_field_they_use() -> None:
    assert tenovi.DEVICE_ID_FIELD == "hwi_device_id"
    for module in (tenovi, withings, openmhealth, fhir):
        assert "Device id:" in (module.__doc__ or "")


# --- the canonical JSON Schema --------------------------------------------------------------


def schema() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return result


def test_schema_metrics_and_components_match_the_domain() -> None:
    s = schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    reading = s["$defs"]["reading"]
    assert reading["properties"]["metric"]["enum"] == [m.value for m in Metric]
    variants = {v["properties"]["metric"]["const"]: v for v in reading["oneOf"]}
    assert set(variants) == {m.value for m in Metric}
    for metric, spec in METRICS.items():
        ref = variants[metric.value]["properties"]["values"]["$ref"]
        values = resolve(s, ref)
        assert list(values["properties"]) == [c.name for c in spec.components]
        assert values["required"] == [c.name for c in spec.components if c.required]
        assert values["additionalProperties"] is False


CANONICAL_SAMPLES = [p for p in SAMPLES if p.parent.name == "canonical"]


@pytest.mark.parametrize("sample", CANONICAL_SAMPLES, ids=lambda p: p.stem)
def test_golden_canonical_samples_follow_the_schema(sample: Path) -> None:
    """The schema accepts exactly the items the decoder accepts (and so every clean sample)."""
    s, doc = schema(), json.loads(sample.read_text())
    problems = expected_of(sample)["problems"]
    refused = {int(m[1]) for p in problems if (m := re.match(r"item (\d+):", p))}
    items = doc["readings"] if isinstance(doc, dict) and "readings" in doc else doc
    for index, item in enumerate(items if isinstance(items, list) else [items]):
        assert (validate(item, {"$ref": "#/$defs/reading"}, s) == []) == (index not in refused)
    assert (validate(doc, s) == []) == (not problems)


@pytest.mark.parametrize(
    ("doc", "device_id"),
    [
        ([], "dev-1"),
        ({"metric": "bp", "measured_at": "2026-11-23T08:00:00Z", "values": {"x": 1}}, "dev-1"),
        ({"metric": "spo2", "measured_at": "2026-11-23T08:00:00", "values": {"spo2": 97}}, "dev-1"),
        ({"metric": "spo2", "measured_at": "2026-11-23T08:00Z", "values": {"spo2": "97"}}, "dev-1"),
        (
            {"metric": "weight", "measured_at": "2026-11-23T08:00:00Z", "values": {"kg": 80}},
            "dev-1",
        ),
        ({"readings": [{"metric": "heart_rate", "measured_at": "2026-11-23T08:00:00Z"}]}, "dev-1"),
        (
            {
                "device_id": "",
                "metric": "heart_rate",
                "measured_at": "2026-11-23T08:00:00Z",
                "values": {"pulse": 60},
            },
            None,
        ),
    ],
)
def test_schema_refuses_what_the_decoder_refuses(doc: object, device_id: str | None) -> None:
    assert validate(doc, schema())
    with pytest.raises(DecodeError):
        DECODERS["canonical"](raw_message("canonical", json.dumps(doc).encode(), device_id))


def test_canonical_over_http_needs_a_printable_device_id_in_each_reading() -> None:
    item = {"metric": "heart_rate", "measured_at": "2026-11-23T08:00:00Z", "values": {"pulse": 60}}
    for bad in ({}, {"device_id": ""}, {"device_id": "a\x00b"}, {"device_id": 7}):
        with pytest.raises(DecodeError, match="'device_id' is required"):
            decode_json("canonical", {**item, **bad})
    assert decode_json("canonical", {**item, "device_id": "SN-1"}).readings[0].device_id == "SN-1"


def test_schema_uses_only_keywords_the_test_validator_checks() -> None:
    used: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            used.update(node)
            for key, child in node.items():
                if key in ("properties", "$defs"):
                    for sub in child.values():
                        walk(sub)
                elif key not in ("enum", "const", "required"):
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(schema())
    assert used <= _VALIDATED | _ANNOTATIONS


# jsonschema is not installed; this checks the subset of draft 2020-12 that the schema uses.
_VALIDATED = {
    "$ref",
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "anyOf",
    "oneOf",
    "pattern",
}
_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "format"}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def resolve(root: Mapping[str, Any], ref: str) -> Any:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def validate(
    doc: object, node: Mapping[str, Any], root: Mapping[str, Any] | None = None
) -> list[str]:
    """Errors of ``doc`` against ``node`` (empty when valid), for the keywords in ``_VALIDATED``."""
    root = root or node
    errors: list[str] = []
    if "$ref" in node:
        errors += validate(doc, resolve(root, node["$ref"]), root)
    if "type" in node and not _TYPES[node["type"]](doc):
        return [*errors, f"not {node['type']}: {doc!r:.40}"]
    if "enum" in node and doc not in node["enum"]:
        errors.append(f"{doc!r:.40} not in enum")
    if "const" in node and doc != node["const"]:
        errors.append(f"{doc!r:.40} != {node['const']!r}")
    if isinstance(doc, str):
        if "pattern" in node and not re.search(node["pattern"], doc):
            errors.append(f"{doc!r:.40} does not match {node['pattern']}")
        if not node.get("minLength", 0) <= len(doc) <= node.get("maxLength", len(doc)):
            errors.append(f"string of {len(doc)} characters")
    if isinstance(doc, dict):
        errors += [f"missing {k}" for k in node.get("required", ()) if k not in doc]
        props = node.get("properties", {})
        for key, value in doc.items():
            if key in props:
                errors += validate(value, props[key], root)
            elif node.get("additionalProperties") is False:
                errors.append(f"unexpected {key}")
    if isinstance(doc, list):
        if len(doc) < node.get("minItems", 0) or len(doc) > node.get("maxItems", len(doc)):
            errors.append(f"array of {len(doc)} items")
        if "items" in node:
            for item in doc:
                errors += validate(item, node["items"], root)
    if "anyOf" in node and all(validate(doc, sub, root) for sub in node["anyOf"]):
        errors.append("matches none of anyOf")
    if "oneOf" in node and sum(not validate(doc, sub, root) for sub in node["oneOf"]) != 1:
        errors.append("does not match exactly one of oneOf")
    return errors


# --- round trips through the simulator encoders ---------------------------------------------

SUPPORTED: Mapping[str, frozenset[Metric]] = {
    "canonical": frozenset(Metric),
    "tenovi": frozenset(Metric) - {Metric.RESPIRATORY_RATE},
    "withings": frozenset(Metric) - {Metric.GLUCOSE, Metric.RESPIRATORY_RATE},
    "openmhealth": frozenset(Metric),
    "fhir": frozenset(Metric),
}
# Largest round-trip error by component: Tenovi sends lb and °F with one decimal.
TOLERANCE = {"weight": 0.03, "temperature": 0.04}


def facts(readings: Sequence[Reading]) -> dict[tuple[datetime, str], float]:
    """``{(measured_at, component): value}``: a pulse is the same fact whether a pressure, a
    saturation or a heart-rate reading carries it (formats differ in that)."""
    out: dict[tuple[datetime, str], float] = {}
    for r in readings:
        for name, value in r.values.items():
            assert (r.measured_at, name) not in out
            out[(r.measured_at, name)] = value
    return out


def assert_round_trip(payload_format: str, readings: Sequence[Reading], device_id: str) -> None:
    payload = encoders.encode(payload_format, readings, device_id)
    transport_id = device_id if payload_format == "canonical" else None
    out = DECODERS[payload_format](raw_message(payload_format, payload, transport_id))
    assert out.problems == []
    assert {r.device_id for r in out.readings} == {device_id}
    want, got = facts(readings), facts(out.readings)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=TOLERANCE.get(key[1], 1e-9)), key
    for r in out.readings:
        converted = set(r.original) - {"estimated_timestamp"}
        assert converted <= set(r.values)
        if payload_format != "tenovi":
            assert r.original == {}


@st.composite
def sim_readings(draw: st.DrawFn, metrics: frozenset[Metric]) -> list[Reading]:
    """Readings of one device at distinct whole seconds, with values as devices report them."""
    offsets = draw(st.lists(st.integers(0, 30 * 86400), min_size=1, max_size=6, unique=True))
    base = datetime(2026, 11, 1, tzinfo=UTC)
    out = []
    for offset in offsets:
        metric = draw(st.sampled_from(sorted(metrics)))
        values: dict[str, float]
        if metric is Metric.BLOOD_PRESSURE:
            sys_ = draw(st.integers(80, 220))
            values = {"systolic": sys_, "diastolic": draw(st.integers(40, sys_ - 10))}
        else:
            low, high, scale = _RANGES[metric]
            component = METRICS[metric].components[0].name
            values = {component: draw(st.integers(low, high)) / scale}
        if metric in (Metric.BLOOD_PRESSURE, Metric.SPO2) and draw(st.booleans()):
            values["pulse"] = draw(st.integers(35, 180))
        at = base + timedelta(seconds=offset)
        out.append(Reading("sim-dev", metric, values, at, at))
    return out


# metric -> integer range and divisor for its single required component
_RANGES = {
    Metric.HEART_RATE: (35, 200, 1),
    Metric.SPO2: (70, 100, 1),
    Metric.WEIGHT: (300, 2500, 10),
    Metric.BODY_TEMPERATURE: (340, 420, 10),
    Metric.GLUCOSE: (40, 450, 1),
    Metric.RESPIRATORY_RATE: (6, 40, 1),
}


@pytest.mark.parametrize("payload_format", sorted(DECODERS))
@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_of_simulated_readings(payload_format: str, data: st.DataObject) -> None:
    readings = data.draw(sim_readings(SUPPORTED[payload_format]))
    assert_round_trip(payload_format, readings, "sim-dev-42")


@pytest.mark.parametrize("payload_format", sorted(DECODERS))
def test_round_trip_of_the_virtual_fleet(payload_format: str) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    fleet = make_fleet(4, start=start, end=start + timedelta(days=7), event_share=0.5)
    rng = np.random.default_rng(3)
    for patient in fleet:
        for device in patient.devices:
            items = [reading(patient, device, start + timedelta(hours=h), rng) for h in (1, 9, 17)]
            readings = [encoders.from_canonical(i, device.device_id, start) for i in items]
            assert_round_trip(payload_format, readings, device.device_id)


def test_encoders_refuse_what_a_format_cannot_carry() -> None:
    at = datetime(2026, 11, 23, 8, tzinfo=UTC)
    glucose = Reading("d", Metric.GLUCOSE, {"glucose": 120.0}, at, at)
    with pytest.raises(encoders.UnsupportedReading):
        encoders.encode("withings", [glucose], "d")
    with pytest.raises(ValueError, match="no encoder"):
        encoders.encode("hl7v2", [glucose], "d")
