"""Reading -> FHIR R4 Observation: every metric validates with fhir.resources (R4B models)."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from rpm.domain import METRICS, AcceptedReading, Metric, Reading
from rpm.fhir.mapping import observations, reading_uid_of, searchset
from tests.helpers import T0, bp, single

LOINC = "http://loinc.org"


def codes(obs: dict) -> list[str]:  # type: ignore[type-arg]
    return [c["code"] for c in obs["code"]["coding"]]


@pytest.mark.parametrize("metric", list(Metric))
def test_every_metric_maps_to_a_valid_observation(metric: Metric) -> None:
    spec = METRICS[metric]
    values = {c.name: (c.low + c.high) / 2 for c in spec.components}
    if metric is Metric.BLOOD_PRESSURE:
        values = {"systolic": 130, "diastolic": 85, "pulse": 70}
    accepted = AcceptedReading(Reading("dev-9", metric, values, T0, T0), "pat-9")
    for obs in observations(accepted, issued=T0):
        model = Observation.model_validate(obs)
        assert model.status == "final"
        assert obs["subject"] == {"reference": "Patient/pat-9"}
        assert obs["device"] == {"reference": "Device/dev-9"}
        assert obs["effectiveDateTime"].startswith("2026-11-23T08:00:00")
        assert obs["identifier"][0]["value"] == obs["id"]
        quantities = (
            [obs["valueQuantity"]]
            if "valueQuantity" in obs
            else [c["valueQuantity"] for c in obs["component"]]
        )
        for q in quantities:
            assert q["system"] == "http://unitsofmeasure.org"


def test_blood_pressure_is_a_panel_with_both_components() -> None:
    [panel, pulse] = observations(bp(142, 91, pulse=77), issued=T0)
    assert codes(panel) == ["85354-9"]
    assert "valueQuantity" not in panel
    comp = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in panel["component"]}
    assert comp["8480-6"] == {
        "value": 142,
        "unit": "mmHg",
        "system": "http://unitsofmeasure.org",
        "code": "mm[Hg]",
    }
    assert comp["8462-4"]["value"] == 91
    assert panel["category"][0]["coding"][0]["code"] == "vital-signs"
    assert panel["meta"]["profile"][-1] == "http://hl7.org/fhir/StructureDefinition/bp"
    # The pulse measured by the cuff becomes its own heart-rate Observation.
    assert codes(pulse) == ["8867-4"]
    assert pulse["valueQuantity"]["code"] == "/min"
    assert pulse["id"] == f"{panel['id']}-pulse"
    assert reading_uid_of(pulse["id"]) == (reading_uid_of(panel["id"])[0], "pulse")


def test_spo2_carries_both_loinc_codes() -> None:
    [obs] = observations(single(Metric.SPO2, "spo2", 94), issued=T0)
    assert codes(obs) == ["2708-6", "59408-5"]
    assert obs["valueQuantity"]["code"] == "%"


def test_weight_uses_kg_and_glucose_is_laboratory() -> None:
    [w] = observations(single(Metric.WEIGHT, "weight", 81.2), issued=T0)
    assert codes(w) == ["29463-7"]
    assert w["valueQuantity"]["code"] == "kg"
    [g] = observations(single(Metric.GLUCOSE, "glucose", 110), issued=T0)
    assert codes(g) == ["2339-0"]
    assert g["category"][0]["coding"][0]["code"] == "laboratory"
    assert "meta" not in g


def test_searchset_bundle_validates() -> None:
    entries = observations(bp(142, 91), issued=T0)
    bundle = searchset(
        entries, "http://127.0.0.1/fhir", "http://127.0.0.1/fhir/Observation?patient=pat-1"
    )
    Bundle.model_validate(bundle)
