"""Background labels: each names alerts that exist and a cadence, and does to the traffic what
it says (weekends empty, an unplugged device silent, stage-2 pressure high), leaving the
traffic of patients without it unchanged."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from rules.programs import RuleBook
from simulators.labels import (
    LABELS,
    MISSING_RULES,
    SKIPS_DAYS,
    Expect,
    LabelSpec,
    PatientLabels,
    default_labels,
    draw_labels,
)
from simulators.patients import DEVICE_METRICS, PROGRAM_DEVICES
from simulators.physiology import draw_person
from simulators.traffic import Plan, SimConfig, build_plan

pytestmark = pytest.mark.pure

START = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)  # a Monday


def _rules(program: str) -> set[str]:
    programs = () if program == "general" else (program,)
    return {r.id for r in RuleBook.builtin().rules_for(programs)}


def test_missing_rules_table_matches_the_rule_book() -> None:
    book = RuleBook.builtin()
    missing = {r.id: r for p in book.programs.values() for r in p.rules if r.kind == "missing"}
    assert set(MISSING_RULES) == set(missing)
    for rule_id, (device, after_hours) in MISSING_RULES.items():
        assert missing[rule_id].params["after_hours"] == after_hours
        assert missing[rule_id].metric.value in DEVICE_METRICS[device]


def test_every_label_expects_rules_of_its_programs_at_a_stated_cadence() -> None:
    for spec in (SKIPS_DAYS, *default_labels()):
        assert LABELS[spec.name] is spec
        assert spec.expects
        assert spec.source
        assert spec.what
        for e in spec.expects:
            assert e.cadence
            assert e.per_30d > 0
            assert any(e.rule_id in _rules(p) for p in spec.programs), (spec.name, e.rule_id)
    # Value labels name the rules their physiology crosses; behaviour labels the missing ones.
    expects = {s.name: {e.rule_id for e in s.expects} for s in default_labels()}
    assert "htn.stage2_persistent" in expects["htn_stage2_uncontrolled"]
    assert "copd.spo2_below_target" in expects["copd_chronic_hypoxaemia"]
    assert expects["weekend_skipper"] == expects["device_unplugged"] == set(MISSING_RULES)


def test_a_patient_labels_says_which_of_its_labels_explain_a_rule() -> None:
    person = draw_person("heart_failure", np.random.default_rng(1))
    who = PatientLabels("p1", "heart_failure", ("skips_days", "weekend_skipper"), person)
    assert who.expects("hf.weight_missing") == ("skips_days", "weekend_skipper")
    assert who.expects("htn.stage2_persistent") == ()
    custom = LabelSpec("x", ("copd",), 0.5, "what", "assumption", (Expect("a.b", "daily", 31),))
    assert draw_labels(3, 4, "hypertension", (custom,), (0.0, 1e6)) == (["skips_days"], None)


def test_label_draws_are_deterministic_and_in_their_programs() -> None:
    span = (START.timestamp(), (START + timedelta(days=30)).timestamp())
    drawn = [draw_labels(9, i, "copd", default_labels(), span) for i in range(400)]
    assert drawn == [draw_labels(9, i, "copd", default_labels(), span) for i in range(400)]
    names = [n for ns, _ in drawn for n in ns]
    assert names.count("skips_days") == 400
    assert "htn_stage2_uncontrolled" not in names
    assert 40 <= names.count("copd_chronic_hypoxaemia") <= 120  # share 0.2
    for ns, unplugged in drawn:
        assert ("device_unplugged" in ns) == (unplugged is not None)
        if unplugged is not None:
            kind, since, until = unplugged
            assert kind == PROGRAM_DEVICES["copd"][0]
            assert span[0] < since < until
            assert 3 <= (until - since) / 86_400 <= 6


@pytest.fixture(scope="module")
def plans() -> tuple[Plan, Plan]:
    cfg = SimConfig(300, START, START + timedelta(days=14), seed=4, malformed_share=0.0,
                    duplicate_share=0.0)  # fmt: skip
    return build_plan(cfg), build_plan(replace(cfg, labels=default_labels()))


def test_labels_change_only_their_carriers_traffic(plans: tuple[Plan, Plan]) -> None:
    plain, labelled = plans
    assert all(w.labels == ("skips_days",) for w in plain.labels.values())
    carriers = {pid for pid, w in labelled.labels.items() if len(w.labels) > 1}
    assert 30 <= len(carriers) <= 150
    owner = {d.device_id: p.patient_id for p in plain.patients for d in p.devices}

    def sends(plan: Plan) -> list[tuple[datetime, str, bytes]]:
        return [(s.at, s.device_id, s.payload) for s in plan.sends
                if owner[s.device_id] not in carriers]  # fmt: skip

    assert sends(plain) == sends(labelled)
    assert plain.truth == labelled.truth


def test_labels_do_to_the_traffic_what_they_say(plans: tuple[Plan, Plan]) -> None:
    _, plan = plans
    zones = {p.patient_id: ZoneInfo(p.timezone) for p in plan.patients}
    owner = {d.device_id: p.patient_id for p in plan.patients for d in p.devices}
    kind = {d.device_id: d.kind for p in plan.patients for d in p.devices}
    seen = {"weekend_skipper": 0, "device_unplugged": 0}
    for s in plan.sends:
        who = plan.labels[owner[s.device_id]]
        for _, measured in s.keys:
            if "weekend_skipper" in who.labels:
                seen["weekend_skipper"] += 1
                assert measured.astimezone(zones[who.patient_id]).weekday() < 5
            if who.unplugged is not None and kind[s.device_id] == who.unplugged[0]:
                seen["device_unplugged"] += 1
                assert not who.unplugged[1] <= measured.timestamp() < who.unplugged[2] + 60
    assert all(v > 0 for v in seen.values()), seen
    stage2 = [w for w in plan.labels.values() if "htn_stage2_uncontrolled" in w.labels]
    assert stage2
    assert all(142 <= w.person.sbp <= 160 for w in stage2)
    assert all(w.person.sbp <= 132 for w in plan.labels.values() if w not in stage2)
