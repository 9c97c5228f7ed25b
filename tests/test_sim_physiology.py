"""Virtual patients' physiology and habits: the statistics the models promise. Pure numpy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from simulators.adherence import alarming, local_midnights, sessions
from simulators.physiology import (
    DAY_S,
    Days,
    Person,
    bp_shape,
    displayed,
    draw_person,
    meal_curve,
    measure,
)
from simulators.scenarios import ScenarioSpec
from simulators.traffic import SimConfig, build_plan

pytestmark = pytest.mark.pure

RNG_SEED = 5
PERSON = Person(
    program="hypertension",
    sbp=125.0,
    dbp=78.0,
    dip=0.12,
    hr=70.0,
    spo2=97.0,
    weight=80.0,
    glucose=120.0,
    meal_rise=50.0,
    temp=36.6,
)


def test_blood_pressure_dips_at_night_and_surges_in_the_morning() -> None:
    hours = np.arange(0, 24, 0.25)
    shape = bp_shape(hours, dip=0.12)
    night = shape[(hours >= 1) & (hours < 5)].mean()
    day = shape[(hours >= 9) & (hours < 21)].mean()
    assert 0.85 < night / day < 0.92  # a "dipper": 10-20% lower asleep
    morning = shape[(hours >= 7) & (hours < 9)].mean()
    assert morning > day
    assert hours[np.argmax(shape)] == pytest.approx(8.0, abs=0.5)


def test_repeated_readings_scatter_with_the_within_visit_noise() -> None:
    rng = np.random.default_rng(RNG_SEED)
    t = np.full(4000, 10 * 3600.0)
    days = Days.draw(1, rng)
    v = measure("bp_cuff", PERSON, t, 0.0, np.zeros(len(t)), days, rng)
    assert 4.0 < v["systolic"].std() < 6.0
    assert 2.5 < v["diastolic"].std() < 4.5
    assert 55 < v["pulse"].mean() < 85


def test_morning_weights_vary_by_a_few_tenths_from_day_to_day() -> None:
    rng = np.random.default_rng(RNG_SEED)
    n = 2000
    days = Days.draw(n, rng)
    t = np.arange(n) * DAY_S + 7 * 3600.0
    w = displayed(measure("scale", PERSON, t, 0.0, np.arange(n, dtype=float), days, rng))
    change = np.diff(w["weight"])
    assert 0.25 < change.std() < 0.5
    assert abs(w["weight"].mean() - PERSON.weight) < 0.1
    assert np.all(np.round(w["weight"] * 10) == w["weight"] * 10)  # a scale shows 0.1 kg


def test_glucose_peaks_about_an_hour_after_meals_and_returns_to_fasting() -> None:
    hours = np.arange(0, 24, 1 / 60)
    curve = meal_curve(hours)
    for meal in (7.5, 12.5, 18.5):
        after = (hours >= meal) & (hours < meal + 3)
        peak = hours[after][np.argmax(curve[after])]
        assert 0.75 <= peak - meal <= 1.25
    assert curve[np.searchsorted(hours, 6.5)] < 0.05  # fasting before breakfast
    assert curve[np.searchsorted(hours, 18.5 + 4.5)] < 0.2  # dinner has worn off by bed
    rng = np.random.default_rng(RNG_SEED)
    days = Days.draw(1, rng)
    fasting = measure("glucometer", PERSON, np.full(500, 7 * 3600.0), 0.0, np.zeros(500), days, rng)
    post = measure("glucometer", PERSON, np.full(500, 8.5 * 3600.0), 0.0, np.zeros(500), days, rng)
    rise = post["glucose"].mean() - fasting["glucose"].mean()
    assert 0.7 * PERSON.meal_rise < rise < 1.1 * PERSON.meal_rise
    # Meter noise within ISO 15197:2013 (95% within +/-15%): SD well under 7.5%.
    assert fasting["glucose"].std() / fasting["glucose"].mean() < 0.075


def test_copd_patients_have_a_lower_spo2_and_more_desaturations() -> None:
    rng = np.random.default_rng(RNG_SEED)
    copd = [draw_person("copd", rng) for _ in range(300)]
    other = [draw_person("general", rng) for _ in range(300)]
    assert np.mean([p.spo2 for p in copd]) < 94 < 96 < np.mean([p.spo2 for p in other])
    days = Days.draw(1, rng)
    t = np.full(5000, 9 * 3600.0)
    shares = []
    for person in (copd[0], other[0]):
        v = measure("pulse_oximeter", person, t, 0.0, np.zeros(len(t)), days, rng)
        shares.append(np.mean(v["spo2"] < person.spo2 - 3.0))
    assert shares[1] < shares[0] < 0.15


def test_heart_rate_is_lower_asleep_and_temperature_peaks_in_the_afternoon() -> None:
    rng = np.random.default_rng(RNG_SEED)
    days = Days.draw(1, rng)
    n = 2000
    night = measure("bp_cuff", PERSON, np.full(n, 3 * 3600.0), 0.0, np.zeros(n), days, rng)
    noon = measure("bp_cuff", PERSON, np.full(n, 12 * 3600.0), 0.0, np.zeros(n), days, rng)
    assert noon["pulse"].mean() - night["pulse"].mean() > 5
    assert night["systolic"].mean() < 0.92 * noon["systolic"].mean()
    hours = np.arange(0, 24, 0.5)
    temps = measure("thermometer", PERSON, hours * 3600.0, 0.0, np.zeros(len(hours)), days, rng)
    smooth = np.convolve(temps["temperature"], np.ones(5) / 5, mode="same")
    assert 14 <= hours[2:-2][np.argmax(smooth[2:-2])] <= 20


def test_personal_parameters_stay_believable() -> None:
    rng = np.random.default_rng(RNG_SEED)
    for program in ("hypertension", "heart_failure", "copd", "diabetes", "general"):
        people = [draw_person(program, rng) for _ in range(200)]
        assert all(p.dbp + 20 < p.sbp <= 132 for p in people)
        assert all(0.08 <= p.dip <= 0.18 for p in people)
        assert len({round(p.weight, 1) for p in people}) > 100  # personal, not a template


# --- habits ------------------------------------------------------------------------------


def test_patients_measure_at_their_local_morning_and_skip_missed_days() -> None:
    start = datetime(2026, 11, 3, tzinfo=UTC)  # after the end of US daylight saving time
    rng = np.random.default_rng(RNG_SEED)
    for zone, utc_hours in (("America/New_York", 5), ("America/Los_Angeles", 8)):
        midnights, offsets = local_midnights(start, start + timedelta(days=30), zone)
        assert np.all(offsets == -utc_hours * 3600)
        measuring = np.ones(len(midnights), bool)
        measuring[3] = False
        t, day = sessions("scale", midnights, measuring, rng)
        local = (t - midnights[day]) / 3600.0
        assert 6.0 < np.median(local) < 8.0
        assert 3 not in day
        assert len(t) > 0.9 * (len(midnights) - 1)


def test_an_alarming_reading_is_measured_again() -> None:
    pressures = {"systolic": np.array([150.0, 175.0]), "spo2": np.array([95.0, 95.0])}
    assert list(alarming(pressures)) == [False, True]
    spec = ScenarioSpec(
        name="crisis",
        kind="hypertensive_crisis",
        program="hypertension",
        share=1.0,
        onset=(0.1, 0.1),
        detected_by=("bp.hypertensive_crisis",),
    )
    start = datetime(2026, 11, 2, tzinfo=UTC)
    plan = build_plan(
        SimConfig(
            40,
            start,
            start + timedelta(days=3),
            scenarios=(spec,),
            http_share=0.0,
            malformed_share=0.0,
        )
    )
    sessions_in_crisis = []
    for send in plan.sends:
        if not send.device_id.endswith("-bp_cuff"):
            continue
        doc = json.loads(send.payload)
        items = doc.get("readings", [doc])
        if items[0]["values"]["systolic"] > 185:
            sessions_in_crisis.append(len(items))
    assert sessions_in_crisis
    assert min(sessions_in_crisis) >= 2  # every alarming first reading is followed by more
