"""The traffic plan: every send decodes through the real gateway to what it claims."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from device_gateways.decoders import DECODERS
from simulators.offline import records, through_gateway
from simulators.scenarios import ScenarioSpec
from simulators.traffic import Plan, SimConfig, build_plan

pytestmark = pytest.mark.pure

START = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)
CFG = SimConfig(
    patients=150,
    start=START,
    end=START + timedelta(days=3),
    malformed_share=0.15,
    duplicate_share=0.1,
    http_share=0.5,
)


@pytest.fixture(scope="module")
def plan() -> Plan:
    return build_plan(CFG)


def test_every_send_decodes_to_its_claimed_readings_and_outcome(plan: Plan) -> None:
    devices = records(plan)
    stored: dict[tuple[str, str, datetime], bytes] = {}
    outcomes: Counter[tuple[str, str | None]] = Counter()
    for send in plan.sends:
        out = through_gateway(send, devices)
        outcomes[send.expect, send.reason] += 1
        assert send.at >= max((t for _, t in send.keys), default=send.at), send
        assert send.readings == len(send.keys)
        if out.decoded is None:
            assert (send.expect, send.reason, send.readings) == ("quarantined", "malformed", 0)
            continue
        assert out.decoded.problems == []
        got = sorted((r.metric.value, r.measured_at) for r in out.decoded.readings)
        assert got == sorted(send.keys), send
        assert {r.device_id for r in out.decoded.readings} == {send.device_id}
        if send.expect == "quarantined":
            assert out.accepted == []
            assert {r.reason.value for r in out.rejected} == {send.reason}
            continue
        assert out.rejected == [], send
        assert send.battery == out.decoded.device_status.get(send.device_id, {}).get("battery")
        identities = [(send.device_id, m, t) for m, t in send.keys]
        if send.expect == "stored":
            assert not any(i in stored for i in identities), "a stored identity repeats"
            stored.update(dict.fromkeys(identities, send.payload))
        else:  # an identical re-send of a stored payload: the same identities, the same bytes
            assert send.expect == "duplicate"
            assert {stored.get(i) for i in identities} == {send.payload}
    # Every expected outcome and quarantine reason occurs.
    assert set(outcomes) == {
        ("stored", None),
        ("duplicate", None),
        ("quarantined", "malformed"),
        ("quarantined", "implausible_value"),
        ("quarantined", "stale_timestamp"),
    }


def test_every_format_and_transport_is_used(plan: Plan) -> None:
    used = {(s.transport, s.payload_format) for s in plan.sends}
    assert used == {("mqtt", "canonical")} | {("http", f) for f in DECODERS}


def test_sends_are_sorted_and_inside_the_span(plan: Plan) -> None:
    times = [s.at for s in plan.sends]
    assert times == sorted(times)
    assert CFG.start <= times[0]
    assert times[-1] < CFG.end


def test_low_batteries_and_skewed_clocks_occur(plan: Plan) -> None:
    batteries = [s.battery for s in plan.sends if s.battery is not None]
    assert min(batteries) < 15 < max(batteries)
    # A skewed device clock stamps readings at seconds unrelated to when they were sent.
    lags = [(s.at - max(t for _, t in s.keys)).total_seconds() for s in plan.sends if s.keys]
    assert min(lags) < 1.5  # send time pushed to just after a clock that runs ahead


def test_the_plan_is_deterministic_for_a_seed(plan: Plan) -> None:
    again = build_plan(CFG)
    assert again == plan
    other = build_plan(SimConfig(**{**_fields(CFG), "seed": CFG.seed + 1}))
    assert other.sends != plan.sends


def test_formats_and_shares_are_honoured() -> None:
    cfg = SimConfig(
        patients=60,
        start=START,
        end=START + timedelta(days=2),
        formats=("withings", "fhir"),
        malformed_share=0.0,
        duplicate_share=0.0,
    )
    plan = build_plan(cfg)
    assert {(s.transport, s.payload_format) for s in plan.sends} == {
        ("http", "withings"),
        ("http", "fhir"),
    }
    assert {s.expect for s in plan.sends} == {"stored"}
    # Withings Getmeas has no glucose: glucometers use FHIR.
    glucometers = {d.device_id for p in plan.patients for d in p.devices if d.kind == "glucometer"}
    assert {s.payload_format for s in plan.sends if s.device_id in glucometers} == {"fhir"}


def test_patients_are_fictional_and_reachable() -> None:
    plan = build_plan(SimConfig(patients=300, start=START, end=START + timedelta(days=1)))
    phones = [p.phone for p in plan.patients]
    assert len(set(phones)) == len(phones)
    assert all(p[5:10] == "55501" and len(p) == 12 for p in phones)  # NANP fiction numbers
    assert {p.language for p in plan.patients} == {"en", "es"}
    assert {"copd", "heart_failure", "hypertension", "diabetes"} <= {
        prog for p in plan.patients for prog in p.programs
    }


_CRISIS = ScenarioSpec(
    name="all_crises",
    kind="hypertensive_crisis",
    program="hypertension",
    share=1.0,
    onset=(0.5, 0.5),
    detected_by=("bp.hypertensive_crisis",),
)


def test_a_scenario_share_picks_that_many_patients_of_its_program() -> None:
    cfg = SimConfig(patients=80, start=START, end=START + timedelta(days=2), scenarios=(_CRISIS,))
    plan = build_plan(cfg)
    htn = {p.patient_id for p in plan.patients if p.programs == ("hypertension",)}
    assert {g.patient_id for g in plan.truth} == htn
    assert {g.began_at for g in plan.truth} == {START + timedelta(days=1)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"end": START}, "end must be after start"),
        ({"start": START.replace(tzinfo=None)}, "timezone-aware"),
        ({"malformed_share": 1.5}, "malformed_share"),
        ({"formats": ("hl7v2",)}, "unknown formats"),
        ({"scenarios": (_CRISIS, _CRISIS)}, "scenario names must be unique"),
    ],
)
def test_bad_configs_are_refused_clearly(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_plan(SimConfig(**{**_fields(CFG), **change}))  # type: ignore[arg-type]


def _fields(cfg: SimConfig) -> dict[str, object]:
    return {name: getattr(cfg, name) for name in cfg.__slots__}  # type: ignore[attr-defined]
