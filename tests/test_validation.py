"""Validation: identity, bindings, plausibility and clock sanity, each with its reason."""

from __future__ import annotations

from datetime import timedelta

import pytest

from rpm.domain import Binding, DeviceRecord, Metric, Reading, RejectReason
from rpm.validation import ClockPolicy, validate
from tests.helpers import T0, raw

pytestmark = pytest.mark.pure

CLOCK = ClockPolicy(max_skew=timedelta(minutes=5), max_age=timedelta(days=30))
BOUND = DeviceRecord("dev-1", False, (Binding("pat-1", T0 - timedelta(days=10)),))


def reading(values: dict[str, float], at=T0, metric=Metric.BLOOD_PRESSURE) -> Reading:  # type: ignore[no-untyped-def]
    return Reading("dev-1", metric, values, at, T0)


def test_a_bound_device_reading_is_attributed_to_its_patient() -> None:
    ok, bad = validate(raw({}), [reading({"systolic": 130, "diastolic": 80})], BOUND, T0, CLOCK)
    assert bad == []
    assert [a.patient_id for a in ok] == ["pat-1"]


@pytest.mark.parametrize(
    ("device", "values", "at", "reason"),
    [
        (None, {"systolic": 130, "diastolic": 80}, T0, RejectReason.UNKNOWN_DEVICE),
        (
            DeviceRecord("dev-1", True, BOUND.bindings),
            {"systolic": 130, "diastolic": 80},
            T0,
            RejectReason.RETIRED_DEVICE,
        ),
        (
            DeviceRecord("dev-1", False, ()),
            {"systolic": 130, "diastolic": 80},
            T0,
            RejectReason.UNBOUND_DEVICE,
        ),
        (BOUND, {"systolic": 330, "diastolic": 80}, T0, RejectReason.IMPLAUSIBLE_VALUE),
        (BOUND, {"systolic": 80, "diastolic": 90}, T0, RejectReason.IMPLAUSIBLE_VALUE),
        (
            BOUND,
            {"systolic": 130, "diastolic": 80},
            T0 + timedelta(minutes=6),
            RejectReason.FUTURE_TIMESTAMP,
        ),
        (
            BOUND,
            {"systolic": 130, "diastolic": 80},
            T0 - timedelta(days=31),
            RejectReason.STALE_TIMESTAMP,
        ),
        # Measured before the device was lent to the patient.
        (
            BOUND,
            {"systolic": 130, "diastolic": 80},
            T0 - timedelta(days=11),
            RejectReason.UNBOUND_DEVICE,
        ),
    ],
)
def test_rejections_carry_a_machine_readable_reason(device, values, at, reason) -> None:  # type: ignore[no-untyped-def]
    ok, bad = validate(raw({}), [reading(values, at)], device, T0, CLOCK)
    assert ok == []
    assert [b.reason for b in bad] == [reason]
    assert bad[0].detail
    assert bad[0].raw.payload == b"{}"


def test_small_clock_skew_is_tolerated() -> None:
    ok, _ = validate(
        raw({}),
        [reading({"systolic": 130, "diastolic": 80}, T0 + timedelta(minutes=4))],
        BOUND,
        T0,
        CLOCK,
    )
    assert len(ok) == 1


def test_binding_periods_attribute_readings_to_the_right_patient() -> None:
    handed_over = T0 - timedelta(days=2)
    device = DeviceRecord(
        "dev-1",
        False,
        (
            Binding("pat-old", T0 - timedelta(days=20), handed_over),
            Binding("pat-new", handed_over),
        ),
    )
    before = reading({"systolic": 130, "diastolic": 80}, T0 - timedelta(days=3))
    after = reading({"systolic": 131, "diastolic": 80}, T0 - timedelta(days=1))
    ok, _ = validate(raw({}), [before, after], device, T0, CLOCK)
    assert [a.patient_id for a in ok] == ["pat-old", "pat-new"]


def test_spo2_above_100_is_implausible() -> None:
    _, bad = validate(raw({}), [reading({"spo2": 101}, metric=Metric.SPO2)], BOUND, T0, CLOCK)
    assert bad[0].reason is RejectReason.IMPLAUSIBLE_VALUE
