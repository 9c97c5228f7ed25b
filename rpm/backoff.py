"""Retry backoff of the delivery workers (SMS outbox, FHIR push): capped exponential, with
jitter. Pure.

The ceiling of try ``n`` (1, 2, ...) is ``min(cap_s, base_s * 2^(n-1))``; the wait is drawn
uniformly between half the ceiling and all of it ("equal jitter" in AWS's
"Exponential Backoff And Jitter", 2015): spread enough that workers retrying after one
outage do not return together, never shorter than half the ceiling.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Beyond this many doublings every ceiling is the cap (2**1000 * base overflows to inf,
# never raises); keeps a long run of failures from overflowing ``2 ** n``.
_MAX_DOUBLINGS = 1000


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits of ``base_s`` doubling per try up to ``cap_s`` seconds, jittered."""

    base_s: float
    cap_s: float

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.cap_s > 0):
            raise ValueError(f"backoff base and cap must be positive: {self}")

    def ceiling_s(self, attempts: int) -> float:
        """The longest wait after ``attempts`` tries (0 and 1 both wait about ``base_s``)."""
        doublings = min(max(0, attempts - 1), _MAX_DOUBLINGS)
        return min(self.cap_s, self.base_s * 2.0**doublings)

    def seconds(self, attempts: int, rng: random.Random | None = None) -> float:
        """A wait between half the ceiling and the ceiling."""
        ceiling = self.ceiling_s(attempts)
        return (rng or random).uniform(ceiling / 2, ceiling)  # jitter, not crypto
