"""Token buckets keyed by who is asking (an integration, a client address).

Each key holds up to ``burst`` tokens, refilled at ``rate`` per second; a request takes
one, and when none is left the answer is how long until one is. In memory, per process:
several API processes each enforce the limit on their own share of the traffic. At most
``max_keys`` keys are kept; when more arrive, the longest idle are forgotten (a forgotten
key starts again with a full bucket, which errs on the side of letting traffic through).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBuckets:
    rate: float  # tokens per second; 0 turns the limit off
    burst: int
    max_keys: int = 10_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # tokens, at

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + max(0.0, now - at) * self.rate)

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a token (0: it has one now); takes nothing."""
        if self.rate <= 0:
            return 0.0
        tokens = self._tokens(key, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, key: str, now: float) -> float:
        """Take a token for ``key``: 0 when granted, else the seconds to wait for one."""
        if self.rate <= 0:
            return 0.0
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            self._remember(key, tokens, now)
            return (1.0 - tokens) / self.rate
        self._remember(key, tokens - 1.0, now)
        return 0.0

    def _remember(self, key: str, tokens: float, now: float) -> None:
        self._buckets.pop(key, None)  # re-insert: dict order is least recently used first
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
