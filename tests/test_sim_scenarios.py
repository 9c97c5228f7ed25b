"""Scenarios through the real rule engine: each is caught by the rules it names, after it
began; quiet patients rarely alert. Pure (decoders, validation, engine and policy replay)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rules.backtest import Burden, Options, backtest
from rules.engine import PatientContext
from rules.programs import RuleBook
from simulators.scenarios import (
    SCENARIO_KINDS,
    ScenarioFileError,
    ScenarioSpec,
    default_scenarios,
    load_scenarios,
)
from simulators.traffic import Plan, SimConfig, build_plan
from tests.sim_helpers import stored_readings

START = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)
DAYS = 5
# The backtest's missing-data timer only watches patients once it has seen a reading of
# theirs, so the plan starts a day early and alerts are counted from START.
WARM_UP = 1.0
EXAMPLE = Path(__file__).parent.parent / "simulators" / "scenarios" / "example.yaml"


def _later(spec: ScenarioSpec) -> ScenarioSpec:
    """``spec`` with its onset window mapped onto the part of the plan after the warm-up."""
    low, high = ((WARM_UP + f * DAYS) / (WARM_UP + DAYS) for f in spec.onset)
    return spec.model_copy(update={"share": 0.35, "onset": (low, high)})


@pytest.fixture(scope="module")
def replayed() -> tuple[Plan, Burden]:
    cfg = SimConfig(
        patients=300,
        start=START - timedelta(days=WARM_UP),
        end=START + timedelta(days=DAYS),
        scenarios=tuple(_later(s) for s in default_scenarios()),
        seed=11,
    )
    plan = build_plan(cfg)
    contexts = {p.patient_id: PatientContext(p.patient_id, p.programs) for p in plan.patients}
    burden = backtest(
        RuleBook.builtin(),
        stored_readings(plan),
        contexts,
        Options(start=START, end=cfg.end),
        watch={p.patient_id: [(cfg.start, None)] for p in plan.patients},
    )
    return plan, burden


def test_every_scenario_is_caught_by_its_rules_after_it_began(
    replayed: tuple[Plan, Burden],
) -> None:
    plan, burden = replayed
    caught: Counter[str] = Counter()
    cases: Counter[str] = Counter()
    early = 0
    for truth in plan.truth:
        cases[truth.kind] += 1
        alerts = [
            a
            for a in burden.alerts
            if a.patient_id == truth.patient_id and a.rule_id in truth.detected_by
        ]
        if any(a.opened_at >= truth.began_at for a in alerts):
            caught[truth.kind] += 1
        # Rules on the values rarely fire before the event began (noise, as for quiet
        # patients); missing-data rules may, after a missed day (a true lapse).
        early += any(
            a.opened_at < truth.began_at and not a.rule_id.endswith("_missing") for a in alerts
        )
    assert set(cases) == set(SCENARIO_KINDS)
    assert early <= 0.05 * len(plan.truth)
    assert min(cases.values()) >= 5
    for kind, n in cases.items():
        assert caught[kind] >= 0.85 * n, (kind, caught[kind], n)


def test_quiet_patients_rarely_alert(replayed: tuple[Plan, Burden]) -> None:
    plan, burden = replayed
    eventful = {t.patient_id for t in plan.truth}
    quiet = [p for p in plan.patients if p.patient_id not in eventful]
    alerts = [a for a in burden.alerts if a.patient_id not in eventful]
    missing = [a for a in alerts if a.rule_id.endswith("_missing")]
    patient_days = len(quiet) * DAYS
    # Physiological alerts on patients with no event; missing-data alerts follow the
    # simulated missed days (a true lapse, which those rules exist to report).
    assert (len(alerts) - len(missing)) / patient_days < 0.03
    assert len(missing) / patient_days < 0.06


# --- scenario files --------------------------------------------------------------------


def test_the_example_file_loads() -> None:
    specs = load_scenarios(EXAMPLE)
    assert {s.kind for s in specs} <= set(SCENARIO_KINDS)
    assert len({s.name for s in specs}) == len(specs)


def test_defaults_cover_every_kind() -> None:
    assert sorted(s.kind for s in default_scenarios()) == sorted(SCENARIO_KINDS)


GOOD = """
- name: fast_gain
  kind: hf_decompensation
  program: heart_failure
  share: 0.2
  onset: [0.1, 0.3]
  params: {gain_kg_per_day: 1.5}
  detected_by: [hf.weight_gain_24h]
"""


def _case(old: str, new: str, message: str) -> tuple[str, str]:
    return GOOD.replace(old, new), message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        _case("hf_decompensation", "heart_attack", "field 'kind': unknown kind 'heart_attack'"),
        _case("per_day: 1.5", "per_day: 9", "gain_kg_per_day must be between 0.1 and 5"),
        _case("gain_kg_per_day", "gain_lb", "has no parameter 'gain_lb'"),
        _case(
            "hf.weight_gain_24h",
            "hf.weight_gain_2h",
            "'hf.weight_gain_2h' not among the rules of program 'heart_failure'",
        ),
        _case(
            "program: heart_failure",
            "program: copd",
            "a scale, which patients of program 'copd' do not have",
        ),
        _case("[0.1, 0.3]", "[0.5, 0.3]", "field 'onset'"),
        _case("share: 0.2", "share: lots", "field 'share'"),
        _case("  share: 0.2\n", "", "field 'share': Field required"),
        (GOOD + "  colour: red\n", "field 'colour'"),
        (GOOD + GOOD, "names must be unique: fast_gain"),
        ("scenarios: {}", "expected a non-empty list"),
        ("- [unclosed", "not YAML"),
        ("- just a string", "scenario 1: expected a mapping"),
    ],
)
def test_scenario_file_errors_name_the_file_item_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioFileError) as info:
        load_scenarios(path)
    text_of = str(info.value)
    assert text_of.startswith(str(path))
    if text.startswith("\n- name: fast_gain"):
        assert "scenario 1 ('fast_gain'): " in text_of or "unique" in text_of
    assert message in text_of


def test_a_good_file_gives_its_scenarios(tmp_path: Path) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text("scenarios:" + GOOD.replace("\n", "\n  "))
    [spec] = load_scenarios(path)
    assert (spec.name, spec.param("gain_kg_per_day"), spec.param("max_gain_kg")) == (
        "fast_gain",
        1.5,
        6.0,
    )
    assert spec.detected_by == ("hf.weight_gain_24h",)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioFileError, match="cannot read"):
        load_scenarios(tmp_path / "nope.yaml")
