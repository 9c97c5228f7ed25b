"""The delivery workers' retry backoff (rpm/backoff.py): every wait lies between half the
ceiling and the ceiling, the ceiling doubles from the base and never passes the cap."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpm.backoff import Backoff

pytestmark = pytest.mark.pure

seconds = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(
    base=seconds,
    cap=seconds,
    attempts=st.integers(min_value=0, max_value=100_000),
    rng=st.randoms(use_true_random=False),
)
def test_waits_stay_within_the_ceiling_and_the_cap(
    base: float, cap: float, attempts: int, rng: random.Random
) -> None:
    b = Backoff(base, cap)
    ceiling = b.ceiling_s(attempts)
    assert min(base, cap) <= ceiling <= cap
    assert ceiling <= b.ceiling_s(attempts + 1)  # never shrinks
    assert ceiling / 2 <= b.seconds(attempts, rng) <= ceiling


def test_the_ceiling_doubles_from_the_base() -> None:
    b = Backoff(2.0, 300.0)
    assert [b.ceiling_s(n) for n in range(10)] == [2, 2, 4, 8, 16, 32, 64, 128, 256, 300]


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_base_and_cap_must_be_positive(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Backoff(base, cap)
