"""Simulated time against wall time: real-time or accelerated replays. Pure.

A replay of ``[sim_start, sim_end]`` runs ``speed`` times faster than the wall clock and
starts no earlier than ``sim_end - duration`` in wall time, so simulated time never runs
ahead of the wall clock: the gateway refuses readings from the future
(``RPM_CLOCK_SKEW_S``), and a replay planned to end "now" ends at or after now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class SimClock:
    """Maps simulated time to wall time (both as aware datetimes) and back."""

    sim_start: datetime
    wall_start: datetime
    speed: float

    def __post_init__(self) -> None:
        if self.speed < 1:
            raise ValueError("speed below 1 would put simulated time ahead of the wall clock")

    @classmethod
    def replay(
        cls, sim_start: datetime, sim_end: datetime, wall_seconds: float, now: datetime
    ) -> SimClock:
        """Replay ``[sim_start, sim_end]`` in ``wall_seconds``, from ``now`` or later."""
        span = (sim_end - sim_start).total_seconds()
        speed = max(1.0, span / max(wall_seconds, 1e-3))
        duration = timedelta(seconds=span / speed)
        # The latest simulated moment, sim_end, must not come before its wall time.
        return cls(sim_start, max(now, sim_end - duration), speed)

    def wall(self, sim: datetime) -> datetime:
        return self.wall_start + (sim - self.sim_start) / self.speed

    def sim(self, wall: datetime) -> datetime:
        return self.sim_start + (wall - self.wall_start) * self.speed
